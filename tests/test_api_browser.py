"""The API tokens page in a real browser: made, shown once, revoked; WCAG 2.1 AA (axe-core)."""

from __future__ import annotations

import pytest

from annotations.models import ApiToken
from tests.test_browser import (  # noqa: F401 (browser: a fixture)
    CHROMIUM,
    UNLABELLED_CONTROLS,
    Visit,
    browser,
    run_axe,
)

pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]


def _accessible(page) -> None:
    violations = run_axe(page)
    assert not violations, "\n".join(
        f"{v['id']}: {v['help']} at {', '.join(v['nodes'])}" for v in violations
    )
    assert not page.evaluate(UNLABELLED_CONTROLS)
    assert page.locator("h1").count() == 1


def test_a_token_is_made_shown_once_and_revoked(browser, live_server, people, tmp_path):  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    csp = []
    page.on("console", lambda m: csp.append(m.text) if "Content Security" in m.text else None)
    v = Visit(page, live_server.url, people, {}, tmp_path)
    v.login("paul")
    v.go("account-tokens")
    _accessible(page)
    page.fill("#id_name", '<b>Lab "laptop"</b>')
    page.click("button[type=submit].primary")
    secret = page.input_value("#new-token")
    token = ApiToken.objects.get(user=people.pathologist)
    assert secret.startswith(f"ma_{token.prefix}_")
    assert page.locator("td", has_text='<b>Lab "laptop"</b>').count() == 1  # shown as text
    _accessible(page)
    v.go("account-tokens")  # the secret is not shown again
    assert page.locator("#new-token").count() == 0
    page.click("button[aria-label^='Revoke the token']")
    page.wait_for_selector("text=no longer works")
    _accessible(page)
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert not csp, csp
    page.close()
