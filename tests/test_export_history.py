"""The export's options: every reading of a double-read task (`?readings=all`) and every
label's earlier versions from the audit trail (`?history=1`): no decision silently lost."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from annotations import exports, services
from annotations.models import AuditEvent, Label, Role
from annotations.notice import AI_NOTICE
from tests.factories import make_drafted_task

DRAFT = "Invasive ductal carcinoma, grade 2."


def _reader(project, name: str, role: str = Role.PATHOLOGIST):
    user = get_user_model().objects.create_user(name, password="password")
    services.membership_set(project=project, user=user, role=role)
    return user


@pytest.fixture
def double(people):
    """`project` read twice per task, by `pathologist` and `reader2`."""
    services.project_reading_settings_set(
        project=people.project, readings_per_task=2, disagreement_words=5
    )
    people.project.refresh_from_db()
    people.reader2 = _reader(people.project, "rosa")  # pathologist of `project`
    people.adjudicator = _reader(people.project, "ada", Role.ADJUDICATOR)  # adjudicator
    return people


def read(task, reviewer, decision="accepted", text="", reason=""):
    """`reviewer`'s decision on `task`, made on their label as it is now (a change, if any)."""
    label = Label.objects.filter(task=task, reviewer=reviewer).first()
    if decision == "rejected" and not reason:
        reason = "Not this tissue."
    return services.label_record(
        task_id=task.pk,
        reviewer=reviewer,
        decision=decision,
        draft_id=task.latest_draft().pk,
        text=text,
        reason=reason,
        label_revision=label.revision if label else 0,
    )


def export(client, project, query: str = "") -> list[dict]:
    url = reverse("project-export", args=[project.pk]) + (f"?{query}" if query else "")
    response = client.get(url)
    assert response.status_code == 200, response.status_code
    body = b"".join(response.streaming_content).decode()
    return [json.loads(line) for line in body.splitlines()]


def by_task(rows: list[dict]) -> dict[int, dict]:
    return {row["task_id"]: row for row in rows}


def brief(versions: list[dict]) -> list[tuple]:
    return [(v["decision"], v["revision"], v["reviewer"], v["undo"]) for v in versions]


# The history of a label -----------------------------------------------------------------


def test_an_overwritten_accept_appears_in_the_earlier_versions(people, client_for):
    task = make_drafted_task(people.project)
    read(task, people.pathologist, "accepted")
    read(task, people.pathologist, "edited", text=DRAFT + " Margins clear.")
    row = export(client_for(people.admin), people.project, "history=1&reviewer_names=1")[0]
    assert (row["decision"], row["final_text"], row["revision"]) == (
        "edited",
        DRAFT + " Margins clear.",
        2,
    )
    [accept] = row["earlier_versions"]
    assert accept["decision"] == "accepted" and accept["final_text"] == DRAFT
    assert (accept["revision"], accept["reviewer"], accept["undo"]) == (1, "paul", False)
    assert accept["draft_id"] == task.latest_draft().pk and accept["edit_words"] == 0
    assert accept["regions"] == {"type": "FeatureCollection", "features": []}
    recorded = datetime.fromisoformat(accept["recorded_at"])
    assert recorded <= datetime.fromisoformat(row["updated_at"])
    assert row["draft_notice"] == AI_NOTICE  # the AI notice stays on every row


def test_the_export_without_history_is_as_before(people, client_for):
    task = make_drafted_task(people.project)
    read(task, people.pathologist, "accepted")
    read(task, people.pathologist, "rejected", reason="Wrong organ.")
    row = export(client_for(people.admin), people.project)[0]
    assert row["decision"] == "rejected"
    assert "earlier_versions" not in row and "revision" not in row


def test_a_label_never_changed_has_no_earlier_versions(people, client_for):
    task = make_drafted_task(people.project)
    read(task, people.pathologist, "accepted")
    row = export(client_for(people.admin), people.project, "history=1")[0]
    assert row["revision"] == 1 and row["earlier_versions"] == []


