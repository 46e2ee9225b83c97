"""Exports of validated labels, as JSON Lines or CSV. Rows stream from the database: memory
stays flat at any project size.

PostgreSQL builds every row (`_ROW_FIELDS`, one place for the export's fields). The plain
export (one reading per task, no history) is a `COPY` whose output is passed through as it
comes; the options that need the audit trail or the double-reading groups read the same rows
through a server-side cursor, a chunk at a time, and add what they ask for in Python.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import hmac
import io
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import IO, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from annotations.models import (
    Adjudication,
    AuditEvent,
    Decision,
    Draft,
    Image,
    Label,
    Project,
    PromptTemplate,
    ReviewState,
    Task,
)
from annotations.notice import AI_NOTICE
from annotations.regions import feature_collection
from imaging.inspect import ALLOWED_PROPERTIES

# Labels read (and audit events looked up) per chunk: memory stays flat at any project size.
CHUNK = 500

# The training formats: JSON Lines files with other rows, built from the export's rows.
TRAINING_FORMATS = ("chat", "dpo", "kto", "geojson")
FORMATS = ("jsonl", "csv", *TRAINING_FORMATS)
_NDJSON = "application/x-ndjson; charset=utf-8"
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8"} | {f: _NDJSON for f in FORMATS if f != "csv"}

# The audit actions that write a label or an adjudication, with its state before and after.
LABEL_RECORD, LABEL_UNDO, ADJUDICATION_RECORD = "label.record", "label.undo", "adjudication.record"

_TRUE = frozenset({"1", "true", "yes", "on"})
_UTF8 = frozenset({"utf-8", "utf8"})

# A query value longer than this, or holding a NUL (which PostgreSQL refuses), is ignored.
_MAX_VALUE = 200
_MAX_META = 20
_DEFAULT_SPLIT = (80.0, 10.0, 10.0)
SPLITS = ("train", "validation", "test")


def _value(query: Mapping[str, str], name: str) -> str:
    value = query.get(name, "")
    value = value.strip() if isinstance(value, str) else ""
    return "" if len(value) > _MAX_VALUE or "\x00" in value else value


def _date(value: str) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def _int(value: str, limit: int) -> int | None:
    try:
        number = int(value)
    except ValueError:
        return None
    return number if 0 <= number <= limit else None


def _ratios(value: str) -> tuple[float, float, float] | None:
    """`80,10,10` (train, validation, test; any scale); `1`, `true`...: 80,10,10."""
    if value.lower() in _TRUE:
        return _DEFAULT_SPLIT
    try:
        parts = tuple(float(part) for part in value.split(","))
    except ValueError:
        return None
    if len(parts) != 3 or not all(math.isfinite(p) and p >= 0 for p in parts):
        return None
    return parts if sum(parts) > 0 else None  # type: ignore[return-value]


def _meta(query: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """`meta.<key>=<value>` pairs; also `meta_key` and `meta_value` (the page's form)."""
    pairs = {}
    keys = [k for k in query if isinstance(k, str) and k.startswith("meta.")]
    for key in keys:
        name, value = key[len("meta.") :].strip(), _value(query, key)
        if name and len(name) <= _MAX_VALUE and "\x00" not in name and value:
            pairs[name] = value
    name, value = _value(query, "meta_key"), _value(query, "meta_value")
    if name and value:
        pairs[name] = value
    return tuple(sorted(pairs.items()))[:_MAX_META]


@dataclass(frozen=True)
class ExportOptions:
    """What an export holds beyond the final labels: every reading of a double-read task
    (`readings`), and every label's earlier versions from the audit trail (`history`); and
    its format (`jsonl`, or `csv`: the same columns, nested fields as JSON text).

    Filters (each a SQL condition; unset: no filter): `decision`, `review_state`, `reviewer`
    (a username, or its pseudonym), labelled between `date_from` and `date_to` (inclusive),
    `model_id` (as exported, or as recorded), `prompt_version`, and `meta`: manifest fields
    that must equal a value. `split` (train, validation, test ratios) adds a `split` column,
    by patient (else case, else task), seeded by `split_seed`. Reviewers are pseudonyms
    unless `reviewer_names`."""

    readings: bool = False
    history: bool = False
    format: str = "jsonl"
    decision: str = ""
    review_state: str = ""
    reviewer: str = ""
    date_from: date | None = None
    date_to: date | None = None
    model_id: str = ""
    prompt_version: int | None = None
    meta: tuple[tuple[str, str], ...] = ()
    split: tuple[float, float, float] | None = None
    split_seed: int = 0
    reviewer_names: bool = False

    @property
    def file_format(self) -> str:
        """What the file is: `csv`, or `jsonl` (every other format is JSON Lines)."""
        return file_format(self.format)

    @property
    def file_name(self) -> str:
        """The file's name after the project's: `labels.jsonl`, `labels-chat.jsonl`..."""
        name = "labels" if self.format in ("jsonl", "csv") else f"labels-{self.format}"
        return f"{name}.{self.file_format}"

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> ExportOptions:
        """`?readings=all`, `?history=1` and `?format=csv`; the filters `decision`,
        `review_state`, `reviewer`, `from`, `to` (ISO dates), `model_id`, `prompt_version`,
        `meta.<key>=<value>`; `split=80,10,10&split_seed=N`; `reviewer_names=1`. Any other
        value is the default (no filter), never an error."""
        chosen = _value(query, "format").lower()
        decision = _value(query, "decision").lower()
        review_state = _value(query, "review_state").lower()
        return cls(
            readings=_value(query, "readings").lower() == "all",
            history=_value(query, "history").lower() in _TRUE,
            format=chosen if chosen in FORMATS else "jsonl",
            decision=decision if decision in Decision.values else "",
            review_state=review_state if review_state in ReviewState.values else "",
            reviewer=_value(query, "reviewer"),
            date_from=_date(_value(query, "from")),
            date_to=_date(_value(query, "to")),
            model_id=_value(query, "model_id"),
            prompt_version=_int(_value(query, "prompt_version"), 2**31 - 1),
            meta=_meta(query),
            split=_ratios(_value(query, "split")),
            split_seed=_int(_value(query, "split_seed"), 2**63 - 1) or 0,
            reviewer_names=_value(query, "reviewer_names").lower() in _TRUE,
        )

    def to_query(self) -> dict[str, str]:
        """The query that `from_query` reads back into these options: what an export job
        keeps (plain JSON) for its worker."""
        query = {"format": self.format}
        if self.readings:
            query["readings"] = "all"
        if self.history:
            query["history"] = "1"
        for name in ("decision", "review_state", "reviewer", "model_id"):
            if getattr(self, name):
                query[name] = getattr(self, name)
        if self.prompt_version is not None:
            query["prompt_version"] = str(self.prompt_version)
        if self.date_from is not None:
            query["from"] = self.date_from.isoformat()
        if self.date_to is not None:
            query["to"] = self.date_to.isoformat()
        for key, value in self.meta:
            query[f"meta.{key}"] = value
        if self.split is not None:
            query["split"] = ",".join(repr(part) for part in self.split)
            query["split_seed"] = str(self.split_seed)
        if self.reviewer_names:
            query["reviewer_names"] = "1"
        return query

    def audit(self) -> dict[str, Any]:
        """The options for the `project.export` audit event: readings and history, and
        whatever else was chosen."""
        chosen: dict[str, Any] = {"readings": self.readings, "history": self.history}
        for name in ("decision", "review_state", "reviewer", "model_id", "prompt_version"):
            if getattr(self, name) not in ("", None):
                chosen[name] = getattr(self, name)
        for name in ("date_from", "date_to"):
            if getattr(self, name) is not None:
                chosen[name] = getattr(self, name).isoformat()
        if self.meta:
            chosen["meta"] = dict(self.meta)
        if self.split is not None:
            chosen["split"], chosen["split_seed"] = list(self.split), self.split_seed
        if self.reviewer_names:
            chosen["reviewer_names"] = True
        return chosen


def file_format(format: str) -> str:
    """`csv`, or `jsonl` for every other export format: what an export job's file is."""
    return "csv" if format == "csv" else "jsonl"


# Reviewers as pseudonyms ----------------------------------------------------------------


def reviewer_pseudonym(project_id: int, user_id: int) -> str:
    """A reviewer's stable pseudonym in one project: `reader-` and 10 hex digits of an
    HMAC-SHA256 of the project and user ids, keyed by SECRET_KEY (another project, another
    pseudonym; nobody without the key can link it to the user)."""
    digest = hmac.new(
        settings.SECRET_KEY.encode(), f"{project_id}:{user_id}".encode(), hashlib.sha256
    )
    return "reader-" + digest.hexdigest()[:10]


def _pseudonyms(project: Project) -> dict[int, str]:
    """The pseudonym of everyone who labelled in the project, in one query."""
    ids = Label.objects.filter(task__project=project).values_list("reviewer_id", flat=True)
    return {user_id: reviewer_pseudonym(project.pk, user_id) for user_id in ids.distinct()}


# (user id, username) -> the reviewer field.
_Name = Callable[[int | None, str | None], str | None]


def _username(user_id: int | None, username: str | None) -> str | None:
    return username


def _namer(project: Project, options: ExportOptions) -> _Name:
    if options.reviewer_names:
        return _username
    cache: dict[int, str] = {}

    def pseudonym(user_id: int | None, username: str | None) -> str | None:
        if user_id is None:
            return None
        if user_id not in cache:
            cache[user_id] = reviewer_pseudonym(project.pk, user_id)
        return cache[user_id]

    return pseudonym


# The rows, as PostgreSQL builds them --------------------------------------------------------


def _tables() -> dict[str, str]:
    user = get_user_model()
    return {
        "label": Label._meta.db_table,
        "task": Task._meta.db_table,
        "image": Image._meta.db_table,
        "draft": Draft._meta.db_table,
        "prompt": PromptTemplate._meta.db_table,
        "user": user._meta.db_table,
        "username": user._meta.get_field(user.USERNAME_FIELD).column,
    }


def _image_properties() -> str:
    # Allowlisted properties only: free-text slide properties can carry identifiers.
    values = {name: f"i.{name}" for name in ALLOWED_PROPERTIES}
    values["vendor"] = "coalesce(i.vendor, '')"
    values["level_dimensions"] = "coalesce(i.level_dimensions, '[]'::jsonb)"
    return "json_build_object(" + ", ".join(f"'{k}', {values[k]}" for k in values) + ")"


# A draft written by a model in a server folder (a path, or a revision that is a weights
# digest, as the transformers backend records for a folder) names the model by the folder's
# last name: the path means nothing to whoever loads the export. A hub id stays as it is.
_MODEL_NAME = r"""CASE
    WHEN d.model_revision LIKE 'sha256:%%' OR d.model_id ~ '^[/.~]' OR d.model_id ~ '/.*/'
        OR strpos(d.model_id, E'\\') > 0
    THEN coalesce(substring(rtrim(d.model_id, E'/\\') from E'([^/\\\\]+)$'), d.model_id)
    ELSE d.model_id END"""

# Each field of a row, in order, and its SQL (the label `l`, task `t`, image `i`, draft `d`,
# reviewer `u`, prompt template `pt`). %(notice)s: the AI-draft notice.
_ROW_FIELDS: tuple[tuple[str, str], ...] = (
    ("task_id", "l.task_id"),
    ("image_file_name", "i.original_name"),
    ("image_sha256", "i.sha256"),
    ("image_format", "i.format"),
    ("image_properties", _image_properties()),
    ("decision", "l.decision"),
    ("final_text", "l.text"),
    ("reason", "l.reason"),
    ("category", "l.category"),
    # Distance from the draft to final_text: 0 for an accept, null for a reject.
    ("edit_chars", "l.edit_chars"),
    ("edit_words", "l.edit_words"),
    ("time_on_task_ms", "l.time_on_task_ms"),
    ("fast_accept", "l.fast_accept"),
    # The reader's signature, where the project asks for one (21 CFR Part 11 §11.50).
    ("signed_by_name", "l.signed_by_name"),
    ("signed_at", "l.signed_at"),
    ("signature_meaning", "l.signature_meaning"),
    ("reviewer", "u.{username}"),
    ("labelled_at", "l.created_at"),
    ("updated_at", "l.updated_at"),
    ("draft_id", "d.id"),
    ("draft_text", "d.text"),
    ("draft_created_at", "d.created_at"),
    ("model_id", _MODEL_NAME),
    ("model_revision", "d.model_revision"),
    ("backend", "d.backend"),
    ("prompt", "d.prompt"),
    ("prompt_version", "coalesce(pt.version, 0)"),
    ("draft_truncated", "d.truncated"),
    # The reviewer's region pointers, GeoJSON in level-0 pixels (QuPath opens it).
    ("regions", "json_build_object('type', 'FeatureCollection', 'features', l.regions)"),
    # The patches the model was given for the draft (level-0 pixels too).
    ("draft_regions", "d.regions"),
    ("task_metadata", "t.metadata"),
    ("generation", "d.generation"),
    ("draft_notice", "%(notice)s::text"),
)
COLUMNS = tuple(name for name, _ in _ROW_FIELDS)

_FROM = """
    FROM {label} l
    JOIN {task} t ON t.id = l.task_id
    JOIN {image} i ON i.id = t.image_id
    JOIN {draft} d ON d.id = l.draft_id
    JOIN {user} u ON u.id = l.reviewer_id
    LEFT JOIN {prompt} pt ON pt.id = d.prompt_template_id
    WHERE t.project_id = %(project)s"""


def _row_json(fields: tuple[tuple[str, str], ...] = _ROW_FIELDS) -> str:
    pairs = ", ".join(f"'{name}', {sql}" for name, sql in fields)
    return f"json_build_object({pairs})"


def _sql(select: str, where: str = "", order: str = "l.task_id, l.id") -> str:
    tables = _tables()
    return (f"SELECT {select}" + _FROM + where + f" ORDER BY {order}").format(**tables)


def _params(project: Project) -> dict[str, Any]:
    return {"project": project.pk, "notice": AI_NOTICE}


# The image as a training set names it, relative to the export: images/<sha256><suffix>,
# the suffix of the stored file (none for a folder).
_IMAGE_PATH = r"""'images/' || i.sha256
    || coalesce(lower(substring(i.file from '(\.[A-Za-z0-9]{{1,10}})$')), '')"""
# The instruction the model was given, without the chat template's tokens (the rendered
# prompt, `prompt`, has them); a draft that did not record it: its rendered prompt.
_INSTRUCTION = "coalesce(nullif(d.instruction, ''), d.prompt)"

# A task's group for the split: its patient, else its case, else the task alone.
_SPLIT_GROUP = """coalesce('patient:' || nullif(t.metadata ->> 'patient_id', ''),
    'case:' || nullif(t.metadata ->> 'case_id', ''), 'task:' || t.id::text)"""
# The first 32 bits of md5(seed:group), 0 to 2**32 - 1, against the ratios' thresholds.
_SPLIT = f"""CASE
    WHEN ('x' || substr(md5(%(split_seed)s::text || ':' || {_SPLIT_GROUP}), 1, 8))::bit(32)::bigint
        < %(split_train)s THEN 'train'
    WHEN ('x' || substr(md5(%(split_seed)s::text || ':' || {_SPLIT_GROUP}), 1, 8))::bit(32)::bigint
        < %(split_validation)s THEN 'validation'
    ELSE 'test' END"""


@dataclass(frozen=True)
class _Query:
    """The rows an export's options ask for: their fields, the WHERE conditions that
    filter them, and the parameters of both."""

    fields: tuple[tuple[str, str], ...]
    where: str
    params: dict[str, Any]

    @property
    def columns(self) -> list[str]:
        return [name for name, _ in self.fields]


def _query(project: Project, options: ExportOptions) -> _Query:
    params = _params(project)
    fields = list(_ROW_FIELDS)
    pseudonyms = None if options.reviewer_names else _pseudonyms(project)
    if pseudonyms is not None:
        params["pseudonyms"] = json.dumps({str(k): v for k, v in pseudonyms.items()})
        reviewer = "coalesce(%(pseudonyms)s::jsonb ->> l.reviewer_id::text, 'reader-unknown')"
        fields = [(n, reviewer if n == "reviewer" else sql) for n, sql in fields]
    if options.split is not None:
        total, (train, validation, _) = sum(options.split), options.split
        params["split_seed"] = str(options.split_seed)
        params["split_train"] = round(train / total * 2**32)
        params["split_validation"] = round((train + validation) / total * 2**32)
        fields.append(("split", _SPLIT))
    if options.format in TRAINING_FORMATS:
        fields += [
            ("image_path", _IMAGE_PATH),
            ("instruction", _INSTRUCTION),
            ("system_prompt", "d.system_prompt"),
        ]

    double = project.readings_per_task > 1
    task: list[str] = []  # conditions on the task
    label: list[str] = []  # conditions on a label (its draft, reviewer, prompt)
    if options.review_state:
        params["review_state"] = options.review_state
        task.append("t.review_state = %(review_state)s")
    if options.decision:
        params["decision"] = options.decision
        # With double reading, the final decision (the readings' or the adjudication's).
        if double:
            task.append("t.outcome = %(decision)s")
        else:
            label.append("l.decision = %(decision)s")
    if options.reviewer:
        by_pseudonym = [k for k, v in (pseudonyms or {}).items() if v == options.reviewer]
        if by_pseudonym:
            params["reviewer_id"] = by_pseudonym[0]
            label.append("l.reviewer_id = %(reviewer_id)s")
        else:
            params["reviewer"] = options.reviewer
            label.append("u.{username} = %(reviewer)s")
    if options.date_from is not None:
        params["date_from"] = _start_of(options.date_from)
        label.append("l.created_at >= %(date_from)s")
    if options.date_to is not None:
        params["date_to"] = _start_of(options.date_to + timedelta(days=1))
        label.append("l.created_at < %(date_to)s")
    if options.model_id:
        params["model_id"] = options.model_id
        label.append(f"(d.model_id = %(model_id)s OR ({_MODEL_NAME}) = %(model_id)s)")
    if options.prompt_version is not None:
        params["prompt_version"] = options.prompt_version
        label.append("coalesce(pt.version, 0) = %(prompt_version)s")
    for i, (key, value) in enumerate(options.meta):
        params[f"meta_key_{i}"], params[f"meta_value_{i}"] = key, value
        task.append(f"t.metadata ->> %(meta_key_{i})s = %(meta_value_{i})s")
    if label and double:
        # A double-read task is whole or absent: it matches when one of its readings does.
        task.append(_SOME_READING + " AND ".join(label) + ")")
        label = []
    where = "".join(f" AND {condition}" for condition in task + label)
    return _Query(tuple(fields), where, params)


_SOME_READING = """EXISTS (SELECT 1 FROM {label} l
    JOIN {draft} d ON d.id = l.draft_id
    JOIN {user} u ON u.id = l.reviewer_id
    LEFT JOIN {prompt} pt ON pt.id = d.prompt_template_id
    WHERE l.task_id = t.id AND """


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=timezone.get_current_timezone())


