"""Manifests: per-file fields (case, patient, site, stain, organ, ...) that the review page
shows, prompt templates fill in and exports carry.

A manifest is CSV (a `file` column) or JSON Lines (one object a line with a `file` key).
The standard fields are recognised under their usual spellings (``Case``, ``patient``,
``Body site``, ``reference_text``) and stored under one canonical key each, which is what
exports group patients by; any other field is kept as written.

Reading and checking a manifest happens here only. A row with a value the database or the
prompt cannot take (a NUL byte, another control character, an over-long value, a nested
JSON value) is refused alone, with a line naming the row and the field; every other row is
used.
"""

from __future__ import annotations

import csv
import json
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MAX_VALUE_CHARS = 2000
MAX_REFERENCE_CHARS = 20000  # a reference report is longer than a field
MAX_FIELD_NAME_CHARS = 100
JSONL_SUFFIXES = (".jsonl", ".ndjson")

# The standard fields, in the order the review page shows them, and the spellings taken for
# each (compared lower-case, with spaces and hyphens read as underscores).
NAMED_FIELDS: dict[str, tuple[str, ...]] = {
    "case_id": ("case_id", "case"),
    "patient_id": ("patient_id", "patient"),
    "site": ("site",),
    "stain": ("stain",),
    "body_site": ("body_site",),
    "reference": ("reference", "reference_text"),
}
_ALIASES = {alias: key for key, aliases in NAMED_FIELDS.items() for alias in aliases}
_ALLOWED_CONTROLS = {"\t", "\n", "\r"}  # a quoted CSV value may span lines


class ManifestError(ValueError):
    """The manifest as a whole cannot be used (unreadable, or no `file` column)."""


@dataclass(frozen=True)
class RowProblem:
    line: int
    file: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"manifest line {self.line}"
        if self.file:
            where += f" ({self.file})"
        return f"{where}, field {self.field!r}: {self.message}"


@dataclass
class Manifest:
    rows: dict[str, dict[str, str]] = field(default_factory=dict)
    problems: list[RowProblem] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # each row's file, as written, in order

    def add(self, name: str, values: dict[str, str]) -> None:
        if name:
            self.names.append(name)
            self.rows[name] = self.rows[Path(name).name] = values

    def fields_for(self, path: Path) -> dict[str, str] | None:
        """The fields of a file's row, looked up by the path as given, then by its name."""
        return self.rows.get(str(path)) or self.rows.get(path.name)

    def unmatched(self, given: Iterable[str]) -> list[str]:
        """The manifest's file names that match none of the `given` files (paths or names)."""
        seen = set()
        for name in given:
            seen.update((name, PurePosixPath(name).name))
        return [n for n in self.names if n not in seen and PurePosixPath(n).name not in seen]


def value_problem(value: str, *, max_chars: int = MAX_VALUE_CHARS) -> str | None:
    """Why a manifest value cannot be stored (None if it can)."""
    for char in value:
        if char not in _ALLOWED_CONTROLS and unicodedata.category(char) in ("Cc", "Cs"):
            return f"contains the control character U+{ord(char):04X}"
    if len(value) > max_chars:
        return f"is {len(value)} characters long; at most {max_chars} are allowed"
    return None


def _printable(text: str) -> str:
    shown = "".join(c if unicodedata.category(c) not in ("Cc", "Cs") else "?" for c in text)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def field_key(name: str) -> str:
    """The key a manifest field is stored under: a standard field's canonical key (``Case``
    and ``case_id`` are both ``case_id``), any other name as written, trimmed."""
    name = name.strip()
    spelled = name.lower().replace(" ", "_").replace("-", "_")
    return _ALIASES.get(spelled, name)


def _is_file_key(name: str) -> bool:
    return name.strip().lower() == "file"


def manifest_read(path: Path) -> Manifest:
    """Rows of a manifest by file (as written, and by name): its other fields.

    CSV, or JSON Lines when the name ends in .jsonl/.ndjson or the text starts with ``{``.
    Raises ManifestError if the file cannot be read (or a CSV has no `file` column); a bad
    row is left out and listed in `problems`.
    """
    try:
        if _is_jsonl(path):
            return _jsonl_read(path)
        return _csv_read(path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc}") from None


def _is_jsonl(path: Path) -> bool:
    if path.suffix.lower() in JSONL_SUFFIXES:
        return True
    if path.suffix.lower() == ".csv":
        return False
    with path.open(encoding="utf-8-sig") as fh:
        start = fh.read(4096).lstrip()
    return start.startswith("{")


