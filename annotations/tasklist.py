"""The task list: search, filters and sorting from the URL, paged by keyset.

Every filter and sort is a GET parameter, so a view of the list can be shared as a link.
Pages seek on (sort key, id) from a cursor: page 1,000 costs what page 1 does (no OFFSET).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.db import connections
from django.db.models import (
    BooleanField,
    Exists,
    F,
    Func,
    OuterRef,
    Q,
    QuerySet,
    Value,
)
from django.db.models.expressions import RawSQL
from django.utils import timezone

from annotations.access import Can
from annotations.models import (
    NO_DECISION,
    Decision,
    Label,
    Membership,
    Project,
    ReviewState,
    Role,
    Task,
    TaskState,
)
from annotations.selectors import _FACET_FILTERS

PER_PAGE = 50
MAX_QUERY_CHARS, MAX_TERMS = 200, 8

# The review filter: where a task's reading stands, from the project page's facets.
REVIEW_CHOICES = (
    ("to_read", "To read"),
    (ReviewState.IN_REVIEW, "In review"),
    (ReviewState.DISAGREEMENT, "Disagreement"),
    *Decision.choices,
)
FLAGS = (
    ("fast_accept", "Fast accept"),
    ("truncated", "Truncated draft"),
    ("disagreement", "Readers disagree"),
)
DATE_OF = (("reading", "Last decision of a reading"), ("task", "Task created"))
# Column -> the task field sorted on; each has an index (project, field, id) and none is
# null, so a page is an index scan from its cursor and the seek needs no NULL cases.
SORTS = {
    "id": "id",
    "name": "file_name",
    "state": "state",
    "outcome": "outcome",
    "readings": "readings_count",
    "decided": "decided_at",
    "prompt": "prompt_version",
}


@dataclass
class TaskFilter:
    """What the list was asked for, cleaned: unknown values are dropped, not errors (a
    shared link from an older version still opens)."""

    q: str = ""
    state: str = ""
    review: str = ""
    reviewer: str = ""
    category: str = ""
    date_of: str = "reading"
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    prompt: int | None = None
    flags: list[str] = field(default_factory=list)
    sort: str = "id"
    desc: bool = False

    def params(self, **overrides) -> dict[str, object]:
        """The GET parameters of this view (no cursor), with `overrides`; empty ones left out."""
        values = {
            "q": self.q,
            "state": self.state,
            "review": self.review,
            "reviewer": self.reviewer,
            "category": self.category,
            "date_of": self.date_of if (self.date_from or self.date_to) else "",
            "from": self.date_from.isoformat() if self.date_from else "",
            "to": self.date_to.isoformat() if self.date_to else "",
            "prompt": "" if self.prompt is None else str(self.prompt),
            "flag": self.flags,
            "sort": "" if self.sort == "id" else self.sort,
            "dir": "desc" if self.desc else "",
        } | overrides
        return {k: v for k, v in values.items() if v not in ("", None, [])}


def _date(text: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text or "")
    except ValueError:
        return None


def filter_from(get, *, categories: list[str]) -> TaskFilter:
    """A TaskFilter from a request's GET (a QueryDict)."""
    prompt = get.get("prompt", "")
    return TaskFilter(
        q=get.get("q", "").strip()[:MAX_QUERY_CHARS],
        state=get.get("state") if get.get("state") in TaskState.values else "",
        review=get.get("review") if get.get("review") in dict(REVIEW_CHOICES) else "",
        reviewer=get.get("reviewer", "").strip()[:150],
        category=get.get("category") if get.get("category") in categories else "",
        date_of="task" if get.get("date_of") == "task" else "reading",
        date_from=_date(get.get("from")),
        date_to=_date(get.get("to")),
        prompt=int(prompt) if prompt.isdigit() and len(prompt) < 9 else None,
        flags=[f for f in dict(FLAGS) if f in get.getlist("flag")],
        sort=get.get("sort") if get.get("sort") in SORTS else "id",
        desc=get.get("dir") == "desc",
    )


def reads_blind(capabilities: frozenset[Can]) -> bool:
    """A reader who does not run the project reads blind to the other readers: the filters
    on readings (reviewer, category, date, fast accept) then match their own readings only."""
    return Can.REVIEW in capabilities and Can.MANAGE not in capabilities