def _copy_sql(format: str, query: _Query) -> str:
    """The plain export as one COPY. JSON Lines: each row's JSON text is the one field of a
    CSV whose quote and delimiter are control characters, which JSON always escapes: nothing
    is quoted, so the output is the JSON text, a line per row. CSV: each field as text, a
    nested one as its JSON text."""
    if format == "jsonl":
        sql = _sql(_row_json(query.fields), query.where)
        return f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"
    sql = _sql(", ".join(_csv_sql(name, sql) for name, sql in query.fields), query.where)
    return f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER)"


_CSV_BOOLEANS = frozenset({"fast_accept", "draft_truncated"})
_CSV_TIMES = frozenset({"labelled_at", "updated_at", "draft_created_at", "signed_at"})
_CSV_NESTED = frozenset(
    {"image_properties", "regions", "draft_regions", "task_metadata", "generation"}
)


def _csv_sql(name: str, sql: str) -> str:
    """A field as the CSV's text: as in the JSON row (a time in its ISO format, booleans
    true/false), a nested field as its JSON text."""
    if name in _CSV_BOOLEANS:
        sql = f"CASE WHEN {sql} THEN 'true' ELSE 'false' END"
    elif name in _CSV_TIMES:
        sql = f"to_json({sql}) #>> '{{{{}}}}'"
    elif name in _CSV_NESTED:
        sql = f"({sql})::text"
    return f"{sql} AS {name}"


