"""The tus 1.0.0 server: create, resume, append, terminate; refusals as a client would meet them."""

import base64
import hashlib
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from annotations import tus, uploadbatches
from annotations.models import Upload, UploadState

TUS = {"HTTP_TUS_RESUMABLE": "1.0.0"}
PIECE = "application/offset+octet-stream"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def metadata(**fields: str) -> str:
    return ",".join(f"{key} {b64(value)}" for key, value in fields.items())


def create(client, project, batch, length, **fields):
    fields.setdefault("filename", "slide.svs")
    return client.post(
        reverse("tus-create", args=[project.pk]),
        HTTP_UPLOAD_LENGTH=str(length),
        HTTP_UPLOAD_METADATA=metadata(batch=str(batch.pk), **fields),
        **TUS,
    )


def patch(client, location, data: bytes, offset: int, content_type=PIECE, **extra):
    return client.generic(
        "PATCH",
        location,
        data,
        content_type=content_type,
        HTTP_UPLOAD_OFFSET=str(offset),
        **TUS,
        **extra,
    )


@pytest.fixture
def batch(people):
    return uploadbatches.batch_create(project=people.project, user=people.researcher)


@pytest.fixture
def researcher(people, client_for):
    return client_for(people.researcher)


def test_options_say_what_the_server_supports(people, researcher):
    response = researcher.options(reverse("tus-create", args=[people.project.pk]))
    assert response.status_code == 204
    assert response["Tus-Version"] == "1.0.0"
    assert response["Tus-Extension"] == "creation,checksum,termination,expiration"
    assert response["Tus-Max-Size"] == str(settings.MEDANNOT_MAX_FILE_BYTES)
    assert response["Tus-Checksum-Algorithm"] == "sha1,sha256"
    assert response["Tus-Resumable"] == "1.0.0"


