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
import logging
import math
import shutil
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from annotations import previews
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
from annotations.notice import AI_NOTICE, MODEL_TERMS_NOTICE, OTHER_MODEL_TERMS
from annotations.regions import feature_collection
from imaging import ImageRejected, patches, pixels
from imaging.inspect import ALLOWED_PROPERTIES

if TYPE_CHECKING:
    from datasets import Features
    from datasets.arrow_writer import ParquetWriter

log = logging.getLogger(__name__)

# Labels read (and audit events looked up) per chunk: memory stays flat at any project size.
CHUNK = 500

# The training formats: JSON Lines files with other rows, built from the export's rows.
TRAINING_FORMATS = ("chat", "dpo", "kto", "geojson")
# The formats whose rows name an image that `with_images` ships beside them, in a zip.
IMAGE_FORMATS = ("chat", "dpo", "kto")
# `hf`: a Hugging Face dataset (Parquet shards and a card), a folder; a zip for a job.
HF = "hf"
FORMATS = ("jsonl", "csv", *TRAINING_FORMATS, HF)
_NDJSON = "application/x-ndjson; charset=utf-8"
CONTENT_TYPES = (
    {"csv": "text/csv; charset=utf-8"}
    | {f: _NDJSON for f in FORMATS if f != "csv"}
    | {HF: "application/zip", "zip": "application/zip"}
)

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
    with_images: bool = False

    @property
    def file_format(self) -> str:
        """What the file is: `csv`, `zip` (a Hugging Face dataset, or a training set with
        its images), or `jsonl` (every other format is JSON Lines)."""
        if self.format in IMAGE_FORMATS and self.with_images:
            return "zip"
        return file_format(self.format)

    @property
    def rows_name(self) -> str:
        """The JSON Lines or CSV file's name, alone or inside a zip: `labels-chat.jsonl`..."""
        name = "labels" if self.format in ("jsonl", "csv") else f"labels-{self.format}"
        return f"{name}.{file_format(self.format)}"

    @property
    def file_name(self) -> str:
        """The file's name after the project's: `labels.jsonl`, `labels-chat.jsonl`,
        `labels-chat.zip`, `labels-hf.zip`..."""
        if self.file_format == "zip":
            return f"labels-{self.format}.zip"
        return self.rows_name

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
            with_images=chosen in IMAGE_FORMATS and _value(query, "with_images").lower() in _TRUE,
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
        if self.with_images:
            query["with_images"] = "1"
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
        if self.with_images:
            chosen["with_images"] = True
        return chosen


def file_format(format: str) -> str:
    """`csv`, `zip` for a Hugging Face dataset, or `jsonl` for every other export format:
    what an export job's file is (a training format with its images: a zip, too)."""
    return {"csv": "csv", HF: "zip"}.get(format, "jsonl")


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


def _json_object(fields: Iterable[tuple[str, str]]) -> str:
    """A JSON object's text built by PostgreSQL, its keys in order: each value's `to_json`
    joined by one `concat`. As json_build_object's, less its blank after every colon and
    comma (a tenth of the JSON Lines export's bytes, and of its time)."""
    parts = []
    for i, (name, sql) in enumerate(fields):
        parts.append(f"""'{"," if i else "{{"}"{name}":'""")  # braces: for str.format
        # A nested object built here is JSON text already.
        value = sql if sql.startswith(_CONCAT) else f"to_json({sql})::text"
        parts.append(f"coalesce({value}, 'null')")
    return f"{_CONCAT}{', '.join(parts)}, '}}}}')"


_CONCAT = "concat("


def _image_properties() -> str:
    # Allowlisted properties only: free-text slide properties can carry identifiers.
    values = {name: f"i.{name}" for name in ALLOWED_PROPERTIES}
    values["vendor"] = "coalesce(i.vendor, '')"
    values["level_dimensions"] = "coalesce(i.level_dimensions, '[]'::jsonb)"
    return _json_object(tuple(values.items()))


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
    # The terms the drafting model is used under (MedGemma: Health AI Developer Foundations).
    (
        "model_terms",
        "CASE WHEN d.model_id ILIKE '%%medgemma%%' THEN %(medgemma_terms)s::text"
        " ELSE %(other_terms)s::text END",
    ),
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
    return _json_object(fields)


