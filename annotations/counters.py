"""Per-project counters: tasks by state and labels, kept in the same transaction as the
change they count, so that no page counts a project's tasks.

Writers call `counters_add` after their own write, inside their transaction: the UPDATE
locks the project's counter row until commit. A project without a row (made before the
counters, or outside `project_create`) is recounted on its first change: the count then
includes the change just written. `recount` is the repair (`manage.py recount_projects`)
and the migration's backfill.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from django.db import connection, transaction
from django.db.models import F

from annotations.models import ProjectCounters, TaskState

STATE_FIELDS: tuple[str, ...] = tuple(TaskState.values)
FIELDS: tuple[str, ...] = (*STATE_FIELDS, "labels")


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


def state_move(project_id: int, before: str, after: str) -> None:
    """One task of the project moved from state `before` to `after`."""
    if before != after:
        counters_add(project_id, {before: -1, after: 1})


def counts_for(project_id: int) -> dict[str, int]:
    """The project's counters by name, and `total` (its tasks)."""
    row = ProjectCounters.objects.filter(project_id=project_id).values(*FIELDS).first()
    if row is None:  # never counted yet: count once, then the counters keep up
        recount([project_id])
        row = ProjectCounters.objects.filter(project_id=project_id).values(*FIELDS).first()
    counts = dict(row or dict.fromkeys(FIELDS, 0))
    counts["total"] = sum(counts[s] for s in STATE_FIELDS)
    return counts


_STATE_SUMS = ", ".join(f"count(*) FILTER (WHERE state = %s) AS {s}" for s in STATE_FIELDS)
_COLUMNS = ", ".join(FIELDS)
_RECOUNT = f"""
INSERT INTO annotations_projectcounters (project_id, {_COLUMNS})
SELECT p.id, {", ".join(f"COALESCE(t.{s}, 0)" for s in STATE_FIELDS)}, COALESCE(l.labels, 0)
FROM annotations_project p
LEFT JOIN (
    SELECT project_id, {_STATE_SUMS} FROM annotations_task GROUP BY project_id
) t ON t.project_id = p.id
LEFT JOIN (
    SELECT t.project_id, count(*) AS labels
    FROM annotations_label l JOIN annotations_task t ON t.id = l.task_id
    GROUP BY t.project_id
) l ON l.project_id = p.id
WHERE %s OR p.id = ANY(%s)
ON CONFLICT (project_id) DO UPDATE SET {", ".join(f"{f} = EXCLUDED.{f}" for f in FIELDS)}
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
        cursor.execute(_RECOUNT, [*STATE_FIELDS, everything, ids or []])
        return cursor.rowcount
