"""The review flow in a real browser (Debian's Chromium driven by Playwright): keyboard
decisions swap in through htmx under the strict CSP, without a page reload."""

import os
import re
import shutil
from pathlib import Path

import pytest
from django.core.cache import cache
from django.urls import reverse

from annotations import health, sentinels, services
from annotations.models import Draft, Label, Modality, Role, Task, TaskState
from imaging import samples
from tests.factories import make_drafted_task, make_task, record_draft

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


def pathologist_project(user_model, name: str, modality: str):
    """Paul (password secret-pw-1), the pathologist of a new project named `name`."""
    user = user_model.objects.create_user("paul", password="secret-pw-1")
    project = services.project_create(
        name=name, modality=modality, members=[(user, Role.PATHOLOGIST)]
    )
    return user, project


def drafted(project, path, text):
    result = services.image_ingest(
        project=project, source=path, original_name=path.name, enqueue=False
    )
    return record_draft(result.task, text=text)


def test_a_pathologist_reviews_with_the_keyboard(
    browser, live_server, sample_files, django_user_model, settings
):
    user, project = pathologist_project(django_user_model, "Browser", Modality.DERMATOLOGY)
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


def test_a_pathologist_works_through_the_claimed_queue_without_reloads(
    browser, live_server, sample_files, django_user_model
):
    user, project = pathologist_project(django_user_model, "Queue", Modality.DERMATOLOGY)
    tasks = [
        drafted(project, sample_files["photo"], "Compound naevus."),
        drafted(project, sample_files["photo2"], "Seborrhoeic keratosis."),
        drafted(project, sample_files["slide"], "Invasive ductal carcinoma."),
    ]
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(live_server.url + reverse("login"))
    page.fill("#id_username", "paul")
    page.fill("#id_password", "secret-pw-1")
    page.click("button[type=submit]")
    page.goto(live_server.url + reverse("project-detail", args=[project.pk]))
    page.click("#start-reviewing")
    page.wait_for_url(f"**{reverse('task-detail', args=[tasks[0].pk])}")
    page.wait_for_function("() => window.medannotViewer && window.medannotViewer.isOpen()")
    assert page.inner_text("#queue-position") == "Task 1 of 3"
    page.evaluate("window.__marker = 1")

    page.keyboard.press("a")  # accept: the next claimed task is swapped in
    page.wait_for_selector(f'#review-area[data-task="{tasks[1].pk}"]')
    page.wait_for_url(f"**{reverse('task-detail', args=[tasks[1].pk])}")
    assert page.evaluate("window.__marker") == 1  # no reload
    assert Label.objects.get(task=tasks[0]).decision == "accepted"
    assert page.inner_text("#queue-position") == "Task 2 of 3"
    assert page.get_attribute("#my-progress", "value") == "1"
    assert f"Task {tasks[1].pk} " in page.title()
    # A viewer for the new task, from its own image.
    page.wait_for_function(
        "(id) => window.medannotViewer.isOpen() && document.querySelector('#viewer canvas')"
        " && document.querySelector('#review-area').dataset.task === String(id)",
        arg=tasks[1].pk,
    )
    violations = run_axe(page)
    assert not violations, violations

    page.keyboard.press("e")  # edit: the text has the focus
    assert page.evaluate("document.activeElement.id") == "id_text"
    page.keyboard.press("Escape")  # leave it: keys are commands again
    assert page.evaluate("document.activeElement.id") != "id_text"
    page.keyboard.press("?")  # the shortcuts
    assert page.evaluate("document.getElementById('shortcuts').open") is True
    page.keyboard.press("e")
    page.keyboard.press("Control+a")
    page.keyboard.type("Seborrhoeic keratosis, irritated.")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(f'#review-area[data-task="{tasks[2].pk}"]')
    assert page.evaluate("window.__marker") == 1
    assert page.get_attribute("#my-progress", "value") == "2"
    assert page.evaluate("document.activeElement.id") != "id_text"  # n is a key, not text
    label = Label.objects.get(task=tasks[1])
    assert (label.decision, label.text) == ("edited", "Seborrhoeic keratosis, irritated.")

    page.keyboard.press("r")  # reject: the reason has the focus
    assert page.evaluate("document.activeElement.id") == "id_reason"
    page.keyboard.type("The slide is not this patient's.")
    if page.locator("#id_category").count():
        page.select_option("#id_category", index=1)
        page.focus("#id_reason")
    page.keyboard.press("Control+Enter")  # the end of the queue
    page.wait_for_url(f"**{reverse('review-done', args=[project.pk])}?undo=*")
    summary = " ".join(page.inner_text("#queue-summary").split())
    assert summary == (
        "Queue finished: you decided 3 tasks (1 accepted, 1 edited, 1 rejected). "
        "Nothing else is waiting for you."
    )
    assert Label.objects.get(task=tasks[2]).decision == "rejected"
    assert not problems, problems
    page.close()


