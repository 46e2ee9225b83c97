"""The review queue's hot statements: prepared, pipelined, and committed with the writes,
without losing a decision or half-writing one."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from datetime import timedelta

import psycopg
import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from psycopg.pq import TransactionStatus

from annotations import hotsql, services
from annotations.models import AuditEvent, Claim, Label, Project
from tests.conftest import CsrfClient
from tests.factories import make_drafted_task

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "decision"}


def _names(project_name: str) -> set[str]:
    return set(Project.objects.filter(name__startswith=project_name).values_list("name", flat=True))


@pytest.mark.django_db(transaction=True)
def test_commit_early_commits_the_outermost_transaction_with_what_was_sent(people):
    with pytest.raises(RuntimeError), transaction.atomic():
        with hotsql.pipelined():
            Project.objects.create(name="kept", modality=people.project.modality)
            assert hotsql.commit_early()
        raise RuntimeError("after the commit: what was sent with it stays")
    assert _names("kept") == {"kept"}


@pytest.mark.django_db(transaction=True)
def test_commit_early_leaves_a_savepoint_to_its_transaction(people):
    with pytest.raises(RuntimeError), transaction.atomic():
        with transaction.atomic():
            with hotsql.pipelined():
                Project.objects.create(name="gone", modality=people.project.modality)
                assert not hotsql.commit_early()
        raise RuntimeError("the outer transaction rolls back, the savepoint's row with it")
    assert _names("gone") == set()


@pytest.mark.django_db(transaction=True)
def test_a_write_that_fails_with_the_commit_commits_nothing(people):
    audit = (
        "INSERT INTO annotations_auditevent (at, action, reason) VALUES (now(), %s, '')",
        ["test.half"],
    )
    no_reviewer = ("INSERT INTO annotations_claim (task_id) VALUES (%s)", [0])  # NOT NULL
    parts = [audit, no_reviewer]
    with pytest.raises(IntegrityError), transaction.atomic():
        services._execute_together(parts, commit=True)
    assert not AuditEvent.objects.filter(action="test.half").exists()
    with connection.cursor() as cursor:  # the connection is usable afterwards
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


@pytest.mark.django_db(transaction=True)
def test_a_decision_in_the_queue_is_committed_and_its_statements_prepared(people, client_for):
    first, second = make_drafted_task(people.project), make_drafted_task(people.project)
    client = client_for(people.pathologist)
    client.post(reverse("review-start", args=[people.project.pk]))
    ahead = client.post(
        reverse("review-ahead", args=[people.project.pk]), {"after": first.pk}, **HTMX
    )
    assert ahead.status_code == 204
    assert Claim.objects.get(task=second).page  # kept with the claim, not in a cache
    data = {"decision": "accepted", "draft_id": first.latest_draft().pk, "queue": "1"}
    answer = client.post(reverse("task-decide", args=[first.pk]), data, **HTMX)
    assert answer.status_code == 200 and f'data-task="{second.pk}"' in answer.content.decode()
    assert Label.objects.get(task=first).decision == "accepted"
    assert not Claim.objects.filter(task=first).exists()
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = " ".join(row[0] for row in cursor.fetchall())
    assert "FOR UPDATE" in prepared and "INSERT INTO annotations_label" in prepared


@pytest.mark.django_db(transaction=True)
def test_a_lost_claim_ahead_is_claimed_again_after_the_decision_commits(people, client_for):
    first, second = make_drafted_task(people.project), make_drafted_task(people.project)
    client = client_for(people.pathologist)
    client.post(reverse("review-start", args=[people.project.pk]))
    client.post(reverse("review-ahead", args=[people.project.pk]), {"after": first.pk}, **HTMX)
    Claim.objects.filter(task=second).delete()  # released meanwhile (another tab's skip)
    data = {"decision": "accepted", "draft_id": first.latest_draft().pk, "queue": "1"}
    answer = client.post(reverse("task-decide", args=[first.pk]), data, **HTMX)
    assert answer.status_code == 200
    assert Label.objects.filter(task=first).count() == 1
    assert Claim.objects.get(task=second).reviewer == people.pathologist


class _Writes:
    """The decision's write statement (the one that inserts its label), as sent."""

    def __init__(self):
        self.sql, self.params = "", ()

    def __call__(self, execute, sql, params, many, context):
        if "INSERT INTO annotations_label" in sql:
            self.sql, self.params = sql, params
        return execute(sql, params, many, context)


