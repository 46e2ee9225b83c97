"""Failed logins are throttled per user name and per address (django-axes); passwords
are checked by Django's validators."""

import io
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import PasswordChangeForm
from django.contrib.auth.management.commands import createsuperuser
from django.core.management import call_command
from django.db.models import F
from django.urls import reverse

from tests.conftest import CsrfClient
from tests.test_browser import CHROMIUM, browser, run_axe  # noqa: F401 (a fixture)

PASSWORD = "correct horse battery staple"


@pytest.fixture
def paul(db):
    return get_user_model().objects.create_user("paul", password=PASSWORD)


def _post_login(username, password, *, address="10.0.0.1", **extra):
    client = CsrfClient(REMOTE_ADDR=address)
    response = client.post(reverse("login"), {"username": username, "password": password}, **extra)
    return client, response


def _logged_in(client) -> bool:
    return "_auth_user_id" in client.session


def _fail(times, username="paul", **kwargs):
    for i in range(times):
        _post_login(username, f"wrong-{i}", **kwargs)


def test_a_wrong_password_says_so_in_plain_words(paul):
    client, response = _post_login("paul", "wrong")
    assert response.status_code == 200 and not _logged_in(client)
    assert "did not match" in response.content.decode()


def test_the_right_password_after_a_few_mistakes_still_works(paul, settings):
    _fail(settings.AXES_FAILURE_LIMIT - 1)
    client, response = _post_login("paul", PASSWORD)
    assert response.status_code == 302 and _logged_in(client)


def test_it_locks_out_the_right_password_after_too_many_wrong_ones(paul, settings):
    _fail(settings.AXES_FAILURE_LIMIT)
    client, response = _post_login("paul", PASSWORD)
    assert response.status_code == 429 and not _logged_in(client)
    page = response.content.decode()
    assert f"paused for {settings.MEDANNOT_LOGIN_COOLOFF_MINUTES} minutes" in page
    assert "ask your project admin" in page
    assert 'role="alert"' in page


def test_it_locks_a_user_name_tried_from_many_addresses(paul, settings):
    for i in range(settings.AXES_FAILURE_LIMIT):
        _post_login("paul", "wrong", address=f"10.0.1.{i}")
    client, response = _post_login("paul", PASSWORD, address="10.0.2.1")
    assert response.status_code == 429 and not _logged_in(client)


def test_it_locks_an_address_trying_many_user_names(paul, settings):
    for i in range(settings.AXES_FAILURE_LIMIT):
        _post_login(f"guess-{i}", "wrong", address="10.0.3.1")
    client, response = _post_login("paul", PASSWORD, address="10.0.3.1")
    assert response.status_code == 429 and not _logged_in(client)
    # The same user from another computer is not locked: only that address is.
    client, response = _post_login("paul", PASSWORD, address="10.0.3.2")
    assert response.status_code == 302 and _logged_in(client)


def test_the_lock_lifts_after_the_cooling_off_period(paul, settings):
    _fail(settings.AXES_FAILURE_LIMIT)
    cooled = timedelta(minutes=settings.MEDANNOT_LOGIN_COOLOFF_MINUTES, seconds=1)
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - cooled)
    client, response = _post_login("paul", PASSWORD)
    assert response.status_code == 302 and _logged_in(client)


def test_a_forged_forwarded_header_does_not_pick_the_address(paul, settings):
    """With no proxy configured, X-Forwarded-For is the client's word: ignored."""
    for i in range(settings.AXES_FAILURE_LIMIT):
        _post_login(f"guess-{i}", "wrong", HTTP_X_FORWARDED_FOR=f"192.0.2.{i}")
    client, response = _post_login("paul", PASSWORD, HTTP_X_FORWARDED_FOR="192.0.2.99")
    assert response.status_code == 429 and not _logged_in(client)


