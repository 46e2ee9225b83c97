"""The export's filters (each a SQL condition, on the URL, `export_labels` and the project
page's form), its train/validation/test split by patient, and reviewers as pseudonyms."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from annotations import exports, services
from annotations.models import AuditEvent, Draft, Label, PromptTemplate, Role, Task
from tests.factories import make_drafted_task
from tests.test_export_formats import csv_rows, decide, jsonl


@pytest.fixture
def varied(people):
    """Four tasks of `project`: accepted and rejected by `pathologist` (paul), edited and
    accepted by `rosa`; different days, models, prompt versions and manifest fields."""
    people.rosa = get_user_model().objects.create_user("rosa", password="password")
    services.membership_set(project=people.project, user=people.rosa, role=Role.PATHOLOGIST)
    tasks = [make_drafted_task(people.project) for _ in range(4)]
    decide(tasks[0], people.pathologist, "accepted")
    decide(tasks[1], people.pathologist, "rejected")
    decide(tasks[2], people.rosa, "edited", text="Benign.")
    decide(tasks[3], people.rosa, "accepted")
    for i, task in enumerate(tasks):
        day = datetime(2025, 3, 1 + i, 12, tzinfo=UTC)  # 1, 2, 3, 4 March
        Label.objects.filter(task=task).update(created_at=day)
        Task.objects.filter(pk=task.pk).update(
            metadata={"organ": "skin" if i % 2 else "breast", "site": i}
        )
    Draft.objects.filter(task=tasks[2]).update(model_id="/srv/models/medgemma-1.5-4b-it")
    v3 = PromptTemplate.objects.create(project=people.project, version=3, instruction="Say.")
    Draft.objects.filter(task=tasks[3]).update(prompt_template=v3)
    people.tasks = tasks
    return people


def ids(client, project, query: str) -> list[int]:
    return [row["task_id"] for row in jsonl(client, project, query)]


@pytest.mark.parametrize(
    "query, expected",
    [
        ("decision=accepted", [0, 3]),
        ("decision=REJECTED", [1]),
        ("reviewer=rosa", [2, 3]),
        ("from=2025-03-02&to=2025-03-03", [1, 2]),  # both ends included
        ("from=2025-03-04", [3]),
        ("to=2025-03-01", [0]),
        ("model_id=medgemma-1.5-4b-it", [2]),  # as exported
        ("model_id=/srv/models/medgemma-1.5-4b-it", [2]),  # as recorded
        ("prompt_version=3", [3]),
        ("prompt_version=0", [0, 1, 2]),
        ("meta.organ=skin", [1, 3]),
        ("meta.organ=skin&meta.site=3", [3]),  # every field must match
        ("meta.site=2", [2]),  # a number in the manifest matches its text
        ("meta_key=organ&meta_value=breast", [0, 2]),  # the page's form
        ("review_state=final", [0, 1, 2, 3]),
        ("review_state=open", []),
        ("decision=accepted&reviewer=paul", [0]),
    ],
)
def test_each_filter_picks_its_labels(varied, client_for, query, expected):
    client = client_for(varied.admin)
    assert ids(client, varied.project, query) == [varied.tasks[i].pk for i in expected]


@pytest.mark.parametrize("query", ["decision=accepted", "meta.organ=skin&history=1"])
def test_a_filtered_csv_has_the_filtered_jsonl_rows(varied, client_for, query):
    client = client_for(varied.admin)
    rows, lines = csv_rows(client, varied.project, query), jsonl(client, varied.project, query)
    assert [int(row["task_id"]) for row in rows] == [line["task_id"] for line in lines]
    assert len(rows) == 2


def test_the_reviewer_filter_takes_a_pseudonym(varied, client_for):
    pseudonym = exports.reviewer_pseudonym(varied.project.pk, varied.rosa.pk)
    client = client_for(varied.admin)
    assert ids(client, varied.project, f"reviewer={pseudonym}") == [
        varied.tasks[2].pk,
        varied.tasks[3].pk,
    ]


@pytest.mark.parametrize(
    "query",
    [
        "decision=maybe",
        "decision=accepted%00",
        "review_state=closed",
        "from=2025-13-01",
        "from=yesterday&to=",
        "to=2025-02-30",
        "prompt_version=-1",
        "prompt_version=1e9",
        "prompt_version=99999999999999999999",
        "meta.=skin",
        "meta.organ=",
        "meta%00=x",
        "meta_key=organ",
        "split=80,10",
        "split=a,b,c",
        "split=0,0,0",
        "split=-1,1,100",
        "split=nan,1,1",
        "split_seed=-3",
        "split_seed=x",
        "reviewer_names=0",
    ],
)
def test_bad_filter_values_are_ignored(varied, client_for, query):
    client = client_for(varied.admin)
    assert jsonl(client, varied.project, query) == jsonl(client, varied.project)


@pytest.mark.parametrize(
    "query",
    [
        "reviewer=nobody",
        "reviewer=paul%00",
        "reviewer=" + "x" * 5000,
        "model_id=%ff%fe",
        "meta.organ%ff=skin",
        "meta." + "k" * 300 + "=v",
        "reviewer=reader-0000000000",
    ],
)
def test_odd_filter_values_never_fail(varied, client_for, query):
    client = client_for(varied.admin)
    rows = jsonl(client, varied.project, query)  # a 200, however odd the value
    assert rows == [] or rows == jsonl(client, varied.project)


def test_filters_keep_a_double_read_task_whole(people, client_for):
    services.project_reading_settings_set(
        project=people.project, readings_per_task=2, disagreement_words=5
    )
    people.project.refresh_from_db()
    rosa = get_user_model().objects.create_user("rosa", password="password")
    services.membership_set(project=people.project, user=rosa, role=Role.PATHOLOGIST)
    one, two = make_drafted_task(people.project), make_drafted_task(people.project)
    for task in (one, two):
        decide(task, people.pathologist, "accepted")
    decide(one, rosa, "accepted")
    tom = get_user_model().objects.create_user("tom", password="password")
    services.membership_set(project=people.project, user=tom, role=Role.PATHOLOGIST)
    decide(two, tom, "accepted")
    client = client_for(people.admin)
    [row] = jsonl(client, people.project, "reviewer=rosa&readings=all&reviewer_names=1")
    assert row["task_id"] == one.pk and row["n_readings"] == 2
    assert [r["reviewer"] for r in row["readings"]] == ["paul", "rosa"]
    assert ids(client, people.project, "decision=accepted") == [one.pk, two.pk]
    assert ids(client, people.project, "decision=rejected") == []


def test_the_audit_records_the_filters(varied, client_for):
    query = "decision=accepted&from=2025-03-01&meta.organ=skin&split=1&split_seed=7"
    jsonl(client_for(varied.admin), varied.project, query)
    event = AuditEvent.objects.filter(action="project.export").get()
    options = {k: v for k, v in event.after.items() if k not in {"job", "origin", "output"}}
    assert options == {
        "readings": False,
        "history": False,
        "decision": "accepted",
        "date_from": "2025-03-01",
        "meta": {"organ": "skin"},
        "split": [80.0, 10.0, 10.0],
        "split_seed": 7,
    }


def test_export_labels_takes_the_filters(varied, tmp_path):
    out = tmp_path / "labels.jsonl"
    call_command(
        "export_labels",
        "--project",
        varied.project.name,
        "--decision",
        "accepted",
        "--meta",
        "organ=skin",
        "--from",
        "2025-03-02",
        "--split",
        "80,10,10",
        "--split-seed",
        "4",
        "--reviewer-names",
        "--out",
        str(out),
        stderr=open(tmp_path / "err", "w"),  # noqa: SIM115
    )
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["task_id"] == varied.tasks[3].pk
    assert row["reviewer"] == "rosa" and row["split"] in exports.SPLITS


@pytest.mark.parametrize(
    "args", [["--from", "March"], ["--split", "1,2"], ["--meta", "organ"], ["--split-seed", "x"]]
)
def test_export_labels_refuses_a_bad_value(varied, tmp_path, args):
    with pytest.raises(CommandError):
        call_command("export_labels", "--project", varied.project.name, *args)


def test_the_project_page_offers_the_filters_with_labels(varied, client_for):
    page = client_for(varied.admin).get(reverse("project-detail", args=[varied.project.pk]))
    body = page.content.decode()
    for name, id in [
        ("decision", "export-decision"),
        ("review_state", "export-review-state"),
        ("reviewer", "export-reviewer"),
        ("from", "export-from"),
        ("to", "export-to"),
        ("model_id", "export-model"),
        ("prompt_version", "export-prompt-version"),
        ("meta_key", "export-meta-key"),
        ("meta_value", "export-meta-value"),
        ("split", "export-split"),
        ("split_seed", "export-split-seed"),
        ("reviewer_names", "export-reviewer-names"),
    ]:
        assert f'name="{name}"' in body and f'id="{id}"' in body, name
        assert f'for="{id}"' in body or f'<label><input type="checkbox" name="{name}"' in body
    assert 'type="date" name="from"' in body and 'type="date" name="to"' in body


def test_the_empty_form_gives_the_default_export(varied, client_for):
    client = client_for(varied.admin)
    empty = (
        "decision=&review_state=&reviewer=&from=&to=&model_id=&prompt_version="
        "&meta_key=&meta_value=&split=&split_seed="
    )
    assert jsonl(client, varied.project, empty) == jsonl(client, varied.project)


# Splits ---------------------------------------------------------------------------------


def _many_tasks(project, n: int, patients: int) -> None:
    """`n` labelled tasks of `patients` patients (some by case id, some alone)."""
    reviewer = project.memberships.filter(role=Role.PATHOLOGIST).first().user
    for i in range(n):
        task = make_drafted_task(project)
        decide(task, reviewer, "accepted")
        if i % 5 == 4:
            metadata = {}  # its own group
        elif i % 5 == 3:
            metadata = {"case_id": f"C{i % patients}"}
        else:
            metadata = {"patient_id": f"P{i % patients}", "case_id": f"C{i}"}
        Task.objects.filter(pk=task.pk).update(metadata=metadata)


def _group(row: dict) -> str:
    meta = row["task_metadata"]
    if meta.get("patient_id"):
        return "patient:" + meta["patient_id"]
    return "case:" + meta["case_id"] if meta.get("case_id") else f"task:{row['task_id']}"


def test_a_patient_is_never_in_two_splits(people, client_for):
    _many_tasks(people.project, 60, patients=12)
    client = client_for(people.admin)
    for query in ("split=80,10,10&split_seed=1", "split=34,33,33&split_seed=2&format=csv"):
        if "csv" in query:
            rows = [
                {**row, "task_metadata": json.loads(row["task_metadata"])}
                for row in csv_rows(client, people.project, query.replace("&format=csv", ""))
            ]
        else:
            rows = jsonl(client, people.project, query)
        splits = defaultdict(set)
        for row in rows:
            splits[_group(row)].add(row["split"])
        assert all(len(seen) == 1 for seen in splits.values())
        assert {row["split"] for row in rows} <= set(exports.SPLITS)


def test_the_same_seed_gives_the_same_split(people, client_for):
    _many_tasks(people.project, 30, patients=10)
    client = client_for(people.admin)

    def split(query):
        return {row["task_id"]: row["split"] for row in jsonl(client, people.project, query)}

    assert split("split=80,10,10&split_seed=5") == split("split=80,10,10&split_seed=5")
    assert split("split=80,10,10&split_seed=5") == {
        row["task_id"]: row["split"]
        for row in exports.label_rows(people.project, split=(8, 1, 1), split_seed=5)
    }  # the ratios' scale does not matter
    assert split("split=34,33,33&split_seed=5") != split("split=34,33,33&split_seed=6")
    # history (the cursor path) and the plain COPY agree
    history = split("split=80,10,10&split_seed=5&history=1")
    assert history == split("split=80,10,10&split_seed=5")


def test_the_split_ratios_hold_over_many_patients(people):
    project = people.project
    tasks = [make_drafted_task(project) for _ in range(10)]
    for task in tasks:
        decide(task, people.pathologist, "accepted")
    # 2,000 patients: the same labels under new patient ids, as the split reads them.
    seen: Counter[str] = Counter()
    for batch in range(200):
        for i, task in enumerate(tasks):
            Task.objects.filter(pk=task.pk).update(metadata={"patient_id": f"{batch}-{i}"})
        for row in exports.label_rows(project, split=(70, 20, 10), split_seed=batch % 3):
            seen[row["split"]] += 1
    total = sum(seen.values())
    assert total == 2000
    assert abs(seen["train"] / total - 0.7) < 0.05
    assert abs(seen["validation"] / total - 0.2) < 0.04
    assert abs(seen["test"] / total - 0.1) < 0.03


def test_without_split_there_is_no_split_column(varied, client_for):
    client = client_for(varied.admin)
    assert all("split" not in row for row in jsonl(client, varied.project))
    assert "split" not in csv_rows(client, varied.project)[0]
    assert list(csv_rows(client, varied.project, "split=1")[0])[-1] == "split"


# Pseudonymous reviewers ----------------------------------------------------------------


def test_reviewers_are_pseudonyms_unless_names_are_asked(varied, client_for):
    client = client_for(varied.admin)
    rows = jsonl(client, varied.project)
    paul = exports.reviewer_pseudonym(varied.project.pk, varied.pathologist.pk)
    rosa = exports.reviewer_pseudonym(varied.project.pk, varied.rosa.pk)
    assert [row["reviewer"] for row in rows] == [paul, paul, rosa, rosa]
    assert paul != rosa and paul.startswith("reader-") and len(paul) == len("reader-") + 10
    assert "paul" not in json.dumps(rows) and "rosa" not in json.dumps(rows)
    assert [row["reviewer"] for row in csv_rows(client, varied.project)] == [paul] * 2 + [rosa] * 2
    named = jsonl(client, varied.project, "reviewer_names=1")
    assert [row["reviewer"] for row in named] == ["paul", "paul", "rosa", "rosa"]


def test_a_pseudonym_is_stable_and_differs_between_projects(people, settings):
    one = exports.reviewer_pseudonym(people.project.pk, people.pathologist.pk)
    assert one == exports.reviewer_pseudonym(people.project.pk, people.pathologist.pk)
    assert one != exports.reviewer_pseudonym(people.other_project.pk, people.pathologist.pk)
    settings.SECRET_KEY = "another key" * 5
    assert one != exports.reviewer_pseudonym(people.project.pk, people.pathologist.pk)


def test_earlier_versions_and_readings_carry_pseudonyms(people, client_for):
    services.project_reading_settings_set(
        project=people.project, readings_per_task=2, disagreement_words=5
    )
    people.project.refresh_from_db()
    rosa = get_user_model().objects.create_user("rosa", password="password")
    ada = get_user_model().objects.create_user("ada", password="password")
    services.membership_set(project=people.project, user=rosa, role=Role.PATHOLOGIST)
    services.membership_set(project=people.project, user=ada, role=Role.ADJUDICATOR)
    task = make_drafted_task(people.project)
    decide(task, people.pathologist, "accepted")
    decide(task, people.pathologist, "rejected")
    decide(task, rosa, "accepted")
    services.adjudication_record(
        task_id=task.pk,
        adjudicator=ada,
        decision="accepted",
    )
    client = client_for(people.admin)
    [row] = jsonl(client, people.project, "readings=all&history=1")
    name = {
        exports.reviewer_pseudonym(people.project.pk, user.pk): user.username
        for user in (people.pathologist, rosa, ada)
    }
    assert name[row["reviewer"]] == "ada"
    assert [name[r["reviewer"]] for r in row["readings"]] == ["paul", "rosa"]
    [earlier] = row["readings"][0]["earlier_versions"]
    assert name[earlier["reviewer"]] == "paul"
    assert not {"paul", "rosa", "ada"} & set(json.dumps(row).replace('"', " ").split())