@pytest.mark.parametrize("readings_per_task", [1, 2])
@pytest.mark.django_db(transaction=True)
def test_the_write_statement_stays_within_psycopgs_parse_cache(people, readings_per_task):
    """psycopg caches the parsing of a statement of at most 4096 characters and 50
    parameters; past either, every decision parses its whole statement again (a rollup
    added to it went past once, unnoticed). The largest case: a second reading that edits,
    with a category, a time on task and agreement cells to keep."""
    from psycopg import _queries

    most_chars = getattr(_queries, "MAX_CACHED_STATEMENT_LENGTH", 4096)
    most_params = getattr(_queries, "MAX_CACHED_STATEMENT_PARAMS", 50)
    Project.objects.filter(pk=people.project.pk).update(readings_per_task=readings_per_task)
    task = make_drafted_task(people.project)
    draft = task.latest_draft().pk
    if readings_per_task == 2:
        services.label_record(
            task_id=task.pk, reviewer=people.project_admin, decision="accepted", draft_id=draft
        )
    writes = _Writes()
    with connection.execute_wrapper(writes):
        services.label_record(
            task_id=task.pk,
            reviewer=people.pathologist,
            decision="edited",
            text="Invasive lobular carcinoma.",
            category="wrong diagnosis or grade",
            draft_id=draft,
            time_on_task_ms=12_345,
        )
    assert writes.sql and len(writes.sql) <= most_chars, len(writes.sql)
    assert len(writes.params) <= most_params, len(writes.params)


# The functions the write calls ------------------------------------------------------------


def _counts_add(a: dict | None, b: dict | None) -> dict:
    """The rollups' merge as Python would do it: key by key, zeros dropped."""
    total = Counter(a or {})
    total.update(b or {})
    return {k: n for k, n in total.items() if n}


@pytest.mark.django_db
def test_counts_add_merges_as_python_would():
    """`annotations_counts_add`, PL/pgSQL since migration 0029, against a Counter: random
    objects with keys in common, negatives (an undo), sums to zero (dropped), and NULLs."""
    rng = random.Random(29)
    cases = [(None, None), ({}, None), (None, {"a": 1}), ({"a": 2}, {"a": -2}), ({"a": 1}, {})]
    for _ in range(200):
        keys = rng.sample("abcdefg", rng.randint(0, 5))
        a = {k: rng.randint(1, 9) for k in keys}
        b = {
            k: rng.choice([-a.get(k, 1), rng.randint(-3, 3) or 1]) for k in rng.sample("abcdefg", 3)
        }
        cases.append((a, b))
    with connection.cursor() as cursor:
        for a, b in cases:
            cursor.execute(
                "SELECT annotations_counts_add(%s::jsonb, %s::jsonb)",
                [None if a is None else json.dumps(a), None if b is None else json.dumps(b)],
            )
            got = cursor.fetchone()[0]
            got = json.loads(got) if isinstance(got, str) else got
            assert got == _counts_add(a, b), (a, b)


@pytest.mark.django_db
def test_the_functions_a_decision_calls_keep_their_plans():
    """A SQL function PostgreSQL cannot inline (the merge aggregates; the hash is IMMUTABLE
    around a STABLE `to_char`) is planned again on every call: the rollups' five merges cost
    a decision about 0.4 ms that way. PL/pgSQL keeps its plans for the session."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.proname, l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
            "WHERE p.proname IN ('annotations_counts_add', 'annotations_audit_hash', "
            "'annotations_audit_chain')"
        )
        languages = dict(cursor.fetchall())
    assert languages == {
        "annotations_counts_add": "plpgsql",
        "annotations_audit_hash": "plpgsql",
        "annotations_audit_chain": "plpgsql",
    }


@pytest.mark.django_db
def test_the_decision_reads_the_page_claimed_ahead_as_it_was_kept(people):
    """The page rendered ahead comes back as text, as kept (no JSON on the way), and only
    the reader's own, kept while they read this task."""
    first, second = make_drafted_task(people.project), make_drafted_task(people.project)
    page = f'<div id="review-area" data-task="{second.pk}">"quoted" & \\ escaped ✓</div>'
    expires = timezone.now() + timedelta(minutes=5)
    Claim.objects.create(task=second, reviewer=people.pathologist, expires_at=expires)
    assert services.claim_page_keep(
        task_id=second.pk, reviewer=people.pathologist, after=first.pk, page=page
    )
    with transaction.atomic():
        mine = services.task_for_decision(first.pk, people.pathologist)
        theirs = services.task_for_decision(first.pk, people.other_pathologist)
        other_task = services.task_for_decision(second.pk, people.pathologist)
    assert mine.ahead == services.Ahead(second.pk, page)
    assert theirs.ahead is None and other_task.ahead is None


