"""Upload limits, enforced as the body streams in: a message per refused file, the rest kept."""

import io
import os
from pathlib import Path

from django.urls import reverse

from annotations import uploads
from annotations.models import Task


def named(data: bytes, name: str) -> io.BytesIO:
    f = io.BytesIO(data)
    f.name = name
    return f


def upload(client, project, files):
    return client.post(reverse("project-upload", args=[project.pk]), {"files": files})


class SpyHandler(uploads.LimitedUploadHandler):
    """The real handler, noting the largest temporary file it ever had on disk."""

    largest_on_disk = 0

    def receive_data_chunk(self, raw_data, start):
        result = super().receive_data_chunk(raw_data, start)
        self.file.flush()
        size = os.path.getsize(self.file.temporary_file_path())
        SpyHandler.largest_on_disk = max(SpyHandler.largest_on_disk, size)
        return result


def test_a_file_over_the_limit_is_refused_alone_and_never_written_whole(
    people, client_for, sample_files, settings, django_capture_on_commit_callbacks
):
    settings.MEDANNOT_MAX_FILE_BYTES = 200_000
    settings.FILE_UPLOAD_HANDLERS = [f"{__name__}.SpyHandler"]
    SpyHandler.largest_on_disk = 0
    big = named(os.urandom(3 * 1024 * 1024), "huge.svs")
    with django_capture_on_commit_callbacks(execute=False):
        response = upload(
            client_for(people.researcher), people.project, [big, sample_files["photo"].open("rb")]
        )
    body = response.content.decode()
    assert response.status_code == 200
    assert "huge.svs" in body and "file too large: the limit is 195.3 KiB" in body
    assert "1 file kept, 1 rejected" in body
    assert Task.objects.get().image.original_name == "lesion-1.jpg"
    assert 0 < SpyHandler.largest_on_disk <= 200_000
    handler = response.wsgi_request.upload_handlers[0]
    assert handler.total_bytes == sample_files["photo"].stat().st_size


def test_the_temporary_file_of_a_refused_upload_is_deleted(people, client_for, settings, tmp_path):
    settings.MEDANNOT_MAX_FILE_BYTES = 100_000
    (tmp_path / "upload-tmp").mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "upload-tmp")
    response = upload(
        client_for(people.researcher), people.project, [named(b"x" * 500_000, "big.jpg")]
    )
    assert response.status_code == 422 and "file too large" in response.content.decode()
    assert list((tmp_path / "upload-tmp").iterdir()) == []


def test_a_file_that_lies_about_its_size_is_counted_as_it_arrives(people, client_for, settings):
    settings.MEDANNOT_MAX_FILE_BYTES = 100_000
    boundary = "liar"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="files"; filename="small.jpg"\r\n'
            "Content-Type: image/jpeg\r\nContent-Length: 10\r\n\r\n"
        ).encode()
        + b"\xff" * 400_000
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = client_for(people.researcher).post(
        reverse("project-upload", args=[people.project.pk]),
        data=body,
        content_type=f"multipart/form-data; boundary={boundary}",
    )
    assert response.status_code == 422
    assert "small.jpg" in response.content.decode()
    assert "file too large" in response.content.decode()


def test_files_beyond_the_count_cap_are_listed_and_the_first_kept(
    people, client_for, sample_files, settings, django_capture_on_commit_callbacks
):
    settings.MEDANNOT_MAX_UPLOAD_FILES = 2
    files = [
        sample_files["photo"].open("rb"),
        sample_files["photo2"].open("rb"),
        named(b"late", "third.jpg"),
        named(b"later", "fourth.jpg"),
    ]
    with django_capture_on_commit_callbacks(execute=False):
        response = upload(client_for(people.researcher), people.project, files)
    body = response.content.decode()
    assert response.status_code == 200
    assert "2 files kept, 2 rejected" in body
    message = "not uploaded: at most 2 files per upload; upload the rest separately"
    assert body.count(message) == 2 and "third.jpg" in body and "fourth.jpg" in body
    assert Task.objects.count() == 2


