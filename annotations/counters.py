"""Per-project counters: tasks by drafting state, by review and by outcome, and labels,
kept in the same transaction as the change they count, so that no page counts a project's
tasks.

Writers call `counters_add` after their own write, inside their transaction: the UPDATE
locks the project's counter row until commit. A project without a row (made before the
counters, or outside `project_create`) is recounted on its first change: the count then
includes the change just written. `recount` is the repair (`manage.py recount_projects`)
and the migration's backfill.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping

from django.db import connection, transaction
from django.db.models import F

from annotations.models import TO_READ, Decision, ProjectCounters, ReviewState, TaskState

STATE_FIELDS: tuple[str, ...] = tuple(TaskState.values)
REVIEW_FIELDS: tuple[str, ...] = ("to_read", ReviewState.IN_REVIEW, ReviewState.DISAGREEMENT)
OUTCOME_FIELDS: tuple[str, ...] = tuple(Decision.values)
FIELDS: tuple[str, ...] = (*STATE_FIELDS, *REVIEW_FIELDS, *OUTCOME_FIELDS, "labels")

# What the counters know of a task: (state, review_state, outcome).
Facts = tuple[str, str, str]


def buckets(facts: Facts | None) -> list[str]:
    """The counters a task with these facts counts in (None: no task)."""
    if facts is None:
        return []
    state, review_state, outcome = facts
    counted = [state]
    if state == TaskState.DRAFTED and review_state in TO_READ:
        counted.append("to_read")
    if review_state in (ReviewState.IN_REVIEW, ReviewState.DISAGREEMENT):
        counted.append(review_state)
    if review_state == ReviewState.FINAL and outcome:
        counted.append(outcome)
    return counted


def task_deltas(before: Facts | None, after: Facts | None) -> dict[str, int]:
    """The counter changes of one task going from `before` to `after`."""
    deltas = Counter(buckets(after))
    deltas.subtract(buckets(before))
    return {name: n for name, n in deltas.items() if n}


def counters_add(project_id: int, deltas: Mapping[str, int]) -> None:
    """Add `deltas` ({field: n}) to a project's counters; call after the counted write."""
    changes = {name: F(name) + n for name, n in deltas.items() if n}
    unknown = set(changes) - set(FIELDS)
    if unknown:
        raise ValueError(f"no such counter: {', '.join(sorted(unknown))}")
    if not changes:
        return
    if not ProjectCounters.objects.filter(project_id=project_id).update(**changes):
        recount([project_id])


def add_sql(project_id: int, deltas: Mapping[str, int]) -> tuple[str, list]:
    """`counters_add` as SQL with RETURNING (no row: the project has no counters yet), for
    a caller that writes several tables in one statement."""
    unknown = set(deltas) - set(FIELDS)
    if unknown:
        raise ValueError(f"no such counter: {', '.join(sorted(unknown))}")
    names = sorted(deltas)
    sets = ", ".join(f"{name} = {name} + %s" for name in names)
    sql = f"UPDATE annotations_projectcounters SET {sets} WHERE project_id = %s RETURNING 1"
    return sql, [*(deltas[name] for name in names), project_id]


def reader_add_sql(project_id: int, reviewer_id: int, n: int) -> tuple[str, list]:
    """Add `n` to a reader's labels in a project, as SQL (a row made on first use)."""
    sql = (
        "INSERT INTO annotations_readercounters (project_id, reviewer_id, labels) "
        "VALUES (%s, %s, %s) ON CONFLICT (project_id, reviewer_id) "
        "DO UPDATE SET labels = annotations_readercounters.labels + EXCLUDED.labels"
    )
    return sql, [project_id, reviewer_id, n]


def agreement_add_sql(project_id: int, deltas: Mapping[str, int]) -> tuple[str, list]:
    """Add `deltas` to a project's agreement cells, as SQL (rows made on first use)."""
    # The cells go as one JSON parameter, however many: the decision's statement this joins
    # keeps few enough parameters for psycopg to cache its parsing (at most 50).
    sql = (
        "INSERT INTO annotations_agreementcell AS a (project_id, key, value) "
        "SELECT %s, c.key, c.value::bigint FROM jsonb_each_text(%s::jsonb) c ORDER BY c.key "
        "ON CONFLICT (project_id, key) DO UPDATE SET value = a.value + EXCLUDED.value"
    )
    return sql, [project_id, json.dumps(dict(deltas))]


