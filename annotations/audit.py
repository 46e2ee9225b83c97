"""The audit trail's hash chain: one canonical serialisation of a row, written here in Python
and in SQL (the trigger of migration 0018 keeps its own frozen copy), so that `verify_audit`
recomputes independently what the database computed when the row was appended.

Canonical form: the JSON array

    [id, at, actor_id, action, project_id, task_id, before, after, reason, prev_hash]

written as PostgreSQL writes a jsonb value, which is already a normal form: keys unique and
sorted by their length in UTF-8 bytes, then bytewise; ", " and ": " between items; strings
escaped as `json.dumps(ensure_ascii=False)` escapes them. A plpgsql serialiser with other
rules (code point order, no spaces) cost 20 times as much per insert, on the review path.
`at` is UTC with microseconds ("2026-11-30T03:57:23.123456Z"). Numbers inside before/after
keep PostgreSQL's own text for them (numeric: "1.0" stays "1.0", "1" stays "1"), so they are
read back as text, never through a float.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64  # the prev_hash of the first row


@dataclass(frozen=True)
class Number:
    """A JSON number as PostgreSQL wrote it: hashed by its text, never rounded by a float."""

    text: str


# One decoder for every row (building one per call was a tenth of verify_audit's time).
_DECODER = json.JSONDecoder(parse_float=Number, parse_int=Number)
# json's C string escaper, as json.dumps(ensure_ascii=False) uses it.
_string = json.encoder.encode_basestring  # type: ignore[attr-defined]


def load(text: str | None) -> Any:
    """A jsonb value as PostgreSQL printed it, with numbers kept as their text."""
    if text is None:
        return None
    return _DECODER.decode(text)


def _jsonb_order(key: str) -> tuple[int, bytes]:
    raw = key.encode()
    return len(raw), raw


def canonical_json(value: Any) -> str:
    """`value` as PostgreSQL writes it as jsonb text."""
    out: list[str] = []
    _write(value, out)
    return "".join(out)


def _write(value: Any, out: list[str]) -> None:
    kind = type(value)
    if kind is str:
        out.append(_string(value))
    elif kind is Number:
        out.append(value.text)
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(repr(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, dict):
        out.append("{")
        for k, key in enumerate(sorted(value, key=_jsonb_order)):
            out.append((", " if k else "") + _string(key) + ": ")
            _write(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for k, item in enumerate(value):
            if k:
                out.append(", ")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError(f"not JSON: {type(value).__name__}")


def timestamp(at: datetime) -> str:
    # isoformat, not strftime: the same text, in a fraction of the time.
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def row_hash(
    *,
    id: int,
    at: datetime,
    actor_id: int | None,
    action: str,
    project_id: int | None,
    task_id: int | None,
    before: Any,
    after: Any,
    reason: str,
    prev_hash: str,
) -> str:
    """The hex SHA-256 of one audit row's content and the previous row's hash."""
    content = [id, timestamp(at), actor_id, action, project_id, task_id]
    content += [before, after, reason, prev_hash]
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


def row_hash_stored(
    *,
    id: int,
    at: datetime,
    actor_id: int | None,
    action: str,
    project_id: int | None,
    task_id: int | None,
    before: str | None,
    after: str | None,
    reason: str,
    prev_hash: str,
) -> str:
    """`row_hash` with before and after given as PostgreSQL printed them (jsonb text, which
    is the canonical form of a JSON value): verify_audit's fast path, with no parse and
    rewrite of each value. The tests check that both paths agree."""
    parts = [
        str(id),
        _string(timestamp(at)),
        "null" if actor_id is None else str(actor_id),
        _string(action),
        "null" if project_id is None else str(project_id),
        "null" if task_id is None else str(task_id),
        "null" if before is None else before,
        "null" if after is None else after,
        _string(reason),
        _string(prev_hash),
    ]
    return hashlib.sha256(("[" + ", ".join(parts) + "]").encode()).hexdigest()
