"""A task's history, as one timeline, oldest first: its drafts, every reading and each of
its revisions, undos, the adjudication, and the exports that included it, with who did
each and when.

Earlier versions of a reading are not kept on the label (it holds the current one): they
come from the audit trail, whose `label.record` rows hold each decision as it was recorded
(`after`), as the exports' history does. Three queries, however long the history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Exists, OuterRef
from django.http import Http404

from annotations.access import Can, capabilities_of, task_for_user
from annotations.exports import ADJUDICATION_RECORD, LABEL_RECORD, LABEL_UNDO
from annotations.models import (
    Adjudication,
    AuditEvent,
    Draft,
    ExportedTask,
    ExportJob,
    ExportOrigin,
    Label,
    Task,
)

DRAFT, READING, UNDO, ADJUDICATION, EXPORT = "draft", "reading", "undo", "adjudication", "export"
# At the same instant, the order things happen in.
_ORDER = {DRAFT: 0, READING: 1, UNDO: 2, ADJUDICATION: 3, EXPORT: 4}


@dataclass(frozen=True)
class Entry:
    """One thing that happened to a task: `kind`, when, by whom (a person's name, or the
    model for a draft), and what (`details`: the kind's own fields)."""

    kind: str
    at: datetime
    who: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def sort_key(self) -> tuple:
        return (self.at, _ORDER[self.kind], self.details.get("order", 0))


def person(user: AbstractBaseUser | None) -> str:
    """How a person is named in the history: their full name and user name."""
    if user is None:
        return "someone since removed"
    full = user.get_full_name().strip()
    username = user.get_username()
    return f"{full} ({username})" if full and full != username else username


def task_history_for_user(user: AbstractBaseUser, task_id: int) -> Task:
    """The task, for its project's admins and its readers (anyone who recorded a reading
    of it, or adjudicated it); 404 for everyone else, as for a task they cannot see."""
    task = task_for_user(user, task_id)
    if Can.MANAGE in capabilities_of(user, task.role):
        return task
    label = Label.objects.filter(task=OuterRef("pk"), reviewer=user)
    adjudicated = Adjudication.objects.filter(task=OuterRef("pk"), adjudicator=user)
    # An undone first reading leaves no label: the audit trail still names its reader.
    recorded = AuditEvent.objects.filter(
        task=OuterRef("pk"), actor=user, action__in=(LABEL_RECORD, ADJUDICATION_RECORD)
    )
    read = Task.objects.filter(pk=task.pk).filter(
        Exists(label) | Exists(adjudicated) | Exists(recorded)
    )
    if not read.exists():
        raise Http404("No such task")
    return task


def task_timeline(task: Task) -> list[Entry]:
    """Everything that happened to `task`, oldest first (three queries)."""
    entries = _drafts(task) + _audited(task) + _exports(task)
    return sorted(entries, key=lambda entry: entry.sort_key)


def _drafts(task: Task) -> list[Entry]:
    drafts = Draft.objects.filter(task=task).select_related("prompt_template").order_by("id")
    return [
        Entry(
            DRAFT,
            draft.created_at,
            draft.model_id,
            {
                "order": draft.pk,
                "draft": draft,
                "prompt_version": (
                    draft.prompt_template.version if draft.prompt_template else None
                ),
            },
        )
        for draft in drafts
    ]


def _audited(task: Task) -> list[Entry]:
    """Readings (each version), undos and adjudications, from the audit trail."""
    events = (
        AuditEvent.objects.filter(
            task=task, action__in=(LABEL_RECORD, LABEL_UNDO, ADJUDICATION_RECORD)
        )
        .select_related("actor")
        .order_by("id")
    )
    kinds = {LABEL_RECORD: READING, LABEL_UNDO: UNDO, ADJUDICATION_RECORD: ADJUDICATION}
    entries = []
    for event in events:
        after, before = event.after or {}, event.before or {}
        details = {
            "order": event.pk,
            "decision": after.get("decision") or "",
            "text": after.get("text") or "",
            "reason": after.get("reason") or event.reason or "",
            "category": after.get("category") or "",
            "revision": after.get("revision"),
            "draft_id": after.get("draft"),
            "was": before.get("decision") or "",
            "signed_by_name": after.get("signed_by_name") or "",
            "signed_at": _time(after.get("signed_at")),
            "signature_meaning": after.get("signature_meaning") or "",
        }
        entries.append(Entry(kinds[event.action], event.at, person(event.actor), details))
    return entries


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _exports(task: Task) -> list[Entry]:
    """The exports that included the task: the page's and the API's (written by a worker),
    and the command line's (`export_labels`), which names a user only when given one."""
    included = (
        ExportedTask.objects.filter(task=task)
        .select_related("job__requested_by")
        .order_by("job_id")
    )
    return [
        Entry(
            EXPORT,
            row.job.finished_at or row.job.created_at,
            _exporter(row.job),
            {"order": row.job_id, "job": row.job},
        )
        for row in included
    ]


def _exporter(job: ExportJob) -> str:
    if job.origin == ExportOrigin.COMMAND and job.requested_by is None:
        return "the command line"  # no --user given (or that user since removed)
    return person(job.requested_by)