def test_an_undo_is_shown_as_an_undo(people, client_for):
    task = make_drafted_task(people.project)
    read(task, people.pathologist, "accepted")
    read(task, people.pathologist, "edited", text="Benign fibroadenoma.")
    services.label_undo(task_id=task.pk, reviewer=people.pathologist)  # back to the accept
    read(task, people.pathologist, "rejected", reason="Blurred.")
    row = export(client_for(people.admin), people.project, "history=1&reviewer_names=1")[0]
    assert (row["decision"], row["revision"]) == ("rejected", 4)
    assert brief(row["earlier_versions"]) == [
        ("accepted", 1, "paul", False),
        ("edited", 2, "paul", False),
        ("accepted", 3, "paul", True),  # what the undo restored
    ]
    assert row["earlier_versions"][1]["final_text"] == "Benign fibroadenoma."


def test_an_undone_first_decision_shows_as_an_undo_with_no_label(people, client_for):
    task = make_drafted_task(people.project)
    read(task, people.pathologist, "accepted")
    services.label_undo(task_id=task.pk, reviewer=people.pathologist)  # the label goes
    read(task, people.pathologist, "edited", text="Benign.")
    row = export(client_for(people.admin), people.project, "history=1&reviewer_names=1")[0]
    assert (row["decision"], row["revision"]) == ("edited", 1)
    assert brief(row["earlier_versions"]) == [
        ("accepted", 1, "paul", False),
        (None, None, "paul", True),
    ]


def test_each_label_gets_only_its_own_reviewers_versions(people, client_for):
    one, two = make_drafted_task(people.project), make_drafted_task(people.project)
    read(one, people.pathologist, "accepted")
    read(one, people.pathologist, "rejected", reason="Wrong organ.")
    read(two, people.admin, "accepted")
    rows = by_task(export(client_for(people.admin), people.project, "history=1&reviewer_names=1"))
    assert brief(rows[one.pk]["earlier_versions"]) == [("accepted", 1, "paul", False)]
    assert rows[two.pk]["earlier_versions"] == []


def test_a_decision_recorded_while_the_export_streams_is_no_earlier_version(people, monkeypatch):
    task = make_drafted_task(people.project)
    read(task, people.pathologist, "accepted")
    lookup = exports._AuditTrail.of

    def lookup_after_a_change(task_ids):
        # Between reading the labels and reading their history, the reader changes it.
        read(task, people.pathologist, "edited", text="Benign.")
        return lookup(task_ids)

    monkeypatch.setattr(exports._AuditTrail, "of", lookup_after_a_change)
    [row] = exports.label_rows(people.project, history=True, reviewer_names=True)
    assert (row["decision"], row["revision"], row["earlier_versions"]) == ("accepted", 1, [])


# Double reading ------------------------------------------------------------------------


def test_readings_all_gives_every_reading_of_a_final_task(double, client_for):
    task = make_drafted_task(double.project)
    read(task, double.pathologist, "edited", text=DRAFT + " Margins clear.")
    read(task, double.reader2, "edited", text=DRAFT + " Margins are clear.")
    client = client_for(double.admin)
    [row] = export(client, double.project, "readings=all&reviewer_names=1")
    assert row["final_source"] == "reading" and row["n_readings"] == 2
    assert [r["reviewer"] for r in row["readings"]] == ["paul", "rosa"]
    assert [r["final_text"] for r in row["readings"]] == [
        DRAFT + " Margins clear.",
        DRAFT + " Margins are clear.",
    ]
    assert all("earlier_versions" not in r for r in row["readings"])
    [default] = export(client, double.project, "reviewer_names=1")
    assert "readings" not in default
    assert {k: v for k, v in row.items() if k != "readings"} == default


def test_each_reading_carries_its_own_history(double, client_for):
    task = make_drafted_task(double.project)
    read(task, double.pathologist, "accepted")
    read(task, double.pathologist, "edited", text=DRAFT + " Margins clear.")  # before rosa reads
    read(task, double.reader2, "edited", text=DRAFT + " Margins are clear.")
    [row] = export(
        client_for(double.admin), double.project, "readings=all&history=1&reviewer_names=1"
    )
    paul, rosa = row["readings"]
    assert brief(paul["earlier_versions"]) == [("accepted", 1, "paul", False)]
    assert rosa["earlier_versions"] == [] and rosa["revision"] == 1
    # the final label is paul's reading: the same history
    assert row["earlier_versions"] == paul["earlier_versions"] and row["revision"] == 2