class _Copied:
    """The blocks of a COPY, and afterwards how many rows it wrote."""

    def __init__(self, query: _Query, format: str) -> None:
        self.query, self.format, self.rows = query, format, 0

    def __iter__(self) -> Iterator[bytes]:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            raw = cursor.cursor  # psycopg 3
            with raw.copy(_copy_sql(self.format, self.query), self.query.params) as copy:
                yield from copy
            self.rows = raw.rowcount


def _is_plain(project: Project, history: bool) -> bool:
    return project.readings_per_task == 1 and not history


def _rows(query: _Query, where: str = "", order: str = "l.task_id, l.id") -> Iterator[tuple]:
    """(task_id, reviewer_id, revision, row) of the labels the query picks, from a
    server-side cursor, CHUNK at a time."""
    select = f"l.task_id, l.reviewer_id, l.revision, {_row_json(query.fields)}::text"
    sql = _sql(select, query.where + where, order)
    with connection.chunked_cursor() as cursor:
        cursor.execute(sql, query.params)
        while chunk := cursor.fetchmany(CHUNK):
            for task_id, reviewer_id, revision, text in chunk:
                yield task_id, reviewer_id, revision, json.loads(text)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# Rows as dicts -------------------------------------------------------------------------


def label_rows(
    project: Project,
    *,
    readings: bool = False,
    history: bool = False,
    options: ExportOptions | None = None,
    **more: Any,
) -> Iterator[dict[str, Any]]:
    """One row per label with one reading per task (as ever). With double reading, one row
    per final task: its final label (the agreeing first reading, or the adjudication), and
    with `readings` the readings it resolves. With `history`, every row (and reading) gets
    its `revision` and `earlier_versions`, oldest first, from the audit trail. `options`
    (an ExportOptions), or `more` (its other fields): filters, split, reviewer names."""
    if options is None:
        options = ExportOptions(readings=readings, history=history, **more)
    if project.readings_per_task > 1:
        yield from final_rows(project, options=options)
        return
    name = _namer(project, options)
    for chunk in _chunks(_rows(_query(project, options)), CHUNK):
        trail = _AuditTrail.of({task_id for task_id, *_ in chunk}) if options.history else None
        for task_id, reviewer_id, revision, row in chunk:
            if trail is not None:
                row["revision"] = revision
                row["earlier_versions"] = trail.label_versions(task_id, reviewer_id, revision, name)
            yield row


