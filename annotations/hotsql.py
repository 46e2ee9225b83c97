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
  pipeline mode): the BEGIN with the lock and the read, and the writes with the COMMIT
  (`decision`, `commit_early`). A decision waits on the database twice, not six times;
  what needs no answer is done during the waits (`meanwhile`).

Both go through Django's cursor wrapper, so statements are counted, logged and their errors
translated as any other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.backends.postgresql.base import ServerBindingCursor
from psycopg.pq import TransactionStatus


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
    Fetch their rows after the block: a fetch inside it waits, and so does leaving it.

    Inside `decision()`'s own transaction, the block joins its pipeline: leaving waits only
    once the COMMIT went (`commit_early`), for everything; a fetch in between waits for
    what came before it."""
    db = connections[DEFAULT_DB_ALIAS]
    if (open_one := _decision_of(db)) is not None:
        yield
        if open_one.committing:
            open_one.close()
        return
    db.ensure_connection()
    with db.wrap_database_errors, db.connection.pipeline():
        yield


def commit_early() -> bool:
    """In `pipelined()`, in the outermost transaction (`decision()`'s own, or the outermost
    `transaction.atomic()` block): COMMIT now, with the statements sent before it, rather
    than when the block ends (which then commits what came after, if anything). False, and
    nothing sent, inside a savepoint (an outer transaction, as in tests, commits when it
    will)."""
    db = connections[DEFAULT_DB_ALIAS]
    if (open_one := _decision_of(db)) is not None:
        open_one.commit()
        return True
    if not db.in_atomic_block or len(db.atomic_blocks) != 1:
        return False
    with db.cursor() as cursor:
        cursor.execute("COMMIT")
    return True


class _Decision:
    """`decision()`'s transaction: its BEGIN and COMMIT are statements of one pipeline,
    which Django does not know of (it stays in autocommit mode)."""

    def __init__(self, db) -> None:
        self.db = db
        self.pipeline = contextlib.ExitStack()
        self.cursor = None  # for BEGIN, COMMIT and ROLLBACK
        self.committing = False
        self.closed = False

    def open(self) -> None:
        with self.db.wrap_database_errors:
            self.pipeline.enter_context(self.db.connection.pipeline())
        self.cursor = self.pipeline.enter_context(self.db.cursor())
        self._send("BEGIN")  # sent with the statements that follow, not waited for

    def commit(self) -> None:
        self._send("COMMIT")
        self.committing = True

    def close(self, exc: BaseException | None = None) -> None:
        """Leave the pipeline: wait for what was sent (raising the first error). A
        transaction left open (an error, or a block left without its COMMIT) is rolled
        back."""
        if self.closed:
            return
        self.closed = True
        self.db._medannot_decision = None
        try:
            if exc is not None and not self.committing:
                with contextlib.suppress(Exception):
                    self._send("ROLLBACK")
            with self.db.wrap_database_errors:
                if exc is None:
                    self.pipeline.close()
                else:
                    self.pipeline.__exit__(type(exc), exc, exc.__traceback__)
        finally:
            # A statement that failed aborts the transaction, and what followed it in the
            # pipeline (the COMMIT among them) was skipped: end it here.
            raw = self.db.connection
            left_open = raw is not None and not raw.closed
            if left_open and raw.info.transaction_status != TransactionStatus.IDLE:
                with self.db.wrap_database_errors:
                    raw.execute("ROLLBACK")

    def _send(self, statement: str) -> None:
        self.cursor.execute(statement)


def _decision_of(db) -> _Decision | None:
    return getattr(db, "_medannot_decision", None)


@contextlib.contextmanager
def decision() -> Iterator[None]:
    """The transaction of a decision in the review queue. Outside any transaction (a
    request's view), it is one pipeline with its own BEGIN and COMMIT: the BEGIN goes with
    the lock and the read (`transaction.atomic()` would have psycopg send it and wait for
    it: in pipeline mode psycopg syncs after a BEGIN), and the COMMIT with the writes
    (`commit_early`), leaving two waits on the database. Django stays in autocommit mode
    meanwhile: nothing in the block may open a `transaction.atomic()` before the COMMIT
    went. Inside a transaction already (a caller's, a test's), `transaction.atomic()`: a
    savepoint of it; inside another decision, that one."""
    db = connections[DEFAULT_DB_ALIAS]
    if _decision_of(db) is not None:
        yield
        return
    if db.in_atomic_block or not db.get_autocommit():
        with transaction.atomic():
            yield
        return
    db.ensure_connection()
    open_one = db._medannot_decision = _Decision(db)
    try:
        open_one.open()
        yield
    except BaseException as exc:
        open_one.close(exc)
        raise
    else:
        if not open_one.committing:
            open_one.commit()
        open_one.close()
