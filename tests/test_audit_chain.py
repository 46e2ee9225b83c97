"""The audit trail's hash chain: computed by the database on every insert path, checked by
verify_audit, and never forked by concurrent writers."""

import json
import threading
from datetime import UTC, datetime

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, connections, transaction

from annotations import audit, services
from annotations.models import AuditEvent

TRICKY = [
    {"text": "naïve café — 日本語 😀", "quote": 'say "hi"', "slash": "a\\b\\\\c"},
    {"control": "tab\tnew\nline\r\x01\x1f\x7f", "html": "<script>alert(1)</script>"},
    {"numbers": [1, 1.0, 1.50, -0.0, 1e2, 12345678901234567890, 0.1, 3.14159265358979]},
    {"nested": {"b": [None, True, False, {"": [], "z": {}}], "a": None, "aa": 1, "é": 2}},
    None,
    [],
    "just a string",
    42,
]


def _append(**fields) -> AuditEvent:
    return services.audit_record(action=fields.pop("action", "test.event"), **fields)


def _verify(*args) -> tuple[int, str]:
    """verify_audit's exit status and what it wrote."""
    import io

    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("verify_audit", *args, stdout=out, stderr=err)
    except SystemExit as exit:
        return exit.code, out.getvalue() + err.getvalue()
    return 0, out.getvalue() + err.getvalue()