def final_rows(
    project: Project,
    *,
    readings: bool = False,
    history: bool = False,
    options: ExportOptions | None = None,
    **more: Any,
) -> Iterator[dict[str, Any]]:
    """The final label of every final task of a double-read project, in label_rows' fields
    (the adjudicator as reviewer when adjudicated), with `final_source`, `n_readings` and,
    when asked, `readings`: every reading's row; `history` as in label_rows."""
    if options is None:
        options = ExportOptions(readings=readings, history=history, **more)
    readings, history, name = options.readings, options.history, _namer(project, options)
    labels = _rows(
        _query(project, options),
        where=f" AND t.review_state = '{ReviewState.FINAL}'",
        order="l.task_id, l.created_at, l.id",
    )
    for tasks in _task_chunks(labels, CHUNK):
        task_ids = {group[0][0] for group in tasks}
        trail = _AuditTrail.of(task_ids) if history else None
        adjudications = {
            a.task_id: a
            for a in Adjudication.objects.filter(task_id__in=task_ids).select_related(
                "adjudicator", "draft__prompt_template"
            )
        }
        for group in tasks:
            yield _final_row(group, adjudications.get(group[0][0]), readings, trail, name)


def _task_chunks(labels: Iterable[tuple], size: int) -> Iterator[list[list[tuple]]]:
    """Labels (ordered by task) grouped by task, whole tasks per chunk of about `size`."""
    chunk: list[list[tuple]] = []
    n = 0
    for label in labels:
        if chunk and chunk[-1][0][0] == label[0]:
            chunk[-1].append(label)
        else:
            if n >= size:
                yield chunk
                chunk, n = [], 0
            chunk.append([label])
        n += 1
    if chunk:
        yield chunk