def _sql(select: str, where: str = "", order: str = "l.task_id, l.id") -> str:
    tables = _tables()
    return (f"SELECT {select}" + _FROM + where + f" ORDER BY {order}").format(**tables)


def _params(project: Project) -> dict[str, Any]:
    return {
        "project": project.pk,
        "notice": AI_NOTICE,
        "medgemma_terms": MODEL_TERMS_NOTICE,
        "other_terms": OTHER_MODEL_TERMS,
    }


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
    if options.format in TRAINING_FORMATS or options.format == HF:
        fields += [
            ("image_path", _IMAGE_PATH),
            ("image_file", "i.file"),  # where the export reads the image from; never written
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
            # The adjudicator's signature of the final label (never the first reader's).
            "signed_by_name": adjudication.signed_by_name,
            "signed_at": signed_at.isoformat() if (signed_at := adjudication.signed_at) else None,
            "signature_meaning": adjudication.signature_meaning,
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
    if options.file_format == "zip":
        return _zip_blocks(project, options)
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
    """The JSON Lines export, one line (with its newline) per row. Split at newlines only:
    JSON text may hold U+2028 and other characters that str.splitlines takes for line ends."""
    blocks = export_chunks(project, readings=readings, history=history, **options)
    rest = ""
    for block in _decoded(blocks):
        *lines, rest = (rest + block).split("\n")
        yield from (line + "\n" for line in lines)
    if rest:
        yield rest


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


# Files beside the rows: images, Hugging Face datasets ----------------------------------------

# Rows per Parquet shard, and per row group: the writer holds one row group's images at once
# (a slide's patches come to about 2 MB), so memory stays flat at any project size.
HF_SHARD_ROWS = 200
HF_GROUP_ROWS = 16
# A photo is shipped re-encoded as JPEG, its long side at most this (pixels only: no EXIF).
HF_PHOTO_SIDE = 1024
# Already compressed: stored as they are in a zip (deflating them again costs time for nothing).
_STORED = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".parquet",
        ".svs",
        ".tif",
        ".tiff",
        ".ndpi",
        ".scn",
        ".mrxs",
        ".vms",
        ".bif",
        ".webp",
        ".dcm",
        ".gz",
        ".zip",
    }
)
_HF_INTS = frozenset(
    {
        "task_id",
        "edit_chars",
        "edit_words",
        "time_on_task_ms",
        "draft_id",
        "prompt_version",
        "n_readings",
        "revision",
    }
)
_HF_BOOLS = frozenset({"fast_accept", "draft_truncated"})
# Columns of the export's rows that a dataset does not carry: where the file lies here.
_HF_DROPPED = frozenset({"image_path", "image_file"})

Progress = Callable[[int], None]


def _media() -> Path:
    return Path(settings.MEDIA_ROOT)


def _hf_columns(project: Project, options: ExportOptions) -> list[str]:
    columns = [*COLUMNS, "instruction", "system_prompt"]
    columns += ["split"] if options.split is not None else []
    if options.history:
        columns += ["revision", "earlier_versions"]
    if project.readings_per_task > 1:
        columns += ["final_source", "n_readings"] + (["readings"] if options.readings else [])
    return columns


def hf_features(columns: Iterable[str]) -> Features:
    """The dataset's features: the export's fields as text (a nested one as its JSON text),
    numbers and flags as such, and `images`: the pictures the row is about."""
    # Imported here: `datasets` brings pyarrow (about 100 MB resident) into the process, which
    # every other export and page of the web server can do without.
    from datasets import Features, List, Value
    from datasets import Image as HFImage

    def kind(name: str) -> Value:
        return Value("int64" if name in _HF_INTS else "bool" if name in _HF_BOOLS else "string")

    return Features({name: kind(name) for name in columns} | {"images": List(HFImage())})


def _hf_value(name: str, value: Any) -> Any:
    if value is None or name in _HF_INTS or name in _HF_BOOLS:
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def row_pictures(image: Image, regions: list[dict] | None) -> list[bytes]:
    """The pictures of a row, as JPEG bytes holding pixels only: a photo (its long side at
    most HF_PHOTO_SIDE); a slide: the patches its draft's model was given (read again where
    the draft recorded them), then the slide's thumbnail. Raises ImageRejected."""
    path = _media() / image.file
    if image.kind != "slide":
        photo = pixels.render_preview(path, image.info(), max_size=HF_PHOTO_SIDE)
        return [pixels.encode_jpeg(photo)]
    found = [patches.Region(**region) for region in regions or []]
    plan = patches.PatchPlan(found, level=found[0].level if found else 0, mpp=None, note="")
    pictures = [pixels.encode_jpeg(patch) for patch in patches.read_patches(path, plan)]
    return [*pictures, previews.preview_file(image).read_bytes()]


