"""The next task rendered ahead, in a real browser: while the reviewer reads a task, the
page asks for the next one (htmx, on load, under the CSP); the decision then answers with
it, and its form counts time on task from when it was shown."""

import time

import pytest
from django.urls import reverse

from annotations.models import Claim, Label, Modality
from tests.test_browser import CHROMIUM, _log_in, drafted, pathologist_project
from tests.test_browser import browser as browser  # the module's Chromium, a fixture

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]


def wait_until(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_next_task_is_claimed_while_reading_and_sent_with_the_decision(
    browser, live_server, sample_files, django_user_model
):
    user, project = pathologist_project(django_user_model, "Ahead", Modality.DERMATOLOGY)
    first = drafted(project, sample_files["photo"], "Compound naevus.")
    second = drafted(project, sample_files["photo2"], "Seborrhoeic keratosis.")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: problems.append(r.url) if r.status >= 400 else None)
    # A CSP refusal is a console error: htmx settling `style` (set by the viewer) was one.
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    _log_in(page, live_server.url, "paul", "secret-pw-1")
    page.goto(live_server.url + reverse("project-detail", args=[project.pk]))
    page.click("#start-reviewing")
    page.wait_for_url(f"**{reverse('task-detail', args=[first.pk])}")
    # While the first task is read, the second is claimed for this reader.
    wait_until(lambda: Claim.objects.filter(task=second, reviewer=user).exists())
    page.evaluate("window.__marker = 1")
    with page.expect_response(lambda r: "/decide/" in r.url) as answer:
        page.keyboard.press("a")
    assert answer.value.status == 200
    page.wait_for_selector(f'#review-area[data-task="{second.pk}"]')
    page.wait_for_url(f"**{reverse('task-detail', args=[second.pk])}")
    assert page.evaluate("() => window.__marker") == 1  # swapped in, no reload
    assert "Task 2 of 2" in page.inner_text("#queue-position")
    assert page.locator("#undo").count() == 1
    page.wait_for_timeout(300)
    page.keyboard.press("a")
    page.wait_for_url(f"**{reverse('review-done', args=[project.pk])}?undo=*")
    label = Label.objects.get(task=second)
    assert label.decision == "accepted" and 250 <= label.time_on_task_ms < 60_000
    assert not problems, problems
    page.close()
