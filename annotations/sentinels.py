"""Sentinels: check drafts with a deliberate error, mixed into the claimed queue.

A reader who accepts drafts unread (automation bias) accepts these too. A sentinel is shown
in place of its task's draft; the decision on it is a `SentinelReading`, never a label, and
leaves the task as it was. Sentinels are never exported.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Q
from django.utils.crypto import salted_hmac

from annotations.models import (
    Decision,
    Draft,
    Label,
    Project,
    Sentinel,
    SentinelExpected,
    SentinelReading,
    Task,
    sentinel_share_clean,
)
from annotations.services import audit_record


def _draw(project_id: int, reviewer_id: int, n: int) -> float:
    """A number in [0, 1) for the reader's n-th queue item: deterministic, so a test (or an
    audit) can replay it, and keyed with the site's secret, so a reader cannot predict it."""
    digest = salted_hmac("annotations.sentinels", f"{project_id}:{reviewer_id}:{n}").digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def sentinel_for(
    *, project: Project, reviewer: AbstractBaseUser, share: float | None = None
) -> Sentinel | None:
    """Whether the reader's next queue item is a sentinel, and which: one of the project's
    sentinels the reader has not read, with the project's share (or `share`) of the items.

    The draw depends on how many items the reader has decided in the project (labels and
    sentinel readings), so a skip or a reload draws the same again.
    """
    share = project.sentinel_share if share is None else share
    if share <= 0:
        return None
    decided = (
        Label.objects.filter(reviewer=reviewer, task__project=project).count()
        + SentinelReading.objects.filter(reviewer=reviewer, sentinel__project=project).count()
    )
    if _draw(project.pk, reviewer.pk, decided) >= share:
        return None
    read = SentinelReading.objects.filter(sentinel=OuterRef("pk"), reviewer=reviewer)
    drafted = Draft.objects.filter(task=OuterRef("task_id"))
    return (
        Sentinel.objects.filter(project=project)
        .filter(Exists(drafted))
        .exclude(Exists(read))
        .select_related("task")
        .order_by("id")
        .first()
    )


def sentinel_create(
    *,
    project: Project,
    task: Task,
    text: str,
    expected: str,
    note: str,
    actor: AbstractBaseUser | None = None,
) -> Sentinel:
    """An admin's check draft for `task`: `text` replaces the task's draft for readers.
    ValueError says what is wrong."""
    text, note = text.strip(), note.strip()
    if task.project_id != project.pk:
        raise ValueError("The task is not one of this project's.")
    if expected not in SentinelExpected.values:
        raise ValueError("Say whether a good reader rejects or edits it.")
    if not text:
        raise ValueError("A check draft needs text.")
    if not note:
        raise ValueError("Say what was altered: readers are told after their decision.")
    draft = task.latest_draft()
    if draft is None:
        raise ValueError("The task has no draft yet: a check draft stands in for one.")
    if text == draft.text.strip():
        raise ValueError("The text is the task's draft as it is: alter it.")
    with transaction.atomic():
        sentinel = Sentinel.objects.create(
            project=project, task=task, text=text, expected=expected, note=note, created_by=actor
        )
        audit_record(
            action="sentinel.create",
            actor=actor,
            project=project,
            after={"sentinel": sentinel.pk, "task": task.pk, "expected": expected, "note": note},
        )
    return sentinel


def _caught(sentinel: Sentinel, decision: str, text: str) -> bool:
    if decision == Decision.REJECTED:
        return True
    # An edit catches the error only if it changes the text.
    return decision == Decision.EDITED and " ".join(text.split()) != " ".join(sentinel.text.split())


def sentinel_reading_record(
    *,
    sentinel: Sentinel,
    reviewer: AbstractBaseUser,
    decision: str,
    text: str = "",
    client_id: uuid.UUID | None = None,
) -> SentinelReading:
    """Record a reader's decision on a sentinel, once: a reject or an edit catches it, an
    accept misses it. No label is written and the task is not touched."""
    if decision not in Decision.values:
        raise ValueError(f"unknown decision {decision!r}")
    with transaction.atomic():
        reading, created = SentinelReading.objects.get_or_create(
            sentinel=sentinel,
            reviewer=reviewer,
            defaults={
                "decision": decision,
                "text": text if decision == Decision.EDITED else "",
                "caught": _caught(sentinel, decision, text),
                "client_id": client_id,
            },
        )
        if created:
            # No task on the audit row: a task's history never tells a reader about sentinels.
            audit_record(
                action="sentinel.read",
                actor=reviewer,
                project=sentinel.project,
                after={"sentinel": sentinel.pk, "decision": decision, "caught": reading.caught},
            )
    return reading


def project_sentinel_share_set(
    *, project: Project, share: float, actor: AbstractBaseUser | None = None
) -> Project:
    """Store the share of the queue served as sentinels (0 to 0.5); ValueError otherwise."""
    share = sentinel_share_clean(share)
    with transaction.atomic():
        project = Project.objects.select_for_update().get(pk=project.pk)
        if project.sentinel_share != share:
            before = project.sentinel_share
            project.sentinel_share = share
            project.save(update_fields=["sentinel_share"])
            audit_record(
                action="project.sentinel_share",
                actor=actor,
                project=project,
                before={"sentinel_share": before},
                after={"sentinel_share": share},
            )
    return project


# Reads ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatchRate:
    reviewer: str
    read: int
    caught: int

    @property
    def percent(self) -> int:
        return round(100 * self.caught / self.read) if self.read else 0


def sentinel_catch_rates(project: Project) -> list[CatchRate]:
    """Each reader's sentinels read and caught in the project, by reader name."""
    rows = (
        SentinelReading.objects.filter(sentinel__project=project)
        .values("reviewer__username")
        .annotate(read=Count("id"), caught=Count("id", filter=Q(caught=True)))
        .order_by("reviewer__username")
    )
    return [CatchRate(r["reviewer__username"], r["read"], r["caught"]) for r in rows]


def project_sentinels(project: Project):
    """The project's sentinels, newest first, with how many readers read and caught each."""
    return (
        Sentinel.objects.filter(project=project)
        .select_related("created_by")
        .annotate(
            n_read=Count("readings"), n_caught=Count("readings", filter=Q(readings__caught=True))
        )
        .order_by("-id")
    )


def sentinel_pending(
    *, project_id: int, sentinel_id: int | None, reviewer, task: Task | None = None
) -> Sentinel | None:
    """The sentinel `sentinel_id` of the project (standing in for `task`'s draft, if given)
    if `reviewer` has not read it yet; else None."""
    if not sentinel_id:
        return None
    read = SentinelReading.objects.filter(sentinel=OuterRef("pk"), reviewer=reviewer)
    found = Sentinel.objects.filter(pk=sentinel_id, project_id=project_id).exclude(Exists(read))
    if task is not None:
        found = found.filter(task=task)
    return found.select_related("task").first()


def sentinel_reading_of_form(*, task: Task, reviewer, client_id) -> SentinelReading | None:
    """The reading that the decision form `client_id` recorded on a sentinel of `task`: the
    same form posted again (a double click) is answered with it, never made a label."""
    if client_id is None:
        return None
    return (
        SentinelReading.objects.filter(sentinel__task=task, reviewer=reviewer, client_id=client_id)
        .select_related("sentinel")
        .first()
    )
