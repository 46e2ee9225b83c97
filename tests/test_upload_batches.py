"""A batch of resumable uploads ingested together: its report, manifest, warnings, permissions."""

import hashlib
import io
import os
import zipfile

import pytest
from django.conf import settings
from django.urls import reverse

from annotations import tus, uploadbatches
from annotations.models import Image, Task, Upload, UploadBatch
from imaging import samples
from tests.test_tus import create, patch


def send(client, project, batch, name: str, data: bytes, **fields) -> None:
    """One file through tus, whole, with its sha256 as the page computes it."""
    response = create(
        client,
        project,
        batch,
        len(data),
        filename=name.rsplit("/", 1)[-1],
        sha256=hashlib.sha256(data).hexdigest(),
        **fields,
    )
    assert response.status_code == 201, response.content
    if data:
        assert patch(client, response["Location"], data, 0).status_code == 204


def start(client, project) -> dict:
    response = client.post(reverse("upload-batch-create", args=[project.pk]))
    assert response.status_code == 201
    return response.json()


def finish(client, project, batch_id: int, **extra):
    return client.post(reverse("upload-batch-finish", args=[project.pk, batch_id]), **extra)


@pytest.fixture
def researcher(people, client_for):
    return client_for(people.researcher)


def batch_of(info: dict) -> UploadBatch:
    return UploadBatch.objects.get(pk=info["batch"])


