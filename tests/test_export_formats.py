"""The export's formats (JSON Lines, and CSV with `?format=csv` or `export_labels --format
csv`: the same columns, nested fields as JSON text) and the model it names: never a folder
on the server."""

from __future__ import annotations

import csv
import io
import json
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.urls import reverse

from annotations import exports, services
from annotations.models import AuditEvent, Draft, Image, Label, Role
from annotations.notice import AI_NOTICE, MODEL_TERMS_NOTICE, OTHER_MODEL_TERMS
from tests.factories import make_drafted_task

EDIT = 'Naevus — "compound", no atypia;\nmargins clear, 5\u00b5m.'


def decide(task, reviewer, decision="accepted", text="", reason=""):
    label = Label.objects.filter(task=task, reviewer=reviewer).first()
    return services.label_record(
        task_id=task.pk,
        reviewer=reviewer,
        decision=decision,
        draft_id=task.latest_draft().pk,
        text=text,
        reason=reason or ("Blurred." if decision == "rejected" else ""),
        label_revision=label.revision if label else 0,
    )


def get(client, project, query: str = ""):
    url = reverse("project-export", args=[project.pk]) + (f"?{query}" if query else "")
    response = client.get(url)
    assert response.status_code == 200, response.status_code
    return response, b"".join(response.streaming_content).decode("utf-8")


def jsonl(client, project, query: str = "") -> list[dict]:
    return [json.loads(line) for line in get(client, project, query)[1].splitlines()]


def csv_rows(client, project, query: str = "") -> list[dict]:
    response, body = get(client, project, "format=csv" + (f"&{query}" if query else ""))
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].endswith('-labels.csv"')
    return list(csv.DictReader(io.StringIO(body, newline="")))


