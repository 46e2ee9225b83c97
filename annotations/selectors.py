"""Reads for the pages."""

from __future__ import annotations

from django.db.models import Count, Exists, F, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotations import agreement, counters
from annotations.access import Can, capabilities
from annotations.models import (
    TO_READ,
    Adjudication,
    AgreementCell,
    Claim,
    Decision,
    Draft,
    EditAutosave,
    Label,
    Membership,
    Project,
    PromptTemplate,
    ReaderCounters,
    ReviewState,
    Task,
    TaskState,
)
from annotations.textdiff import word_diff, word_distance


def project_task_counts(project: Project) -> dict[str, int]:
    """The project's tasks by state, `total` and `labels`: from its counters, not a count."""
    return counters.counts_for(project.pk)


# Beyond this many, "1000+": the count stays bounded in a project of a million tasks.
WAITING_COUNT_LIMIT = 1000


def project_tasks_waiting_for_broker(project: Project) -> int:
    """Queued tasks whose drafting message the broker has not taken yet (it was down), up
    to WAITING_COUNT_LIMIT."""
    waiting = project.tasks.filter(state=TaskState.QUEUED, message_pending=True)
    return waiting.order_by()[:WAITING_COUNT_LIMIT].count()


# The project page's filters: drafting states, then the review. Each is served by an index
# in id order (see Task.Meta) and counted by a counter of the same name.
FACETS: tuple[tuple[str, str], ...] = (
    *TaskState.choices,
    ("to_read", "To read"),
    (ReviewState.IN_REVIEW, "In review"),
    (ReviewState.DISAGREEMENT, "Disagreement"),
    *Decision.choices,
)
_FACET_FILTERS = {
    **{state: {"state": state} for state in TaskState.values},
    "to_read": {"state": TaskState.DRAFTED, "review_state__in": TO_READ},
    ReviewState.IN_REVIEW: {"review_state": ReviewState.IN_REVIEW},
    ReviewState.DISAGREEMENT: {"review_state": ReviewState.DISAGREEMENT},
    **{outcome: {"outcome": outcome} for outcome in Decision.values},
}


def project_tasks(project: Project, *, facet: str | None = None) -> QuerySet[Task]:
    """A project's tasks in id order, all or one facet's (`FACETS`)."""
    tasks = project.tasks.select_related("image").order_by("id")
    if facet:
        tasks = tasks.filter(**_FACET_FILTERS[facet])
    return tasks


def projects_with_counts(projects: QuerySet[Project]) -> QuerySet[Project]:
    """Projects with n_tasks, n_to_review and n_pending, read from their counters."""

    def total(*states: str):
        first, *rest = (Coalesce(F(f"counters__{s}"), 0) for s in states)
        for term in rest:
            first = first + term
        return first

    return projects.annotate(
        n_tasks=total(*TaskState.values),
        n_to_review=total("to_read"),
        n_pending=total(TaskState.NEW, TaskState.QUEUED, TaskState.DRAFTING),
    )


def next_task_to_review(project: Project, *, after_id: int = 0) -> Task | None:
    tasks = project.tasks.filter(state=TaskState.DRAFTED, review_state__in=TO_READ).order_by("id")
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
        project.tasks.filter(state=TaskState.DRAFTED, review_state__in=TO_READ)
        .exclude(pk=after.pk if after else None)
        .exclude(labels__reviewer=reviewer)
        .exclude(claims__expires_at__gt=now)
        .select_related("image")
        .order_by("id")
        .first()
    )


def review_progress(project: Project, reviewer) -> dict[str, int]:
    """The reviewer's "k of N" and the project's decided share (see `progress_of`). The
    project's part from its counters; the reviewer's labels counted on the reviewer's index
    (their own labels only)."""
    mine = ReaderCounters.objects.filter(project=project, reviewer=reviewer)
    labels = mine.values_list("labels", flat=True).first()
    return progress_of(counters.counts_for(project.pk), labels or 0)


def progress_of(counts: dict[str, int], mine: int) -> dict[str, int]:
    """N: the drafted tasks (read or not); k: the reviewer's decided tasks + 1; decided:
    the project's final tasks (a final task drafted again still counts)."""
    n = max(counts[TaskState.DRAFTED], counts["decided"])
    return {"mine": mine, "k": min(mine + 1, n), "n": n, "decided": counts["decided"]}


def my_labels_in_project(reviewer) -> Coalesce:
    """How many labels `reviewer` has in the project of the outer query's draft's task, as
    a subquery on their counter."""
    mine = ReaderCounters.objects.filter(reviewer=reviewer, project=OuterRef("task__project"))
    return Coalesce(Subquery(mine.values("labels")[:1]), 0)