class _Shards:
    """One split's Parquet shards, written by `datasets`' own writer HF_SHARD_ROWS rows at a
    time, under temporary names until every shard of the split is known."""

    def __init__(self, folder: Path, split: str, features: Features) -> None:
        self.folder, self.split, self.features = folder, split, features
        self.paths: list[Path] = []
        self.writer: ParquetWriter | None = None
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        if self.writer is None or self.rows % HF_SHARD_ROWS == 0:
            self._close()
            self.paths.append(self.folder / f".{self.split}-{len(self.paths)}.part")
            self.writer = self._writer()
        self.writer.write(row)
        self.rows += 1

    def _writer(self) -> ParquetWriter:
        from datasets.arrow_writer import ParquetWriter  # as in hf_features: pyarrow's weight

        path = str(self.paths[-1])
        return ParquetWriter(features=self.features, path=path, writer_batch_size=HF_GROUP_ROWS)

    def _close(self) -> None:
        if self.writer is not None:
            self.writer.finalize()
            self.writer.close()
            self.writer = None

    def finish(self) -> None:
        """Close the last shard and give every shard its name: `train-00000-of-00002.parquet`."""
        if self.writer is None and not self.paths:  # an empty split: one empty shard
            self.paths.append(self.folder / f".{self.split}-0.part")
            self.writer = self._writer()
        self._close()
        n = len(self.paths)
        for i, path in enumerate(self.paths):
            path.rename(self.folder / f"{self.split}-{i:05d}-of-{n:05d}.parquet")


def write_hf(
    project: Project, folder: Path, options: ExportOptions, progress: Progress | None = None
) -> int:
    """Write the export as a Hugging Face dataset into the new folder `folder`: Parquet
    shards per split (`data/train-00000-of-00001.parquet`...; one `train` split unless a
    split was asked) with `datasets`' features, and a README dataset card. Returns its rows.
    `datasets.load_dataset("parquet", data_dir=folder)` loads it, images decoded."""
    columns = _hf_columns(project, options)
    features = hf_features(columns)
    data = folder / "data"
    data.mkdir(parents=True)
    shards: dict[str, _Shards] = {}
    rows = 0
    for chunk in _chunks(label_rows(project, options=options), CHUNK):
        images = _images_of(row["task_id"] for row in chunk)
        for row in chunk:
            split = row.get("split") or "train"
            if split not in shards:
                shards[split] = _Shards(data, split, features)
            record = {name: _hf_value(name, row.get(name)) for name in columns}
            record["images"] = _pictures_or_none(images[row["task_id"]], row["draft_regions"])
            shards[split].write(record)
            rows += 1
            if progress is not None and rows % 1000 == 0:
                progress(rows)
    if not shards:  # no rows: an empty `train` split still loads
        shards["train"] = _Shards(data, "train", features)
    for split_shards in shards.values():
        split_shards.finish()
    (folder / "README.md").write_text(_hf_card(project, columns, shards), encoding="utf-8")
    return rows


def _images_of(task_ids: Iterable[int]) -> dict[int, Image]:
    tasks = Task.objects.filter(pk__in=set(task_ids)).select_related("image")
    return {task.pk: task.image for task in tasks}


def _pictures_or_none(image: Image, regions: list[dict] | None) -> list[dict[str, Any]]:
    # An image lost from the disk leaves its row without pictures, not the export failed.
    try:
        return [{"bytes": data, "path": None} for data in row_pictures(image, regions)]
    except (ImageRejected, OSError, ValueError) as exc:
        log.warning("export: image %s not shipped: %s", image.pk, exc)
        return []