def test_u_undoes_the_last_decision_without_a_reload(
    browser, live_server, sample_files, django_user_model
):
    user, project = pathologist_project(django_user_model, "Undo", Modality.DERMATOLOGY)
    first = drafted(project, sample_files["photo"], "Compound naevus.")
    second = drafted(project, sample_files["photo2"], "Seborrhoeic keratosis.")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(live_server.url + reverse("login"))
    page.fill("#id_username", "paul")
    page.fill("#id_password", "secret-pw-1")
    page.click("button[type=submit]")
    page.goto(live_server.url + reverse("project-detail", args=[project.pk]))
    page.click("#start-reviewing")
    page.wait_for_url(f"**{reverse('task-detail', args=[first.pk])}")
    page.evaluate("window.__marker = 1")
    page.keyboard.press("a")
    page.wait_for_selector(f'#review-area[data-task="{second.pk}"]')
    page.wait_for_selector("#undo")
    page.keyboard.press("u")  # the accepted task comes back, undecided
    page.wait_for_selector(f'#review-area[data-task="{first.pk}"]')
    page.wait_for_url(f"**{reverse('task-detail', args=[first.pk])}")
    assert page.evaluate("window.__marker") == 1  # no reload
    assert not Label.objects.filter(task=first).exists()
    assert page.locator("#undo").count() == 0  # one decision, undone once
    page.keyboard.press("a")  # decided again, in the queue
    page.wait_for_selector(f'#review-area[data-task="{second.pk}"]')
    assert Label.objects.get(task=first).decision == "accepted"
    assert not problems, problems
    page.close()


def test_errors_are_shown_and_nothing_typed_is_lost(
    browser, live_server, sample_files, django_user_model
):
    user, project = pathologist_project(django_user_model, "Browser", Modality.DERMATOLOGY)
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


AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
TILE_LEVEL = re.compile(r"_files/(\d+)/")
MODEL_REGIONS = [
    dict(
        x=256, y=256, width=512, height=512, level=0, read_size=512, size=512, mpp=0.25, tissue=0.9
    ),
    dict(
        x=1280, y=768, width=512, height=512, level=0, read_size=512, size=512, mpp=0.25, tissue=0.8
    ),
]


WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


def run_axe(page) -> list[dict]:
    """axe-core's WCAG 2.1 A/AA violations on the page. The source runs as the body of a
    function Playwright evaluates, which the page's CSP does not govern (an added script
    tag would be refused)."""
    source = AXE.read_text(encoding="utf-8")
    page.evaluate("() => {\n" + source + "\n; window.axe = axe; }")
    result = page.evaluate(
        """(tags) => axe.run(document, {runOnly: {type: 'tag', values: tags}}).then(r => ({
            passes: r.passes.length,
            violations: r.violations.map(v => ({
                id: v.id, help: v.help, nodes: v.nodes.slice(0, 5).map(n => n.target.join(' '))
            })),
        }))""",
        WCAG_21_AA,
    )
    assert result["passes"] > 5, result  # axe ran its rules
    return result["violations"]


