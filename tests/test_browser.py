"""The review flow in a real browser (Debian's Chromium driven by Playwright): keyboard
decisions swap in through htmx under the strict CSP, without a page reload."""

import os
import shutil

import pytest
from django.urls import reverse

from annotations import services
from annotations.models import Label, Modality, Role
from tests.factories import record_draft

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]


@pytest.fixture(scope="module")
def browser():
    # Playwright's sync API runs an event loop in this thread; the ORM calls of the test
    # itself stay synchronous (Playwright's documented setting for Django tests).
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()
    del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


def drafted(project, path, text):
    result = services.image_ingest(
        project=project, source=path, original_name=path.name, enqueue=False
    )
    return record_draft(result.task, text=text)


def test_a_pathologist_reviews_with_the_keyboard(
    browser, live_server, sample_files, django_user_model, settings
):
    user = django_user_model.objects.create_user("paul", password="secret-pw-1")
    project = services.project_create(
        name="Browser", modality=Modality.DERMATOLOGY, members=[(user, Role.PATHOLOGIST)]
    )
    first = drafted(project, sample_files["photo"], "Compound naevus.")
    second = drafted(project, sample_files["photo2"], "Seborrhoeic keratosis.")

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(live_server.url + reverse("login"))
    page.fill("#id_username", "paul")
    page.fill("#id_password", "secret-pw-1")
    page.click("button[type=submit]")
    page.goto(live_server.url + reverse("task-detail", args=[first.pk]))
    assert page.locator(".ai-badge").inner_text().startswith("AI-generated draft")

    if shots := os.environ.get("MEDANNOT_SCREENSHOTS"):  # for a person to look at
        page.screenshot(path=f"{shots}/review.png", full_page=True)
        page.goto(live_server.url + reverse("project-detail", args=[project.pk]))
        page.screenshot(path=f"{shots}/project.png", full_page=True)
        page.goto(live_server.url + reverse("task-detail", args=[first.pk]))
    page.evaluate("window.notReloaded = true")
    page.keyboard.press("a")  # accept
    page.wait_for_selector("text=Saved: Accepted")
    assert page.evaluate("window.notReloaded") is True  # swapped in by htmx, no reload
    assert Label.objects.get(task=first).decision == "accepted"

    page.keyboard.press("n")  # next task
    page.wait_for_url(f"**{reverse('task-detail', args=[second.pk])}")
    page.keyboard.press("e")  # edit: focus the text
    page.keyboard.press("Control+a")
    page.keyboard.type("Seborrhoeic keratosis, irritated.")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("text=Saved: Edited")
    label = Label.objects.get(task=second)
    assert (label.decision, label.text) == ("edited", "Seborrhoeic keratosis, irritated.")
    assert not [p for p in problems if "Content Security Policy" in p or "Refused" in p], problems
    page.close()


def test_errors_are_shown_and_nothing_typed_is_lost(
    browser, live_server, sample_files, django_user_model
):
    user = django_user_model.objects.create_user("paul", password="secret-pw-1")
    project = services.project_create(
        name="Browser", modality=Modality.DERMATOLOGY, members=[(user, Role.PATHOLOGIST)]
    )
    task = drafted(project, sample_files["photo"], "Compound naevus.")
    page = browser.new_page()
    page.goto(live_server.url + reverse("login"))
    page.fill("#id_username", "paul")
    page.fill("#id_password", "secret-pw-1")
    page.click("button[type=submit]")
    page.goto(live_server.url + reverse("task-detail", args=[task.pk]))

    page.click("#reject")  # no reason given: the 422 answer is shown, not dropped
    page.wait_for_selector("text=Say why the draft is rejected.")
    assert not Label.objects.exists()

    page.fill("#id_text", "Junctional naevus.")
    page.context.set_offline(True)  # the network drops
    page.click("#save-edit")
    page.wait_for_selector("#connection-problem:not([hidden])")
    assert page.input_value("#id_text") == "Junctional naevus."
    page.context.set_offline(False)
    page.click("#save-edit")
    page.wait_for_selector("text=Saved: Edited")
    assert page.is_hidden("#connection-problem")
    assert Label.objects.get(task=task).text == "Junctional naevus."
    page.close()
