"""The signature prompt in a real browser: a decision that starts a sitting swaps in the
password field with the focus in it, Enter signs the decision chosen, and the page meets
WCAG 2.1 AA; the adjudication page asks and signs the same way."""

import pytest
from django.urls import reverse

from annotations import services, signatures
from annotations.models import Adjudication, AuditEvent, Label, Modality, Role
from tests.test_browser import CHROMIUM, _log_in, drafted, pathologist_project, run_axe
from tests.test_browser import browser as browser  # the module's Chromium, a fixture

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]


def _focus_settles_on(page, element_id: str) -> None:
    """The focus moves once htmx settles a swap, a moment after the new element is there:
    wait for it (up to 5 s), so that the assertion that follows is not a race."""
    page.wait_for_function(
        f"() => document.activeElement && document.activeElement.id === {element_id!r}",
        timeout=5000,
    )


def test_the_password_prompt_takes_the_focus_and_enter_signs(
    browser, live_server, sample_files, django_user_model
):
    user, project = pathologist_project(django_user_model, "Signed", Modality.DERMATOLOGY)
    user.first_name, user.last_name = "Paul", "Brun"
    user.save()
    signatures.project_signature_settings_set(
        project=project, required=True, sitting_minutes=30, actor=None
    )
    first = drafted(project, sample_files["photo"], "Compound naevus.")
    drafted(project, sample_files["photo2"], "Seborrhoeic keratosis.")

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    _log_in(page, live_server.url, "paul", "secret-pw-1")
    page.goto(live_server.url + reverse("task-detail", args=[first.pk]))
    assert signatures.MEANING in page.locator("#signature-meaning").inner_text()

    # Accept without the password: the prompt comes back, focused, with Accept its default.
    page.click("#accept")
    page.wait_for_selector("#sign")
    _focus_settles_on(page, "id_password")  # moved after htmx settles the swap
    assert page.evaluate("document.activeElement.id") == "id_password"
    assert "Sign and save: accept" in page.locator("#sign").inner_text()
    assert not Label.objects.filter(task=first).exists()
    assert run_axe(page) == []

    # A wrong password: refused, said, and the focus stays in the field.
    page.keyboard.type("not-it")
    page.keyboard.press("Enter")
    page.locator("#signature-error", has_text="not right").wait_for()
    _focus_settles_on(page, "id_password")
    assert page.evaluate("document.activeElement.id") == "id_password"
    assert AuditEvent.objects.filter(action="signature.refused").count() == 1
    assert run_axe(page) == []

    page.keyboard.type("secret-pw-1")
    page.keyboard.press("Enter")
    page.wait_for_selector("#signature-note")  # the next task: the sitting runs
    label = Label.objects.get(task=first)
    assert (label.decision, label.signed_by_name) == ("accepted", "Paul Brun")
    assert page.locator("#id_password").count() == 0
    # The browser logs each 428 it was answered; nothing else went wrong.
    assert [p for p in problems if "status of 428" not in p] == []


def test_the_adjudication_page_asks_for_the_password_and_signs(
    browser, live_server, sample_files, django_user_model
):
    paul, project = pathologist_project(django_user_model, "Signed twice", Modality.DERMATOLOGY)
    rosa = django_user_model.objects.create_user("rosa", password="secret-pw-2")
    ada = django_user_model.objects.create_user(
        "ada", password="secret-pw-3", first_name="Ada", last_name="Lovelace"
    )
    services.membership_set(project=project, user=rosa, role=Role.PATHOLOGIST)
    services.membership_set(project=project, user=ada, role=Role.ADJUDICATOR)
    services.project_reading_settings_set(
        project=project, readings_per_task=2, disagreement_words=5
    )
    signatures.project_signature_settings_set(
        project=project, required=True, sitting_minutes=30, actor=None
    )
    task = drafted(project, sample_files["photo"], "Compound naevus.")
    for reader, decision, reason in ((paul, "accepted", ""), (rosa, "rejected", "Not a naevus.")):
        services.label_record(
            task_id=task.pk,
            reviewer=reader,
            decision=decision,
            draft_id=task.latest_draft().pk,
            reason=reason,
        )

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    _log_in(page, live_server.url, "ada", "secret-pw-3")
    page.goto(live_server.url + reverse("task-adjudicate", args=[task.pk]))
    assert signatures.ADJUDICATION_MEANING in page.locator("#signature-meaning").inner_text()
    assert run_axe(page) == []

    # Without the password: asked, nothing saved, the edit kept and the focus in the field.
    page.select_option("#id_decision", "edited")
    page.fill("#id_text", "Dysplastic naevus, mild atypia.")
    page.click("#adjudicate")
    page.locator("#signature-error").wait_for()
    _focus_settles_on(page, "id_password")
    assert page.evaluate("document.activeElement.id") == "id_password"
    assert page.input_value("#id_text") == "Dysplastic naevus, mild atypia."
    assert not Adjudication.objects.exists()
    assert run_axe(page) == []

    # A wrong password: refused and audited; then the right one signs.
    page.keyboard.type("not-it")
    page.keyboard.press("Enter")
    page.locator("#signature-error", has_text="not right").wait_for()
    assert AuditEvent.objects.filter(action="signature.refused", actor=ada).count() == 1
    assert page.input_value("#id_text") == "Dysplastic naevus, mild atypia."
    page.keyboard.type("secret-pw-3")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**{reverse('project-adjudication', args=[project.pk])}")
    adjudication = Adjudication.objects.get(task=task)
    assert (adjudication.decision, adjudication.signed_by_name) == ("edited", "Ada Lovelace")
    assert [p for p in problems if "status of 428" not in p] == []