def test_a_corrupt_file_in_the_middle_leaves_the_others(people, researcher, sample_files):
    info = start(researcher, people.project)
    batch = batch_of(info)
    send(researcher, people.project, batch, "biopsy-1.tiff", sample_files["slide"].read_bytes())
    send(researcher, people.project, batch, "corrupt.svs", b"II*\x00" + os.urandom(4000))
    send(researcher, people.project, batch, "biopsy-2.svs", sample_files["svs"].read_bytes())
    response = finish(researcher, people.project, info["batch"], HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 200
    assert "2 files kept, 1 rejected" in body
    assert "<html" not in body  # htmx gets the report alone, to swap in
    statuses = {f["name"]: f["status"] for f in batch_of(info).report["files"]}
    assert statuses == {
        "biopsy-1.tiff": "imported",
        "corrupt.svs": "rejected",
        "biopsy-2.svs": "imported",
    }
    assert Task.objects.filter(project=people.project).count() == 2
    # The staging files are gone; only the stored images remain.
    assert not any((settings.MEDIA_ROOT / tus.STAGING_DIR).iterdir())
    assert batch_of(info).finished_at is not None


def test_finishing_twice_ingests_once(people, researcher, sample_files):
    info = start(researcher, people.project)
    send(researcher, people.project, batch_of(info), "a.tiff", sample_files["slide"].read_bytes())
    first = finish(researcher, people.project, info["batch"])
    report = batch_of(info).report
    second = finish(researcher, people.project, info["batch"])
    assert first.status_code == second.status_code == 200
    assert "1 file kept" in second.content.decode()
    assert batch_of(info).report == report
    assert Task.objects.count() == 1


def test_a_zip_climbing_out_is_refused_and_the_rest_kept(people, researcher, sample_files):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../evil.jpg", sample_files["photo"].read_bytes())
    info = start(researcher, people.project)
    batch = batch_of(info)
    send(researcher, people.project, batch, "evil.zip", buffer.getvalue())
    send(researcher, people.project, batch, "biopsy.tiff", sample_files["slide"].read_bytes())
    body = finish(researcher, people.project, info["batch"]).content.decode()
    assert "outside the archive" in body
    assert [i.original_name for i in Image.objects.all()] == ["biopsy.tiff"]
    assert not (settings.MEDIA_ROOT.parent / "evil.jpg").exists()


def test_the_manifest_fills_in_details_and_names_what_does_not_match(
    people, researcher, sample_files
):
    manifest = b"file,organ\nbiopsy-1.tiff,breast\nnobody.svs,liver\n"
    info = start(researcher, people.project)
    batch = batch_of(info)
    send(researcher, people.project, batch, "biopsy-1.tiff", sample_files["slide"].read_bytes())
    send(researcher, people.project, batch, "manifest.csv", manifest)
    send(researcher, people.project, batch, "biopsy-2.svs", sample_files["svs"].read_bytes())
    body = finish(researcher, people.project, info["batch"]).content.decode()
    task = Task.objects.get(image__original_name="biopsy-1.tiff")
    assert task.metadata == {"organ": "breast"}
    warnings = batch_of(info).report["warnings"]
    assert "The manifest names nobody.svs, but no uploaded file has that name." in warnings
    assert any(w.startswith("biopsy-2.svs is not in the manifest") for w in warnings)
    assert "nobody.svs" in body
    # The manifest is read, not ingested as an image.
    assert "manifest.csv" not in [f["name"] for f in batch_of(info).report["files"]]


def test_a_folder_keeps_its_relative_paths_for_the_manifest(people, researcher, sample_files):
    info = start(researcher, people.project)
    batch = batch_of(info)
    data = sample_files["slide"].read_bytes()
    send(researcher, people.project, batch, "s.tiff", data, relativePath="case7/s.tiff")
    send(researcher, people.project, batch, "manifest.csv", b"file,organ\ncase7/s.tiff,skin\n")
    finish(researcher, people.project, info["batch"])
    assert Task.objects.get().metadata == {"organ": "skin"}
    assert batch_of(info).report["warnings"] == []


def test_a_photo_in_a_pathology_project_is_kept_with_a_warning(people, researcher, sample_files):
    info = start(researcher, people.project)
    photo = sample_files["photo"].read_bytes()
    send(researcher, people.project, batch_of(info), "lesion.jpg", photo)
    body = finish(researcher, people.project, info["batch"]).content.decode()
    assert Task.objects.filter(project=people.project).count() == 1
    assert "lesion.jpg is a photo, not a whole-slide image" in body


def test_a_slide_in_a_dermatology_project_is_kept_with_a_warning(people, client_for, sample_files):
    admin = client_for(people.other_admin)
    info = start(admin, people.other_project)
    batch = batch_of(info)
    send(admin, people.other_project, batch, "biopsy.svs", sample_files["svs"].read_bytes())
    send(admin, people.other_project, batch, "lesion.png", sample_files["photo2"].read_bytes())
    finish(admin, people.other_project, info["batch"])
    warnings = batch_of(info).report["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith("biopsy.svs is a whole-slide image")
    assert Task.objects.filter(project=people.other_project).count() == 2


def test_html_in_a_file_name_is_escaped_in_the_report(people, researcher):
    info = start(researcher, people.project)
    send(researcher, people.project, batch_of(info), '<img src=x onerror="alert(1)">.jpg', b"no")
    body = finish(researcher, people.project, info["batch"]).content.decode()
    assert "<img src=x" not in body
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;.jpg" in body
    report = client_report(researcher, people.project, info["batch"])
    assert "<img src=x" not in report and "&lt;img src=x" in report


def client_report(client, project, batch_id) -> str:
    response = client.get(reverse("upload-batch", args=[project.pk, batch_id]))
    assert response.status_code == 200
    return response.content.decode()


def test_a_file_that_never_finished_is_reported(people, researcher):
    info = start(researcher, people.project)
    create(researcher, people.project, batch_of(info), 10, filename="half.svs")
    finish(researcher, people.project, info["batch"])
    [entry] = batch_of(info).report["files"]
    assert entry["name"] == "half.svs" and entry["status"] == "rejected"
    assert not Upload.objects.filter(state="receiving").exists()


@pytest.mark.parametrize(
    "who, status",
    [
        ("researcher", 201),
        ("project_admin", 201),
        ("superuser", 201),
        ("pathologist", 403),
        ("other_admin", 404),
        ("outsider", 404),
    ],
)
def test_who_may_start_a_batch(people, client_for, who, status):
    client = client_for(getattr(people, who))
    response = client.post(reverse("upload-batch-create", args=[people.project.pk]))
    assert response.status_code == status


def test_a_batch_is_finished_by_its_sender_alone(people, researcher, client_for):
    info = start(researcher, people.project)
    for who in ("project_admin", "other_admin", "pathologist"):
        response = finish(client_for(getattr(people, who)), people.project, info["batch"])
        assert response.status_code in (403, 404)
    assert batch_of(info).finished_at is None
    elsewhere = finish(researcher, people.other_project, info["batch"])
    assert elsewhere.status_code == 404


@pytest.mark.parametrize(
    "who, status",
    [("researcher", 200), ("project_admin", 200), ("pathologist", 403), ("other_admin", 404)],
)
def test_who_may_read_a_report(people, researcher, client_for, who, status):
    info = start(researcher, people.project)
    finish(researcher, people.project, info["batch"])
    url = reverse("upload-batch", args=[people.project.pk, info["batch"]])
    assert client_for(getattr(people, who)).get(url).status_code == status


def test_the_project_page_links_recent_uploads(people, researcher, client_for):
    info = start(researcher, people.project)
    finish(researcher, people.project, info["batch"])
    url = reverse("upload-batch", args=[people.project.pk, info["batch"]])
    page = researcher.get(reverse("project-detail", args=[people.project.pk])).content.decode()
    assert "Recent uploads" in page and url in page
    # A reader who cannot upload sees no upload reports.
    page = client_for(people.pathologist).get(reverse("project-detail", args=[people.project.pk]))
    assert "Recent uploads" not in page.content.decode()


def test_the_upload_page_still_has_the_plain_form(people, researcher):
    page = researcher.get(reverse("project-upload", args=[people.project.pk])).content.decode()
    assert 'enctype="multipart/form-data"' in page
    assert 'id="upload-config"' in page and "js/upload.js" in page
    assert "<script>" not in page  # CSP: no inline script


def test_the_batch_service_is_callable_without_a_request(people, sample_files):
    batch = uploadbatches.batch_create(project=people.project, user=people.researcher)
    assert uploadbatches.batch_ingest(batch=batch) == {"files": [], "warnings": []}


def test_a_mirax_folder_dropped_as_a_folder_stays_one_slide(people, researcher, tmp_path):
    mrxs = samples.write_mirax(tmp_path / "mirax", seed=3)
    folder = mrxs.with_suffix("")
    info = start(researcher, people.project)
    batch = batch_of(info)
    send(researcher, people.project, batch, mrxs.name, mrxs.read_bytes(), relativePath=mrxs.name)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = f"{folder.name}/{path.relative_to(folder)}"
        send(researcher, people.project, batch, path.name, path.read_bytes(), relativePath=relative)
    finish(researcher, people.project, info["batch"])
    files = batch_of(info).report["files"]
    assert [f["status"] for f in files] == ["imported"], files
    assert Image.objects.get().format == "mrxs"


def test_a_dicom_series_sent_as_files_stays_one_slide(people, researcher, tmp_path):
    instances = samples.write_dicom_series(tmp_path / "dicom", seed=2)
    info = start(researcher, people.project)
    batch = batch_of(info)
    for path in instances:
        send(researcher, people.project, batch, path.name, path.read_bytes())
    finish(researcher, people.project, info["batch"])
    files = batch_of(info).report["files"]
    assert [f["status"] for f in files] == ["imported"], files
    assert Image.objects.get().kind == "slide"
    assert batch_of(info).report["warnings"] == []  # a slide in a pathology project


def test_a_second_table_is_named_and_not_ingested(people, researcher, sample_files):
    info = start(researcher, people.project)
    batch = batch_of(info)
    send(researcher, people.project, batch, "notes.csv", b"file,organ\nx.svs,lung\n")
    send(researcher, people.project, batch, "manifest.csv", b"file,organ\na.tiff,breast\n")
    send(researcher, people.project, batch, "a.tiff", sample_files["slide"].read_bytes())
    finish(researcher, people.project, info["batch"])
    report = batch_of(info).report
    assert [f["name"] for f in report["files"]] == ["a.tiff"]
    assert report["warnings"] == [
        "notes.csv was not used: only one manifest is read per upload (manifest.csv)."
    ]
    assert Task.objects.get().metadata == {"organ": "breast"}


def test_an_unreadable_manifest_is_named_in_words(people, researcher, sample_files):
    info = start(researcher, people.project)
    batch = batch_of(info)
    send(researcher, people.project, batch, "manifest.csv", b"name,organ\na.tiff,breast\n")
    send(researcher, people.project, batch, "a.tiff", sample_files["slide"].read_bytes())
    finish(researcher, people.project, info["batch"])
    [warning] = batch_of(info).report["warnings"]
    assert warning == "The manifest manifest.csv was not used: the manifest needs a `file` column"
    assert str(settings.MEDIA_ROOT) not in warning  # no server paths in the report
