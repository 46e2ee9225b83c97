"""Reads for the pages."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from annotations.models import Project, PromptTemplate, Task, TaskState


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
