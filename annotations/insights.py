"""Project insight: daily rollups of the review and the drafting, and what the insights
page shows from them.

A decision's figures are added in the decision's own statement (`review_day_sql`, one
UPSERT among `services._review_settle`'s parts): a reading counts on the day it was first
made (UTC), as it stands now; a changed decision takes its old figures away and adds its
new ones, an undo the reverse. Drafting writes add to `DraftDay` the same way. The page
sums these rows (days x readers), so its cost does not grow with the project's tasks.
`recount` rebuilds both from the labels and drafts (`manage.py recount_projects`, the
migration's backfill).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import timezone as dt_timezone

from django.db import connection, transaction

# Time on task buckets, lower bounds in seconds; the last is open.
TIME_BUCKETS: tuple[int, ...] = (0, 5, 10, 20, 40, 80, 160, 320, 640)
# Edit size buckets, lower bounds in words; the last is open.
EDIT_BUCKETS: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32)
JSON_FIELDS = ("time_hist", "edit_hist", "categories")
NUMBER_FIELDS = (
    "readings",
    "accepted",
    "edited",
    "rejected",
    "fast_accepts",
    "timed",
    "time_ms",
    "time_ms_sq",
    "edit_words",
    "edit_words_sq",
)


def bucket_of(value: float, bounds: Sequence[int]) -> str:
    """The name of the bucket `value` falls in: its lower bound."""
    found = bounds[0]
    for bound in bounds:
        if value >= bound:
            found = bound
    return str(found)


def reading_figures(state: Mapping | None) -> dict:
    """What one reading (a label's state, as its audit row keeps it; None: no reading)
    adds to its reader's day."""
    if not state:
        return {}
    decision = state["decision"]
    figures: dict = {"readings": 1, decision: 1}
    if state.get("fast_accept"):
        figures["fast_accepts"] = 1
    ms = state.get("time_on_task_ms")
    if ms is not None:
        figures |= {"timed": 1, "time_ms": ms, "time_ms_sq": float(ms) ** 2}
        figures["time_hist"] = {bucket_of(ms / 1000, TIME_BUCKETS): 1}
    words = state.get("edit_words")
    if decision != "rejected" and words is not None:
        figures |= {"edit_words": words, "edit_words_sq": float(words) ** 2}
        figures["edit_hist"] = {bucket_of(words, EDIT_BUCKETS): 1}
    if state.get("category"):
        figures["categories"] = {state["category"]: 1}
    return figures


def figures_delta(before: Mapping | None, after: Mapping | None) -> dict:
    """A reading's change, from state `before` to `after`, as figures to add."""
    old, new = reading_figures(before), reading_figures(after)
    delta: dict = {}
    for name in NUMBER_FIELDS:
        n = new.get(name, 0) - old.get(name, 0)
        if n:
            delta[name] = n
    for name in JSON_FIELDS:
        counts = Counter(new.get(name, {}))
        counts.subtract(old.get(name, {}))
        kept = {k: n for k, n in counts.items() if n}
        if kept:
            delta[name] = kept
    return delta


def _json_add(table: str, column: str) -> str:
    """SQL adding EXCLUDED's {key: n} to the row's, key by key, dropping zeros."""
    return (
        f"{column} = (SELECT COALESCE(jsonb_object_agg(k, n), '{{}}'::jsonb) FROM ("
        f"SELECT k, sum(v::bigint) AS n FROM (SELECT * FROM jsonb_each_text({table}.{column}) "
        f"UNION ALL SELECT * FROM jsonb_each_text(EXCLUDED.{column})) e(k, v) "
        "GROUP BY k HAVING sum(v::bigint) <> 0) s)"
    )


_REVIEW_COLUMNS = ", ".join((*NUMBER_FIELDS, *JSON_FIELDS))
_REVIEW_SQL = (
    f"INSERT INTO annotations_reviewday (project_id, reviewer_id, day, {_REVIEW_COLUMNS}) "
    f"VALUES (%s, %s, %s, {', '.join(['%s'] * len(NUMBER_FIELDS))}, "
    f"{', '.join(['%s::jsonb'] * len(JSON_FIELDS))}) "
    "ON CONFLICT (project_id, reviewer_id, day) DO UPDATE SET "
    + ", ".join(f"{f} = annotations_reviewday.{f} + EXCLUDED.{f}" for f in NUMBER_FIELDS)
    + ", "
    + ", ".join(_json_add("annotations_reviewday", f) for f in JSON_FIELDS)
)


def day_of(at: datetime) -> date:
    return at.astimezone(dt_timezone.utc).date()


def review_day_sql(
    project_id: int, reviewer_id: int, made_at: datetime, delta: Mapping
) -> tuple[str, list]:
    """`delta` (`figures_delta`) added to the reader's day of a reading made at `made_at`,
    as one UPSERT (a row made on first use), for `services._execute_together`."""
    params = [project_id, reviewer_id, day_of(made_at)]
    params += [delta.get(f, 0) for f in NUMBER_FIELDS]
    params += [json.dumps(delta.get(f, {})) for f in JSON_FIELDS]
    return _REVIEW_SQL, params


_DRAFT_SQL = """
INSERT INTO annotations_draftday AS d (project_id, day, drafts, truncated, seconds, seconds_sq,
    failed, failures, first_at, last_at, queue_max, queue_last)
SELECT %(project)s, %(day)s, %(drafts)s, %(truncated)s, %(seconds)s, %(seconds_sq)s,
    %(failed)s, %(failures)s::jsonb, %(at)s, %(at)s, COALESCE(c.queued, 0), COALESCE(c.queued, 0)
FROM (SELECT 1) one
LEFT JOIN annotations_projectcounters c ON c.project_id = %(project)s
ON CONFLICT (project_id, day) DO UPDATE SET
    drafts = d.drafts + EXCLUDED.drafts, truncated = d.truncated + EXCLUDED.truncated,
    seconds = d.seconds + EXCLUDED.seconds, seconds_sq = d.seconds_sq + EXCLUDED.seconds_sq,
    failed = d.failed + EXCLUDED.failed,
    first_at = LEAST(d.first_at, EXCLUDED.first_at),
    last_at = GREATEST(d.last_at, EXCLUDED.last_at),
    queue_max = GREATEST(d.queue_max, EXCLUDED.queue_max), queue_last = EXCLUDED.queue_last,
""" + _json_add("d", "failures")


def failure_reason(error: str) -> str:
    """A failure's reason as the page groups them: its first line, short."""
    line = (error or "unknown error").strip().splitlines()[0] if error.strip() else "unknown"
    return line[:80]


def draft_day_add(
    project_id: int,
    at: datetime,
    *,
    seconds: float | None = None,
    truncated: bool = False,
    error: str | None = None,
) -> None:
    """Count a stored draft (`seconds` from claim to draft) or a failure (`error`) of a
    project at `at`, with the queue depth now: one UPSERT, in the caller's transaction."""
    drafted = seconds is not None
    params = {
        "project": project_id,
        "day": day_of(at),
        "at": at,
        "drafts": int(drafted),
        "truncated": int(drafted and truncated),
        "seconds": seconds or 0.0,
        "seconds_sq": (seconds or 0.0) ** 2,
        "failed": int(error is not None),
        "failures": json.dumps({failure_reason(error): 1} if error is not None else {}),
    }
    with connection.cursor() as cursor:
        cursor.execute(_DRAFT_SQL, params)


# Rebuilding --------------------------------------------------------------------------------

_LABELS = """
SELECT t.project_id, l.reviewer_id, l.created_at, l.decision, l.fast_accept,
       l.time_on_task_ms, l.edit_words, l.category
FROM annotations_label l JOIN annotations_task t ON t.id = l.task_id
WHERE %s OR t.project_id = ANY(%s)
"""

_DRAFTS = """
INSERT INTO annotations_draftday (project_id, day, drafts, truncated, seconds, seconds_sq,
    failed, failures, first_at, last_at, queue_max, queue_last)
SELECT t.project_id, (d.created_at AT TIME ZONE 'UTC')::date, count(*),
    count(*) FILTER (WHERE d.truncated), sum(d.seconds_total), sum(d.seconds_total ^ 2),
    0, '{}'::jsonb, min(d.created_at), max(d.created_at), 0, 0
FROM annotations_draft d JOIN annotations_task t ON t.id = d.task_id
WHERE %s OR t.project_id = ANY(%s)
GROUP BY 1, 2
"""

_FAILURES = """
SELECT project_id, at, after ->> 'error' FROM annotations_auditevent
WHERE action = 'task.state' AND after ->> 'state' = 'failed'
  AND (%s OR project_id = ANY(%s))
"""


def recount(project_ids: Iterable[int] | None = None, *, using=None) -> None:
    """Rebuild the rollups of `project_ids` (None: every project) from the labels, the
    drafts and the failures' audit rows (queue depths seen are not kept anywhere else and
    start again at zero). Plain SQL, so that a migration can call it."""
    conn = using or connection
    ids = None if project_ids is None else sorted(set(project_ids))
    scope = [ids is None, ids or []]
    with transaction.atomic(using=conn.alias), conn.cursor() as cursor:
        cursor.execute(
            "DELETE FROM annotations_reviewday WHERE %s OR project_id = ANY(%s)", scope
        )
        cursor.execute("DELETE FROM annotations_draftday WHERE %s OR project_id = ANY(%s)", scope)
        cursor.execute(_LABELS, scope)
        days: dict[tuple, dict] = {}
        for project, reviewer, at, decision, fast, ms, words, category in cursor.fetchall():
            state = {
                "decision": decision,
                "fast_accept": fast,
                "time_on_task_ms": ms,
                "edit_words": words,
                "category": category,
            }
            key = (project, reviewer, day_of(at))
            days[key] = _added(days.get(key, {}), figures_delta(None, state))
        for (project, reviewer, day), delta in days.items():
            cursor.execute(*review_day_sql(project, reviewer, _noon(day), delta))
        cursor.execute(_DRAFTS, scope)
        cursor.execute(_FAILURES, scope)
        for project, at, error in cursor.fetchall():
            failures = json.dumps({failure_reason(error or ""): 1})
            cursor.execute(
                _DRAFT_SQL,
                {
                    "project": project,
                    "day": day_of(at),
                    "at": at,
                    "drafts": 0,
                    "truncated": 0,
                    "seconds": 0.0,
                    "seconds_sq": 0.0,
                    "failed": 1,
                    "failures": failures,
                },
            )


def _noon(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=dt_timezone.utc)


def _added(total: dict, delta: Mapping) -> dict:
    out = dict(total)
    for name, value in delta.items():
        if name in JSON_FIELDS:
            merged = Counter(out.get(name, {}))
            merged.update(value)
            out[name] = dict(merged)
        else:
            out[name] = out.get(name, 0) + value
    return out


# Figures -----------------------------------------------------------------------------------

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95% interval (None where there is too little to say)."""

    value: float | None
    low: float | None
    high: float | None
    n: int

    def as_text(self, unit: str = "", scale: float = 1.0, digits: int = 1) -> str:
        if self.value is None:
            return "—"
        v, lo, hi = (x * scale for x in (self.value, self.low, self.high))
        return f"{v:.{digits}f}{unit} ({lo:.{digits}f}–{hi:.{digits}f})"


def wilson(successes: int, n: int, z: float = Z95) -> Estimate:
    """A rate with its Wilson score interval: sound near 0 and 1 and for small n, where
    the normal approximation gives impossible bounds."""
    if n <= 0:
        return Estimate(None, None, None, 0)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def mean_interval(total: float, squares: float, n: int, z: float = Z95) -> Estimate:
    """A mean with its normal-approximation interval, from the sum and the sum of squares
    (what the rollups keep): mean ± z·s/√n."""
    if n <= 0:
        return Estimate(None, None, None, 0)
    mean = total / n
    if n == 1:
        return Estimate(mean, mean, mean, 1)
    variance = max(0.0, (squares - n * mean * mean) / (n - 1))
    half = z * math.sqrt(variance / n)
    return Estimate(mean, mean - half, mean + half, n)


def histogram_median(hist: Mapping[str, int], bounds: Sequence[int]) -> float | None:
    """An approximate median from a bucket histogram, interpolated within its bucket (the
    open last bucket is taken as wide as its lower bound)."""
    n = sum(hist.values())
    if n <= 0:
        return None
    half, seen = n / 2, 0
    for i, low in enumerate(bounds):
        count = hist.get(str(low), 0)
        if count and seen + count >= half:
            high = bounds[i + 1] if i + 1 < len(bounds) else low * 2 or 1
            return low + (high - low) * (half - seen) / count
        seen += count
    return float(bounds[-1])
