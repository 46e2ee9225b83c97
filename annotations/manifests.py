"""CSV manifests: per-file fields (organ, procedure, ...) that prompt templates fill in.

Reading and checking a manifest happens here only. A row with a value the database or the
prompt cannot take (a NUL byte, another control character, an over-long value) is refused
alone, with a line naming the row and the field; every other row is used.
"""

from __future__ import annotations

import csv
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MAX_VALUE_CHARS = 2000
MAX_FIELD_NAME_CHARS = 100
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


def manifest_read(path: Path) -> Manifest:
    """Rows of a CSV manifest by file (as written, and by name): its other columns.

    Raises ManifestError if the file cannot be read or has no `file` column; a bad row is
    left out and listed in `problems`.
    """
    manifest = Manifest()
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "file" not in reader.fieldnames:
                raise ManifestError(f"{path}: the manifest needs a `file` column")
            ignored = set()
            for key in reader.fieldnames:
                why = value_problem(key or "", max_chars=MAX_FIELD_NAME_CHARS)
                if why is not None:
                    ignored.add(key)
                    manifest.problems.append(
                        RowProblem(1, "", _printable(key), f"the column name {why}; ignored")
                    )
            end = reader.line_num
            for row in reader:
                line, end = end + 1, reader.line_num
                name = (row.pop("file") or "").strip()
                for key in ignored:
                    row.pop(key, None)
                problem = _row_problem(line, name, row)
                if problem is not None:
                    manifest.problems.append(problem)
                    continue
                values = {k.strip(): (v or "").strip() for k, v in row.items() if k and v}
                if name:
                    manifest.names.append(name)
                    manifest.rows[name] = manifest.rows[Path(name).name] = values
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc}") from None
    return manifest


def _row_problem(line: int, name: str, row: dict) -> RowProblem | None:
    why = value_problem(name, max_chars=1000)
    if why is not None:
        return RowProblem(line, _printable(name), "file", why)
    for key, value in row.items():
        if key is None:  # more values than columns: not used
            continue
        why = value_problem(value or "")
        if why is not None:
            return RowProblem(line, name, key.strip(), why)
    return None
