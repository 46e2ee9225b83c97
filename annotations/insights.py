"""Project insight: daily rollups of the review and the drafting, and what the insights
page shows from them.

A decision's figures are added in the decision's own statement (`review_day_sql`, one
UPSERT among `services._review_settle`'s parts): a reading counts on the day it was first
made (UTC), as it stands now; a changed decision takes its old figures away and adds its
new ones, an undo the reverse. Drafting writes add to `DraftDay` the same way. The prompt
and model comparison keeps `ArmDay` (prompt version x model revision x day) alike: drafts
and their ROUGE-L against the manifest's reference when stored, readings and the draft's
ROUGE-L against the kept text in the decision's statement (a second UPSERT there, its rows
in one JSON parameter). The page sums these rows (days x readers, days x arms), so its
cost does not grow with the project's tasks. `recount` rebuilds them all from the labels
and drafts (`manage.py recount_projects`, the migrations' backfills).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.db import connection, transaction

from annotations.models import ArmDay, DraftDay, ReviewDay

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
    return _delta(reading_figures(before), reading_figures(after), NUMBER_FIELDS, JSON_FIELDS)


# Adds two {key: n} JSON objects key by key, dropping zeros: the histograms' and categories'
# merge in the rollups' UPSERTs. A function, so that the decision's statement that carries
# them stays short enough for psycopg to cache its parsing (4096 characters). Created by
# migrations 0024 (before its backfill) and 0028; PL/pgSQL since 0029: a SQL function
# that cannot be inlined (this one aggregates) is planned again on every call, 90 µs each,
# five calls per decision; PL/pgSQL keeps its plans for the session. The rows never hold a
# zero (the deltas have none, and this drops those it makes), so an empty `b` gives `a`.
COUNTS_ADD_SQL = """
CREATE OR REPLACE FUNCTION annotations_counts_add(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  k text;
  v text;
  n bigint;
BEGIN
  a := COALESCE(a, '{}'::jsonb);
  IF b IS NULL OR b = '{}'::jsonb THEN
    RETURN a;
  END IF;
  FOR k, v IN SELECT * FROM jsonb_each_text(b) LOOP
    n := COALESCE((a ->> k)::bigint, 0) + v::bigint;
    IF n = 0 THEN
      a := a - k;
    ELSE
      a := jsonb_set(a, ARRAY[k], to_jsonb(n));
    END IF;
  END LOOP;
  RETURN a;
END
$$
"""


def _json_add(table: str, column: str) -> str:
    """SQL adding EXCLUDED's {key: n} to the row's, key by key, dropping zeros."""
    return f"{column} = annotations_counts_add({table}.{column}, EXCLUDED.{column})"


_REVIEW_COLUMNS = ", ".join((*NUMBER_FIELDS, *JSON_FIELDS))
# The figures go as one JSON parameter: the decision's statement, which this joins, keeps
# few enough parameters for psycopg to cache its parsing (at most 50).
_FLOAT_FIELDS = {"time_ms_sq", "edit_words_sq"}
_REVIEW_SQL = (
    f"INSERT INTO annotations_reviewday AS r (project_id, reviewer_id, day, {_REVIEW_COLUMNS}) "
    "SELECT %s, %s, %s::date, "
    + ", ".join(f"x.{f}" for f in (*NUMBER_FIELDS, *JSON_FIELDS))
    + " FROM jsonb_populate_record(NULL::annotations_reviewday, %s::jsonb) x "
    "ON CONFLICT (project_id, reviewer_id, day) DO UPDATE SET "
    + ", ".join(f"{f} = r.{f} + EXCLUDED.{f}" for f in NUMBER_FIELDS)
    + ", "
    + ", ".join(_json_add("r", f) for f in JSON_FIELDS)
)
# Every figure in the JSON row, so that none is null: those not changed are 0 (or {}).
_REVIEW_ZEROS = dict.fromkeys(NUMBER_FIELDS, 0) | {f: {} for f in JSON_FIELDS}


def day_of(at: datetime) -> date:
    return at.astimezone(UTC).date()


def review_day_sql(
    project_id: int, reviewer_id: int, made_at: datetime, delta: Mapping
) -> tuple[str, list]:
    """`delta` (`figures_delta`) added to the reader's day of a reading made at `made_at`,
    as one UPSERT (a row made on first use), for `services._execute_together`."""
    row = _REVIEW_ZEROS | dict(delta)
    return _REVIEW_SQL, [project_id, reviewer_id, day_of(made_at), json.dumps(row)]


# The prompt and model comparison ----------------------------------------------------------

# An arm: (prompt version, 0 for the modality's built-in prompt; model revision).
Arm = tuple[int, str]
ARM_NUMBER_FIELDS = (
    "drafts",
    "ref_n",
    "ref_sum",
    "ref_sq",
    "readings",
    "accepted",
    "edited",
    "rejected",
    "rouge_n",
    "rouge_sum",
    "rouge_sq",
)
ARM_JSON_FIELDS = ("edit_hist", "categories")
_ARM_FLOAT_FIELDS = {"ref_sum", "ref_sq", "rouge_sum", "rouge_sq"}


def arm_reading_figures(state: Mapping | None) -> dict:
    """What one reading (a label's state; None: no reading) adds to its draft's arm: the
    decision, the category, the edit size and ROUGE-L of the draft against the kept text."""
    if not state:
        return {}
    figures = reading_figures(state)
    kept = {k: figures[k] for k in ("readings", "edit_hist", "categories") if k in figures}
    kept[state["decision"]] = 1
    rouge = state.get("rouge_l")
    if state["decision"] != "rejected" and rouge is not None:
        kept |= {"rouge_n": 1, "rouge_sum": rouge, "rouge_sq": rouge * rouge}
    return kept


def _delta(old: Mapping, new: Mapping, numbers: Sequence[str], jsons: Sequence[str]) -> dict:
    delta: dict = {}
    for name in numbers:
        n = new.get(name, 0) - old.get(name, 0)
        if n:
            delta[name] = n
    for name in jsons:
        counts = Counter(new.get(name, {}))
        counts.subtract(old.get(name, {}))
        kept = {k: n for k, n in counts.items() if n}
        if kept:
            delta[name] = kept
    return delta


def arms_delta(
    before: Mapping | None, after: Mapping | None, arms: Mapping[int, Arm]
) -> dict[Arm, dict]:
    """A reading's change as figures to add to the arms of the drafts it judged before and
    after (`arms`: draft id -> arm; a reading can move to a newer draft's arm)."""
    old_arm = arms.get(before["draft"]) if before else None
    new_arm = arms.get(after["draft"]) if after else None
    old, new = arm_reading_figures(before), arm_reading_figures(after)
    if old_arm == new_arm:
        delta = _delta(old, new, ARM_NUMBER_FIELDS, ARM_JSON_FIELDS)
        return {new_arm: delta} if delta and new_arm is not None else {}
    out = {}
    if old_arm is not None and old:
        out[old_arm] = _delta(old, {}, ARM_NUMBER_FIELDS, ARM_JSON_FIELDS)
    if new_arm is not None and new:
        out[new_arm] = _delta({}, new, ARM_NUMBER_FIELDS, ARM_JSON_FIELDS)
    return out


# Every row goes in one JSON parameter: the decision's statement, which this joins, keeps
# few enough parameters for psycopg to cache its parsing (at most 50).
_ARM_KEYS = ("project_id", "prompt_version", "model_revision", "day")
_ARM_SQL = (
    "INSERT INTO annotations_armday AS a ("
    + ", ".join((*_ARM_KEYS, *ARM_NUMBER_FIELDS, *ARM_JSON_FIELDS))
    + ") SELECT "
    + ", ".join(f"x.{f}" for f in (*_ARM_KEYS, *ARM_NUMBER_FIELDS, *ARM_JSON_FIELDS))
    + " FROM jsonb_populate_recordset(NULL::annotations_armday, %s::jsonb) x "
    "ON CONFLICT (project_id, prompt_version, model_revision, day) DO UPDATE SET "
    + ", ".join(f"{f} = a.{f} + EXCLUDED.{f}" for f in ARM_NUMBER_FIELDS)
    + ", "
    + ", ".join(_json_add("a", f) for f in ARM_JSON_FIELDS)
)
_ARM_ZEROS = dict.fromkeys(ARM_NUMBER_FIELDS, 0) | {f: {} for f in ARM_JSON_FIELDS}


def arm_day_sql(project_id: int, at: datetime, deltas: Mapping[Arm, Mapping]) -> tuple[str, list]:
    """`deltas` (arm -> figures to add) added to the arms' days of `at`, as one UPSERT (rows
    made on first use), for `services._execute_together` or a cursor."""
    day = day_of(at).isoformat()
    rows = [
        _ARM_ZEROS
        | {"project_id": project_id, "prompt_version": version, "model_revision": revision}
        | {"day": day, **delta}
        for (version, revision), delta in deltas.items()
        if delta
    ]
    return _ARM_SQL, [json.dumps(rows)]


def draft_arm_add(
    project_id: int, at: datetime, arm: Arm, *, rouge_reference: float | None
) -> None:
    """Count a stored draft in its arm's day, with its ROUGE-L against the reference: one
    UPSERT, in the caller's transaction."""
    figures: dict = {"drafts": 1}
    if rouge_reference is not None:
        figures |= {"ref_n": 1, "ref_sum": rouge_reference, "ref_sq": rouge_reference**2}
    with connection.cursor() as cursor:
        cursor.execute(*arm_day_sql(project_id, at, {arm: figures}))


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
    """Rebuild the rollups of `project_ids` (None: every project): `days_recount` and
    `arms_recount`, in one transaction."""
    conn = using or connection
    with transaction.atomic(using=conn.alias):
        days_recount(project_ids, using=conn)
        arms_recount(project_ids, using=conn)


def days_recount(project_ids: Iterable[int] | None = None, *, using=None) -> None:
    """Rebuild the daily rollups of `project_ids` (None: every project) from the labels, the
    drafts and the failures' audit rows (queue depths seen are not kept anywhere else and
    start again at zero). Plain SQL, so that a migration can call it. A repair: writes to
    the rollups (decisions, drafts) wait until it commits."""
    conn = using or connection
    ids = None if project_ids is None else sorted(set(project_ids))
    scope = [ids is None, ids or []]
    with transaction.atomic(using=conn.alias), conn.cursor() as cursor:
        # Decisions and drafts wait while the rows are rebuilt: none is lost or counted twice.
        cursor.execute(
            "LOCK TABLE annotations_reviewday, annotations_draftday IN SHARE ROW EXCLUSIVE MODE"
        )
        cursor.execute("DELETE FROM annotations_reviewday WHERE %s OR project_id = ANY(%s)", scope)
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


_ARM_LABELS = """
SELECT t.project_id, COALESCE(pt.version, 0), d.model_revision, l.created_at, l.decision,
       l.edit_words, l.category, l.rouge_l
FROM annotations_label l JOIN annotations_task t ON t.id = l.task_id
JOIN annotations_draft d ON d.id = l.draft_id
LEFT JOIN annotations_prompttemplate pt ON pt.id = d.prompt_template_id
WHERE %s OR t.project_id = ANY(%s)
"""

_ARM_DRAFTS = """
INSERT INTO annotations_armday (project_id, prompt_version, model_revision, day, drafts,
    ref_n, ref_sum, ref_sq, readings, accepted, edited, rejected, edit_hist, categories,
    rouge_n, rouge_sum, rouge_sq)
SELECT t.project_id, COALESCE(pt.version, 0), d.model_revision,
    (d.created_at AT TIME ZONE 'UTC')::date, count(*), count(d.rouge_reference),
    COALESCE(sum(d.rouge_reference), 0), COALESCE(sum(d.rouge_reference ^ 2), 0),
    0, 0, 0, 0, '{}'::jsonb, '{}'::jsonb, 0, 0, 0
FROM annotations_draft d JOIN annotations_task t ON t.id = d.task_id
LEFT JOIN annotations_prompttemplate pt ON pt.id = d.prompt_template_id
WHERE %s OR t.project_id = ANY(%s)
GROUP BY 1, 2, 3, 4
"""


def arms_recount(project_ids: Iterable[int] | None = None, *, using=None) -> None:
    """Rebuild the comparison rollup (`ArmDay`) of `project_ids` (None: every project) from
    the drafts and the labels. A repair, like `days_recount`."""
    conn = using or connection
    ids = None if project_ids is None else sorted(set(project_ids))
    scope = [ids is None, ids or []]
    with transaction.atomic(using=conn.alias), conn.cursor() as cursor:
        cursor.execute("LOCK TABLE annotations_armday IN SHARE ROW EXCLUSIVE MODE")
        cursor.execute("DELETE FROM annotations_armday WHERE %s OR project_id = ANY(%s)", scope)
        cursor.execute(_ARM_DRAFTS, scope)
        cursor.execute(_ARM_LABELS, scope)
        arms: dict[tuple, dict] = {}
        for project, version, revision, at, decision, words, category, rouge in cursor.fetchall():
            state = {
                "decision": decision,
                "edit_words": words,
                "category": category,
                "rouge_l": rouge,
                "draft": 0,
            }
            key = (project, day_of(at), (version, revision))
            arms[key] = _added(
                arms.get(key, {}), arms_delta(None, state, {0: key[2]}).get(key[2], {})
            )
        for (project, day, arm), delta in arms.items():
            cursor.execute(*arm_day_sql(project, _noon(day), {arm: delta}))


def _noon(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


def _added(total: dict, delta: Mapping) -> dict:
    out = dict(total)
    for name, value in delta.items():
        if name in JSON_FIELDS or name in ARM_JSON_FIELDS:
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

    def as_percent(self) -> str:
        return self.as_text(" %", 100)

    def as_seconds(self) -> str:
        return self.as_text(" s")


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


# The page -----------------------------------------------------------------------------------

EDIT_LABELS = ("0", "1", "2–3", "4–7", "8–15", "16–31", "32+")
TIME_LABELS = (
    "0–5 s",
    "5–10 s",
    "10–20 s",
    "20–40 s",
    "40–80 s",
    "80–160 s",
    "160–320 s",
    "320–640 s",
    "640 s+",
)
RECENT_DAYS = 7


@dataclass
class Plot:
    """One figure of the page: what the chart draws (`labels`, `series`: name -> values),
    its caption, a sentence for screen readers, and its data as a table (and CSV)."""

    key: str
    title: str
    caption: str
    kind: str  # "bar", "stacked" or "line"
    labels: list[str]
    series: dict[str, list[float]]
    summary: str
    y_title: str = ""
    x_title: str = "Day"

    @property
    def columns(self) -> list[str]:
        return [self.x_title, *self.series]

    @property
    def rows(self) -> list[list]:
        values = list(self.series.values())
        return [[label, *(s[i] for s in values)] for i, label in enumerate(self.labels)]

    def chart(self) -> dict:
        """What static/js/insights.js draws (through json_script)."""
        return {
            "key": self.key,
            "kind": self.kind,
            "labels": self.labels,
            "series": [{"name": k, "values": v} for k, v in self.series.items()],
            "y_title": self.y_title,
        }


def review_rows(project_id: int) -> list[dict]:
    """Every reader-day of the project (one query; days x readers, not tasks)."""
    fields = ("day", "reviewer_id", "reviewer__username", *NUMBER_FIELDS, *JSON_FIELDS)
    return list(ReviewDay.objects.filter(project_id=project_id).values(*fields).order_by("day"))


def draft_rows(project_id: int) -> list[dict]:
    return list(DraftDay.objects.filter(project_id=project_id).values().order_by("day"))


def _sum_json(rows: Iterable[Mapping], name: str) -> Counter:
    total: Counter = Counter()
    for row in rows:
        total.update(row[name] or {})
    return total


def _totals(rows: Sequence[Mapping]) -> dict:
    totals = {name: sum(row[name] for row in rows) for name in NUMBER_FIELDS}
    for name in JSON_FIELDS:
        totals[name] = _sum_json(rows, name)
    return totals


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "—"


def per_reader(rows: Sequence[Mapping]) -> list[dict]:
    """Each reader's readings, acceptance rate (Wilson) and approximate median time on task
    (from the time histogram), by name."""
    by_reader: dict[str, list] = {}
    for row in rows:
        by_reader.setdefault(row["reviewer__username"], []).append(row)
    readers = []
    for name, mine in sorted(by_reader.items()):
        t = _totals(mine)
        median = histogram_median(t["time_hist"], TIME_BUCKETS)
        readers.append(
            {
                "name": name,
                "readings": t["readings"],
                "accepted": t["accepted"],
                "acceptance": wilson(t["accepted"], t["readings"]),
                "median_s": median,
                "fast_accepts": t["fast_accepts"],
            }
        )
    return [r for r in readers if r["readings"]]


def dashboard(
    project,
    *,
    counts: Mapping[str, int],
    agreement: Mapping | None,
    catch_rates: Sequence,
    today: date,
) -> dict:
    """Everything the insights page shows, from the rollups, the counters, the agreement
    cells and the sentinel readings: a few queries, whatever the project's size."""
    rows = review_rows(project.pk)
    drafting = draft_rows(project.pk)
    totals = _totals(rows)
    readers = per_reader(rows)
    plots = _plots(rows, drafting, totals, readers, catch_rates)
    arms = comparison_arms(arm_rows(project.pk))
    return {
        "totals": totals,
        "readers": readers,
        "plots": plots,
        "charts": [p.chart() for p in plots],
        "summary": study_summary(totals, catch_rates, arms),
        "arms": arms,
        "arms_summary": arms_summary(arms),
        "arm_columns": COMPARISON_COLUMNS,
        "agreement": agreement,
        "backlog": counts.get("disagreement", 0),
        "coverage": coverage(project, rows, counts, today),
        "drafting": drafting_figures(drafting),
    }


def _days(rows: Sequence[Mapping]) -> list[date]:
    return sorted({row["day"] for row in rows})


def _plots(rows, drafting, totals, readers, catch_rates) -> list[Plot]:
    days = _days(rows)
    by_day: dict[date, list] = {d: [] for d in days}
    for row in rows:
        by_day[row["day"]].append(row)
    decided = {
        name.capitalize(): [sum(r[name] for r in by_day[d]) for d in days]
        for name in ("accepted", "edited", "rejected")
    }
    n = totals["readings"]
    edit_counts = [totals["edit_hist"].get(str(b), 0) for b in EDIT_BUCKETS]
    time_counts = [totals["time_hist"].get(str(b), 0) for b in TIME_BUCKETS]
    categories = sorted(totals["categories"].items(), key=lambda kv: (-kv[1], kv[0]))
    draft_days = [row["day"].isoformat() for row in drafting]
    return [
        Plot(
            "decisions",
            "Decisions per day",
            "Readings by the day they were made, by decision.",
            "stacked",
            [d.isoformat() for d in days],
            decided,
            f"{n} readings over {len(days)} day(s): {totals['accepted']} accepted "
            f"({_pct(totals['accepted'], n)}), {totals['edited']} edited, "
            f"{totals['rejected']} rejected.",
            "Readings",
        ),
        Plot(
            "edits",
            "Edit size",
            "Words changed between the draft and the kept text (accepted and edited).",
            "bar",
            list(EDIT_LABELS),
            {"Readings": edit_counts},
            f"{sum(edit_counts)} kept texts; {edit_counts[0]} kept the draft word for word.",
            "Readings",
            "Words changed",
        ),
        Plot(
            "categories",
            "What was wrong with the draft",
            "Correction categories given with edits and rejections.",
            "bar",
            [k for k, _ in categories],
            {"Readings": [v for _, v in categories]},
            ", ".join(f"{k}: {v}" for k, v in categories) or "No category given yet.",
            "Readings",
            "Category",
        ),
        Plot(
            "time",
            "Time on task",
            "From the draft shown to the decision, for readings whose time is known.",
            "bar",
            list(TIME_LABELS),
            {"Readings": time_counts},
            f"{totals['timed']} timed readings; median about "
            f"{_seconds(histogram_median(totals['time_hist'], TIME_BUCKETS))} "
            "(estimated from these bands).",
            "Readings",
            "Time on task",
        ),
        Plot(
            "readers",
            "Readings per reviewer",
            "Each reviewer's readings and, of them, accepts (fast accepts flagged apart).",
            "bar",
            [r["name"] for r in readers],
            {
                "Readings": [r["readings"] for r in readers],
                "Accepted": [r["accepted"] for r in readers],
                "Fast accepts": [r["fast_accepts"] for r in readers],
            },
            "; ".join(
                f"{r['name']}: {r['readings']} readings, {_pct(r['accepted'], r['readings'])} "
                f"accepted, {r['fast_accepts']} fast accepts"
                for r in readers
            )
            or "No readings yet.",
            "Readings",
            "Reviewer",
        ),
        Plot(
            "sentinels",
            "Sentinel catch rate per reader",
            "Check drafts with a deliberate error: the share each reader caught.",
            "bar",
            [c.reviewer for c in catch_rates],
            {"Caught (%)": [c.percent for c in catch_rates]},
            "; ".join(f"{c.reviewer}: {c.caught} of {c.read} caught" for c in catch_rates)
            or "No sentinel read yet.",
            "Percent caught",
            "Reader",
        ),
        Plot(
            "queue",
            "Drafting queue",
            "Tasks waiting for drafting: the most seen each day, at drafting writes.",
            "line",
            draft_days,
            {"Most waiting": [row["queue_max"] for row in drafting]},
            f"Most tasks waiting on one day: {max((r['queue_max'] for r in drafting), default=0)}.",
            "Tasks",
        ),
        Plot(
            "drafting",
            "Drafts per day",
            "Drafts stored, truncated (hit the token limit) and failed, by day.",
            "stacked",
            draft_days,
            {
                "Stored": [row["drafts"] - row["truncated"] for row in drafting],
                "Truncated": [row["truncated"] for row in drafting],
                "Failed": [row["failed"] for row in drafting],
            },
            f"{sum(r['drafts'] for r in drafting)} drafts, "
            f"{sum(r['truncated'] for r in drafting)} truncated, "
            f"{sum(r['failed'] for r in drafting)} failed.",
            "Drafts",
        ),
    ]


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} s"


def drafting_figures(drafting: Sequence[Mapping]) -> dict:
    """Drafts per minute (over the minutes between each day's first and last draft), seconds
    per draft with its interval, and failures by reason."""
    drafts = sum(r["drafts"] for r in drafting)
    minutes = sum(
        max(1.0, (r["last_at"] - r["first_at"]).total_seconds() / 60)
        for r in drafting
        if r["drafts"] and r["first_at"] and r["last_at"]
    )
    failures = _sum_json(drafting, "failures")
    return {
        "drafts": drafts,
        "per_minute": drafts / minutes if minutes else None,
        "seconds": mean_interval(
            sum(r["seconds"] for r in drafting), sum(r["seconds_sq"] for r in drafting), drafts
        ),
        "truncated": sum(r["truncated"] for r in drafting),
        "failed": sum(r["failed"] for r in drafting),
        "failures": sorted(failures.items(), key=lambda kv: (-kv[1], kv[0])),
    }


def coverage(project, rows: Sequence[Mapping], counts: Mapping[str, int], today: date) -> dict:
    """Progress toward every task validated, and the days left at the pace of the last
    RECENT_DAYS days (readings then, divided by the readings each task needs)."""
    total, done = counts.get("total", 0), counts.get("decided", 0)
    since = today - timedelta(days=RECENT_DAYS - 1)
    recent = sum(r["readings"] for r in rows if r["day"] >= since)
    per_day = recent / RECENT_DAYS / max(1, project.readings_per_task)
    left = max(0, total - done)
    return {
        "total": total,
        "done": done,
        "percent": 100 * done / total if total else 0.0,
        "left": left,
        "per_day": per_day,
        "days_left": math.ceil(left / per_day) if per_day and left else (0 if not left else None),
    }


@dataclass(frozen=True)
class SummaryRow:
    figure: str
    estimate: Estimate | None
    unit: str
    scale: float
    note: str

    def cells(self) -> list[str]:
        if self.estimate is None or self.estimate.value is None:
            return [
                self.figure,
                "—",
                "—",
                "—",
                str(self.estimate.n if self.estimate else 0),
                self.note,
            ]
        e, s, d = self.estimate, self.scale, 1
        return [
            self.figure,
            f"{e.value * s:.{d}f}{self.unit}",
            f"{e.low * s:.{d}f}{self.unit}",
            f"{e.high * s:.{d}f}{self.unit}",
            str(e.n),
            self.note,
        ]


SUMMARY_COLUMNS = ["Figure", "Value", "95% low", "95% high", "n", "How"]


def study_summary(
    totals: Mapping, catch_rates: Sequence, arms: Sequence[ArmRow] = ()
) -> list[SummaryRow]:
    """The figures reader studies of AI-drafted reports give, each with its 95% interval."""
    n = totals["readings"]
    every = {
        name: sum(getattr(a, name) for a in arms)
        for name in ("rouge_n", "rouge_sum", "rouge_sq", "ref_n", "ref_sum", "ref_sq")
    }
    read = sum(c.read for c in catch_rates)
    caught = sum(c.caught for c in catch_rates)
    return [
        SummaryRow(
            "Time per case",
            mean_interval(totals["time_ms"], totals["time_ms_sq"], totals["timed"]),
            " s",
            0.001,
            "mean, normal approximation",
        ),
        SummaryRow("Acceptance rate", wilson(totals["accepted"], n), " %", 100, "Wilson"),
        SummaryRow("Edit rate", wilson(totals["edited"], n), " %", 100, "Wilson"),
        SummaryRow(
            "Edit size (edited drafts)",
            mean_interval(totals["edit_words"], totals["edit_words_sq"], totals["edited"]),
            " words",
            1,
            "mean, normal approximation",
        ),
        SummaryRow(
            "Fast accepts",
            wilson(totals["fast_accepts"], totals["accepted"]),
            " %",
            100,
            "Wilson, of accepts",
        ),
        SummaryRow("Sentinel catch rate", wilson(caught, read), " %", 100, "Wilson"),
        SummaryRow(
            "ROUGE-L, draft vs validated text",
            mean_interval(every["rouge_sum"], every["rouge_sq"], every["rouge_n"]),
            "",
            100,
            "mean F-measure x 100 (accepted and edited), normal approximation",
        ),
        SummaryRow(
            "ROUGE-L, draft vs reference",
            mean_interval(every["ref_sum"], every["ref_sq"], every["ref_n"]),
            "",
            100,
            "mean F-measure x 100 (drafts with a manifest reference), normal approximation",
        ),
    ]


def csv_safe(value) -> str:
    """A cell a spreadsheet will not run as a formula."""
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def as_csv(columns: Sequence[str], rows: Iterable[Sequence]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([csv_safe(c) for c in columns])
    for row in rows:
        writer.writerow([csv_safe(c) for c in row])
    return out.getvalue()


# The prompt and model comparison table -------------------------------------------------------


def arm_rows(project_id: int) -> list[dict]:
    """Every arm-day of the project (one query; arms x days, not drafts)."""
    return list(ArmDay.objects.filter(project_id=project_id).values())


@dataclass(frozen=True)
class ArmRow:
    """One arm of the comparison, its days summed."""

    prompt_version: int
    model_revision: str
    drafts: int
    readings: int
    accepted: int
    edited: int
    rejected: int
    edit_hist: dict
    categories: dict
    rouge_n: int
    rouge_sum: float
    rouge_sq: float
    ref_n: int
    ref_sum: float
    ref_sq: float

    @property
    def prompt(self) -> str:
        return f"v{self.prompt_version}" if self.prompt_version else "built-in"

    @property
    def revision(self) -> str:
        return self.model_revision or "unknown"

    @property
    def acceptance(self) -> Estimate:
        return wilson(self.accepted, self.readings)

    @property
    def median_edit_words(self) -> float | None:
        return histogram_median(self.edit_hist, EDIT_BUCKETS)

    @property
    def rouge(self) -> Estimate:
        return mean_interval(self.rouge_sum, self.rouge_sq, self.rouge_n)

    @property
    def rouge_reference(self) -> Estimate:
        return mean_interval(self.ref_sum, self.ref_sq, self.ref_n)

    @property
    def reject_categories(self) -> str:
        ordered = sorted(self.categories.items(), key=lambda kv: (-kv[1], kv[0]))
        return ", ".join(f"{k}: {n}" for k, n in ordered if n) or "—"

    def cells(self) -> list[str]:
        median = self.median_edit_words
        return [
            self.prompt,
            self.revision,
            str(self.drafts),
            str(self.readings),
            self.acceptance.as_percent(),
            "—" if median is None else f"{median:.1f}",
            self.reject_categories,
            self.rouge.as_text(scale=100),
            self.rouge_reference.as_text(scale=100),
        ]


COMPARISON_COLUMNS = [
    "Prompt",
    "Model revision",
    "Drafts",
    "Readings",
    "Acceptance rate (95% interval)",
    "Median edit (words, approx.)",
    "Correction categories",
    "ROUGE-L vs validated (95% interval)",
    "ROUGE-L vs reference (95% interval)",
]


def comparison_arms(rows: Iterable[Mapping]) -> list[ArmRow]:
    """The arms of the project's drafts (prompt version x model revision), days summed,
    in prompt version order."""
    by_arm: dict[Arm, list] = {}
    for row in rows:
        by_arm.setdefault((row["prompt_version"], row["model_revision"]), []).append(row)
    arms = []
    for (version, revision), mine in sorted(by_arm.items()):
        numbers = {name: sum(r[name] for r in mine) for name in ARM_NUMBER_FIELDS}
        jsons = {name: dict(_sum_json(mine, name)) for name in ARM_JSON_FIELDS}
        if numbers["drafts"] or numbers["readings"]:
            arms.append(ArmRow(version, revision, **numbers, **jsons))
    return arms


def arms_summary(arms: Sequence[ArmRow]) -> str:
    """The comparison in a sentence or two, for screen readers."""
    if not arms:
        return "No drafts yet: nothing to compare."
    return (
        "; ".join(
            f"prompt {a.prompt}, model {a.revision}: {a.drafts} drafts, {a.readings} readings, "
            f"acceptance {a.acceptance.as_percent()}, ROUGE-L vs validated "
            f"{a.rouge.as_text(scale=100)}"
            for a in arms
        )
        + "."
    )