@pytest.mark.django_db(transaction=True)
def test_the_answer_made_during_the_write_is_sent_only_if_the_claim_ahead_held(people, client_for):
    """The answer with the page rendered ahead is made while the database writes; when the
    write finds the claim ahead gone, that answer is dropped and the next task is claimed."""
    first, second, third = (make_drafted_task(people.project) for _ in range(3))
    client = client_for(people.pathologist)
    client.post(reverse("review-start", args=[people.project.pk]))
    client.post(reverse("review-ahead", args=[people.project.pk]), {"after": first.pk}, **HTMX)
    taken = Claim.objects.get(task=second)
    taken.reviewer = people.other_pathologist  # another reader has it now
    taken.save()
    data = {"decision": "accepted", "draft_id": first.latest_draft().pk, "queue": "1"}
    answer = client.post(reverse("task-decide", args=[first.pk]), data, **HTMX)
    assert answer.status_code == 200
    assert f'data-task="{second.pk}"' not in answer.content.decode()
    assert f'data-task="{third.pk}"' in answer.content.decode()
    assert Label.objects.filter(task=first).count() == 1


# The decision's own transaction ------------------------------------------------------------


def _idle() -> bool:
    """No transaction left open on the connection, and Django in autocommit mode."""
    connection.ensure_connection()
    status = connection.connection.info.transaction_status
    return status == TransactionStatus.IDLE and connection.get_autocommit()


def _locked_elsewhere(task_id: int) -> bool:
    """Whether another connection finds the task's row locked."""
    with psycopg.connect(_dsn(), autocommit=True) as other:
        try:
            other.execute(
                "SELECT 1 FROM annotations_task WHERE id = %s FOR UPDATE NOWAIT", [task_id]
            )
        except psycopg.errors.LockNotAvailable:
            return True
    return False


def _dsn() -> str:
    settings = connection.settings_dict
    return (
        f"postgresql://{settings['USER']}@{settings['HOST']}:{settings['PORT']}/{settings['NAME']}"
    )


@pytest.mark.django_db(transaction=True)
def test_a_decision_commits_in_two_waits_with_its_begin_and_commit_logged(people, client_for):
    """Outside any transaction, a decision is one pipeline with its own BEGIN (sent with the
    lock and the read) and its own COMMIT (sent with the writes); Django never opens a
    transaction of its own around it, and nothing is left open."""
    first, second = make_drafted_task(people.project), make_drafted_task(people.project)
    client = client_for(people.pathologist)
    client.post(reverse("review-start", args=[people.project.pk]))
    client.post(reverse("review-ahead", args=[people.project.pk]), {"after": first.pk}, **HTMX)
    data = {"decision": "accepted", "draft_id": first.latest_draft().pk, "queue": "1"}
    with CaptureQueriesContext(connection) as captured:
        answer = client.post(reverse("task-decide", args=[first.pk]), data, **HTMX)
    assert answer.status_code == 200 and f'data-task="{second.pk}"' in answer.content.decode()
    # The session's, the user's, BEGIN, the lock, the read, the writes, COMMIT.
    statements = [(q["sql"] or "").upper() for q in captured.captured_queries]
    assert len(statements) == 7, statements
    assert statements.count("BEGIN") == 1 and statements.count("COMMIT") == 1, statements
    assert not any("SAVEPOINT" in s for s in statements)
    assert Label.objects.get(task=first).decision == "accepted"
    assert _idle() and not _locked_elsewhere(first.pk)