def as_csv(value) -> str:
    """A JSON value as the CSV writes it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def assert_same(csv_row: dict, json_row: dict) -> None:
    assert list(csv_row) == list(json_row)
    for name, value in json_row.items():
        if isinstance(value, dict | list):
            assert json.loads(csv_row[name]) == value, name
        else:
            assert csv_row[name] == as_csv(value), name


@pytest.fixture
def decided(people):
    """Three tasks of `project`, accepted, edited (quotes, a newline, non-ASCII), rejected."""
    tasks = [make_drafted_task(people.project) for _ in range(3)]
    decide(tasks[0], people.pathologist, "accepted")
    decide(tasks[1], people.pathologist, "edited", text=EDIT)
    decide(tasks[2], people.pathologist, "rejected", reason='Wrong organ, see "notes".')
    return tasks


# CSV ------------------------------------------------------------------------------------


def test_the_csv_has_the_jsonl_columns_and_values(people, client_for, decided):
    client = client_for(people.admin)
    rows, lines = csv_rows(client, people.project), jsonl(client, people.project)
    assert len(rows) == 3 and [r["task_id"] for r in rows] == [str(t.pk) for t in decided]
    assert list(rows[0]) == list(exports.COLUMNS)
    for csv_row, json_row in zip(rows, lines, strict=True):
        assert_same(csv_row, json_row)
        assert csv_row["draft_notice"] == AI_NOTICE  # the AI notice on every row
    assert rows[1]["final_text"] == EDIT  # quotes, a newline and µ survive
    assert rows[2]["edit_chars"] == "" and rows[0]["fast_accept"] in ("true", "false")
    assert json.loads(rows[0]["regions"]) == {"type": "FeatureCollection", "features": []}


def test_every_row_names_the_terms_its_model_is_used_under(people, client_for, decided):
    Draft.objects.filter(task=decided[0]).update(model_id="google/medgemma-1.5-4b-it")
    client = client_for(people.admin)
    terms = {row["task_id"]: row["model_terms"] for row in jsonl(client, people.project)}
    assert terms[decided[0].pk] == MODEL_TERMS_NOTICE  # MedGemma: HAI-DEF terms, with the URL
    assert "health-ai-developer-foundations/terms" in terms[decided[0].pk]
    assert terms[decided[1].pk] == OTHER_MODEL_TERMS  # another model: its card's terms
    assert [r["model_terms"] for r in csv_rows(client, people.project)] == list(terms.values())


def test_the_csv_of_an_empty_project_is_its_header(people, client_for):
    _, body = get(client_for(people.admin), people.project, "format=csv")
    assert body == ",".join(exports.COLUMNS) + "\n"


def test_the_csv_with_history_carries_the_earlier_versions_as_json(people, client_for, decided):
    decide(decided[0], people.pathologist, "edited", text="Benign.")  # over the accept
    client = client_for(people.admin)
    rows = csv_rows(client, people.project, "history=1")
    lines = jsonl(client, people.project, "history=1")
    assert list(rows[0])[-2:] == ["revision", "earlier_versions"]
    for csv_row, json_row in zip(rows, lines, strict=True):
        assert_same(csv_row, json_row)
    [accept] = json.loads(rows[0]["earlier_versions"])
    assert accept["decision"] == "accepted" and rows[0]["revision"] == "2"


def test_the_csv_of_a_double_read_project_has_its_readings(people, client_for):
    services.project_reading_settings_set(
        project=people.project, readings_per_task=2, disagreement_words=5
    )
    people.project.refresh_from_db()
    rosa = get_user_model().objects.create_user("rosa", password="password")
    services.membership_set(project=people.project, user=rosa, role=Role.PATHOLOGIST)
    task = make_drafted_task(people.project)
    decide(task, people.pathologist, "accepted")
    decide(task, rosa, "accepted")
    client = client_for(people.admin)
    [row] = csv_rows(client, people.project, "readings=all&reviewer_names=1")
    [line] = jsonl(client, people.project, "readings=all&reviewer_names=1")
    assert_same(row, line)
    assert (row["final_source"], row["n_readings"]) == ("reading", "2")
    assert [r["reviewer"] for r in json.loads(row["readings"])] == ["paul", "rosa"]


def test_the_audit_records_a_csv_export(people, client_for):
    get(client_for(people.admin), people.project, "format=CSV")
    assert AuditEvent.objects.filter(action="project.export").count() == 1


def test_export_labels_writes_csv(people, tmp_path, decided):
    out, err = tmp_path / "labels.csv", StringIO()
    call_command(
        "export_labels",
        "--project",
        people.project.name,
        "--format",
        "csv",
        "--out",
        str(out),
        stdout=StringIO(),
        stderr=err,
    )
    with out.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["decision"] for row in rows] == ["accepted", "edited", "rejected"]
    assert rows[1]["final_text"] == EDIT
    assert "exported 3 label(s)" in err.getvalue()
    assert not (tmp_path / "labels.csv.part").exists()


# The plain export (one COPY) and the rows in Python are the same rows ----------------------


def test_the_copied_export_and_label_rows_agree(people, decided):
    Image.objects.filter(pk=decided[0].image_id).update(
        vendor="aperio", mpp_x=0.2527, level_dimensions=[[4000, 3000], [1000, 750]]
    )
    copied = [json.loads(line) for line in exports.jsonl_lines(people.project)]
    assert copied == list(exports.label_rows(people.project))
    assert copied[0]["image_properties"]["mpp_x"] == 0.2527
    assert copied[0]["image_properties"]["level_dimensions"] == [[4000, 3000], [1000, 750]]
    out = StringIO()
    assert exports.write_export(people.project, out) == 3
    assert [json.loads(line) for line in out.getvalue().splitlines()] == copied


# The model's name ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "revision", "exported"),
    [
        ("/srv/models/medgemma-1.5-4b-it", "sha256:0123456789abcdef", "medgemma-1.5-4b-it"),
        ("/srv/models/medgemma-1.5-4b-it/", "sha256:0123456789abcdef", "medgemma-1.5-4b-it"),
        ("var/demo-model", "sha256:0123456789abcdef", "demo-model"),  # a relative folder
        ("./models/tiny", "sha256:0", "tiny"),
        ("~/models/tiny", "sha256:0", "tiny"),
        ("/data/weights/medgemma", "", "medgemma"),  # a served model named by its path
        ("C:\\models\\medgemma", "sha256:0", "medgemma"),
        ("google/medgemma-1.5-4b-it", "3c1f9e0b5a", "google/medgemma-1.5-4b-it"),  # a hub id
        ("medgemma", "unknown", "medgemma"),
    ],
)
def test_the_model_is_never_a_server_path(people, client_for, model_id, revision, exported):
    task = make_drafted_task(people.project)
    Draft.objects.filter(task=task).update(model_id=model_id, model_revision=revision)
    decide(task, people.pathologist, "accepted")
    client = client_for(people.admin)
    [line] = jsonl(client, people.project)
    [row] = csv_rows(client, people.project)
    [with_history] = jsonl(client, people.project, "history=1")
    for found in (line, row, with_history):
        assert found["model_id"] == exported
        assert found["model_revision"] == revision  # the weights digest or hub commit, kept
