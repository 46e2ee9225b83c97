"""The whole loop on real services: upload over HTTP, a real Celery worker on the real Redis
broker drafts with the demo Gemma 3 through the real transformers path, a pathologist
accepts, edits and rejects over HTTP, an admin exports, and every exported line is checked."""

import io
import json
import time
from pathlib import Path

import pytest
from django.urls import reverse

from annotations import exports, services
from annotations.models import Draft, Modality, Role, Task, TaskState
from inference.tasks import draft_task

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "decision"}


def wait_for(predicate, *, timeout: float = 180, what: str = "condition", worker=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    log = worker.log.read_text()[-4000:] if worker else ""
    raise AssertionError(f"timed out waiting for {what}\n{log}")


def test_upload_draft_review_export(
    celery_worker, settings, client_for, sample_files, django_user_model
):
    settings.MEDIA_ROOT = celery_worker.media_root
    admin = django_user_model.objects.create_user("alice", password="pw")
    pathologist = django_user_model.objects.create_user("paul", password="pw")
    researcher = django_user_model.objects.create_user("rita", password="pw")
    project = services.project_create(
        name="E2E",
        modality=Modality.DERMATOLOGY,
        members=[
            (admin, Role.ADMIN),
            (pathologist, Role.PATHOLOGIST),
            (researcher, Role.RESEARCHER),
        ],
    )

    # A researcher uploads three images, one of them not an image at all.
    names = ["photo", "photo2", "slide"]
    files = [sample_files[n].open("rb") for n in names]
    bogus = io.BytesIO(b"<html>not an image</html>")
    bogus.name = "<img src=x onerror=alert(1)>.jpg"
    response = client_for(researcher).post(
        reverse("project-upload", args=[project.pk]), {"files": [*files, bogus]}
    )
    for f in files:
        f.close()
    body = response.content.decode()
    assert response.status_code == 200, body
    assert "3 files kept, 1 rejected" in body
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in body and "<img src=x" not in body
    tasks = list(Task.objects.filter(project=project).order_by("id"))
    assert len(tasks) == 3

    # The real worker drafts them.
    wait_for(
        lambda: not Task.objects.filter(project=project).exclude(state=TaskState.DRAFTED).exists(),
        what="three drafts",
        worker=celery_worker,
    )
    drafts = list(Draft.objects.filter(task__project=project).order_by("task_id"))
    assert len(drafts) == 3
    for draft in drafts:
        assert draft.text.strip()
        assert draft.backend == "transformers"
        assert draft.model_revision.startswith("sha256:")
        assert draft.tokens_in > 0 and 0 < draft.tokens_out <= settings.MEDANNOT_MAX_NEW_TOKENS
        assert "skin lesion" in draft.prompt and "<start_of_image>" in draft.prompt
        assert draft.generation["do_sample"] is False

    # A second delivery of the same message leaves one draft (FIFO: it is handled before
    # the draft of the image uploaded after it).
    draft_task.delay(tasks[0].pk)
    extra = client_for(researcher).post(
        reverse("project-upload", args=[project.pk]), {"files": [sample_files["svs"].open("rb")]}
    )
    assert extra.status_code == 200
    wait_for(
        lambda: Task.objects.filter(project=project, state=TaskState.DRAFTED).count() == 4,
        what="the fourth draft",
        worker=celery_worker,
    )
    assert Draft.objects.filter(task=tasks[0]).count() == 1

    # A pathologist accepts one, edits one, rejects one.
    reviewer = client_for(pathologist)
    decisions = [
        {"decision": "accepted"},
        {"decision": "edited", "text": "Compound naevus, no atypia."},
        {
            "decision": "rejected",
            "reason": "Describes the wrong lesion.",
            "category": "wrong site or laterality",
        },
    ]
    for task, decision in zip(tasks, decisions, strict=True):
        page = reviewer.get(reverse("task-detail", args=[task.pk]))
        assert "AI-generated draft" in page.content.decode()
        draft_id = task.latest_draft().pk
        r = reviewer.post(
            reverse("task-decide", args=[task.pk]), decision | {"draft_id": draft_id}, **HTMX
        )
        assert r.status_code == 200, r.content.decode()
    outcomes = [Task.objects.get(pk=t.pk).outcome for t in tasks]
    assert outcomes == ["accepted", "edited", "rejected"]

    # An admin exports; every line is checked.
    export = client_for(admin).get(reverse("project-export", args=[project.pk]))
    assert export.status_code == 200
    lines = [json.loads(line) for line in b"".join(export.streaming_content).decode().splitlines()]
    assert len(lines) == 3
    by_task = {line["task_id"]: line for line in lines}
    for task, decision in zip(tasks, decisions, strict=True):
        line = by_task[task.pk]
        draft = Draft.objects.get(task=task)
        assert line["image_file_name"] == task.image.original_name
        assert line["image_sha256"] == task.image.sha256
        assert line["decision"] == decision["decision"]
        assert line["draft_text"] == draft.text
        assert line["draft_id"] == draft.pk
        # a stable pseudonym per project, never the username (unless the admin asks)
        assert line["reviewer"] == exports.reviewer_pseudonym(project.pk, pathologist.pk)
        # a model in a server folder is named by the folder, never by its path
        assert line["model_id"] == Path(draft.model_id).name
        assert line["model_revision"] == draft.model_revision
        assert line["labelled_at"] and line["draft_created_at"]
        assert "not a medical device" in line["draft_notice"].lower()
        expected_text = {
            "accepted": draft.text,
            "edited": "Compound naevus, no atypia.",
            "rejected": "",
        }
        assert line["final_text"] == expected_text[decision["decision"]]
    assert by_task[tasks[2].pk]["reason"] == "Describes the wrong lesion."
