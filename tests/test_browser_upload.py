"""The upload page in a real browser: files go up through tus, each with its progress bar,
and the batch report is swapped in; the page passes axe-core under the strict CSP."""

import base64
import hashlib
import re
import zipfile

import pytest
from django.urls import reverse

from annotations.models import Image, Task, Upload, UploadBatch
from imaging import samples
from tests.test_browser import CHROMIUM, browser, run_axe  # noqa: F401 (the fixture)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]


def log_in(page, url: str, username: str) -> None:
    page.goto(url + reverse("login"))
    page.fill("#id_username", username)
    page.fill("#id_password", "password")
    page.click("button[type=submit]")
    page.wait_for_url(lambda u: "/login/" not in u)


def test_three_files_with_a_zip_go_up_and_the_report_appears(
    browser,  # noqa: F811
    live_server,
    people,
    sample_files,
    tmp_path,
):
    archive = tmp_path / "more-slides.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(sample_files["svs"], "inside/biopsy-2.svs")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    log_in(page, live_server.url, "rita")
    page.goto(live_server.url + reverse("project-upload", args=[people.project.pk]))
    assert page.is_visible("#upload-drop")  # JavaScript took the form over
    violations = run_axe(page)
    assert not violations, violations

    page.set_input_files("#id_files", [sample_files["slide"], sample_files["photo"], archive])
    page.click("button[type=submit].primary")
    page.wait_for_selector("#upload-report #upload-results", timeout=60_000)
    bars = page.eval_on_selector_all("#upload-files progress", "els => els.map(e => e.value)")
    assert bars == [100, 100, 100]
    assert page.get_attribute("#upload-batch-progress", "value") == "100"
    report = page.inner_text("#upload-results")
    assert "3 files kept" in report
    assert "lesion-1.jpg is a photo" in report  # a photo in this pathology project
    assert "Upload finished" in page.inner_text("#upload-status")
    assert Task.objects.filter(project=people.project).count() == 3
    assert UploadBatch.objects.get().finished_at is not None
    assert Upload.objects.filter(state="ingested").count() == 3
    violations = run_axe(page)
    assert not violations, violations
    assert not [p for p in problems if "Content Security Policy" in p or "Refused" in p], problems
    # The project page links the report; both pages pass axe too.
    page.goto(live_server.url + reverse("project-detail", args=[people.project.pk]))
    page.click("#recent-uploads a")
    page.wait_for_selector("#upload-results")
    assert "3 files kept" in page.inner_text("#upload-results")
    assert not run_axe(page)
    page.goto(live_server.url + reverse("project-detail", args=[people.project.pk]))
    assert not run_axe(page)
    page.close()


def test_a_dropped_connection_resumes_where_it_stopped(
    browser,  # noqa: F811
    live_server,
    people,
    sample_files,
    settings,
):
    settings.MEDANNOT_UPLOAD_CHUNK_BYTES = 64 * 1024
    page = browser.new_page()
    seen = []
    dropped = []

    def flaky(route, request):
        seen.append(request.method)
        if request.method == "PATCH" and seen.count("PATCH") == 3 and not dropped:
            dropped.append(request.headers.get("upload-offset"))
            route.abort("connectionreset")  # the third piece never arrives
        else:
            route.continue_()

    log_in(page, live_server.url, "rita")
    page.goto(live_server.url + reverse("project-upload", args=[people.project.pk]))
    page.route("**/uploads/tus/**", flaky)
    page.set_input_files("#id_files", [sample_files["slide"]])
    page.click("button[type=submit].primary")
    page.wait_for_selector("#upload-report #upload-results", timeout=60_000)
    assert dropped == [str(2 * 64 * 1024)]
    # After the drop the client asked how far the file got, then sent the rest.
    after = seen[seen.index("PATCH") + 3 :]
    assert after[0] == "HEAD" and "PATCH" in after
    assert "1 file kept" in page.inner_text("#upload-results")
    upload = Upload.objects.get()
    assert upload.offset == upload.length == sample_files["slide"].stat().st_size
    page.close()


def test_a_chosen_folder_keeps_a_mirax_slide_whole(
    browser,  # noqa: F811
    live_server,
    people,
    tmp_path,
):
    samples.write_mirax(tmp_path / "case-12", seed=3)
    page = browser.new_page()
    log_in(page, live_server.url, "rita")
    page.goto(live_server.url + reverse("project-upload", args=[people.project.pk]))
    page.set_input_files("#upload-folder", tmp_path / "case-12")
    page.click("button[type=submit].primary")
    page.wait_for_selector("#upload-report #upload-results", timeout=60_000)
    assert "1 file kept" in page.inner_text("#upload-results")
    assert Image.objects.get().format == "mrxs"
    paths = sorted(Upload.objects.values_list("relative_path", flat=True))
    assert paths[0] == "case-12/slide.mrxs" and all(p.startswith("case-12/") for p in paths)
    page.close()


