"""Check the audit trail's hash chain: every row's hash recomputed in Python from its content,
and every row linked to the one before it. Exits non-zero naming the first bad row."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction

from annotations import audit

# The row's content as PostgreSQL stores it: jsonb as its text (its canonical form: numbers
# as PostgreSQL wrote them, never through a float). Streamed from a named cursor.
_ROWS = """
SELECT id, at, actor_id, action, project_id, task_id, before::text, after::text, reason,
       prev_hash, hash
FROM annotations_auditevent WHERE id > %s ORDER BY id
"""
BATCH = 5000


class Command(BaseCommand):
    help = "Verify the audit trail's hash chain; exits 1 at the first bad row."

    def add_arguments(self, parser):
        parser.add_argument("--from-id", type=int, default=None, help="start after this id")
        parser.add_argument(
            "--checkpoint", type=Path, default=None, help="resume from, and save to, this file"
        )

    def handle(self, *args, from_id=None, checkpoint=None, **options):
        after_id, previous = 0, audit.GENESIS
        if checkpoint is not None and checkpoint.exists():
            saved = json.loads(checkpoint.read_text())
            after_id, previous = int(saved["id"]), saved["hash"]
        if from_id is not None:
            after_id, previous = from_id, self._hash_of(from_id)
        checked, last = self._verify(after_id, previous)
        if checkpoint is not None and last is not None:
            checkpoint.write_text(json.dumps({"id": last[0], "hash": last[1]}))
        self.stdout.write(f"The audit trail is intact: {checked} rows checked.")

    def _hash_of(self, row_id: int) -> str:
        if row_id == 0:
            return audit.GENESIS
        with connection.cursor() as cursor:
            cursor.execute("SELECT hash FROM annotations_auditevent WHERE id = %s", [row_id])
            row = cursor.fetchone()
        if row is None:
            raise CommandError(f"There is no audit row {row_id} to start after.")
        return row[0]

    def _verify(self, after_id: int, previous: str) -> tuple[int, tuple[int, str] | None]:
        """Stream the rows after `after_id`; the count checked and the last (id, hash)."""
        checked, last, started = 0, None, time.monotonic()
        tty = self.stdout.isatty()
        # A named (server-side) cursor needs a transaction; it holds one batch at a time.
        with transaction.atomic(), connection.connection.cursor(name="verify_audit") as cur:
            cur.itersize = BATCH
            cur.execute(_ROWS, [after_id])
            for row in cur:
                self._check(row, previous)
                previous, last = row[10], (row[0], row[10])
                checked += 1
                if tty and checked % 100_000 == 0:
                    rate = checked / max(time.monotonic() - started, 1e-9)
                    self.stdout.write(
                        f"\r{checked} rows, up to id {row[0]} ({rate:.0f}/s)", ending=""
                    )
        if tty and checked >= 100_000:
            self.stdout.write("")
        return checked, last

    def _check(self, row: tuple, previous: str) -> None:
        row_id, at, actor_id, action, project_id, task_id, before, after, reason, prev, stored = row
        problem = None
        if prev != previous:
            problem = (
                "it does not follow the row before it (a row before it was deleted or "
                f"changed): prev_hash {prev}, expected {previous}"
            )
        else:
            computed = audit.row_hash_stored(
                id=row_id,
                at=at,
                actor_id=actor_id,
                action=action,
                project_id=project_id,
                task_id=task_id,
                before=before,
                after=after,
                reason=reason,
                prev_hash=prev,
            )
            if computed != stored:
                problem = f"its content was changed: hash {stored}, recomputed {computed}"
        if problem:
            self.stderr.write(
                f"The audit trail is broken at row {row_id} ({action}, {at.isoformat()}): "
                f"{problem}."
            )
            sys.exit(1)
