"""Statements of the review queue's hot path, run with fewer waits on the database.

A decision costs a few statements (annotations.services.task_for_decision and the writes
of `_review_settle`); what a reviewer waits for is mostly the round trips and PostgreSQL
planning each statement anew, not the work itself. Two remedies, for these statements only:

- prepared: the statement goes with server-side binding, prepared on its first run, and
  its plan is reused on the connection afterwards (these statements look rows up by key, so
  a generic plan is as good as a custom one). Django keeps `prepare_threshold` off for
  connection poolers in transaction mode; so must a deployment that puts one in front of
  PostgreSQL with these: PgBouncer 1.21 or later with `max_prepared_statements` set.
- pipelined: statements that need no answer before the next are sent together (psycopg's
  pipeline mode): the lock with the read, and the writes with the COMMIT (`commit_early`).
  A decision waits on the database three times, not six: psycopg waits for the BEGIN on
  its own (in pipeline mode it syncs after one), then for the lock and the read, then for
  the writes and the COMMIT. What needs no answer is done during the waits (`meanwhile`).

Both go through Django's cursor wrapper, so statements are counted, logged and their errors
translated as any other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.postgresql.base import ServerBindingCursor


class _PreparedCursor(ServerBindingCursor):
    """Server-side binding, each statement prepared (Django's own cursors bind on the client,
    and cannot prepare)."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        prepare = True if prepare is None else prepare
        return super().execute(query, params, prepare=prepare, binary=binary)


# psycopg prepares nothing on a connection whose threshold is None (Django's default); with
# this one, only what asks for it (`_PreparedCursor`: Django's own cursors bind on the
# client and never prepare).
_ONLY_WHEN_ASKED = 1 << 30


def prepared_cursor():
    """A cursor of the default connection whose statements PostgreSQL keeps prepared."""
    db = connections[DEFAULT_DB_ALIAS]  # once: each use of the `connection` proxy looks it up
    db.ensure_connection()
    raw = db.connection
    if raw.prepare_threshold is None:
        raw.prepare_threshold = _ONLY_WHEN_ASKED
    with db.wrap_database_errors:
        return db._prepare_cursor(_PreparedCursor(raw))


@contextlib.contextmanager
def pipelined() -> Iterator[None]:
    """Statements executed in the block are sent without waiting for each answer; leaving
    the block waits once for all of them (and raises the error of the first that failed).
    Fetch their rows after the block: a fetch inside it waits, and so does leaving it."""
    db = connections[DEFAULT_DB_ALIAS]
    db.ensure_connection()
    with db.wrap_database_errors, db.connection.pipeline():
        yield


def commit_early() -> bool:
    """In `pipelined()`, inside the outermost `transaction.atomic()` block: COMMIT now, with
    the statements sent before it, rather than when the block ends (which then commits
    what came after, if anything). False, and nothing sent, inside a savepoint (an outer
    transaction, as in tests, commits when it will)."""
    db = connections[DEFAULT_DB_ALIAS]
    if not db.in_atomic_block or len(db.atomic_blocks) != 1:
        return False
    with db.cursor() as cursor:
        cursor.execute("COMMIT")
    return True