def centre(page, selector) -> tuple[float, float]:
    box = page.locator(selector).bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def test_the_slide_viewer_zooms_shows_the_models_patches_and_takes_region_pointers(
    browser, live_server, django_user_model, tmp_path
):
    user, project = pathologist_project(django_user_model, "Slides", Modality.PATHOLOGY)
    path = samples.write_synthetic_slide(tmp_path / "big.tiff", width=2048, height=1536, seed=7)
    task = drafted(project, path, "Invasive ductal carcinoma.")
    Draft.objects.filter(task=task).update(regions=MODEL_REGIONS)

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems, errors, tiles, decides = [], [], [], []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def seen(request):
        if m := TILE_LEVEL.search(request.url):
            tiles.append(int(m.group(1)))
        if "/decide/" in request.url:
            decides.append(request.url)

    page.on("request", seen)
    page.goto(live_server.url + reverse("login"))
    page.fill("#id_username", "paul")
    page.fill("#id_password", "secret-pw-1")
    page.click("button[type=submit]")
    page.goto(live_server.url + reverse("task-detail", args=[task.pk]))
    page.wait_for_function(
        "() => { const v = window.medannotViewer; return v && v.world.getItemCount() > 0"
        " && v.world.getItemAt(0).getFullyLoaded(); }"
    )
    assert tiles, "the viewer loaded no Deep Zoom tiles"
    first_levels = max(tiles)
    zoom = "() => window.medannotViewer.viewport.getZoom()"
    home = page.evaluate(zoom)

    # The model's patches: outlined, m hides and shows them, a click flies to one.
    overlays = page.locator(".model-region")
    assert overlays.count() == 2 and overlays.first.is_visible()
    page.focus("#viewer-canvas")
    page.keyboard.press("m")
    assert overlays.first.is_hidden() and overlays.nth(1).is_hidden()
    page.keyboard.press("m")
    assert overlays.first.is_visible()
    overlays.first.click()
    page.wait_for_function(f"() => ({zoom})() > {home} * 1.3")
    page.keyboard.press("0")  # back to the whole slide
    page.wait_for_function(f"() => Math.abs(({zoom})() - {home}) < {home} * 0.01")

    # Keyboard zoom in the viewer asks for more detailed tiles; the viewer's keys (a pans
    # left there) never reach the review shortcuts (a would accept).
    page.focus("#viewer-canvas")
    page.keyboard.down("+")  # OpenSeadragon zooms while the key is held
    page.wait_for_function(f"() => ({zoom})() > {home} * 3")
    page.keyboard.up("+")
    page.keyboard.press("a")
    page.wait_for_function("() => window.medannotViewer.world.getItemAt(0).getFullyLoaded()")
    assert max(tiles) > first_levels, (first_levels, sorted(set(tiles)))
    assert not decides and not Label.objects.exists()
    assert page.locator(".scalebar-text").inner_text().endswith("µm")

    # Keys typed into a field stay there: the viewer does not zoom.
    before = page.evaluate(zoom)
    page.click("#id_text")
    page.keyboard.press("End")
    page.keyboard.type(" +-0wm")
    assert page.input_value("#id_text").endswith(" +-0wm")
    assert page.evaluate(zoom) == before
    assert "hide-model-regions" not in (page.get_attribute("#viewer", "class") or "")
    page.keyboard.press("0")  # still typed, not handled
    page.fill("#id_text", "Invasive ductal carcinoma.")

    # Draw a rectangle and a polygon, with notes, and save them with the decision.
    page.focus("#viewer-canvas")
    page.keyboard.press("0")
    page.wait_for_function(f"() => Math.abs(({zoom})() - {home}) < {home} * 0.01")
    page.click("#draw-rectangle")
    cx, cy = centre(page, "#viewer-canvas")  # after the click: the page may have scrolled
    page.mouse.move(cx - 150, cy - 100)
    page.mouse.down()
    page.mouse.move(cx - 20, cy, steps=6)
    page.mouse.up()
    page.wait_for_selector("#pointer-note-1")
    assert page.evaluate("document.activeElement.id") == "pointer-note-1"
    page.keyboard.type("missed finding here")  # a, e, r, n typed here decide nothing
    page.click("#draw-polygon")
    cx, cy = centre(page, "#viewer-canvas")
    for dx, dy in [(40, 40), (160, 60), (100, 160)]:
        page.mouse.click(cx + dx, cy + dy)
    page.keyboard.press("Enter")
    page.fill("#pointer-note-2", "this is not tumour")
    assert page.locator(".pointer").count() == 2
    page.click("#accept")
    page.wait_for_selector("text=Saved: Accepted")
    label = Label.objects.get(task=task)
    assert label.decision == "accepted"
    kinds_notes = [(f["properties"]["kind"], f["properties"]["note"]) for f in label.regions]
    assert kinds_notes == [("rectangle", "missed finding here"), ("polygon", "this is not tumour")]
    rect = label.regions[0]["geometry"]["coordinates"][0]
    assert len(rect) == 5 and rect[0] == rect[-1]
    assert all(0 <= x <= 2048 and 0 <= y <= 1536 for x, y in rect)
    assert len(label.regions[1]["geometry"]["coordinates"][0]) == 4

    # Reopened, the pointers come back: drawn on the slide and listed as text.
    page.reload()
    page.wait_for_selector("#pointer-note-2")
    assert page.input_value("#pointer-note-1") == "missed finding here"
    page.wait_for_function("() => document.querySelectorAll('.pointer').length === 2")

    if shots := os.environ.get("MEDANNOT_SCREENSHOTS"):  # for a person to look at
        page.screenshot(path=f"{shots}/viewer.png")
    violations = run_axe(page)
    assert not violations, violations
    csp = [p for p in problems if "Content Security Policy" in p or "Refused" in p]
    assert not csp, csp
    assert not errors, errors
    page.close()


