"""A refused decision keeps the keyboard: after the 409 (decided in another tab) or 422
(reject without a reason) answer is swapped in, the message has the focus, so a screen
reader says it and the one-key shortcuts work at once."""

import pytest
from django.urls import reverse

from annotations.models import Label, Modality
from tests.test_browser import CHROMIUM, _log_in, drafted, pathologist_project
from tests.test_browser import browser as browser  # the module's Chromium, a fixture

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]

FOCUSED_ID = "() => document.activeElement && document.activeElement.id"


def focus_moves_to(page, element_id: str) -> None:
    page.wait_for_function(f"() => document.activeElement.id === {element_id!r}", timeout=5000)


def test_a_conflict_takes_the_focus_and_keys_still_work(
    browser, live_server, sample_files, django_user_model
):
    user, project = pathologist_project(django_user_model, "Focus 409", Modality.DERMATOLOGY)
    task = drafted(project, sample_files["photo"], "Compound naevus.")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    one, two = context.new_page(), context.new_page()  # one session, two tabs
    errors = []
    two.on("pageerror", lambda e: errors.append(str(e)))
    _log_in(one, live_server.url, "paul", "secret-pw-1")
    url = live_server.url + reverse("task-detail", args=[task.pk])
    one.goto(url)
    two.goto(url)
    one.keyboard.press("a")
    one.wait_for_selector("text=Saved: Accepted")

    with two.expect_response(lambda r: "/decide/" in r.url) as answer:
        two.keyboard.press("a")  # the same decision, from the stale tab
    assert answer.value.status == 409
    focus_moves_to(two, "conflict")
    message = two.locator("#conflict")
    assert message.get_attribute("role") == "alert"
    assert message.get_attribute("tabindex") == "-1"
    assert "Not saved." in message.inner_text()

    two.keyboard.press("?")  # a shortcut, at once: the list opens
    assert two.evaluate("() => document.getElementById('shortcuts').open") is True
    two.keyboard.press("r")  # and the reason field takes the focus
    assert two.evaluate(FOCUSED_ID) == "id_reason"
    assert Label.objects.get(task=task).revision == 1  # nothing overwritten
    assert not errors, errors
    context.close()


def test_an_invalid_decision_focuses_its_message_and_keys_still_work(
    browser, live_server, sample_files, django_user_model
):
    user, project = pathologist_project(django_user_model, "Focus 422", Modality.DERMATOLOGY)
    task = drafted(project, sample_files["photo"], "Compound naevus.")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    _log_in(page, live_server.url, "paul", "secret-pw-1")
    page.goto(live_server.url + reverse("task-detail", args=[task.pk]))
    page.focus("#reject")
    with page.expect_response(lambda r: "/decide/" in r.url) as answer:
        page.keyboard.press("Enter")  # reject, with no reason and no category
    assert answer.value.status == 422
    focus_moves_to(page, "decision-errors")
    message = page.locator("#decision-errors")
    assert message.get_attribute("role") == "alert"
    assert message.get_attribute("tabindex") == "-1"
    text = " ".join(message.inner_text().split())
    assert text.startswith("Not saved."), text
    assert "Say why the draft is rejected." in text, text

    page.keyboard.press("r")  # at once: the reason field, to type the missing reason
    assert page.evaluate(FOCUSED_ID) == "id_reason"
    page.keyboard.type("Not a naevus: a seborrhoeic keratosis.")
    page.keyboard.press("Escape")
    page.select_option("#id_category", index=1)
    with page.expect_response(lambda r: "/decide/" in r.url) as answer:
        page.click("#reject")
    assert answer.value.status == 200
    page.wait_for_selector("text=Saved: Rejected")
    assert Label.objects.get(task=task).decision == "rejected"
    assert not errors, errors
    page.close()


def test_after_a_saved_decision_the_focus_leaves_the_form_as_before(
    browser, live_server, sample_files, django_user_model
):
    user, project = pathologist_project(django_user_model, "Focus 200", Modality.DERMATOLOGY)
    task = drafted(project, sample_files["photo"], "Compound naevus.")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    _log_in(page, live_server.url, "paul", "secret-pw-1")
    page.goto(live_server.url + reverse("task-detail", args=[task.pk]))
    page.keyboard.press("a")
    page.wait_for_selector("text=Saved: Accepted")
    assert page.evaluate(FOCUSED_ID) not in ("conflict", "decision-errors", "id_text")
    assert page.locator("#conflict, #decision-errors").count() == 0
    page.close()
