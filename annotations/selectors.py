"""Reads for the pages."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from annotations.models import (
    DECIDED_STATES,
    Claim,
    EditAutosave,
    Label,
    Project,
    PromptTemplate,
    Task,
    TaskState,
)


def project_task_counts(project: Project) -> dict[str, int]:
    rows = project.tasks.values("state").annotate(n=Count("id"))
    counts = {state: 0 for state in TaskState.values}
    counts.update({row["state"]: row["n"] for row in rows})
    counts["total"] = sum(counts[s] for s in TaskState.values)
    return counts


def project_tasks_waiting_for_broker(project: Project) -> int:
    """Queued tasks whose drafting message the broker has not taken yet (it was down)."""
    return project.tasks.filter(state=TaskState.QUEUED, message_pending=True).count()


def project_tasks(project: Project, *, state: str | None = None) -> QuerySet[Task]:
    tasks = project.tasks.select_related("image").order_by("id")
    if state:
        tasks = tasks.filter(state=state)
    return tasks


def projects_with_counts(projects: QuerySet[Project]) -> QuerySet[Project]:
    pending = Q(tasks__state__in=[TaskState.NEW, TaskState.QUEUED, TaskState.DRAFTING])
    return projects.annotate(
        n_tasks=Count("tasks", distinct=True),
        n_to_review=Count("tasks", filter=Q(tasks__state=TaskState.DRAFTED), distinct=True),
        n_pending=Count("tasks", filter=pending, distinct=True),
    )


def next_task_to_review(project: Project, *, after_id: int = 0) -> Task | None:
    tasks = project.tasks.filter(state=TaskState.DRAFTED).order_by("id")
    return tasks.filter(id__gt=after_id).first() or tasks.first()


def claim_held(task: Task, reviewer) -> bool:
    """Whether `reviewer` holds a live claim on the task: the page is then in the queue."""
    live = Claim.objects.filter(task=task, reviewer=reviewer, expires_at__gt=timezone.now())
    return live.exists()


def next_claimable(project: Project, reviewer, *, after: Task | None = None) -> Task | None:
    """The task the reviewer's queue would most likely give them (after `after`), without
    claiming it: its image is prefetched while they read."""
    now = timezone.now()
    return (
        project.tasks.filter(state=TaskState.DRAFTED)
        .exclude(pk=after.pk if after else None)
        .exclude(labels__reviewer=reviewer)
        .exclude(claims__expires_at__gt=now)
        .select_related("image")
        .order_by("id")
        .first()
    )


def review_progress(project: Project, reviewer) -> dict[str, int]:
    """The reviewer's "k of N" and the project's decided share. N: the drafted or decided
    tasks; k: the reviewer's decided tasks + 1. Filtered counts on indexed columns."""
    mine = Label.objects.filter(reviewer=reviewer, task__project=project).count()
    totals = project.tasks.aggregate(
        n=Count("id", filter=Q(state__in=[TaskState.DRAFTED, *DECIDED_STATES])),
        decided=Count("id", filter=Q(state__in=DECIDED_STATES)),
    )
    n = totals["n"]
    return {"mine": mine, "k": min(mine + 1, n), "n": n, "decided": totals["decided"]}


def review_summary(project: Project, reviewer) -> dict[str, int]:
    """What the reviewer decided in the project, by decision, for the end of the queue."""
    rows = (
        Label.objects.filter(reviewer=reviewer, task__project=project)
        .values("decision")
        .annotate(n=Count("id"))
    )
    counts = {"accepted": 0, "edited": 0, "rejected": 0}
    counts.update({row["decision"]: row["n"] for row in rows})
    counts["total"] = sum(counts.values())
    return counts


def prompt_versions(project: Project) -> QuerySet[PromptTemplate]:
    return project.prompt_templates.select_related("created_by").order_by("-version")


def task_review(task: Task, user) -> dict:
    """What the review page shows of a task: its newest draft, this reviewer's label and the
    other reviewers' labels."""
    draft = task.drafts.select_related("prompt_template").order_by("-created_at", "-id").first()
    return {
        "draft": draft,
        "n_drafts": task.drafts.count(),
        "label": task.labels.filter(reviewer=user).select_related("draft").first(),
        "other_labels": task.labels.exclude(reviewer=user).select_related("reviewer"),
    }


def edit_autosave_for(task: Task, user) -> EditAutosave | None:
    """The text `user` was editing on `task` and has not decided on yet."""
    return EditAutosave.objects.filter(task=task, reviewer=user).first()