def _as_owner(sql: str, params=()) -> None:
    """Rewrite the table as its owner could: with the triggers off, then on again."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no foreign key check left pending
        cursor.execute("ALTER TABLE annotations_auditevent DISABLE TRIGGER USER")
        try:
            cursor.execute(sql, params)
        finally:
            cursor.execute("ALTER TABLE annotations_auditevent ENABLE TRIGGER USER")
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")


@pytest.mark.django_db
def test_each_row_links_to_the_one_before():
    first, second = _append(), _append(after={"k": 1})
    rows = list(AuditEvent.objects.order_by("id").values_list("prev_hash", "hash"))
    assert rows[0][0] == audit.GENESIS
    assert rows[1][0] == rows[0][1]
    assert second.pk > first.pk
    assert all(len(h) == 64 for _, h in rows)


@pytest.mark.django_db
@pytest.mark.parametrize("value", TRICKY, ids=range(len(TRICKY)))
def test_python_and_the_database_hash_alike(value, django_user_model):
    actor = django_user_model.objects.create_user("hash")
    row = _append(actor=actor, before=value, after={"v": value}, reason='é "\\ <b>\n')
    row.refresh_from_db()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT before::text, after::text FROM annotations_auditevent WHERE id = %s",
            [row.pk],
        )
        before, after = cursor.fetchone()
    computed = audit.row_hash(
        id=row.pk,
        at=row.at,
        actor_id=actor.pk,
        action=row.action,
        project_id=None,
        task_id=None,
        before=audit.load(before),
        after=audit.load(after),
        reason=row.reason,
        prev_hash=row.prev_hash,
    )
    assert computed == row.hash
    # verify_audit's fast path, on the jsonb text as stored, agrees.
    fast = audit.row_hash_stored(
        id=row.pk,
        at=row.at,
        actor_id=actor.pk,
        action=row.action,
        project_id=None,
        task_id=None,
        before=before,
        after=after,
        reason=row.reason,
        prev_hash=row.prev_hash,
    )
    assert fast == row.hash
    assert before is None or audit.canonical_json(audit.load(before)) == before


def test_numbers_are_hashed_by_their_text_not_a_float():
    assert audit.canonical_json(audit.load('{"b": 1.0, "a": 1, "aa": 1.50}')) == (
        '{"a": 1, "b": 1.0, "aa": 1.50}'
    )
    assert audit.timestamp(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == (
        "2026-01-02T03:04:05.000000Z"
    )


@pytest.mark.django_db
def test_every_insert_path_is_chained(people):
    services.audit_record(action="one.by.one")
    AuditEvent.objects.bulk_create([AuditEvent(action="bulk"), AuditEvent(action="bulk")])
    sql, params = services._audit_sql([AuditEvent(action="raw", project_id=people.project.pk)])
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
    assert _verify()[0] == 0
    assert AuditEvent.objects.filter(hash="").count() == 0


@pytest.mark.django_db
def test_an_intact_chain_verifies(people):
    for value in TRICKY:
        _append(before=value, after=value)
    code, output = _verify()
    assert code == 0, output
    assert "intact" in output


@pytest.mark.django_db
def test_it_names_a_row_changed_by_the_owner(people):
    rows = [_append(after={"decision": "accept"}) for _ in range(5)]
    changed = rows[2]
    _as_owner(
        'UPDATE annotations_auditevent SET after = \'{"decision": "reject"}\' WHERE id = %s',
        [changed.pk],
    )
    code, output = _verify()
    assert code == 1
    assert f"row {changed.pk} " in output and "changed" in output


@pytest.mark.django_db
def test_it_names_a_row_whose_hash_was_recomputed_by_the_owner(people):
    rows = [_append(after={"n": n}) for n in range(5)]
    # The owner rewrites a row AND its hash: the next row no longer links to it.
    _as_owner(
        "UPDATE annotations_auditevent SET after = '{\"n\": 9}', "
        "hash = annotations_audit_hash(id, at, actor_id, action, project_id, task_id, before,"
        " '{\"n\": 9}'::jsonb, reason, prev_hash) WHERE id = %s",
        [rows[1].pk],
    )
    code, output = _verify()
    assert code == 1
    assert f"row {rows[2].pk} " in output


@pytest.mark.django_db
def test_it_detects_a_row_deleted_in_the_middle(people):
    rows = [_append() for _ in range(5)]
    _as_owner("DELETE FROM annotations_auditevent WHERE id = %s", [rows[2].pk])
    code, output = _verify()
    assert code == 1
    assert f"row {rows[3].pk} " in output and "deleted" in output


@pytest.mark.django_db
def test_it_detects_the_first_row_deleted(people):
    rows = [_append() for _ in range(3)]
    first = AuditEvent.objects.order_by("id").first()
    _as_owner("DELETE FROM annotations_auditevent WHERE id = %s", [first.pk])
    code, output = _verify()
    assert code == 1 and rows


@pytest.mark.django_db
def test_it_resumes_from_a_checkpoint(people, tmp_path):
    checkpoint = tmp_path / "audit.json"
    for _ in range(3):
        _append()
    assert _verify("--checkpoint", str(checkpoint))[0] == 0
    saved = json.loads(checkpoint.read_text())
    assert saved["id"] == AuditEvent.objects.order_by("id").last().pk
    # Rows before the checkpoint are not read again: a change there goes unseen...
    _as_owner("UPDATE annotations_auditevent SET reason = 'x' WHERE id = %s", [saved["id"]])
    new = _append()
    code, output = _verify("--checkpoint", str(checkpoint))
    assert code == 0 and "1 rows checked" in output, output
    assert json.loads(checkpoint.read_text())["id"] == new.pk
    # ...and a change after it is found.
    later = _append()
    _as_owner("UPDATE annotations_auditevent SET reason = 'x' WHERE id = %s", [later.pk])
    _append()
    code, output = _verify("--checkpoint", str(checkpoint))
    assert code == 1 and f"row {later.pk} " in output
    assert _verify("--from-id", str(saved["id"]))[0] == 1
    assert _verify("--from-id", str(later.pk))[0] == 0


@pytest.mark.django_db
def test_it_refuses_to_start_after_a_row_that_does_not_exist(people):
    with pytest.raises(Exception, match="no audit row"):
        call_command("verify_audit", "--from-id", "999999999")


@pytest.mark.django_db
def test_the_database_refuses_truncate(people):
    _append()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute("TRUNCATE annotations_auditevent CASCADE")
    assert AuditEvent.objects.exists()


@pytest.mark.django_db
def test_the_database_still_refuses_update_and_delete(people):
    row = _append()
    for sql in (
        "UPDATE annotations_auditevent SET hash = 'x'",
        "DELETE FROM annotations_auditevent",
    ):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(sql + " WHERE id = %s", [row.pk])


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_writers_leave_one_chain(people):
    start = threading.Barrier(20)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            start.wait()
            for k in range(5):
                with transaction.atomic():
                    services.audit_record(action="concurrent", after={"writer": n, "k": k})
                    services.audit_record(action="concurrent", after={"writer": n, "k": -k})
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert AuditEvent.objects.filter(action="concurrent").count() == 200
    prevs = list(AuditEvent.objects.values_list("prev_hash", flat=True))
    assert len(prevs) == len(set(prevs))
    code, output = _verify()
    assert code == 0, output


@pytest.mark.django_db(transaction=True)
def test_the_migration_chains_the_rows_already_there():
    call_command("migrate", "annotations", "0021", verbosity=0)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO annotations_auditevent (at, action, before, after, reason) "
                "SELECT now() - make_interval(secs => g), 'old.event', NULL,"
                " jsonb_build_object('n', g, 'f', 1.0, 'é', 'quote \"'), 'r' "
                "FROM generate_series(1, 50) g"
            )
    finally:
        call_command("migrate", "annotations", verbosity=0)
    rows = list(AuditEvent.objects.order_by("id").values_list("prev_hash", "hash"))
    assert len(rows) == 50 and rows[0][0] == audit.GENESIS
    code, output = _verify()
    assert code == 0, output
    _append()  # and new rows follow the backfilled ones
    assert _verify()[0] == 0