def _final_row(
    labels: list[tuple],
    adjudication: Adjudication | None,
    readings: bool,
    trail: _AuditTrail | None = None,
    namer: _Name = _username,
) -> dict:
    def reading(label: tuple) -> dict[str, Any]:
        task_id, reviewer_id, revision, row = label
        row = dict(row)
        if trail is not None:
            row["revision"] = revision
            row["earlier_versions"] = trail.label_versions(task_id, reviewer_id, revision, namer)
        return row

    row = reading(labels[0])
    if adjudication is not None:
        draft = adjudication.draft
        row |= {
            "decision": adjudication.decision,
            "final_text": adjudication.text,
            "reason": adjudication.reason,
            "category": adjudication.category,
            "reviewer": namer(adjudication.adjudicator_id, adjudication.adjudicator.get_username()),
            "labelled_at": adjudication.created_at.isoformat(),
            "updated_at": adjudication.updated_at.isoformat(),
            "draft_id": draft.pk,
            "draft_text": draft.text,
            "draft_created_at": draft.created_at.isoformat(),
            "prompt": draft.prompt,
            "prompt_version": draft.prompt_template.version if draft.prompt_template else 0,
            "regions": feature_collection([]),
            # The first reader's signature is not the adjudicator's.
            "signed_by_name": "",
            "signed_at": None,
            "signature_meaning": "",
        }
        if "instruction" in row:  # a training format's fields
            row["instruction"] = draft.instruction or draft.prompt
            row["system_prompt"] = draft.system_prompt
        for name in ("edit_chars", "edit_words", "time_on_task_ms"):
            row[name] = None
        row["fast_accept"] = False
        if trail is not None:
            row["revision"] = None  # an adjudication has no revision number
            row["earlier_versions"] = trail.adjudication_versions(adjudication, namer)
    row["final_source"] = "adjudication" if adjudication is not None else "reading"
    row["n_readings"] = len(labels)
    if readings:
        row["readings"] = [reading(label) for label in labels]
    return row