def test_a_revised_adjudication_keeps_the_earlier_one(double, client_for):
    task = make_drafted_task(double.project)
    read(task, double.pathologist, "accepted")
    read(task, double.reader2, "rejected", reason="Not this tissue.")
    for text in ("Benign fibroadenoma.", "Benign fibroadenoma, no atypia."):
        services.adjudication_record(
            task_id=task.pk,
            adjudicator=double.adjudicator,
            decision="edited",
            text=text,
            category="missed finding",
        )
    [row] = export(client_for(double.admin), double.project, "history=1&reviewer_names=1")
    assert row["final_source"] == "adjudication" and row["revision"] is None
    assert row["final_text"] == "Benign fibroadenoma, no atypia."
    [earlier] = row["earlier_versions"]
    assert (earlier["decision"], earlier["final_text"], earlier["reviewer"]) == (
        "edited",
        "Benign fibroadenoma.",
        "ada",
    )
    assert "readings" not in row


def test_one_reading_per_task_takes_readings_all_and_changes_nothing(people, client_for):
    for decision in ("accepted", "edited", "rejected"):
        read(make_drafted_task(people.project), people.pathologist, decision, text="Benign.")
    client = client_for(people.admin)
    rows = export(client, people.project, "readings=all")
    assert len(rows) == 3 and all("readings" not in row for row in rows)
    assert rows == export(client, people.project)


# The query string ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "readings=yes",
        "readings=",
        "readings=1",
        "readings=all%00",
        "history=0",
        "history=maybe",
        "history=",
        "history=%ff%fe",
        "readings[]=all&history[]=1",
        "history=1&history=no",  # the last value counts
        "format=xml&page=-1",  # an unknown format: JSON Lines
    ],
)
def test_bad_query_values_give_the_default_export(double, client_for, query):
    task = make_drafted_task(double.project)
    read(task, double.pathologist, "accepted")
    read(task, double.pathologist, "rejected", reason="Wrong organ.")
    read(task, double.reader2, "rejected", reason="Blurred.")
    client = client_for(double.admin)
    assert export(client, double.project, query) == export(client, double.project)


@pytest.mark.parametrize("query", ["readings=ALL", "readings=all&history=true", "history=on"])
def test_the_options_read_their_usual_spellings(double, client_for, query):
    task = make_drafted_task(double.project)
    read(task, double.pathologist, "accepted")
    read(task, double.reader2, "accepted")
    [row] = export(client_for(double.admin), double.project, query)
    assert ("readings" in row) == ("readings" in query)
    assert ("earlier_versions" in row) == ("history" in query)


def test_the_audit_records_the_options_of_each_export(people, client_for):
    export(client_for(people.admin), people.project, "readings=all&history=1")
    event = AuditEvent.objects.filter(action="project.export").get()
    assert event.actor == people.admin
    assert event.after.items() >= {"readings": True, "history": True, "origin": "download"}.items()


# Queries: one for the labels, one per chunk for their history ---------------------------


def _queries_of_export(client, project, query) -> int:
    with CaptureQueriesContext(connection) as queries:
        export(client, project, query)
    return len(queries)


@pytest.mark.parametrize("readings_per_task", [1, 2])
def test_the_export_takes_as_many_queries_for_30_labels_as_for_3(
    people, client_for, django_assert_max_num_queries, readings_per_task
):
    project = people.project
    readers = [people.pathologist]
    if readings_per_task > 1:
        services.project_reading_settings_set(
            project=project, readings_per_task=2, disagreement_words=5
        )
        project.refresh_from_db()
        readers.append(_reader(project, "rosa"))

    def decide(n: int) -> None:
        for _ in range(n):
            task = make_drafted_task(project)
            for reader in readers:
                read(task, reader, "accepted")
                read(task, reader, "edited", text=DRAFT + " Margins clear.")

    client = client_for(people.admin)
    query = "readings=all&history=1"
    decide(3)
    budget = _queries_of_export(client, project, query)
    decide(27)
    with django_assert_max_num_queries(budget):
        rows = export(client, project, query)
    assert len(rows) == 30
    assert all(len(row["earlier_versions"]) == 1 for row in rows)