def test_without_tiles_the_viewer_shows_the_preview_and_goes_full_page(
    browser, live_server, sample_files, django_user_model
):
    user, project = pathologist_project(django_user_model, "Slides", Modality.PATHOLOGY)
    task = drafted(project, sample_files["slide"], "Invasive ductal carcinoma.")
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    csp = []
    page.on("console", lambda m: csp.append(m.text) if "Content Security" in m.text else None)
    page.route("**/*.dzi*", lambda route: route.fulfill(status=503, body="tiles unavailable"))
    page.goto(live_server.url + reverse("login"))
    page.fill("#id_username", "paul")
    page.fill("#id_password", "secret-pw-1")
    page.click("button[type=submit]")
    page.goto(live_server.url + reverse("task-detail", args=[task.pk]))
    page.wait_for_function(
        "() => { const v = window.medannotViewer; return v && v.world.getItemCount() > 0"
        " && v.world.getItemAt(0).getFullyLoaded(); }"
    )
    source = page.evaluate("window.medannotViewer.world.getItemAt(0).source.url || ''")
    assert source.endswith(reverse("task-preview", args=[task.pk]))
    page.click("[title='Toggle full page']")
    page.wait_for_function("() => window.medannotViewer.isFullPage()")
    page.keyboard.press("Escape")  # OpenSeadragon leaves full page on Esc... or the button does
    if page.evaluate("window.medannotViewer.isFullPage()"):
        page.click("[title='Toggle full page']")
    page.wait_for_function("() => !window.medannotViewer.isFullPage()")
    assert not csp, csp
    page.close()


# Every page a user sees, as the persona who sees it, checked by axe-core (WCAG 2.1 A and AA)
# and for the keyboard basics: each visible form control has a name, focus has a style.

UNLABELLED_CONTROLS = """() => [...document.querySelectorAll('input, select, textarea, button')]
    .filter(el => el.type !== 'hidden' && el.getClientRects().length > 0)
    .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
        && !el.getAttribute('aria-labelledby')
        && !(el.tagName === 'BUTTON' && el.textContent.trim()))
    .map(el => el.outerHTML.slice(0, 120))"""