@dataclass(frozen=True)
class _Event:
    action: str
    actor_id: int | None
    actor: str | None
    at: str
    after: dict | None


class _AuditTrail:
    """The label and adjudication events of some tasks, read in one query, oldest first."""

    def __init__(self) -> None:
        self.labels: dict[tuple[int, int | None], list[_Event]] = defaultdict(list)
        self.adjudications: dict[int, list[_Event]] = defaultdict(list)

    @classmethod
    def of(cls, task_ids: set[int]) -> _AuditTrail:
        trail = cls()
        username = f"actor__{get_user_model().USERNAME_FIELD}"
        events = (
            AuditEvent.objects.filter(
                task_id__in=task_ids, action__in=(LABEL_RECORD, LABEL_UNDO, ADJUDICATION_RECORD)
            )
            .order_by("id")
            .values_list("task_id", "actor_id", username, "action", "at", "after")
        )
        for task_id, actor_id, actor, action, at, after in events:
            event = _Event(action, actor_id, actor, at.isoformat(), after)
            if action == ADJUDICATION_RECORD:
                trail.adjudications[task_id].append(event)
            else:
                trail.labels[(task_id, actor_id)].append(event)
        return trail

    def label_versions(
        self, task_id: int, reviewer_id: int, revision: int, name: _Name = _username
    ) -> list[dict]:
        """The states a label (its task, reviewer and current revision) held before its
        current one: each decision its reviewer recorded and each undo (an undo of a first
        decision: a null decision, no label)."""
        events = self.labels.get((task_id, reviewer_id), [])
        # The event that wrote the current state; later ones (written while the export
        # streams) are not earlier versions. Revisions restart after a label is removed.
        current = _last_index(
            events, lambda after: after is not None and after.get("revision") == revision
        )
        return [_version(event, name) for event in events[:current]]

    def adjudication_versions(
        self, adjudication: Adjudication, name: _Name = _username
    ) -> list[dict[str, Any]]:
        """The final labels an adjudicator recorded for the task before the current one."""
        events = self.adjudications.get(adjudication.task_id, [])
        now = {
            "decision": adjudication.decision,
            "text": adjudication.text,
            "reason": adjudication.reason,
            "category": adjudication.category,
            "draft": adjudication.draft_id,
        }
        current = _last_index(
            events, lambda after: after is not None and now.items() <= after.items()
        )
        return [_version(event, name) for event in events[:current]]


