"""The members page and the invitation page in Chromium: WCAG 2.1 AA by axe-core, every
control labelled, a refusal announced, no CSP report, all with plain forms."""

import re

import pytest
from django.core import mail
from django.urls import reverse

from annotations.models import Membership, Role
from tests.test_browser import CHROMIUM, UNLABELLED_CONTROLS, _log_in, run_axe
from tests.test_browser import browser as browser  # the module's Chromium, a fixture

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]


def _page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.csp = []
    page.on("console", lambda m: page.csp.append(m.text) if "Content Security" in m.text else None)
    return page


def _assert_accessible(page):
    violations = run_axe(page)
    assert not violations, "\n".join(f"{v['id']}: {v['help']} at {v['nodes']}" for v in violations)
    assert not page.evaluate(UNLABELLED_CONTROLS)
    assert page.locator("h1").count() == 1 and not page.csp, page.csp


def test_the_members_page_meets_wcag_and_announces_refusals(browser, live_server, people):
    page = _page(browser)
    _log_in(page, live_server.url, "alice", "password")
    page.goto(live_server.url + reverse("project-detail", args=[people.project.pk]))
    page.click("#members-link")
    page.wait_for_selector("#member-list")
    _assert_accessible(page)

    # a role changed in place (htmx): no reload, the live region says it, the focus stays
    page.evaluate("window.notReloaded = true")
    page.select_option(f"#role-{people.pathologist.pk}", Role.ADJUDICATOR)
    page.click(f"#role-change-{people.pathologist.pk}")
    page.wait_for_function(
        "() => document.getElementById('members-status').textContent"
        ".includes('paul is now Adjudicator')"
    )
    assert Membership.objects.get(user=people.pathologist).role == Role.ADJUDICATOR
    assert page.evaluate("window.notReloaded === true")
    assert page.evaluate("document.activeElement.id") == f"role-change-{people.pathologist.pk}"

    # the last admin: refused, in an alert
    page.select_option(f"#role-{people.project_admin.pk}", Role.RESEARCHER)
    page.click(f"#member-{people.project_admin.pk} button:has-text('Change')")
    alert = page.wait_for_selector("#member-refusal[role=alert]")
    assert "only admin" in alert.text_content()
    assert page.evaluate("document.activeElement.id") == "member-refusal"
    _assert_accessible(page)

    # a member removed in place: their row goes, the focus goes to the list's heading
    page.click(f"#remove-{people.researcher.pk}")
    page.wait_for_selector(f"#member-{people.researcher.pk}", state="detached")
    # htmx moves the focus once the swapped content has settled: a moment after the row goes
    page.wait_for_function("() => document.activeElement.id === 'members-title'")
    assert page.evaluate("window.notReloaded === true")
    assert not Membership.objects.filter(user=people.researcher).exists()

    # an unknown user name: the error is announced and the field marked invalid
    page.fill("#id_who", "nobody")
    page.click("#member-add button[type=submit]")
    page.wait_for_selector("#member-add-errors[role=alert]")
    assert page.get_attribute("#id_who", "aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "id_who"
    _assert_accessible(page)
    page.close()


def test_without_javascript_the_plain_forms_work(browser, live_server, people):
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    _log_in(page, live_server.url, "alice", "password")
    page.goto(live_server.url + reverse("project-members", args=[people.project.pk]))
    page.select_option(f"#role-{people.pathologist.pk}", Role.RESEARCHER)
    page.click(f"#role-change-{people.pathologist.pk}")
    page.wait_for_selector("text=paul is now Researcher")
    page.click(f"#remove-{people.pathologist.pk}")
    page.wait_for_selector("text=paul is no longer a member")
    assert not Membership.objects.filter(user=people.pathologist).exists()
    context.close()


def test_an_invitation_is_accepted_in_the_browser(browser, live_server, people):
    page = _page(browser)
    _log_in(page, live_server.url, "alice", "password")
    page.goto(live_server.url + reverse("project-members", args=[people.project.pk]))
    page.fill("#id_who", "new.reader@hospital.example")
    page.select_option("#id_role", Role.PATHOLOGIST)
    page.click("#member-add button[type=submit]")
    page.wait_for_selector("text=new.reader@hospital.example was invited")
    link = re.search(r"https?://\S+/join/\S+/", mail.outbox[0].body).group(0)
    page.context.clear_cookies()

    page.goto(link)
    page.wait_for_selector("h1:has-text('Join Breast biopsies')")
    _assert_accessible(page)
    page.fill("#id_new_password1", "a long enough pass-phrase 7")
    page.fill("#id_new_password2", "a long enough pass-phrase 7")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(rf"/projects/{people.project.pk}/$"))
    assert "Welcome, new.reader" in page.content()
    page.close()