class Visit:
    """One page visit: the persona's browser page, the personas and the sample files."""

    def __init__(self, page, url, people, sample_files, tmp_path):
        self.page, self.url, self.people = page, url, people
        self.samples, self.tmp_path = sample_files, tmp_path

    def login(self, username: str) -> None:
        self.page.goto(self.url + reverse("login"))
        self.page.fill("#id_username", username)
        self.page.fill("#id_password", "password")
        self.page.click("button[type=submit]")
        self.page.wait_for_url(lambda url: "/login/" not in url)

    def go(self, name: str, *args, status: int = 200) -> None:
        response = self.page.goto(self.url + reverse(name, args=args))
        assert response.status == status, (name, args, response.status)

    def drafted_photo(self):
        return drafted(self.people.project, self.samples["photo"], "Compound naevus.")


def _login(v):
    v.go("login")


def _login_failed(v):
    v.go("login")
    v.page.fill("#id_username", "paul")
    v.page.fill("#id_password", "wrong-password")
    v.page.click("button[type=submit]")
    v.page.wait_for_selector(".error")


def _project_list(v):
    v.login("alice")
    v.go("project-list")


def _project_list_empty(v):
    v.login("oscar")
    v.go("project-list")


def _project(v):
    project = v.people.project
    make_drafted_task(project)
    failed = make_task(project, state=TaskState.QUEUED)
    claimed = services.task_claim(task_id=failed.pk)
    services.draft_fail(task_id=failed.pk, attempt=claimed.attempt, error="CUDA out of memory")
    make_task(project, state=TaskState.QUEUED)  # polling, and no gpu worker: a warning
    cache.set(health._WORKERS_KEY, [])  # whatever other tests left there
    edited = make_drafted_task(project)
    services.label_record(
        task_id=edited.pk,
        reviewer=v.people.pathologist,
        decision="edited",
        draft_id=edited.latest_draft().pk,
        text="Benign.",
    )
    accepted = make_drafted_task(project)
    services.label_record(
        task_id=accepted.pk,
        reviewer=v.people.pathologist,
        decision="accepted",
        draft_id=accepted.latest_draft().pk,
    )
    v.login("alice")
    v.go("project-detail", project.pk)
    v.page.wait_for_selector("#project-status .warning")
    with v.page.expect_response(
        lambda r: "project" in r.url and r.request.headers.get("hx-request")
    ):
        pass  # one poll swapped in: the page as it stays
    v.page.wait_for_selector("#tasks")
    status = v.page.text_content("#tasks-status")  # the live region outside the polled part
    assert "1 failed" in status and "No drafting worker is running." in status, status


def _project_as_pathologist(v):
    make_drafted_task(v.people.project)
    v.login("paul")
    v.go("project-detail", v.people.project.pk)


def _upload(v):
    v.login("rita")
    v.go("project-upload", v.people.project.pk)


def _upload_results(v):
    bad = v.tmp_path / "notes.jpg"
    bad.write_bytes(b"this is not a picture")
    v.login("rita")
    v.go("project-upload", v.people.project.pk)
    v.page.set_input_files("#id_files", [v.samples["photo"], bad])
    v.page.click("button[type=submit].primary")
    v.page.wait_for_selector("#upload-results")
    assert "1 file kept, 1 rejected" in v.page.inner_text("#upload-results")


def _settings_invalid(v):
    v.login("alice")
    v.go("project-settings", v.people.project.pk)
    v.page.eval_on_selector("main form", "f => { f.noValidate = true; }")
    v.page.fill("#id_instruction", "")
    v.page.click("main button[type=submit].primary")
    v.page.wait_for_selector(".errorlist")


def _review_photo(v):
    task = v.drafted_photo()
    v.login("paul")
    v.go("task-detail", task.pk)


def _review_slide(v):
    project = services.project_create(
        name="Slides",
        modality=Modality.PATHOLOGY,
        members=[(v.people.pathologist, Role.PATHOLOGIST)],
    )
    task = drafted(project, v.samples["slide"], "Invasive ductal carcinoma.")
    Draft.objects.filter(task=task).update(regions=MODEL_REGIONS)
    v.login("paul")
    v.go("task-detail", task.pk)
    v.page.wait_for_function(
        "() => { const v = window.medannotViewer; return v && v.world.getItemCount() > 0"
        " && v.world.getItemAt(0).getFullyLoaded(); }"
    )


