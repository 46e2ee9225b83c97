"""Manifests in JSON Lines, the standard fields under their usual spellings, names that find
no partner reported both ways, and the fields on the review page."""

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from annotations import manifests, prompts
from annotations.models import Task
from tests.factories import make_drafted_task
from tests.test_ingest_chunks import write_photos

try:  # the browser test below uses test_browser's Chromium fixture
    from tests.test_browser import CHROMIUM, Visit, browser, run_axe  # noqa: F401
except pytest.skip.Exception:  # no Playwright here
    CHROMIUM = None


def write_jsonl(path: Path, *rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def import_images(*args) -> str:
    out = StringIO()
    call_command(
        "import_images",
        *map(str, args),
        "--project",
        "Breast biopsies",
        stdout=out,
        stderr=StringIO(),
    )
    return out.getvalue()


# Reading ------------------------------------------------------------------------------------


def test_a_jsonl_manifest_maps_files_to_their_fields(tmp_path):
    path = write_jsonl(
        tmp_path / "m.jsonl",
        {"file": "a.jpg", "case": "C-1", "patient": 17, "stain": "H&E", "frozen": True},
        {"file": "slides/b.svs", "Site": "Leeds", "Body site": "breast", "grade": 2.5},
    )
    m = manifests.manifest_read(path)
    assert m.problems == []
    assert m.names == ["a.jpg", "slides/b.svs"]
    assert m.fields_for(tmp_path / "a.jpg") == {
        "case_id": "C-1",
        "patient_id": "17",
        "stain": "H&E",
        "frozen": "true",
    }
    assert m.fields_for(tmp_path / "b.svs") == {
        "site": "Leeds",
        "body_site": "breast",
        "grade": "2.5",
    }


def test_a_broken_line_is_refused_alone_with_its_number(tmp_path):
    path = write_jsonl(
        tmp_path / "m.ndjson",
        {"file": "a.jpg", "site": "Leeds"},
        '{"file": "b.jpg", "site": ',
        "",
        "[1, 2]",
        {"site": "no file"},
        {"file": "c.jpg", "site": {"nested": "object"}},
        {"file": "d.jpg", "stain": ["H&E"]},
        {"file": "e.jpg", "organ": "bre\x00ast"},
        {"file": "f.jpg", "organ": "x" * 5000},
        {"file": "g.jpg", "stain": "PAS", "notes": None},
        {"file": "h.jpg", "stain": "PAS", "Stain": "H&E"},
        {"file": "i.jpg", "st\x01ain": "PAS"},
    )
    m = manifests.manifest_read(path)
    assert m.names == ["a.jpg", "g.jpg"]
    assert m.rows["g.jpg"] == {"stain": "PAS"}
    shown = [str(p) for p in m.problems]
    assert shown[0].startswith("manifest line 2, field 'file': is not valid JSON")
    assert shown[1] == "manifest line 4, field 'file': the line is not a JSON object"
    assert shown[2] == "manifest line 5, field 'file': missing: each line needs a file name"
    assert shown[3].startswith("manifest line 6 (c.jpg), field 'site': is a nested object")
    assert shown[4].startswith("manifest line 7 (d.jpg), field 'stain': is a nested object")
    assert shown[5] == (
        "manifest line 8 (e.jpg), field 'organ': contains the control character U+0000"
    )
    assert shown[6].startswith("manifest line 9 (f.jpg), field 'organ': is 5000 characters")
    assert (
        shown[7] == "manifest line 11 (h.jpg), field 'Stain': the field repeats the field 'stain'"
    )
    assert shown[8] == (
        "manifest line 12 (i.jpg), field 'st?ain': the field name contains the control "
        "character U+0001"
    )
    assert len(shown) == 9


def test_jsonl_is_recognised_by_its_content_whatever_its_name(tmp_path):
    path = write_jsonl(tmp_path / "manifest.txt", {"file": "a.jpg", "stain": "H&E"})
    assert manifests.manifest_read(path).rows["a.jpg"] == {"stain": "H&E"}


def test_csv_columns_take_the_same_canonical_names(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        "File,Case,PATIENT,body-site,Reference_Text,Organ,\n"
        'a.jpg,C-1,P-9,skin,"Melanoma in situ.\nMargins clear.",breast,\n'
    )
    m = manifests.manifest_read(path)
    assert m.problems == []
    assert m.rows["a.jpg"] == {
        "case_id": "C-1",
        "patient_id": "P-9",
        "body_site": "skin",
        "reference": "Melanoma in situ.\nMargins clear.",
        "Organ": "breast",
    }


def test_two_spellings_of_one_field_keep_the_first_and_report_the_second(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("file,case_id,case\na.jpg,C-1,C-2\n")
    m = manifests.manifest_read(path)
    assert m.rows["a.jpg"] == {"case_id": "C-1"}
    assert [str(p) for p in m.problems] == [
        "manifest line 1, field 'case': the column repeats the field 'case_id'; ignored"
    ]


def test_a_reference_may_be_longer_than_a_field(tmp_path):
    report = "Invasive ductal carcinoma. " * 200  # 5400 characters
    path = write_jsonl(tmp_path / "m.jsonl", {"file": "a.jpg", "reference_text": report})
    m = manifests.manifest_read(path)
    assert m.problems == [] and m.rows["a.jpg"]["reference"] == report.strip()


def test_the_review_page_lists_named_fields_first_then_the_others():
    shown = manifests.case_details(
        {"organ": "breast", "stain": "H&E", "case_id": "C-1", "reference": "R", "items": "3"}
    )
    assert shown == [("Case", "C-1"), ("Stain", "H&E"), ("organ", "breast"), ("items", "3")]
    assert manifests.case_details(None) == []


# Prompts ------------------------------------------------------------------------------------


def test_prompt_templates_fill_in_fields_from_a_jsonl_manifest(tmp_path):
    path = write_jsonl(
        tmp_path / "m.jsonl",
        {"file": "a.jpg", "Site": "Leeds", "Stain": "PAS", "Body site": "forearm"},
    )
    fields = manifests.manifest_read(path).fields_for(tmp_path / "a.jpg")
    template = type("T", (), {"system": "", "version": 3})()
    template.instruction = "Slide from {site}, stained {stain}, taken from the {body_site}."
    prompt = prompts.prompt_for(modality="pathology", template=template, fields=fields)
    assert prompt.instruction == "Slide from Leeds, stained PAS, taken from the forearm."
    # the dermatology default names the body site, not the hospital
    default = prompts.prompt_for(modality="dermatology", fields=fields).instruction
    assert "on the forearm" in default and "Leeds" not in default


# import_images ------------------------------------------------------------------------------


def test_import_images_reports_names_that_find_no_partner_as_warnings(
    people, tmp_path, django_capture_on_commit_callbacks
):
    photos = write_photos(tmp_path / "photos", 3)
    manifest = write_jsonl(
        tmp_path / "m.jsonl",
        {"file": "photo-000.jpg", "case": "C-1"},
        {"file": "scans/photo-001.jpg", "patient_id": "P-2"},
        {"file": "<b>ghost</b>.jpg", "site": "Leeds"},
    )
    with django_capture_on_commit_callbacks(execute=False):
        out = import_images(*photos, "--manifest", manifest)  # exits 0: warnings only
    lines = out.splitlines()
    assert "warning   the manifest names <b>ghost</b>.jpg, which matches no file" in lines
    assert f"warning   {photos[2]} is not named in the manifest" in lines
    assert sum(line.startswith("warning") for line in lines) == 2
    assert lines[-1] == "3 imported, 0 duplicate, 0 rejected"
    metadata = {t.image.original_name: t.metadata for t in Task.objects.all()}
    assert metadata == {
        "photo-000.jpg": {"case_id": "C-1"},
        "photo-001.jpg": {"patient_id": "P-2"},
        "photo-002.jpg": {},
    }


def test_without_a_manifest_there_are_no_warnings(
    people, tmp_path, django_capture_on_commit_callbacks
):
    photos = write_photos(tmp_path / "photos", 2)
    with django_capture_on_commit_callbacks(execute=False):
        out = import_images(*photos)
    assert "warning" not in out


def test_a_broken_jsonl_line_still_fails_the_import_after_keeping_the_rest(
    people, tmp_path, django_capture_on_commit_callbacks
):
    photos = write_photos(tmp_path / "photos", 2)
    manifest = write_jsonl(
        tmp_path / "m.jsonl", {"file": "photo-000.jpg", "stain": "H&E"}, '{"file": "photo-001'
    )
    with django_capture_on_commit_callbacks(execute=False):
        with pytest.raises(CommandError, match="1 manifest row"):
            import_images(*photos, "--manifest", manifest)
    assert Task.objects.count() == 2


# The review page ----------------------------------------------------------------------------


def test_the_review_page_shows_the_case_details_escaped(people, client_for):
    task = make_drafted_task(people.project, text="Ductal carcinoma in situ.")
    task.metadata = {
        "organ": "<img src=x onerror=alert(1)>",
        "site": "Leeds",
        "case_id": "C-1",
        "reference": "<script>alert(2)</script>\nMargins clear.",
    }
    task.save(update_fields=["metadata"])
    body = client_for(people.pathologist).get(reverse("task-detail", args=[task.pk])).content
    body = body.decode()
    start = body.index('<section class="case-details')
    section = body[start : body.index("</section>", start)]
    assert "<dt>Case</dt><dd>C-1</dd><dt>Site</dt><dd>Leeds</dd>" in section
    assert "<dt>organ</dt><dd>&lt;img src=x onerror=alert(1)&gt;</dd>" in section
    assert "Reference text given by the manifest (not written by the AI)" in section
    assert "&lt;script&gt;alert(2)&lt;/script&gt;<br>Margins clear." in section
    assert "<script>alert(2)" not in body and "<img src=x" not in body
    assert "<details" in section and "<details open" not in section


def test_a_task_without_manifest_fields_shows_no_case_details(people, client_for):
    task = make_drafted_task(people.project)
    body = client_for(people.pathologist).get(reverse("task-detail", args=[task.pk])).content
    assert b"Case details" not in body


def test_the_claimed_queue_page_shows_the_case_details_too(people, client_for):
    task = make_drafted_task(people.project)
    task.metadata = {"stain": "PAS & H&E"}
    task.save(update_fields=["metadata"])
    client = client_for(people.pathologist)
    response = client.post(reverse("review-start", args=[people.project.pk]), follow=True)
    assert response.status_code == 200
    body = response.content.decode()
    assert "<dt>Stain</dt><dd>PAS &amp; H&amp;E</dd>" in body


def test_outsiders_see_no_case_details(people, client_for):
    task = make_drafted_task(people.project)
    task.metadata = {"case_id": "C-SECRET"}
    task.save(update_fields=["metadata"])
    for user in (people.outsider, people.other_admin, people.other_pathologist):
        response = client_for(user).get(reverse("task-detail", args=[task.pk]))
        assert response.status_code in (403, 404)
        assert b"C-SECRET" not in response.content


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_the_case_details_meet_wcag_21_aa_open_and_closed(
    browser,  # noqa: F811 (test_browser's fixture)
    live_server,
    people,
    sample_files,
    tmp_path,
):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    visit = Visit(page, live_server.url, people, sample_files, tmp_path)
    task = visit.drafted_photo()
    Task.objects.filter(pk=task.pk).update(
        metadata={
            "case_id": "C-1",
            "patient_id": "P-0042",
            "body_site": "forearm",
            "clinical history": "<b>itchy</b> for 3 months",
            "reference": "Compound naevus.\nNo atypia.",
        }
    )
    visit.login("paul")
    visit.go("task-detail", task.pk)
    details = page.locator("#manifest-reference")
    assert details.get_attribute("open") is None  # folded away: the draft is read first
    assert not page.get_by_text("No atypia.").is_visible()
    assert not run_axe(page)
    page.click("#manifest-reference summary")
    assert page.get_by_text("No atypia.").is_visible()
    assert not run_axe(page)
    assert page.locator(".case-details dt").all_inner_texts() == [
        "Case",
        "Patient",
        "Body site",
        "clinical history",
    ]
    assert page.locator(".case-details dd").nth(3).inner_text() == "<b>itchy</b> for 3 months"
    page.close()