def _last_index(events: list[_Event], is_current) -> int:
    """The index of the last event whose state is the current one; len(events) if none."""
    for i in range(len(events) - 1, -1, -1):
        if is_current(events[i].after):
            return i
    return len(events)


def _version(event: _Event, name: _Name = _username) -> dict[str, Any]:
    state = event.after or {}
    return {
        "decision": state.get("decision"),
        "final_text": state.get("text"),
        "reason": state.get("reason"),
        "category": state.get("category"),
        "draft_id": state.get("draft"),
        "regions": feature_collection(state.get("regions") or []),
        "edit_chars": state.get("edit_chars"),
        "edit_words": state.get("edit_words"),
        "time_on_task_ms": state.get("time_on_task_ms"),
        "fast_accept": state.get("fast_accept"),
        "revision": state.get("revision"),
        "reviewer": name(event.actor_id, event.actor),
        "recorded_at": event.at,
        "undo": event.action == LABEL_UNDO,
    }


# Training formats ------------------------------------------------------------------------

_VALIDATED = frozenset({Decision.ACCEPTED, Decision.EDITED})


def training_rows(rows: Iterable[dict[str, Any]], options: ExportOptions) -> Iterator[dict]:
    """The export's rows (label_rows, with a training format's fields) as that format's
    rows: `chat` (TRL's conversational format for a vision-language model: the validated
    labels), `dpo` (edited labels: the final text chosen over the draft), `kto` (the draft
    as completion, labelled true when accepted), `geojson` (the labels with regions, one
    FeatureCollection each). Images are named relative to the export (`images/<sha256>...`);
    the AI-draft notice and, when asked, the split go with every row."""
    build = _TRAINING[options.format]
    for row in rows:
        built = build(row)
        if built is None:
            continue
        if options.format == "geojson":  # the reviewer's regions: no AI draft in them
            if options.split is not None:
                built["properties"]["split"] = row.get("split")
        else:
            if options.split is not None:
                built["split"] = row.get("split")
            built["draft_notice"] = row["draft_notice"]
        yield built