def _review_saved(v):
    task = v.drafted_photo()
    services.label_record(
        task_id=task.pk,
        reviewer=v.people.pathologist,
        decision="edited",
        draft_id=task.latest_draft().pk,
        text="Compound naevus, irritated.",
    )
    v.login("paul")
    v.go("task-detail", task.pk)


def _review_failed(v):
    result = services.image_ingest(
        project=v.people.project,
        source=v.samples["photo2"],
        original_name="lesion-2.png",
        enqueue=False,
    )
    services.task_transition(task_id=result.task.pk, to=TaskState.QUEUED)
    claimed = services.task_claim(task_id=result.task.pk)
    services.draft_fail(task_id=claimed.pk, attempt=claimed.attempt, error="model not loaded")
    v.login("alice")
    v.go("task-detail", claimed.pk)


def _review_422(v):
    task = v.drafted_photo()
    v.login("paul")
    v.go("task-detail", task.pk)
    v.page.click("#reject")  # no reason: the 422 answer is swapped in
    v.page.wait_for_selector("text=Say why the draft is rejected.")


def _review_409(v):
    task = v.drafted_photo()
    v.login("paul")
    v.go("task-detail", task.pk)
    services.task_redraft(task_id=task.pk, actor=v.people.admin)
    record_draft(Task.objects.get(pk=task.pk), text="Dysplastic naevus.")  # a newer draft
    with v.page.expect_response(lambda r: "/decide/" in r.url) as answer:
        v.page.click("#accept")
    assert answer.value.status == 409
    v.page.wait_for_selector("#conflict, #decision .errorlist")  # the 409 answer, swapped in


def _sentinels(v):
    task = v.drafted_photo()
    sentinel = sentinels.sentinel_create(
        project=v.people.project,
        task=task,
        text="Melanoma in situ.",
        expected="reject",
        note="the diagnosis was changed",
    )
    sentinels.sentinel_reading_record(
        sentinel=sentinel, reviewer=v.people.pathologist, decision="accepted"
    )
    v.login("alice")
    v.go("project-sentinels", v.people.project.pk)


def _forbidden(v):
    v.login("paul")  # a pathologist opens the settings
    v.go("project-settings", v.people.project.pk, status=403)


def _not_found(v):
    task = make_drafted_task(v.people.project)
    v.login("oscar")  # an outsider opens a task
    v.go("task-detail", task.pk, status=404)


PAGES = {
    "login": _login,
    "login-failed": _login_failed,
    "project-list": _project_list,
    "project-list-empty": _project_list_empty,
    "project": _project,
    "project-pathologist": _project_as_pathologist,
    "upload": _upload,
    "upload-results": _upload_results,
    "settings-invalid": _settings_invalid,
    "review-photo": _review_photo,
    "review-slide": _review_slide,
    "review-saved": _review_saved,
    "review-failed": _review_failed,
    "review-422": _review_422,
    "review-409": _review_409,
    "sentinels": _sentinels,
    "403": _forbidden,
    "404": _not_found,
}


@pytest.mark.parametrize("visit", PAGES.values(), ids=PAGES.keys())
def test_every_page_meets_wcag_21_aa(browser, live_server, people, sample_files, tmp_path, visit):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    csp = []
    page.on("console", lambda m: csp.append(m.text) if "Content Security" in m.text else None)
    visit(Visit(page, live_server.url, people, sample_files, tmp_path))
    violations = run_axe(page)
    assert not violations, "\n".join(
        f"{v['id']}: {v['help']} at {', '.join(v['nodes'])}" for v in violations
    )
    assert not page.evaluate(UNLABELLED_CONTROLS)
    page.focus("#main")  # the skip link's target; then the keyboard reaches a control there
    page.keyboard.press("Tab")  # ... whose focus shows
    focused = page.evaluate(
        "() => { const el = document.activeElement, s = getComputedStyle(el);"
        " return [el.tagName, s.outlineStyle, parseFloat(s.outlineWidth)]; }"
    )
    assert focused[0] != "BODY" and focused[1] != "none" and focused[2] >= 2, focused
    assert page.title().endswith("· MedAnnot") and page.evaluate("document.documentElement.lang")
    assert page.locator("main").count() == 1 and page.locator("h1").count() == 1
    assert not csp, csp
    page.close()


