"""Exports of validated labels. Rows stream from the database: memory stays flat."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import IO, Any

from django.contrib.auth import get_user_model

from annotations.models import Adjudication, AuditEvent, Label, Project, ReviewState
from annotations.notice import AI_NOTICE
from annotations.regions import feature_collection
from imaging.inspect import reviewer_properties

# Labels read (and audit events looked up) per chunk: memory stays flat at any project size.
CHUNK = 500

# The audit actions that write a label or an adjudication, with its state before and after.
LABEL_RECORD, LABEL_UNDO, ADJUDICATION_RECORD = "label.record", "label.undo", "adjudication.record"

_TRUE = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True)
class ExportOptions:
    """What an export holds beyond the final labels: every reading of a double-read task
    (`readings`), and every label's earlier versions from the audit trail (`history`)."""

    readings: bool = False
    history: bool = False

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> ExportOptions:
        """`?readings=all` and `?history=1`; any other value is the default, never an error."""
        return cls(
            readings=query.get("readings", "").strip().lower() == "all",
            history=query.get("history", "").strip().lower() in _TRUE,
        )


def label_rows(
    project: Project, *, readings: bool = False, history: bool = False
) -> Iterator[dict[str, Any]]:
    """One row per label with one reading per task (as ever). With double reading, one row
    per final task: its final label (the agreeing first reading, or the adjudication), and
    with `readings` the readings it resolves. With `history`, every row (and reading) gets
    its `revision` and `earlier_versions`, oldest first, from the audit trail."""
    if project.readings_per_task > 1:
        yield from final_rows(project, readings=readings, history=history)
        return
    labels = (
        Label.objects.filter(task__project=project)
        .select_related("task__image", "draft__prompt_template", "reviewer")
        .order_by("task_id", "id")
    )
    for chunk in _chunks(labels.iterator(chunk_size=CHUNK), CHUNK):
        trail = _AuditTrail.of({label.task_id for label in chunk}) if history else None
        for label in chunk:
            yield _label_row(label, trail)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _label_row(label: Label, trail: _AuditTrail | None = None) -> dict[str, Any]:
    image, draft = label.task.image, label.draft
    row = {
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
    if trail is not None:
        row["revision"] = label.revision
        row["earlier_versions"] = trail.label_versions(label)
    return row


def final_rows(
    project: Project, *, readings: bool = False, history: bool = False
) -> Iterator[dict[str, Any]]:
    """The final label of every final task of a double-read project, in label_rows' fields
    (the adjudicator as reviewer when adjudicated), with `final_source`, `n_readings` and,
    when asked, `readings`: every reading's row; `history` as in label_rows."""
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
    for tasks in _task_chunks(labels.iterator(chunk_size=CHUNK), CHUNK):
        trail = _AuditTrail.of({group[0].task_id for group in tasks}) if history else None
        for group in tasks:
            yield _final_row(group, readings, trail)


def _task_chunks(labels: Iterable[Label], size: int) -> Iterator[list[list[Label]]]:
    """Labels (ordered by task) grouped by task, whole tasks per chunk of about `size`."""
    chunk: list[list[Label]] = []
    n = 0
    for label in labels:
        if chunk and chunk[-1][0].task_id == label.task_id:
            chunk[-1].append(label)
        else:
            if n >= size:
                yield chunk
                chunk, n = [], 0
            chunk.append([label])
        n += 1
    if chunk:
        yield chunk


def _final_row(labels: list[Label], readings: bool, trail: _AuditTrail | None = None) -> dict:
    first = labels[0]
    adjudication: Adjudication | None = getattr(first.task, "adjudication", None)
    row = _label_row(first, trail)
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
        if trail is not None:
            row["revision"] = None  # an adjudication has no revision number
            row["earlier_versions"] = trail.adjudication_versions(adjudication)
    row["final_source"] = "adjudication" if adjudication is not None else "reading"
    row["n_readings"] = len(labels)
    if readings:
        row["readings"] = [_label_row(label, trail) for label in labels]
    return row


@dataclass(frozen=True)
class _Event:
    action: str
    actor: str | None
    at: str
    after: dict | None


class _AuditTrail:
    """The label and adjudication events of some tasks, read in one query, oldest first."""

    def __init__(self) -> None:
        self.labels: dict[tuple[int, int | None], list[_Event]] = defaultdict(list)
        self.adjudications: dict[int, list[_Event]] = defaultdict(list)

    @classmethod
    def of(cls, task_ids: set[int]) -> _AuditTrail:
        trail = cls()
        username = f"actor__{get_user_model().USERNAME_FIELD}"
        events = (
            AuditEvent.objects.filter(
                task_id__in=task_ids, action__in=(LABEL_RECORD, LABEL_UNDO, ADJUDICATION_RECORD)
            )
            .order_by("id")
            .values_list("task_id", "actor_id", username, "action", "at", "after")
        )
        for task_id, actor_id, actor, action, at, after in events:
            event = _Event(action, actor, at.isoformat(), after)
            if action == ADJUDICATION_RECORD:
                trail.adjudications[task_id].append(event)
            else:
                trail.labels[(task_id, actor_id)].append(event)
        return trail

    def label_versions(self, label: Label) -> list[dict[str, Any]]:
        """The states `label` held before its current one: each decision its reviewer
        recorded and each undo (an undo of a first decision: a null decision, no label)."""
        events = self.labels.get((label.task_id, label.reviewer_id), [])
        # The event that wrote the current state; later ones (written while the export
        # streams) are not earlier versions. Revisions restart after a label is removed.
        current = _last_index(
            events, lambda after: after is not None and after.get("revision") == label.revision
        )
        return [_version(event) for event in events[:current]]

    def adjudication_versions(self, adjudication: Adjudication) -> list[dict[str, Any]]:
        """The final labels an adjudicator recorded for the task before the current one."""
        events = self.adjudications.get(adjudication.task_id, [])
        now = {
            "decision": adjudication.decision,
            "text": adjudication.text,
            "reason": adjudication.reason,
            "category": adjudication.category,
            "draft": adjudication.draft_id,
        }
        current = _last_index(
            events, lambda after: after is not None and now.items() <= after.items()
        )
        return [_version(event) for event in events[:current]]


def _last_index(events: list[_Event], is_current) -> int:
    """The index of the last event whose state is the current one; len(events) if none."""
    for i in range(len(events) - 1, -1, -1):
        if is_current(events[i].after):
            return i
    return len(events)


def _version(event: _Event) -> dict[str, Any]:
    state = event.after or {}
    return {
        "decision": state.get("decision"),
        "final_text": state.get("text"),
        "reason": state.get("reason"),
        "category": state.get("category"),
        "draft_id": state.get("draft"),
        "regions": feature_collection(state.get("regions") or []),
        "edit_chars": state.get("edit_chars"),
        "edit_words": state.get("edit_words"),
        "time_on_task_ms": state.get("time_on_task_ms"),
        "fast_accept": state.get("fast_accept"),
        "revision": state.get("revision"),
        "reviewer": event.actor,
        "recorded_at": event.at,
        "undo": event.action == LABEL_UNDO,
    }


def jsonl_lines(
    project: Project, *, readings: bool = False, history: bool = False
) -> Iterator[str]:
    for row in label_rows(project, readings=readings, history=history):
        yield json.dumps(row, ensure_ascii=False) + "\n"


def write_jsonl(
    project: Project, out: IO[str], *, readings: bool = False, history: bool = False
) -> int:
    count = 0
    for line in jsonl_lines(project, readings=readings, history=history):
        out.write(line)
        count += 1
    return count