def _csv_read(path: Path) -> Manifest:
    manifest = Manifest()
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c for c in reader.fieldnames or [] if c is not None]
        file_column = next((c for c in columns if _is_file_key(c)), None)
        if file_column is None:
            raise ManifestError(f"{path}: the manifest needs a `file` column")
        keys = _column_keys(columns, file_column, manifest.problems)
        end = reader.line_num
        for row in reader:
            line, end = end + 1, reader.line_num
            name = (row.get(file_column) or "").strip()
            row = {keys[k]: v or "" for k, v in row.items() if k in keys}
            problem = _row_problem(line, name, row)
            if problem is not None:
                manifest.problems.append(problem)
                continue
            manifest.add(name, {k: v.strip() for k, v in row.items() if v.strip()})
    return manifest


def _column_keys(columns: list[str], file_column: str, problems: list[RowProblem]) -> dict:
    """Column -> the key its values are stored under; a column left out is a problem."""
    keys: dict[str, str] = {}
    for column in columns:
        if column == file_column or not column.strip():
            continue  # a trailing comma in the header names no column
        why = _name_problem(column, keys.values())
        if why is not None:
            problems.append(RowProblem(1, "", _printable(column), f"the column {why}; ignored"))
        else:
            keys[column] = field_key(column)
    return keys


def _name_problem(name: str, taken) -> str | None:
    why = value_problem(name, max_chars=MAX_FIELD_NAME_CHARS)
    if why is not None:
        return f"name {why}"
    if not name.strip():
        return "has no name"
    if field_key(name) in taken:
        return f"repeats the field {field_key(name)!r}"
    return None


def _jsonl_read(path: Path) -> Manifest:
    manifest = Manifest()
    with path.open(encoding="utf-8-sig") as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            found = _jsonl_row(line, text, manifest.problems)
            if found is not None:
                manifest.add(*found)
    return manifest


def _jsonl_row(line: int, text: str, problems: list[RowProblem]):
    """(file, fields) of one JSON Lines row, or None with its problem added."""
    try:
        obj = json.loads(text)
    except ValueError as exc:
        problems.append(RowProblem(line, "", "file", f"is not valid JSON ({exc.msg})"))
        return None
    if not isinstance(obj, dict):
        problems.append(RowProblem(line, "", "file", "the line is not a JSON object"))
        return None
    name = next((v for k, v in obj.items() if _is_file_key(k)), None)
    if not isinstance(name, str) or not name.strip():
        problems.append(RowProblem(line, "", "file", "missing: each line needs a file name"))
        return None
    name = name.strip()
    row: dict[str, str] = {}
    for key, value in obj.items():
        if _is_file_key(key) or value is None:
            continue
        why = _name_problem(key, row)
        if why is not None:  # refused whole, as a bad value is: the row says one thing
            problems.append(RowProblem(line, _printable(name), _printable(key), f"the field {why}"))
            return None
        if isinstance(value, dict | list):
            why = "is a nested object or list; only text, numbers and true/false are taken"
            problems.append(RowProblem(line, _printable(name), key.strip(), why))
            return None
        row[field_key(key)] = _as_text(value)
    problem = _row_problem(line, name, row)
    if problem is not None:
        problems.append(problem)
        return None
    return name, {k: v.strip() for k, v in row.items() if v.strip()}


def _as_text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # JSON's spelling, not Python's
    return str(value)


def _row_problem(line: int, name: str, row: dict[str, str]) -> RowProblem | None:
    why = value_problem(name, max_chars=1000)
    if why is not None:
        return RowProblem(line, _printable(name), "file", why)
    for key, value in row.items():
        limit = MAX_REFERENCE_CHARS if key == "reference" else MAX_VALUE_CHARS
        why = value_problem(value, max_chars=limit)
        if why is not None:
            return RowProblem(line, name, key, why)
    return None


# What the review page calls the standard fields; the reference is shown on its own.
FIELD_LABELS = {
    "case_id": "Case",
    "patient_id": "Patient",
    "site": "Site",
    "stain": "Stain",
    "body_site": "Body site",
}


def case_details(metadata: dict | None) -> list[tuple[str, str]]:
    """(label, value) of a task's manifest fields for people: the standard ones first, in a
    fixed order, then the others as the manifest named them; the reference is left out."""
    metadata = metadata if isinstance(metadata, dict) else {}
    shown = [(label, metadata[key]) for key, label in FIELD_LABELS.items() if metadata.get(key)]
    for key, value in metadata.items():
        if key not in FIELD_LABELS and key != "reference" and value not in (None, ""):
            shown.append((str(key), value))
    return [(label, str(value)) for label, value in shown]
