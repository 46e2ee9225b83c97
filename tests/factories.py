"""Small builders for rows the tests need, without files or a worker."""

from __future__ import annotations

import hashlib
import itertools

from annotations import counters, services
from annotations.models import CORRECTION_CATEGORIES, Draft, Image, Task, TaskState

_counter = itertools.count(1)


def make_image(**fields) -> Image:
    n = next(_counter)
    defaults = dict(
        sha256=hashlib.sha256(f"image-{n}".encode()).hexdigest(),
        file=f"images/{n}.jpg",
        original_name=f"image-{n}.jpg",
        size_bytes=100,
        kind="photo",
        format="jpeg",
        width=640,
        height=480,
    )
    return Image.objects.create(**(defaults | fields))


def make_task(project, *, state: str = TaskState.NEW, image: Image | None = None) -> Task:
    task = Task.objects.create(project=project, image=image or make_image(), state=state)
    # As ingest and task_transition keep them.
    counters.task_moved(project.pk, None, (state, task.review_state, task.outcome))
    return task


def draft_fields(**overrides) -> dict:
    """The fields of a stored draft, as a worker records them."""
    return (
        dict(
            text="Invasive ductal carcinoma, grade 2.",
            backend="test",
            model_id="demo",
            model_revision="sha256:0",
            prompt="p",
            generation={},
            tokens_in=10,
            tokens_out=5,
            seconds=0.1,
        )
        | overrides
    )


def record_draft(task: Task, *, text: str) -> Task:
    """Queue (if new), claim and draft `task` as a worker would, without a model."""
    if task.state == TaskState.NEW:
        services.task_transition(task_id=task.pk, to=TaskState.QUEUED)
    claimed = services.task_claim(task_id=task.pk)
    services.draft_record(task_id=task.pk, attempt=claimed.attempt, fields=draft_fields(text=text))
    task.refresh_from_db()
    return task


def make_drafted_task(project, *, text: str = "Invasive ductal carcinoma, grade 2.") -> Task:
    return record_draft(make_task(project, state=TaskState.QUEUED), text=text)


def latest_draft(task: Task) -> Draft:
    return task.latest_draft()


# A valid post of the project settings form.
SETTINGS_FORM = {
    "system": "",
    "instruction": "Describe the {organ} specimen.",
    "target_mpp": "0.5",
    "patch_size": "512",
    "max_patches": "40",
    "correction_categories": "\n".join(CORRECTION_CATEGORIES),
    "fast_accept_seconds": "5",
}