def test_behind_a_configured_proxy_the_address_comes_from_its_header(paul, settings):
    settings.MEDANNOT_CLIENT_IP_HEADER = "X-Forwarded-For"
    for i in range(settings.AXES_FAILURE_LIMIT):
        # Every request comes from the proxy's address; the last forwarded one is the client.
        _post_login(f"guess-{i}", "wrong", HTTP_X_FORWARDED_FOR="6.6.6.6, 192.0.2.7")
    locked_client, locked = _post_login("paul", PASSWORD, HTTP_X_FORWARDED_FOR="192.0.2.7")
    assert locked.status_code == 429
    # Another client behind the same proxy, even one forging the locked address first.
    client, response = _post_login("paul", PASSWORD, HTTP_X_FORWARDED_FOR="192.0.2.7, 192.0.2.8")
    assert response.status_code == 302 and _logged_in(client)


def test_the_lockout_page_has_no_inline_script(paul, settings):
    _fail(settings.AXES_FAILURE_LIMIT)
    _, response = _post_login("paul", PASSWORD)
    page = response.content.decode()
    assert "<script>" not in page and "Content-Security-Policy" in response.headers


# ---------------------------------------------------------------------------- passwords

WEAK = ["password", "12345678901234", "short1!"]  # common, all digits, too short


@pytest.mark.parametrize("weak", WEAK)
def test_a_password_change_refuses_a_weak_password(paul, weak):
    form = PasswordChangeForm(
        paul, {"old_password": PASSWORD, "new_password1": weak, "new_password2": weak}
    )
    assert not form.is_valid() and form.errors["new_password2"]


def test_a_password_change_takes_a_strong_password(paul):
    strong = "tumour margins 4 ever"
    form = PasswordChangeForm(
        paul, {"old_password": PASSWORD, "new_password1": strong, "new_password2": strong}
    )
    assert form.is_valid(), form.errors


def test_the_admin_password_page_refuses_a_weak_password(paul, client_for):
    admin = get_user_model().objects.create_superuser("sue", password=PASSWORD)
    url = reverse("admin:auth_user_password_change", args=[paul.pk])
    response = client_for(admin).post(url, {"password1": "password", "password2": "password"})
    assert response.status_code == 200  # the form again, with the reason
    assert "too common" in response.content.decode()
    paul.refresh_from_db()
    assert paul.check_password(PASSWORD)


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_createsuperuser_asks_again_for_a_weak_password(db, monkeypatch):
    typed = iter(["password", "password", "tumour margins 4 ever", "tumour margins 4 ever"])
    monkeypatch.setattr(createsuperuser.getpass, "getpass", lambda prompt="": next(typed))
    monkeypatch.setattr("builtins.input", lambda prompt="": "n")  # do not bypass validation
    err = io.StringIO()
    call_command(
        "createsuperuser",
        username="root",
        email="root@example.org",
        interactive=True,
        stdin=_Tty(),
        stdout=io.StringIO(),
        stderr=err,
    )
    assert "too common" in err.getvalue()
    user = get_user_model().objects.get(username="root")
    assert user.check_password("tumour margins 4 ever")


# ---------------------------------------------------------------------------- in a browser


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_the_lockout_page_meets_wcag_21_aa_under_the_csp(browser, live_server, settings):  # noqa: F811
    get_user_model().objects.create_user("paul", password=PASSWORD)
    page = browser.new_page()
    csp = []
    page.on("console", lambda m: csp.append(m.text) if "Content Security" in m.text else None)
    for password in ["wrong"] * settings.AXES_FAILURE_LIMIT + [PASSWORD]:
        page.goto(live_server.url + reverse("login"))
        page.fill("#id_username", "paul")
        page.fill("#id_password", password)
        with page.expect_navigation():
            page.click("button[type=submit]")
    assert page.locator("h1").inner_text() == "Log in paused"
    assert "/login/" in page.url
    assert not run_axe(page) and not csp
    page.close()


def test_the_admin_login_is_throttled_too(paul, settings):
    paul.is_staff = paul.is_superuser = True
    paul.save()
    url = reverse("admin:login")
    for i in range(settings.AXES_FAILURE_LIMIT):
        CsrfClient().post(url, {"username": "paul", "password": f"wrong-{i}"})
    client = CsrfClient()
    response = client.post(url, {"username": "paul", "password": PASSWORD})
    assert response.status_code == 429 and not _logged_in(client)