def test_dropped_files_go_up_too(
    browser,  # noqa: F811
    live_server,
    people,
    sample_files,
):
    page = browser.new_page()
    log_in(page, live_server.url, "rita")
    page.goto(live_server.url + reverse("project-upload", args=[people.project.pk]))
    # A drop as the browser delivers one, with the files' bytes built in the page.
    page.evaluate(
        """([slide, name]) => {
            const bytes = Uint8Array.from(atob(slide), c => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], name, {type: "image/tiff"}));
            data.items.add(new File(["not a picture"], "<img src=x>.jpg", {type: "image/jpeg"}));
            const form = document.getElementById("upload-form");
            form.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
        }""",
        [base64.b64encode(sample_files["slide"].read_bytes()).decode(), "dropped.tiff"],
    )
    page.wait_for_function(
        "() => document.getElementById('upload-status').textContent.includes('2 files dropped')"
    )
    page.click("button[type=submit].primary")
    page.wait_for_selector("#upload-report #upload-results", timeout=60_000)
    report = page.inner_text("#upload-results")
    assert "1 file kept, 1 rejected" in report
    assert "<img src=x>.jpg" in report  # shown as text, not markup
    assert page.locator("#upload-files label", has_text="<img src=x>.jpg").count() == 1
    assert page.locator("#upload-files img, #upload-results img").count() == 0
    assert Image.objects.get().original_name == "dropped.tiff"
    page.close()


# Records each file's status text as it changes, so the short-lived "Checking" lines are seen.
WATCH_NOTES = """() => {
    window.seenNotes = [];
    new MutationObserver(() => {
        document.querySelectorAll("#upload-files .upload-note").forEach(n => {
            window.seenNotes.push(n.textContent);
        });
    }).observe(document.getElementById("upload-files"),
               {subtree: true, childList: true, characterData: true});
}"""


def test_a_file_larger_than_a_slice_is_checked_whole_in_slices(
    browser,  # noqa: F811
    live_server,
    people,
    sample_files,
    settings,
):
    settings.MEDANNOT_UPLOAD_HASH_SLICE_BYTES = 64 * 1024
    settings.MEDANNOT_UPLOAD_CHUNK_BYTES = 64 * 1024
    data = sample_files["slide"].read_bytes()
    assert len(data) > 2 * 64 * 1024  # several slices, so the hash is built up in parts
    page = browser.new_page()
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    log_in(page, live_server.url, "rita")
    page.goto(live_server.url + reverse("project-upload", args=[people.project.pk]))
    page.evaluate(WATCH_NOTES)
    page.set_input_files("#id_files", [sample_files["slide"]])
    page.click("button[type=submit].primary")
    page.wait_for_selector("#upload-report #upload-results", timeout=60_000)
    assert "1 file kept" in page.inner_text("#upload-results")
    upload = Upload.objects.get()
    assert upload.checksum == hashlib.sha256(data).hexdigest()
    notes = page.evaluate("window.seenNotes")
    assert any("Checking biopsy-1.tiff: 0%" in n for n in notes), notes
    assert any(re.search(r"Checking biopsy-1\.tiff: [1-9]\d?%", n) for n in notes), notes
    assert "Checked. Sent." in page.inner_text("#upload-files")
    assert page.get_attribute("#upload-files .upload-note", "role") == "status"
    assert not run_axe(page)
    assert not problems, problems
    page.close()


def test_a_file_that_arrives_different_is_refused_and_said_so(
    browser,  # noqa: F811
    live_server,
    people,
    sample_files,
    settings,
):
    """A byte changed on the way (here by the test, in the last piece): the browser's checksum
    no longer matches, the server refuses the file and the page says why."""
    settings.MEDANNOT_UPLOAD_CHUNK_BYTES = 64 * 1024
    size = sample_files["slide"].stat().st_size
    page = browser.new_page()

    def corrupt(route, request):
        body = request.post_data_buffer
        offset = int(request.headers.get("upload-offset", "-1"))
        if request.method == "PATCH" and body and offset + len(body) == size:
            route.continue_(post_data=bytes([body[0] ^ 0xFF]) + body[1:])
        else:
            route.continue_()

    log_in(page, live_server.url, "rita")
    page.goto(live_server.url + reverse("project-upload", args=[people.project.pk]))
    page.route("**/uploads/tus/**", corrupt)
    page.set_input_files("#id_files", [sample_files["slide"]])
    page.click("button[type=submit].primary")
    page.wait_for_function(
        "() => document.getElementById('upload-status').textContent.includes('not sent')",
        timeout=60_000,
    )
    assert "checksum mismatch" in page.inner_text("#upload-files")
    upload = Upload.objects.get()
    assert upload.checksum == hashlib.sha256(sample_files["slide"].read_bytes()).hexdigest()
    assert (upload.offset, upload.state) == (0, "receiving")
    assert not Image.objects.exists()
    assert not run_axe(page)
    page.close()