def test_focus_stays_visible_in_the_stylesheet():
    css = (Path(__file__).resolve().parent.parent / "static" / "css" / "app.css").read_text()
    assert re.search(r":focus-visible\s*[,{]", css)
    assert "@media (forced-colors: active)" in css


# Stale pages: the Back button and a second tab never overwrite a saved decision (the server
# side is tested in test_conflicts.py).


def _log_in(page, url, username, password):
    page.goto(url + reverse("login"))
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda u: "/login/" not in u)


def test_back_after_a_decision_never_overwrites_it(
    browser, live_server, sample_files, django_user_model
):
    user, project = pathologist_project(django_user_model, "Back", Modality.DERMATOLOGY)
    first = drafted(project, sample_files["photo"], "Compound naevus.")
    second = drafted(project, sample_files["photo2"], "Seborrhoeic keratosis.")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    _log_in(page, live_server.url, "paul", "secret-pw-1")
    page.goto(live_server.url + reverse("project-detail", args=[project.pk]))
    page.click("#start-reviewing")
    page.wait_for_url(f"**{reverse('task-detail', args=[first.pk])}")
    page.keyboard.press("a")  # accept: the next task is swapped in, the address pushed
    page.wait_for_selector(f'#review-area[data-task="{second.pk}"]')
    saved = Label.objects.get(task=first)
    assert saved.decision == "accepted"

    page.go_back()
    page.wait_for_url(f"**{reverse('task-detail', args=[first.pk])}")
    page.wait_for_selector(f'#review-area[data-task="{first.pk}"] #decision')
    # htmx restores the page from its history cache, as it was before the decision: the
    # decision form there is stale (no request, so no-store and pageshow do not apply).
    assert "Saved:" not in page.inner_text("#decision")
    page.fill("#id_text", "Compound naevus, edited after Back.")
    with page.expect_response(lambda r: "/decide/" in r.url) as answer:
        page.click("#save-edit")
    assert answer.value.status == 409  # refused: it would overwrite the saved accept unseen
    conflict = " ".join(page.inner_text("#conflict").split())
    assert conflict.startswith("Not saved. You decided this task again elsewhere"), conflict
    assert "Saved now: Accepted: “Compound naevus.”" in conflict, conflict
    assert "Saved: Accepted by you" in page.inner_text("#decision")
    assert page.input_value("#id_text") == "Compound naevus, edited after Back."  # kept
    label = Label.objects.get(task=first)
    assert (label.pk, label.decision, label.text, label.revision) == (
        saved.pk,
        "accepted",
        "Compound naevus.",
        1,
    )
    assert not Label.objects.filter(task=second).exists()
    assert not errors, errors
    page.close()


def test_a_second_tab_gets_a_conflict_not_an_overwrite(
    browser, live_server, sample_files, django_user_model
):
    user, project = pathologist_project(django_user_model, "Tabs", Modality.DERMATOLOGY)
    task = drafted(project, sample_files["photo"], "Compound naevus.")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    one, two = context.new_page(), context.new_page()  # one session, two tabs
    _log_in(one, live_server.url, "paul", "secret-pw-1")
    url = live_server.url + reverse("task-detail", args=[task.pk])
    one.goto(url)
    two.goto(url)

    one.click("#accept")
    one.wait_for_selector("text=Saved: Accepted")
    two.fill("#id_text", "Junctional naevus, typed in tab two.")
    with two.expect_response(lambda r: "/decide/" in r.url) as answer:
        two.click("#save-edit")
    assert answer.value.status == 409
    conflict = " ".join(two.inner_text("#conflict").split())
    assert conflict.startswith("Not saved. You decided this task again elsewhere"), conflict
    assert "Saved now: Accepted: “Compound naevus.”" in conflict, conflict
    assert two.input_value("#id_text") == "Junctional naevus, typed in tab two."  # kept
    label = Label.objects.get(task=task)
    assert (label.decision, label.text, label.revision) == ("accepted", "Compound naevus.", 1)
    context.close()