@pytest.mark.django_db(transaction=True)
def test_a_write_that_fails_in_the_decision_leaves_nothing_open(people):
    """The write fails at the database: nothing of it is kept, the transaction is ended
    (the COMMIT that followed it in the pipeline was skipped), and the connection is usable."""
    task = make_drafted_task(people.project)
    audit = (
        "INSERT INTO annotations_auditevent (at, action, reason) VALUES (now(), %s, '')",
        ["test.half"],
    )
    no_reviewer = ("INSERT INTO annotations_claim (task_id) VALUES (%s)", [task.pk])
    with pytest.raises(IntegrityError), hotsql.decision():
        assert services.task_for_decision(task.pk, people.pathologist) is not None
        services._execute_together([audit, no_reviewer], commit=True)
    assert not AuditEvent.objects.filter(action="test.half").exists()
    assert _idle() and not _locked_elsewhere(task.pk)


@pytest.mark.django_db(transaction=True)
def test_a_decision_refused_after_the_read_rolls_back_and_unlocks(people):
    """A conflict found in Python after the lock and the read: the ROLLBACK goes, the task
    is unlocked at once, and Django is as it was."""
    task = make_drafted_task(people.project)
    with pytest.raises(services.ReviewConflict), hotsql.decision():
        assert services.task_for_decision(task.pk, people.pathologist) is not None
        assert _locked_elsewhere(task.pk)  # held while the decision is made
        raise services.ReviewConflict("a newer draft")
    assert _idle() and not _locked_elsewhere(task.pk)


@pytest.mark.django_db(transaction=True)
def test_inside_a_transaction_the_decision_is_a_savepoint_of_it(people):
    task = make_drafted_task(people.project)
    with pytest.raises(RuntimeError), transaction.atomic():
        with hotsql.decision():
            assert connection.in_atomic_block and not hotsql._decision_of(connection)
            services.label_record(
                task_id=task.pk,
                reviewer=people.pathologist,
                decision="accepted",
                draft_id=task.latest_draft().pk,
            )
        raise RuntimeError("the caller's transaction rolls back, the decision with it")
    assert not Label.objects.filter(task=task).exists()


@pytest.mark.django_db(transaction=True)
def test_a_decision_opened_inside_another_joins_it(people):
    """One transaction, one BEGIN and one COMMIT, whoever opens a decision inside it."""
    task = make_drafted_task(people.project)
    with CaptureQueriesContext(connection) as captured, hotsql.decision():
        outer = hotsql._decision_of(connection)
        with hotsql.decision():
            assert hotsql._decision_of(connection) is outer
            services.task_for_decision(task.pk, people.pathologist)
    statements = [(q["sql"] or "").upper() for q in captured.captured_queries]
    assert statements.count("BEGIN") == 1 and statements.count("COMMIT") == 1, statements
    assert _idle() and not _locked_elsewhere(task.pk)


@pytest.mark.django_db(transaction=True)
def test_two_tabs_deciding_at_once_record_one_decision(people):
    """Two tabs of one reviewer post their decisions on one task at the same moment, each on
    its own connection: the second waits for the first's lock, then reads its reading and
    is refused (409), never overwriting it."""
    task = make_drafted_task(people.project)
    draft = task.latest_draft().pk
    start = threading.Barrier(2)
    answers: list[int] = []
    errors: list[BaseException] = []

    def tab(decision: str, text: str) -> None:
        try:
            client = CsrfClient()
            client.force_login(people.pathologist)
            data = {"decision": decision, "draft_id": draft, "text": text, "queue": "1"}
            start.wait(timeout=30)
            answers.append(client.post(reverse("task-decide", args=[task.pk]), data).status_code)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    tabs = [
        threading.Thread(target=tab, args=("accepted", "")),
        threading.Thread(target=tab, args=("edited", "Invasive lobular carcinoma.")),
    ]
    for t in tabs:
        t.start()
    for t in tabs:
        t.join(60)
    assert not errors, errors
    assert sorted(answers) == [302, 409], answers
    assert Label.objects.filter(task=task).count() == 1
    label = Label.objects.get(task=task)
    assert label.revision == 1
    assert AuditEvent.objects.filter(action="label.record", task=task).count() == 1