def test_history_is_read_once_per_chunk_of_labels(people, monkeypatch):
    monkeypatch.setattr(exports, "CHUNK", 4)
    tasks = [make_drafted_task(people.project) for _ in range(10)]
    for i, task in enumerate(tasks):
        read(task, people.pathologist, "accepted")
        read(task, people.pathologist, "edited", text=f"Benign, case {i}.")
    with CaptureQueriesContext(connection) as queries:
        rows = list(exports.label_rows(people.project, history=True, reviewer_names=True))
    audit = [q for q in queries if "annotations_auditevent" in q["sql"]]
    assert len(audit) == 3  # 10 labels in chunks of 4
    assert [row["task_id"] for row in rows] == [task.pk for task in tasks]
    assert all(brief(row["earlier_versions"]) == [("accepted", 1, "paul", False)] for row in rows)


def test_a_double_read_task_is_never_split_across_chunks(double, monkeypatch):
    monkeypatch.setattr(exports, "CHUNK", 3)  # odd: a chunk boundary falls inside a task
    tasks = [make_drafted_task(double.project) for _ in range(5)]
    for task in tasks:
        read(task, double.pathologist, "accepted")
        read(task, double.pathologist, "edited", text=DRAFT + " Margins clear.")
        read(task, double.reader2, "edited", text=DRAFT + " Margins clear.")
    with CaptureQueriesContext(connection) as queries:
        rows = list(exports.label_rows(double.project, readings=True, history=True))
    assert len([q for q in queries if "annotations_auditevent" in q["sql"]]) == 3
    assert [row["task_id"] for row in rows] == [task.pk for task in tasks]
    for row in rows:
        assert row["n_readings"] == 2
        assert [len(r["earlier_versions"]) for r in row["readings"]] == [1, 0]


# Who may export, and the page's control --------------------------------------------------


@pytest.mark.parametrize(
    ("persona", "status"),
    [
        ("superuser", 200),  # the site
        ("project_admin", 200),  # admin of `project`
        ("pathologist", 403),  # member without export
        ("researcher", 403),  # member without export
        ("adjudicator", 403),  # member without export
        ("other_admin", 404),  # admin of ANOTHER project
        ("other_pathologist", 404),  # member of another project only
        ("outsider", 404),  # member of nothing
        (None, 302),  # not logged in: to the login page
    ],
)
def test_only_roles_that_may_export_get_the_options(double, client_for, persona, status):
    task = make_drafted_task(double.project)
    read(task, double.pathologist, "accepted")
    read(task, double.reader2, "accepted")
    client = client_for(getattr(double, persona) if persona else None)
    url = reverse("project-export", args=[double.project.pk]) + "?readings=all&history=1"
    response = client.get(url)
    assert response.status_code == status
    if status != 200:
        assert not AuditEvent.objects.filter(action="project.export").exists()


def test_the_project_page_offers_the_options_to_an_admin(double, client_for):
    page = client_for(double.admin).get(reverse("project-detail", args=[double.project.pk]))
    body = page.content.decode()
    action = reverse("export-start", args=[double.project.pk])  # a job (test_export_jobs)
    assert f'<form method="post" action="{action}"' in body
    assert 'name="readings" value="all"' in body and 'name="history" value="1"' in body
    # each checkbox sits inside its label: its accessible name
    assert '<label><input type="checkbox" name="readings"' in body
    assert '<label><input type="checkbox" name="history"' in body


def test_the_readings_option_shows_only_with_double_reading(people, client_for):
    body = client_for(people.admin).get(reverse("project-detail", args=[people.project.pk]))
    assert b'name="history"' in body.content and b'name="readings"' not in body.content


def test_a_pathologist_sees_no_export_control(people, client_for):
    body = client_for(people.pathologist).get(reverse("project-detail", args=[people.project.pk]))
    action = reverse("project-export", args=[people.project.pk])
    assert action.encode() not in body.content and b'name="history"' not in body.content