# Search ---------------------------------------------------------------------------------


def _like(text: str) -> str:
    return "%" + re.sub(r"([\\%_])", r"\\\1", text) + "%"


# Any manifest value containing the term, case-insensitively. The task table is named as
# the outer query names it (no alias: the list joins the image only).
_ANY_VALUE = (
    'EXISTS (SELECT 1 FROM jsonb_each_text("annotations_task"."metadata") AS kv '
    "WHERE kv.value ILIKE %s)"
)


def _search(tasks: QuerySet[Task], q: str) -> QuerySet[Task]:
    """Each term must match: `field:value` a manifest field equal to value (the metadata GIN
    index); any other term, part of the file name or of any manifest value."""
    for term in q.split()[:MAX_TERMS]:
        key, sep, value = term.partition(":")
        if sep and key and value:
            tasks = tasks.filter(metadata__contains={key: value})
            continue
        # The term is a parameter, never SQL text.
        any_value = RawSQL(_ANY_VALUE, [_like(term)], output_field=BooleanField())
        tasks = tasks.filter(Q(image__original_name__icontains=term) | Q(any_value))
    return tasks


# Filters --------------------------------------------------------------------------------


def _readings(f: TaskFilter, user, blind: bool) -> QuerySet[Label] | None:
    """The readings the task must have one of, or None when no reading filter is set."""
    readings = Label.objects.filter(task=OuterRef("pk"))
    used = False
    if blind and (f.reviewer or f.category or "fast_accept" in f.flags or _by_reading(f)):
        readings, used = readings.filter(reviewer=user), True
    if f.reviewer:
        readings, used = readings.filter(reviewer__username=f.reviewer), True
    if f.category:
        readings, used = readings.filter(category=f.category), True
    if "fast_accept" in f.flags:
        readings, used = readings.filter(fast_accept=True), True
    if _by_reading(f):
        readings, used = readings.filter(**_date_range("updated_at", f)), True
    return readings if used else None


def _by_reading(f: TaskFilter) -> bool:
    return f.date_of == "reading" and bool(f.date_from or f.date_to)


def _date_range(column: str, f: TaskFilter) -> dict:
    """From the start of `date_from` to the end of `date_to`, in the site's time zone."""
    zone = timezone.get_current_timezone()
    bounds = {}
    if f.date_from:
        bounds[f"{column}__gte"] = dt.datetime.combine(f.date_from, dt.time.min, zone)
    if f.date_to:
        end = f.date_to + dt.timedelta(days=1)
        bounds[f"{column}__lt"] = dt.datetime.combine(end, dt.time.min, zone)
    return bounds


def columns_rebuild(project_ids: Iterable[int] | None = None, *, using: str = "default") -> None:
    """Set the list's stored columns of the tasks (of `project_ids`, or all) from their
    readings and newest drafts: the migration's backfill, and `recount_projects`' repair."""
    only, params = ("AND t.project_id = ANY(%s)", [list(project_ids)]) if project_ids else ("", [])
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"""
UPDATE annotations_task t
SET readings_count = coalesce(l.n, 0), decided_at = coalesce(l.at, %s),
    prompt_version = coalesce(d.version, -1), draft_truncated = coalesce(d.truncated, false)
FROM annotations_task t2
LEFT JOIN LATERAL (
  SELECT count(*) AS n, max(updated_at) AS at FROM annotations_label WHERE task_id = t2.id
) l ON true
LEFT JOIN LATERAL (
  SELECT coalesce(pt.version, 0) AS version, dr.truncated FROM annotations_draft dr
  LEFT JOIN annotations_prompttemplate pt ON pt.id = dr.prompt_template_id
  WHERE dr.task_id = t2.id ORDER BY dr.created_at DESC, dr.id DESC LIMIT 1
) d ON true
WHERE t.id = t2.id {only}
""",
            [NO_DECISION, *params],
        )