def task_moved(project_id: int, before: Facts | None, after: Facts | None) -> None:
    """One task of the project changed facts (None: created, or gone)."""
    counters_add(project_id, task_deltas(before, after))


def counts_for(project_id: int) -> dict[str, int]:
    """The project's counters by name, `total` (its tasks) and `decided` (final tasks)."""
    row = ProjectCounters.objects.filter(project_id=project_id).values(*FIELDS).first()
    if row is None:  # never counted yet: count once, then the counters keep up
        recount([project_id])
        row = ProjectCounters.objects.filter(project_id=project_id).values(*FIELDS).first()
    return with_totals(dict(row or dict.fromkeys(FIELDS, 0)))


def with_totals(counts: dict[str, int]) -> dict[str, int]:
    counts["total"] = sum(counts[s] for s in STATE_FIELDS)
    counts["decided"] = sum(counts[s] for s in OUTCOME_FIELDS)
    return counts


_SUMS = ", ".join(
    [f"count(*) FILTER (WHERE state = '{s}') AS {s}" for s in STATE_FIELDS]
    + [
        "count(*) FILTER (WHERE state = 'drafted' AND review_state IN ("
        + ", ".join(f"'{r}'" for r in TO_READ)
        + ")) AS to_read"
    ]
    + [f"count(*) FILTER (WHERE review_state = '{r}') AS {r}" for r in REVIEW_FIELDS[1:]]
    + [
        f"count(*) FILTER (WHERE review_state = 'final' AND outcome = '{o}') AS {o}"
        for o in OUTCOME_FIELDS
    ]
)
_TASK_FIELDS = FIELDS[:-1]
_COLUMNS = ", ".join(FIELDS)
_RECOUNT = f"""
INSERT INTO annotations_projectcounters (project_id, {_COLUMNS})
SELECT p.id, {", ".join(f"COALESCE(t.{s}, 0)" for s in _TASK_FIELDS)}, COALESCE(l.labels, 0)
FROM annotations_project p
LEFT JOIN (
    SELECT project_id, {_SUMS} FROM annotations_task GROUP BY project_id
) t ON t.project_id = p.id
LEFT JOIN (
    SELECT t.project_id, count(*) AS labels
    FROM annotations_label l JOIN annotations_task t ON t.id = l.task_id
    GROUP BY t.project_id
) l ON l.project_id = p.id
WHERE %s OR p.id = ANY(%s)
ON CONFLICT (project_id) DO UPDATE SET {", ".join(f"{f} = EXCLUDED.{f}" for f in FIELDS)}
"""


_RECOUNT_READERS = """
WITH counted AS (
    SELECT t.project_id, l.reviewer_id, count(*) AS labels
    FROM annotations_label l JOIN annotations_task t ON t.id = l.task_id
    WHERE %s OR t.project_id = ANY(%s)
    GROUP BY t.project_id, l.reviewer_id
), zeroed AS (
    UPDATE annotations_readercounters r SET labels = 0
    WHERE (%s OR r.project_id = ANY(%s)) AND NOT EXISTS (
        SELECT 1 FROM counted c
        WHERE c.project_id = r.project_id AND c.reviewer_id = r.reviewer_id)
)
INSERT INTO annotations_readercounters (project_id, reviewer_id, labels)
SELECT project_id, reviewer_id, labels FROM counted
ON CONFLICT (project_id, reviewer_id) DO UPDATE SET labels = EXCLUDED.labels
"""


def recount(project_ids: Iterable[int] | None = None, *, using=None) -> int:
    """Recompute the counters of `project_ids` (None: every project) from the tasks and
    labels; returns how many projects were counted. Plain SQL on the tables, so that a
    migration can call it (`using`: the schema editor's connection).

    The counter rows are locked first: a change under way (its counter update waits for the
    lock) is either counted here or adds itself after, never lost."""
    conn = using or connection
    ids = None if project_ids is None else sorted(set(project_ids))
    everything = ids is None
    with transaction.atomic(using=conn.alias), conn.cursor() as cursor:
        cursor.execute(
            "SELECT project_id FROM annotations_projectcounters "
            "WHERE %s OR project_id = ANY(%s) ORDER BY project_id FOR UPDATE",
            [everything, ids or []],
        )
        cursor.execute(_RECOUNT, [everything, ids or []])
        counted = cursor.rowcount
        cursor.execute(_RECOUNT_READERS, [everything, ids or []] * 2)
        return counted
