"""Uploads over HTTP: several files at once, bad files rejected, the rest kept."""

import io
import os
from pathlib import Path

from django.conf import settings
from django.urls import reverse

from annotations import messages
from annotations.models import AuditEvent, Image, Task
from annotations.queues import DRAFT_TASK, PREVIEW_TASK


def named(data: bytes, name: str) -> io.BytesIO:
    f = io.BytesIO(data)
    f.name = name
    return f


def files_on_disk() -> list[Path]:
    root = Path(settings.MEDIA_ROOT)
    return sorted(p for p in root.rglob("*") if p.is_file())


def upload(client, project, files, django_capture_on_commit_callbacks=None):
    return client.post(reverse("project-upload", args=[project.pk]), {"files": files})


def test_it_keeps_the_good_files_and_rejects_the_bad(
    people, client_for, sample_files, django_capture_on_commit_callbacks, monkeypatch
):
    sent = []

    def send_many(name, *, args, queue):
        sent.extend(name for _ in args)
        return len(args)

    monkeypatch.setattr(messages, "send_many", send_many)
    good = [sample_files["photo"].open("rb"), sample_files["slide"].open("rb")]
    bad = [
        named(b"", "empty.jpg"),
        named(b"just some notes\n" * 10, "notes.txt"),
        named(sample_files["photo"].read_bytes()[:2000], "truncated.jpg"),
        named(b"II*\x00" + os.urandom(4000), "corrupt.svs"),
    ]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = upload(client_for(people.researcher), people.project, good + bad)
    body = response.content.decode()
    assert response.status_code == 200
    assert "2 files kept, 4 rejected" in body
    for name in ("empty.jpg", "notes.txt", "truncated.jpg", "corrupt.svs"):
        assert name in body
    assert Task.objects.filter(project=people.project).count() == 2
    assert Image.objects.count() == 2
    assert sent == []  # per new image its preview and its draft, after commit
    for callback in callbacks:
        callback()
    assert sorted(sent) == sorted([DRAFT_TASK, DRAFT_TASK, PREVIEW_TASK, PREVIEW_TASK])
    # Only the two stored images are on disk: nothing half-written, no temporary leftovers.
    stored = files_on_disk()
    assert len(stored) == 2 and all("images" in p.parts for p in stored)


def test_an_all_bad_upload_is_unprocessable(people, client_for):
    response = upload(client_for(people.researcher), people.project, [named(b"", "empty.png")])
    assert response.status_code == 422
    assert not Task.objects.exists() and files_on_disk() == []


def test_html_in_a_file_name_is_escaped(people, client_for):
    response = upload(
        client_for(people.researcher),
        people.project,
        [named(b"nope", '<img src=x onerror="alert(1)">.jpg')],
    )
    body = response.content.decode()
    assert "<img src=x" not in body
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;.jpg" in body


def test_the_same_image_twice_is_a_duplicate(
    people, client_for, sample_files, django_capture_on_commit_callbacks
):
    client = client_for(people.researcher)
    with django_capture_on_commit_callbacks(execute=False):
        upload(client, people.project, [sample_files["photo"].open("rb")])
        response = upload(client, people.project, [sample_files["photo"].open("rb")])
    assert "duplicate" in response.content.decode()
    assert Task.objects.count() == 1 and len(files_on_disk()) == 1


def test_the_same_image_in_two_projects_is_stored_once(
    people, client_for, sample_files, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        upload(client_for(people.superuser), people.project, [sample_files["photo"].open("rb")])
        upload(
            client_for(people.superuser), people.other_project, [sample_files["photo"].open("rb")]
        )
    assert Task.objects.count() == 2 and Image.objects.count() == 1
    assert len(files_on_disk()) == 1


def test_an_upload_is_audited(people, client_for, sample_files, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        upload(client_for(people.researcher), people.project, [sample_files["photo"].open("rb")])
    event = AuditEvent.objects.get(action="task.create")
    assert event.actor == people.researcher and event.after["name"] == "lesion-1.jpg"


def test_it_stores_slides_with_their_pyramid(
    people, client_for, sample_files, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        upload(client_for(people.researcher), people.project, [sample_files["svs"].open("rb")])
    image = Image.objects.get()
    assert (image.kind, image.format) == ("slide", "svs")
    assert image.levels >= 2 and image.mpp_x is not None
    assert image.file.endswith(".svs") and image.sha256 in image.file


def test_the_preview_is_a_jpeg(
    people, client_for, sample_files, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        upload(client_for(people.researcher), people.project, [sample_files["slide"].open("rb")])
    task = Task.objects.get()
    response = client_for(people.pathologist).get(reverse("task-preview", args=[task.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
    assert b"".join(response.streaming_content)[:2] == b"\xff\xd8"


def test_uploading_again_restores_a_lost_file(
    people, client_for, sample_files, django_capture_on_commit_callbacks
):
    client = client_for(people.researcher)
    with django_capture_on_commit_callbacks(execute=False):
        upload(client, people.project, [sample_files["photo"].open("rb")])
        (stored,) = files_on_disk()
        stored.unlink()
        response = upload(client, people.project, [sample_files["photo"].open("rb")])
    assert "duplicate" in response.content.decode()
    assert files_on_disk() == [stored]


def test_a_reviewer_sees_the_patches_the_model_saw(
    people, client_for, sample_files, django_capture_on_commit_callbacks
):
    from annotations.models import Draft
    from imaging.patches import PatchSettings, plan_patches
    from tests.factories import draft_fields

    with django_capture_on_commit_callbacks(execute=False):
        upload(client_for(people.researcher), people.project, [sample_files["slide"].open("rb")])
    task = Task.objects.get()
    path = Path(settings.MEDIA_ROOT) / task.image.file
    plan = plan_patches(path, PatchSettings(patch_size=224, max_patches=2))
    regions = [r.as_dict() for r in plan.regions]
    draft = Draft.objects.create(task=task, attempt=1, **draft_fields(regions=regions))
    client = client_for(people.pathologist)
    url = reverse("draft-region", args=[draft.pk, 0])
    response = client.get(url)
    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
    assert client.get(reverse("draft-region", args=[draft.pk, 9])).status_code == 404
    assert client_for(people.other_pathologist).get(url).status_code == 404
    assert client_for(None).get(url).status_code == 302