def tasks_matching(project: Project, f: TaskFilter, *, user, blind: bool) -> QuerySet[Task]:
    """The project's tasks that pass `f`, with the list's columns, unordered."""
    tasks = project.tasks.select_related("image")
    if f.q:
        tasks = _search(tasks, f.q)
    if f.state:
        tasks = tasks.filter(**_FACET_FILTERS[f.state])
    if f.review:
        tasks = tasks.filter(**_FACET_FILTERS[f.review])
    readings = _readings(f, user, blind)
    if readings is not None:
        tasks = tasks.filter(Exists(readings))
    if f.date_of == "task" and (f.date_from or f.date_to):
        tasks = tasks.filter(**_date_range("created_at", f))
    if f.prompt is not None:
        tasks = tasks.filter(prompt_version=f.prompt)
    if "truncated" in f.flags:
        tasks = tasks.filter(draft_truncated=True)
    if "disagreement" in f.flags:
        tasks = tasks.filter(review_state=ReviewState.DISAGREEMENT)
    return tasks


# Keyset paging --------------------------------------------------------------------------


def cursor_encode(key, pk: int) -> str:
    """A page position: the sort key and id of a row, as an opaque URL-safe text."""
    if isinstance(key, dt.datetime):
        key = {"t": key.isoformat()}
    raw = json.dumps([key, pk], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def cursor_decode(text: str, sort: str) -> tuple[object, int] | None:
    """The (key, id) of a cursor, or None for one that is damaged or of another sort."""
    try:
        key, pk = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if isinstance(key, dict):
            key = dt.datetime.fromisoformat(key["t"])
    except (ValueError, TypeError, KeyError, binascii.Error):
        return None
    wanted = {"id": int, "readings": int, "prompt": int, "decided": dt.datetime}.get(sort, str)
    if type(pk) is not int or type(key) is not wanted:
        return None
    if isinstance(key, dt.datetime) and key.tzinfo is None:
        return None
    return key, pk


@dataclass
class TaskPage:
    tasks: list[Task]
    next_cursor: str | None
    previous_cursor: str | None


def _row(*expressions) -> Func:
    return Func(*expressions, template="(%(expressions)s)")


def _seek(tasks: QuerySet[Task], column: str, key, pk: int, *, forward: bool) -> QuerySet[Task]:
    """Rows after (key, pk) in the order walked, as one row comparison, with a bound on the
    key alone that lets the database start its index scan there."""
    if column == "id":
        return tasks.filter(id__gt=pk) if forward else tasks.filter(id__lt=pk)
    op = ">" if forward else "<"
    after = Func(
        _row(F(column), F("id")),
        _row(Value(key), Value(pk)),
        arg_joiner=f" {op} ",
        template="%(expressions)s",
        output_field=BooleanField(),
    )
    return tasks.filter(**{f"{column}__{'gte' if forward else 'lte'}": key}).filter(after)


def task_page(
    tasks: QuerySet[Task],
    f: TaskFilter,
    *,
    after: str = "",
    before: str = "",
    limit: int | None = None,
) -> TaskPage:
    """One page of `tasks` in the order of `f`: after the cursor `after`, or the page before
    `before` (the Previous link), or the first page. One query."""
    limit = limit or PER_PAGE
    column = SORTS[f.sort]
    position = cursor_decode(before or after, f.sort) if (before or after) else None
    backwards = bool(before) and position is not None
    forward = f.desc == backwards  # walking ascending keys
    order = [column, "id"] if forward else [f"-{column}", "-id"]
    if column == "id":
        order = order[1:]
    if position is not None:
        tasks = _seek(tasks, column, *position, forward=forward)
    rows = list(tasks.order_by(*order)[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    if backwards:
        rows.reverse()
    has_next = more if not backwards else True
    has_previous = (position is not None) if not backwards else more
    return TaskPage(
        tasks=rows,
        next_cursor=_cursor_of(rows[-1], f.sort) if rows and has_next else None,
        previous_cursor=_cursor_of(rows[0], f.sort) if rows and has_previous else None,
    )


def _cursor_of(task: Task, sort: str) -> str:
    return cursor_encode(getattr(task, SORTS[sort]), task.pk)


def reviewer_choices(project: Project, user, *, blind: bool) -> list[str]:
    """Usernames the reviewer filter offers: the project's readers (a blind reader: only
    themselves)."""
    if blind:
        return [user.get_username()]
    readers = Membership.objects.filter(
        project=project, role__in=[Role.ADMIN, Role.PATHOLOGIST, Role.ADJUDICATOR]
    )
    users = get_user_model().objects.filter(memberships__in=readers).order_by("username")
    return list(users.values_list("username", flat=True))
