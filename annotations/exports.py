"""Exports of validated labels. Rows stream from the database: memory stays flat."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

from annotations.models import Adjudication, Label, Project, ReviewState
from annotations.notice import AI_NOTICE
from annotations.regions import feature_collection
from imaging.inspect import reviewer_properties


def label_rows(project: Project, *, readings: bool = False) -> Iterator[dict[str, Any]]:
    """One row per label with one reading per task (as ever). With double reading, one row
    per final task: its final label (the agreeing first reading, or the adjudication), and
    with `readings` the readings it resolves."""
    if project.readings_per_task > 1:
        yield from final_rows(project, readings=readings)
        return
    labels = (
        Label.objects.filter(task__project=project)
        .select_related("task__image", "draft__prompt_template", "reviewer")
        .order_by("task_id", "id")
    )
    for label in labels.iterator(chunk_size=500):
        yield _label_row(label)


def _label_row(label: Label) -> dict[str, Any]:
    image, draft = label.task.image, label.draft
    return {
        "task_id": label.task_id,
        "image_file_name": image.original_name,
        "image_sha256": image.sha256,
        "image_format": image.format,
        # Allowlisted properties only: free-text slide properties can carry identifiers.
        "image_properties": reviewer_properties(image),
        "decision": label.decision,
        "final_text": label.text,
        "reason": label.reason,
        "category": label.category,
        # Distance from the draft to final_text: 0 for an accept, null for a reject.
        "edit_chars": label.edit_chars,
        "edit_words": label.edit_words,
        "time_on_task_ms": label.time_on_task_ms,
        "fast_accept": label.fast_accept,
        "reviewer": label.reviewer.get_username(),
        "labelled_at": label.created_at.isoformat(),
        "updated_at": label.updated_at.isoformat(),
        "draft_id": draft.pk,
        "draft_text": draft.text,
        "draft_created_at": draft.created_at.isoformat(),
        "model_id": draft.model_id,
        "model_revision": draft.model_revision,
        "backend": draft.backend,
        "prompt": draft.prompt,
        "prompt_version": draft.prompt_template.version if draft.prompt_template else 0,
        "draft_truncated": draft.truncated,
        # The reviewer's region pointers, GeoJSON in level-0 pixels (QuPath opens it).
        "regions": feature_collection(label.regions),
        # The patches the model was given for the draft (level-0 pixels too).
        "draft_regions": draft.regions,
        "task_metadata": label.task.metadata,
        "generation": draft.generation,
        "draft_notice": AI_NOTICE,
    }


def final_rows(project: Project, *, readings: bool = False) -> Iterator[dict[str, Any]]:
    """The final label of every final task of a double-read project, in label_rows' fields
    (the adjudicator as reviewer when adjudicated), with `final_source`, `n_readings` and,
    when asked, `readings`: every reading's row."""
    labels = (
        Label.objects.filter(task__project=project, task__review_state=ReviewState.FINAL)
        .select_related(
            "task__image",
            "task__adjudication__adjudicator",
            "task__adjudication__draft__prompt_template",
            "draft__prompt_template",
            "reviewer",
        )
        .order_by("task_id", "created_at", "id")
    )
    task_labels: list[Label] = []
    for label in labels.iterator(chunk_size=500):
        if task_labels and task_labels[0].task_id != label.task_id:
            yield _final_row(task_labels, readings)
            task_labels = []
        task_labels.append(label)
    if task_labels:
        yield _final_row(task_labels, readings)


def _final_row(labels: list[Label], readings: bool) -> dict:
    first = labels[0]
    adjudication: Adjudication | None = getattr(first.task, "adjudication", None)
    row = _label_row(first)
    if adjudication is not None:
        draft = adjudication.draft
        row |= {
            "decision": adjudication.decision,
            "final_text": adjudication.text,
            "reason": adjudication.reason,
            "category": adjudication.category,
            "reviewer": adjudication.adjudicator.get_username(),
            "labelled_at": adjudication.created_at.isoformat(),
            "updated_at": adjudication.updated_at.isoformat(),
            "draft_id": draft.pk,
            "draft_text": draft.text,
            "draft_created_at": draft.created_at.isoformat(),
            "prompt": draft.prompt,
            "prompt_version": draft.prompt_template.version if draft.prompt_template else 0,
            "regions": feature_collection([]),
        }
        for name in ("edit_chars", "edit_words", "time_on_task_ms"):
            row[name] = None
        row["fast_accept"] = False
    row["final_source"] = "adjudication" if adjudication is not None else "reading"
    row["n_readings"] = len(labels)
    if readings:
        row["readings"] = [_label_row(label) for label in labels]
    return row


def jsonl_lines(project: Project, *, readings: bool = False) -> Iterator[str]:
    for row in label_rows(project, readings=readings):
        yield json.dumps(row, ensure_ascii=False) + "\n"


def write_jsonl(project: Project, out: IO[str], *, readings: bool = False) -> int:
    count = 0
    for line in jsonl_lines(project, readings=readings):
        out.write(line)
        count += 1
    return count