def review_bundle(task_id: int, user) -> Draft | None:
    """The newest draft of a task that `user` has just claimed from the queue, with all the
    review page shows of it in one query: the task, its project and counters, its image,
    the prompt template; annotated with n_drafts, mine (the user's labels in the project),
    has_label (theirs on the task), role (theirs in the project) and the text and time of
    their autosaved edit. None if the task has no draft."""
    of_task = OuterRef("task_id")
    autosave = EditAutosave.objects.filter(task=of_task, reviewer=user)
    drafts = Draft.objects.filter(task=of_task).order_by().values("task").annotate(n=Count("pk"))
    return (
        Draft.objects.filter(task_id=task_id)
        .select_related("task__project__counters", "task__image", "prompt_template")
        .annotate(
            n_drafts=Subquery(drafts.values("n")),
            mine=my_labels_in_project(user),
            has_label=Exists(Label.objects.filter(task_id=task_id, reviewer=user)),
            role=Subquery(
                Membership.objects.filter(project=OuterRef("task__project"), user=user).values(
                    "role"
                )[:1]
            ),
            autosave_text=Subquery(autosave.values("text")[:1]),
            autosave_at=Subquery(autosave.values("updated_at")[:1]),
        )
        .order_by("-created_at", "-id")
        .first()
    )


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
    other reviewers' labels. Readers are blind to each other: others' labels are shown once
    the task is final, or to those who adjudicate."""
    draft = task.drafts.select_related("prompt_template").order_by("-created_at", "-id").first()
    blind = task.review_state != ReviewState.FINAL and Can.ADJUDICATE not in capabilities(
        user, task.project
    )
    others = task.labels.exclude(reviewer=user).select_related("reviewer")
    return {
        "draft": draft,
        "n_drafts": task.drafts.count(),
        "label": task.labels.filter(reviewer=user).select_related("draft").first(),
        "other_labels": others.none() if blind else others,
    }


def edit_autosave_for(task: Task, user) -> EditAutosave | None:
    """The text `user` was editing on `task` and has not decided on yet."""
    return EditAutosave.objects.filter(task=task, reviewer=user).first()


# Double reading --------------------------------------------------------------------------


def adjudication_queue(project: Project, *, after_id: int = 0, limit: int = 50) -> list[Task]:
    """Tasks of `project` whose readers disagree, oldest first, a keyset page after
    `after_id` (the task_review_state index); one more than `limit` says there is more."""
    tasks = project.tasks.filter(review_state=ReviewState.DISAGREEMENT, id__gt=after_id)
    return list(tasks.select_related("image").order_by("id")[: limit + 1])


def task_readings(task: Task) -> dict:
    """The adjudication page: every reading side by side, each with a word diff from the
    first reading, and the adjudication if there is one."""
    readings = list(task.labels.select_related("reviewer", "draft").order_by("created_at", "id"))
    first = readings[0] if readings else None
    shown = [
        {
            "label": label,
            "diff": word_diff(first.text, label.text) if label is not first else None,
            "words_apart": word_distance(first.text, label.text),
        }
        for label in readings
    ]
    return {
        "readings": shown,
        "adjudication": Adjudication.objects.filter(task=task).first(),
        "draft": task.drafts.order_by("-created_at", "-id").first(),
    }


def project_agreement(project: Project) -> dict | None:
    """Agreement between readers over the project's tasks read by two or more: percent
    agreement and kappa on decisions (Cohen's for two readings a task, Fleiss' for more) and
    the mean word distance between readers' kept texts. From the project's kept cells (a
    few rows, whatever its size); None when the project reads each task once."""
    if project.readings_per_task < 2:
        return None
    cells = dict(AgreementCell.objects.filter(project=project).values_list("key", "value"))
    return agreement.summary(cells, wanted=project.readings_per_task)


def projects_page(
    projects: QuerySet[Project], *, after: tuple[str, int] | None = None, limit: int
) -> list[Project]:
    """A keyset page of `projects`, by name then id: up to `limit` + 1 of those after `after`
    (the name and id of the previous page's last project), the extra one telling whether a
    next page exists. Page N costs what page 1 does: no OFFSET, the name index gives the start.
    """
    if after is not None:
        name, pk = after
        # `name >=` bounds the index scan; the exclude drops at most the rows of that name.
        projects = projects.filter(name__gte=name).exclude(name=name, pk__lte=pk)
    return list(projects.order_by("name", "pk")[: limit + 1])