def _user_turn(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation up to the model's answer: the system prompt (if any), then the image
    and the instruction."""
    turns: list[dict[str, Any]] = []
    if row["system_prompt"]:
        turns.append({"role": "system", "content": [_text(row["system_prompt"])]})
    turns.append({"role": "user", "content": [{"type": "image"}, _text(row["instruction"])]})
    return turns


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


def _chat(row: dict[str, Any]) -> dict[str, Any] | None:
    if row["decision"] not in _VALIDATED:
        return None
    answer = {"role": "assistant", "content": [_text(row["final_text"])]}
    return {
        "messages": [*_user_turn(row), answer],
        "images": [row["image_path"]],
        "task_id": row["task_id"],
        "model_id": row["model_id"],
    }


def _dpo(row: dict[str, Any]) -> dict[str, Any] | None:
    if row["decision"] != Decision.EDITED or row["final_text"] == row["draft_text"]:
        return None
    return {
        "prompt": row["instruction"],
        "system_prompt": row["system_prompt"],
        "chosen": row["final_text"],
        "rejected": row["draft_text"],
        "images": [row["image_path"]],
        "task_id": row["task_id"],
        "model_id": row["model_id"],
        "edit_chars": row["edit_chars"],
        "edit_words": row["edit_words"],
    }


def _kto(row: dict[str, Any]) -> dict[str, Any] | None:
    return {
        "prompt": row["instruction"],
        "system_prompt": row["system_prompt"],
        "completion": row["draft_text"],
        "label": row["decision"] == Decision.ACCEPTED,
        "decision": row["decision"],
        "images": [row["image_path"]],
        "task_id": row["task_id"],
        "model_id": row["model_id"],
        "edit_chars": row["edit_chars"],
        "edit_words": row["edit_words"],
    }


def _geojson(row: dict[str, Any]) -> dict[str, Any] | None:
    features = (row.get("regions") or {}).get("features") or []
    if not features:
        return None
    collection = feature_collection(features)
    collection["properties"] = {
        "task_id": row["task_id"],
        "image_sha256": row["image_sha256"],
        "image": row["image_path"],
        "decision": row["decision"],
    }
    return collection


_TRAINING: dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]] = {
    "chat": _chat,
    "dpo": _dpo,
    "kto": _kto,
    "geojson": _geojson,
}


# Writing --------------------------------------------------------------------------------


def _csv_columns(project: Project, options: ExportOptions) -> list[str]:
    columns = list(COLUMNS) + (["split"] if options.split is not None else [])
    if options.history:
        columns += ["revision", "earlier_versions"]
    if project.readings_per_task > 1:
        columns += ["final_source", "n_readings"] + (["readings"] if options.readings else [])
    return columns


def _csv_text(value: Any) -> Any:
    """A field as PostgreSQL's COPY writes it in the plain export: null empty, booleans
    true/false, nested fields as JSON text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return value


def _csv_lines(rows: Iterable[dict[str, Any]], columns: list[str]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for chunk in _chunks(rows, CHUNK):
        for row in chunk:
            writer.writerow([_csv_text(row.get(name)) for name in columns])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()


def export_chunks(
    project: Project,
    *,
    format: str = "jsonl",
    readings: bool = False,
    history: bool = False,
    **options: Any,
) -> Iterable[bytes]:
    """The export as UTF-8 blocks, for a streaming response: JSON Lines (one row a line)
    or CSV (a header, then the same fields; nested ones as JSON text). `options`: the other
    fields of ExportOptions (filters, split, reviewer names)."""
    chosen = ExportOptions(format=format, readings=readings, history=history, **options)
    return export_options_chunks(project, chosen)


def export_options_chunks(project: Project, options: ExportOptions) -> Iterable[bytes]:
    """export_chunks, its options as an ExportOptions."""
    if options.format not in FORMATS:
        raise ValueError(f"unknown export format {options.format!r}")
    if options.format in TRAINING_FORMATS:
        rows = training_rows(label_rows(project, options=options), options)
        return (line.encode() for line in _jsonl(rows))
    if _is_plain(project, options.history):
        return _Copied(_query(project, options), options.format)
    rows = label_rows(project, options=options)
    if options.format == "csv":
        lines = _csv_lines(rows, _csv_columns(project, options))
        return (text.encode() for text in lines)
    return (line.encode() for line in _jsonl(rows))


def _jsonl(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    encode = json.JSONEncoder(ensure_ascii=False).encode
    for chunk in _chunks(rows, CHUNK):
        yield "".join([encode(row) + "\n" for row in chunk])


def jsonl_lines(
    project: Project, *, readings: bool = False, history: bool = False, **options: Any
) -> Iterator[str]:
    """The JSON Lines export, one line (with its newline) per row."""
    blocks = export_chunks(project, readings=readings, history=history, **options)
    for block in _decoded(blocks):
        yield from block.splitlines(keepends=True)


def _decoded(blocks: Iterable[bytes]) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")()  # a block may end inside a character
    for block in blocks:
        if text := decoder.decode(block):
            yield text
    if text := decoder.decode(b"", final=True):
        yield text


def write_export(
    project: Project,
    out: IO[str],
    *,
    format: str = "jsonl",
    readings: bool = False,
    history: bool = False,
    **options: Any,
) -> int:
    """Writes the export to `out` (text, opened with newline=""); returns its rows.
    `options`: the other fields of ExportOptions (filters, split, reviewer names)."""
    chosen = ExportOptions(format=format, readings=readings, history=history, **options)
    return write_export_options(project, out, chosen)


def write_export_options(project: Project, out: IO[str], options: ExportOptions) -> int:
    """write_export, its options as an ExportOptions."""
    blocks = export_options_chunks(project, options)
    if isinstance(blocks, _Copied):
        binary = getattr(out, "buffer", None)  # a text file: its bytes as PostgreSQL sent them
        if binary is not None and (getattr(out, "encoding", "") or "").lower() in _UTF8:
            out.flush()
            for block in blocks:
                binary.write(block)
        else:
            for text in _decoded(blocks):
                out.write(text)
        return blocks.rows
    count = 0
    if options.format == "csv":
        rows = label_rows(project, options=options)

        def counted() -> Iterator[dict[str, Any]]:
            nonlocal count
            for row in rows:
                count += 1
                yield row

        for text in _csv_lines(counted(), _csv_columns(project, options)):
            out.write(text)
        return count
    for text in _decoded(blocks):
        out.write(text)
        count += text.count("\n")  # JSON text escapes newlines: one per row
    return count


def write_jsonl(
    project: Project, out: IO[str], *, readings: bool = False, history: bool = False
) -> int:
    return write_export(project, out, readings=readings, history=history)
