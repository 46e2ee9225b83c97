"""The audit trail's hash chain: one canonical serialisation of a row, written here in Python
and in SQL (the trigger of migration 0018), so that `verify_audit` recomputes independently
what the database computed when the row was appended.

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

# The advisory lock key that serialises appends (see migration 0018).
LOCK_KEY = 4_180_910_001


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


# The same serialisation in SQL, installed by migration 0018. The trigger takes the advisory
# lock, numbers the row and links it under that lock (see the comment in the function).
SQL_CANON = r"""
CREATE OR REPLACE FUNCTION annotations_audit_hash(
    id bigint, at timestamptz, actor_id integer, action text, project_id bigint,
    task_id bigint, before jsonb, after jsonb, reason text, prev_hash text
) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT encode(sha256(convert_to(jsonb_build_array(
        id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        actor_id, action, project_id, task_id, before, after, reason, prev_hash
    )::text, 'UTF8')), 'hex')
$$;
"""

SQL_CHAIN = f"""
CREATE OR REPLACE FUNCTION annotations_audit_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    previous text;
BEGIN
    -- A transaction-level lock, held until commit: a row is invisible to other writers
    -- until its transaction commits, so a lock released right after the insert would let
    -- the next writer read the same "last row" and fork the chain.
    PERFORM pg_advisory_xact_lock({LOCK_KEY});
    -- Numbered under the lock: ids then follow the chain (a default taken before the lock
    -- could be smaller than that of a row committed ahead of it).
    NEW.id := nextval(pg_get_serial_sequence('annotations_auditevent', 'id'));
    IF NEW.at IS NULL THEN
        NEW.at := now();
    END IF;
    SELECT e.hash INTO previous FROM annotations_auditevent e ORDER BY e.id DESC LIMIT 1;
    NEW.prev_hash := coalesce(previous, '{GENESIS}');
    NEW.hash := annotations_audit_hash(
        NEW.id, NEW.at, NEW.actor_id, NEW.action, NEW.project_id, NEW.task_id,
        NEW.before, NEW.after, NEW.reason, NEW.prev_hash);
    RETURN NEW;
END;
$$;
"""