def test_a_file_arrives_in_pieces_and_head_says_how_far(people, researcher, batch):
    data = b"0123456789" * 10
    response = create(
        researcher, people.project, batch, len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    assert response.status_code == 201
    assert response["Tus-Resumable"] == "1.0.0"
    location = response["Location"]
    head = researcher.head(location, **TUS)
    assert head.status_code == 200
    assert (head["Upload-Offset"], head["Upload-Length"]) == ("0", "100")
    assert head["Cache-Control"] == "no-store"
    assert patch(researcher, location, data[:40], 0)["Upload-Offset"] == "40"
    response = patch(researcher, location, data[40:], 40)
    assert response.status_code == 204 and response["Upload-Offset"] == "100"
    upload = Upload.objects.get()
    assert upload.state == UploadState.COMPLETE
    path = tus.staging_path(upload)
    assert path.read_bytes() == data
    # Staged beside the media, never in the image store.
    assert "images" not in path.relative_to(settings.MEDIA_ROOT).parts


def test_an_interrupted_upload_resumes_to_the_same_checksum(people, researcher, batch):
    data = bytes(range(256)) * 40
    location = create(
        researcher, people.project, batch, len(data), sha256=hashlib.sha256(data).hexdigest()
    )["Location"]
    patch(researcher, location, data[:3000], 0)
    # The connection dropped: a fresh client (a reloaded page) asks how far it got.
    offset = int(researcher.head(location, **TUS)["Upload-Offset"])
    assert offset == 3000
    assert patch(researcher, location, data[offset:], offset).status_code == 204
    upload = Upload.objects.get()
    assert hashlib.sha256(tus.staging_path(upload).read_bytes()).hexdigest() == upload.checksum
    assert upload.state == UploadState.COMPLETE


def test_a_wrong_offset_is_a_conflict(people, researcher, batch):
    location = create(researcher, people.project, batch, 10)["Location"]
    patch(researcher, location, b"abcd", 0)
    response = patch(researcher, location, b"efgh", 2)
    assert response.status_code == 409
    assert response["Tus-Resumable"] == "1.0.0"
    assert researcher.head(location, **TUS)["Upload-Offset"] == "4"


def test_a_piece_of_another_content_type_is_refused(people, researcher, batch):
    location = create(researcher, people.project, batch, 10)["Location"]
    response = patch(researcher, location, b"abcd", 0, content_type="application/octet-stream")
    assert response.status_code == 415


def test_a_damaged_piece_is_discarded(people, researcher, batch):
    location = create(researcher, people.project, batch, 10)["Location"]
    patch(researcher, location, b"abcd", 0)
    wrong = base64.b64encode(hashlib.sha1(b"something else").digest()).decode()
    response = patch(researcher, location, b"efgh", 4, HTTP_UPLOAD_CHECKSUM=f"sha1 {wrong}")
    assert response.status_code == 460
    assert researcher.head(location, **TUS)["Upload-Offset"] == "4"
    assert tus.staging_path(Upload.objects.get()).read_bytes() == b"abcd"
    right = base64.b64encode(hashlib.sha256(b"efgh").digest()).decode()
    response = patch(researcher, location, b"efgh", 4, HTTP_UPLOAD_CHECKSUM=f"sha256 {right}")
    assert response.status_code == 204 and response["Upload-Offset"] == "8"


def test_a_file_that_arrives_different_is_refused_whole(people, researcher, batch):
    location = create(
        researcher, people.project, batch, 4, sha256=hashlib.sha256(b"good").hexdigest()
    )["Location"]
    response = patch(researcher, location, b"evil", 0)
    assert response.status_code == 460
    assert "checksum mismatch" in response.content.decode()
    upload = Upload.objects.get()
    assert (upload.offset, upload.state) == (0, UploadState.RECEIVING)
    assert tus.staging_path(upload).read_bytes() == b""


def test_more_bytes_than_the_declared_length_are_refused(people, researcher, batch):
    location = create(researcher, people.project, batch, 4)["Location"]
    response = patch(researcher, location, b"too long", 0)
    assert response.status_code == 413
    assert researcher.head(location, **TUS)["Upload-Offset"] == "0"
    assert tus.staging_path(Upload.objects.get()).read_bytes() == b""


def test_a_file_over_the_limit_is_refused_before_it_starts(people, researcher, batch, settings):
    settings.MEDANNOT_MAX_FILE_BYTES = 1000
    response = create(researcher, people.project, batch, 1001)
    assert response.status_code == 413
    assert "File too large" in response.content.decode()
    assert not Upload.objects.exists()


def test_an_unreadable_length_or_batch_is_refused(people, researcher, batch, client_for):
    url = reverse("tus-create", args=[people.project.pk])
    assert researcher.post(url, HTTP_UPLOAD_LENGTH="-1", **TUS).status_code == 400
    other = uploadbatches.batch_create(project=people.project, user=people.project_admin)
    assert create(researcher, people.project, other, 4).status_code == 400
    assert not Upload.objects.exists()


def test_another_version_of_tus_is_refused(people, researcher, batch):
    response = researcher.post(
        reverse("tus-create", args=[people.project.pk]),
        HTTP_UPLOAD_LENGTH="4",
        HTTP_TUS_RESUMABLE="0.2.2",
    )
    assert response.status_code == 412
    assert response["Tus-Version"] == "1.0.0"


def test_delete_terminates_the_upload(people, researcher, batch):
    location = create(researcher, people.project, batch, 10)["Location"]
    patch(researcher, location, b"abc", 0)
    path = tus.staging_path(Upload.objects.get())
    response = researcher.delete(location, **TUS)
    assert response.status_code == 204
    assert not Upload.objects.exists() and not path.exists()
    assert researcher.head(location, **TUS).status_code == 404


@pytest.mark.parametrize("who", ["project_admin", "other_admin", "superuser"])
def test_an_upload_is_its_senders_alone(people, researcher, batch, client_for, who):
    location = create(researcher, people.project, batch, 10)["Location"]
    other = client_for(getattr(people, who))
    assert other.head(location, **TUS).status_code == 404
    assert patch(other, location, b"abc", 0).status_code == 404
    assert other.delete(location, **TUS).status_code == 404
    assert Upload.objects.get().offset == 0


def test_an_upload_is_not_found_under_another_project(people, researcher, batch):
    upload_id = int(create(researcher, people.project, batch, 10)["Location"].rsplit("/", 1)[1])
    elsewhere = reverse("tus-upload", args=[people.other_project.pk, upload_id])
    assert researcher.head(elsewhere, **TUS).status_code == 404


@pytest.mark.parametrize(
    "who, status",
    [("pathologist", 403), ("other_pathologist", 404), ("outsider", 404), ("researcher", 201)],
)
def test_only_uploaders_of_the_project_create(people, client_for, who, status):
    user = getattr(people, who)
    batch = uploadbatches.batch_create(project=people.project, user=user)
    assert create(client_for(user), people.project, batch, 4).status_code == status


def test_a_piece_without_the_csrf_token_is_refused(people, researcher, batch):
    location = create(researcher, people.project, batch, 4)["Location"]
    response = researcher.generic(
        "PATCH",
        location,
        b"abcd",
        content_type=PIECE,
        HTTP_UPLOAD_OFFSET="0",
        HTTP_X_CSRFTOKEN="wrong" * 8,
        **TUS,
    )
    assert response.status_code == 403
    assert response["Tus-Resumable"] == "1.0.0"
    assert Upload.objects.get().offset == 0
    no_token = researcher.post(
        reverse("tus-create", args=[people.project.pk]),
        HTTP_UPLOAD_LENGTH="4",
        HTTP_UPLOAD_METADATA=metadata(batch=str(batch.pk)),
        HTTP_X_CSRFTOKEN="",
        **TUS,
    )
    assert no_token.status_code == 403
    assert Upload.objects.count() == 1
    for method in ("delete", "patch"):
        refused = getattr(researcher, method)(location, HTTP_X_CSRFTOKEN="", **TUS)
        assert refused.status_code == 403, method
    assert Upload.objects.count() == 1


def test_a_folder_path_cannot_climb_out(people, researcher, batch):
    create(researcher, people.project, batch, 4, relativePath="../../etc/slide/Data0000.dat")
    assert Upload.objects.get().relative_path == "etc/slide/Data0000.dat"
    assert Path(tus.staging_path(Upload.objects.get())).parent.name == tus.STAGING_DIR


def test_the_sweep_removes_expired_uploads_and_their_files(people, researcher, batch):
    location = create(researcher, people.project, batch, 10)["Location"]
    patch(researcher, location, b"abc", 0)
    kept = Upload.objects.get()
    create(researcher, people.project, batch, 10)
    expired = Upload.objects.exclude(pk=kept.pk).get()
    Upload.objects.filter(pk=expired.pk).update(expires_at=timezone.now())
    path = tus.staging_path(expired)
    assert path.exists()
    assert tus.uploads_sweep_expired() == 1
    assert not path.exists() and list(Upload.objects.all()) == [kept]
    # An expired upload is gone for its sender too.
    Upload.objects.update(expires_at=timezone.now())
    assert researcher.head(location, **TUS).status_code == 404


def test_the_hourly_sweep_task_removes_expired_uploads(people, researcher, batch):
    from inference.tasks import sweep_tmp_task

    create(researcher, people.project, batch, 10)
    Upload.objects.update(expires_at=timezone.now())
    path = tus.staging_path(Upload.objects.get())
    sweep_tmp_task()
    assert not Upload.objects.exists() and not path.exists()


def test_a_batch_has_the_plain_forms_limits(people, researcher, batch, settings):
    settings.MEDANNOT_MAX_UPLOAD_FILES = 2
    settings.MEDANNOT_MAX_UPLOAD_BYTES = 100
    assert create(researcher, people.project, batch, 60).status_code == 201
    too_big = create(researcher, people.project, batch, 41)
    assert too_big.status_code == 413 and "in total size" in too_big.content.decode()
    assert create(researcher, people.project, batch, 40).status_code == 201
    too_many = create(researcher, people.project, batch, 0)
    assert too_many.status_code == 413 and "at most 2 files" in too_many.content.decode()
    assert Upload.objects.count() == 2


def test_an_empty_file_that_lies_about_its_checksum_leaves_nothing(people, researcher, batch):
    response = create(researcher, people.project, batch, 0, sha256="0" * 64)
    assert response.status_code == 460
    assert not Upload.objects.exists()
    assert not any((settings.MEDIA_ROOT / tus.STAGING_DIR).iterdir())