def test_more_files_than_djangos_default_is_not_a_bare_400(people, client_for, settings):
    settings.MEDANNOT_MAX_UPLOAD_FILES = 3
    files = [named(b"", f"empty-{i}.jpg") for i in range(150)]  # Django's default cap: 100
    response = upload(client_for(people.researcher), people.project, files)
    assert response.status_code == 422
    body = response.content.decode()
    assert body.count("at most 3 files per upload") == 147 and "empty-149.jpg" in body


def test_files_beyond_the_total_size_cap_are_listed_and_the_first_kept(
    people, client_for, sample_files, settings, django_capture_on_commit_callbacks
):
    photo = sample_files["photo"]
    settings.MEDANNOT_MAX_UPLOAD_BYTES = photo.stat().st_size + 1000
    files = [photo.open("rb"), sample_files["photo2"].open("rb"), named(b"x" * 10, "tiny.jpg")]
    with django_capture_on_commit_callbacks(execute=False):
        response = upload(client_for(people.researcher), people.project, files)
    body = response.content.decode()
    assert response.status_code == 200
    assert "1 file kept, 2 rejected" in body
    assert body.count("per upload in total size; upload the rest separately") == 2
    assert "lesion-2.png" in body and "tiny.jpg" in body
    assert Task.objects.get().image.original_name == "lesion-1.jpg"


def test_a_1000_byte_file_name_keeps_the_file_with_a_shortened_name(
    people, client_for, sample_files, django_capture_on_commit_callbacks
):
    long_name = "a" * 996 + ".jpg"
    files = [
        named(sample_files["photo"].read_bytes(), long_name),
        sample_files["photo2"].open("rb"),
    ]
    with django_capture_on_commit_callbacks(execute=False):
        response = upload(client_for(people.researcher), people.project, files)
    assert response.status_code == 200
    assert "2 files kept" in response.content.decode()
    names = sorted(t.image.original_name for t in Task.objects.select_related("image"))
    assert names[1] == "lesion-2.png"
    assert names[0].endswith(".jpg") and len(names[0]) <= 255 and set(names[0][:-4]) == {"a"}


def test_a_long_multibyte_file_name_is_kept(
    people, client_for, sample_files, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        response = upload(
            client_for(people.researcher),
            people.project,
            [named(sample_files["photo"].read_bytes(), "😀" * 300 + '"q".jpg')],
        )
    assert response.status_code == 200
    name = Task.objects.get().image.original_name
    assert name.endswith(".jpg") and name.startswith("😀") and len(name.encode()) <= 512


def test_short_name_keeps_the_suffix():
    assert uploads.short_name("b" * 400 + ".ndpi") == "b" * 250 + ".ndpi"
    assert uploads.short_name("slide.svs") == "slide.svs"
    assert len(uploads.short_name("é" * 300 + ".tif").encode()) <= 512


def test_the_body_filter_passes_ordinary_bodies_unchanged():
    boundary = b"XyZ"
    body = (
        b'preamble\r\n--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\nvalue'
        b'\r\n--XyZ\r\nContent-Disposition: form-data; name="f"; filename="x.jpg"\r\n\r\n'
        + os.urandom(300_000)
        + b"\r\n--XyZ--\r\n"
    )
    for size in (1, 7, 1000, 65536):
        stream = uploads._ShortNames(io.BytesIO(body), boundary)
        parts = []
        while part := stream.read(size):
            parts.append(part)
        assert b"".join(parts) == body


def test_uploaded_temp_files_left_nowhere(people, client_for, sample_files, settings, tmp_path):
    (tmp_path / "upload-tmp").mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "upload-tmp")
    settings.MEDANNOT_MAX_UPLOAD_FILES = 1
    upload(
        client_for(people.researcher),
        people.project,
        [named(b"not an image", "notes.jpg"), named(b"second", "second.jpg")],
    )
    assert list(Path(tmp_path / "upload-tmp").iterdir()) == []