def _hf_card(project: Project, columns: list[str], shards: dict[str, _Shards]) -> str:
    splits = "\n".join(
        f"  - split: {split}\n    path: data/{split}-*.parquet" for split in sorted(shards)
    )
    counts = ", ".join(f"{split}: {s.rows}" for split, s in sorted(shards.items()))
    return f"""---
license: other
configs:
- config_name: default
  data_files:
{splits}
---

# Labels exported from MedAnnot

Rows: {counts}. One row per validated label (per final task with double reading).

## Drafts are AI output

{AI_NOTICE}

Every row carries this notice in `draft_notice`; `draft_text` is what the model wrote,
`final_text` what the clinician validated. `model_terms` names the terms the drafting model
is used under ({MODEL_TERMS_NOTICE}).

## Columns

- `images`: the pictures the row is about. A photo: the photo re-encoded as JPEG, its long
  side at most {HF_PHOTO_SIDE} pixels. A slide: the patches the model was given for the
  draft (`draft_regions` says where they lie, in level-0 pixels), then a thumbnail of the
  whole slide. Pixels only: no EXIF or other metadata travels with them.
- Provenance: `model_id`, `model_revision`, `backend`, `prompt`, `prompt_version`,
  `generation`, `draft_id`, `draft_created_at` (the draft); `reviewer` (a pseudonym unless
  names were asked), `labelled_at`, `updated_at`, `decision`, `edit_chars`, `edit_words`,
  `time_on_task_ms`, `fast_accept` (the review).
- Nested fields (`image_properties`, `regions`, `draft_regions`, `task_metadata`,
  `generation`...) are JSON text.
- All columns: {", ".join(f"`{name}`" for name in columns)}.

## License

LICENSE PLACEHOLDER: state the terms under which these images and labels may be used
before sharing this dataset.
"""


def write_images_zip(
    project: Project, out: IO[bytes], options: ExportOptions, progress: Progress | None = None
) -> int:
    """Write a training export (chat, dpo, kto) with its images as a zip into `out`: the
    JSON Lines file, then `images/<sha256><suffix>`, the stored file of every image the rows
    name, each once. Files stream into the zip; memory holds one entry per distinct image."""
    images: dict[str, str] = {}  # the rows' image path -> the stored file
    rows = 0
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        with archive.open(options.rows_name, "w", force_zip64=True) as entry:
            encode = json.JSONEncoder(ensure_ascii=False).encode
            for row in label_rows(project, options=options):
                for built in training_rows([row], options):
                    entry.write((encode(built) + "\n").encode())
                    images.setdefault(row["image_path"], row["image_file"])
                    rows += 1
                    if progress is not None and rows % 1000 == 0:
                        progress(rows)
        for name, stored in sorted(images.items()):
            _zip_file(archive, _media() / stored, name)
    return rows


def _zip_file(archive: zipfile.ZipFile, source: Path, name: str) -> None:
    """`source` into the zip as `name` (a folder: its files below `name/`)."""
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            _zip_file(archive, path, f"{name}/{path.relative_to(source).as_posix()}")
        return
    compress = zipfile.ZIP_STORED if source.suffix.lower() in _STORED else zipfile.ZIP_DEFLATED
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = compress
    try:
        with source.open("rb") as src, archive.open(info, "w", force_zip64=True) as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
    except FileNotFoundError:
        log.warning("export: %s is gone; not shipped", source)


def zip_folder(folder: Path, out: IO[bytes]) -> None:
    """`folder`'s files into a zip written to `out`, named relative to it."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            _zip_file(archive, path, path.relative_to(folder).as_posix())


def write_export_file(
    project: Project, path: Path, options: ExportOptions, progress: Progress | None = None
) -> int:
    """Write an export that is a zip (a Hugging Face dataset, or a training set with its
    images) to the new file `path`; returns its rows."""
    with path.open("xb") as out:
        if options.format != HF:
            return write_images_zip(project, out, options, progress)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".hf-") as tmp:
            rows = write_hf(project, Path(tmp) / "dataset", options, progress)
            zip_folder(Path(tmp) / "dataset", out)
        return rows


def _zip_blocks(project: Project, options: ExportOptions) -> Iterator[bytes]:
    """A zip export for a streaming response: written to a private temporary file first
    (a zip's directory comes last), then sent a block at a time and deleted."""
    with tempfile.TemporaryDirectory(prefix="medannot-export-") as tmp:
        path = Path(tmp) / options.file_name
        write_export_file(project, path, options)
        with path.open("rb") as zipped:
            while block := zipped.read(1024 * 1024):
                yield block
