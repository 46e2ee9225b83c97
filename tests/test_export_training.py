"""Training formats (`?format=chat|dpo|kto|geojson`, `export_labels --format`, export jobs):
JSON Lines built from the export's rows, each image named relative to the export."""

from __future__ import annotations

import json
import os
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.urls import reverse

from annotations import exportjobs, exports, services
from annotations.models import Draft, ExportState, Label, Role
from annotations.notice import AI_NOTICE
from inference.tasks import export_task
from tests.factories import make_drafted_task

EDIT = 'Naevus — "compound", no atypia;\nmargins clear, 5\u00b5m.'
DRAFT = "Invasive ductal carcinoma, grade 2."
SYSTEM = "You are an expert pathologist."
INSTRUCTION = "Describe the skin specimen."
REGION = {
    "type": "Feature",
    "geometry": {"type": "Polygon", "coordinates": [[[10, 10], [50, 10], [50, 40], [10, 10]]]},
    "properties": {"note": "missed finding here", "kind": "polygon"},
}


def decide(task, reviewer, decision="accepted", text="", regions=None):
    return services.label_record(
        task_id=task.pk,
        reviewer=reviewer,
        decision=decision,
        draft_id=task.latest_draft().pk,
        text=text,
        reason="Blurred." if decision == "rejected" else "",
        regions=regions,
        label_revision=0,
    )


@pytest.fixture
def decided(people):
    """Three tasks of `project`: accepted (with a region), edited, rejected; their drafts
    recorded the system prompt and instruction."""
    tasks = [make_drafted_task(people.project) for _ in range(3)]
    Draft.objects.filter(task__in=tasks).update(system_prompt=SYSTEM, instruction=INSTRUCTION)
    decide(tasks[0], people.pathologist, "accepted", regions=[REGION])
    decide(tasks[1], people.pathologist, "edited", text=EDIT)
    decide(tasks[2], people.pathologist, "rejected")
    return tasks


def rows(client, project, query: str) -> list[dict]:
    response = client.get(reverse("project-export", args=[project.pk]) + f"?{query}")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-ndjson; charset=utf-8"
    options = exports.ExportOptions.from_query(dict(p.split("=") for p in query.split("&")))
    assert response["Content-Disposition"].endswith(f'-{options.file_name}"')
    body = b"".join(response.streaming_content).decode("utf-8")
    return [json.loads(line) for line in body.splitlines()]  # every line is JSON


def image_path(task) -> str:
    return f"images/{task.image.sha256}.jpg"


def test_chat_rows_are_the_validated_labels_as_conversations(people, client_for, decided):
    got = rows(client_for(people.admin), people.project, "format=chat")
    assert [r["task_id"] for r in got] == [decided[0].pk, decided[1].pk]  # no reject
    assert got[1] == {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": INSTRUCTION}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": EDIT}]},
        ],
        "images": [image_path(decided[1])],
        "task_id": decided[1].pk,
        "model_id": "demo",
        "draft_notice": AI_NOTICE,
    }
    assert got[0]["messages"][-1]["content"][0]["text"] == DRAFT  # accepted: the draft


def test_a_draft_without_its_instruction_gives_its_prompt(people, client_for):
    task = make_drafted_task(people.project)
    decide(task, people.pathologist)
    (row,) = rows(client_for(people.admin), people.project, "format=chat")
    assert row["messages"] == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "p"}]},
        {"role": "assistant", "content": [{"type": "text", "text": DRAFT}]},
    ]


def test_dpo_rows_are_the_edits(people, client_for, decided):
    (row,) = rows(client_for(people.admin), people.project, "format=dpo")
    label = Label.objects.get(task=decided[1])
    assert row == {
        "prompt": INSTRUCTION,
        "system_prompt": SYSTEM,
        "chosen": EDIT,
        "rejected": DRAFT,
        "images": [image_path(decided[1])],
        "task_id": decided[1].pk,
        "model_id": "demo",
        "edit_chars": label.edit_chars,
        "edit_words": label.edit_words,
        "draft_notice": AI_NOTICE,
    }
    assert label.edit_chars > 0


def test_kto_rows_label_the_draft(people, client_for, decided):
    got = rows(client_for(people.admin), people.project, "format=kto")
    assert [(r["task_id"], r["label"], r["decision"]) for r in got] == [
        (decided[0].pk, True, "accepted"),
        (decided[1].pk, False, "edited"),
        (decided[2].pk, False, "rejected"),
    ]
    for row, task in zip(got, decided, strict=True):
        assert row["prompt"] == INSTRUCTION and row["completion"] == DRAFT
        assert row["images"] == [image_path(task)] and row["draft_notice"] == AI_NOTICE
    assert got[0]["edit_chars"] == 0 and got[1]["edit_chars"] > 0
    assert got[2]["edit_chars"] is None


def test_geojson_rows_are_the_labels_with_regions(people, client_for, decided):
    (row,) = rows(client_for(people.admin), people.project, "format=geojson")
    assert row["type"] == "FeatureCollection"
    assert row["features"] == Label.objects.get(task=decided[0]).regions
    assert row["features"][0]["geometry"]["coordinates"] == REGION["geometry"]["coordinates"]
    assert row["properties"] == {
        "task_id": decided[0].pk,
        "image_sha256": decided[0].image.sha256,
        "image": image_path(decided[0]),
        "decision": "accepted",
    }


def test_filters_and_the_split_still_apply(people, client_for, decided):
    client = client_for(people.admin)
    (row,) = rows(client, people.project, "format=chat&decision=edited")
    assert row["task_id"] == decided[1].pk
    assert rows(client, people.project, "format=kto&decision=accepted")[0]["label"] is True
    plain = rows(client, people.project, "format=jsonl&split=80,10,10&split_seed=3")
    split = {r["task_id"]: r["split"] for r in plain}
    for fmt in ("chat", "dpo", "kto"):
        for row in rows(client, people.project, f"format={fmt}&split=80,10,10&split_seed=3"):
            assert row["split"] == split[row["task_id"]]
    (geo,) = rows(client, people.project, "format=geojson&split=80,10,10&split_seed=3")
    assert geo["properties"]["split"] == split[decided[0].pk]
    assert "split" not in rows(client, people.project, "format=chat")[0]


def test_export_labels_writes_chat(people, decided, tmp_path):
    out, err = tmp_path / "chat.jsonl", StringIO()
    call_command(
        "export_labels", project=people.project.name, format="chat", out=str(out), stderr=err
    )
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["task_id"] for r in got] == [decided[0].pk, decided[1].pk]
    assert "exported 2 label(s)" in err.getvalue()


def test_an_export_job_writes_a_training_format(people, decided):
    job = exportjobs.export_job_start(
        project=people.project,
        requested_by=people.admin,
        options=exports.ExportOptions.from_query({"format": "dpo"}),
    )
    assert job.format == "jsonl" and job.options["format"] == "dpo"
    export_task(job.pk)
    job.refresh_from_db()
    assert job.state == ExportState.DONE, job.error
    assert job.rows_done == 1
    (row,) = [json.loads(x) for x in exportjobs.export_job_file(job).read_text().splitlines()]
    assert row["chosen"] == EDIT
    assert exportjobs.export_job_filename(job).endswith("-labels-dpo.jsonl")


def test_the_formats_read_back_from_their_query():
    for fmt in exports.TRAINING_FORMATS:
        options = exports.ExportOptions.from_query({"format": fmt})
        assert options.format == fmt and options.file_format == "jsonl"
        assert exports.ExportOptions.from_query(options.to_query()) == options


def test_chat_rows_render_through_the_demo_models_chat_template(
    people, client_for, decided, demo_model_dir
):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    processor = transformers.AutoProcessor.from_pretrained(str(demo_model_dir))
    got = rows(client_for(people.admin), people.project, "format=chat")
    text = processor.apply_chat_template(got[1]["messages"], tokenize=False)
    assert text.startswith(f"<bos><start_of_turn>user\n{SYSTEM}\n\n<start_of_image>")
    assert f"{INSTRUCTION}<end_of_turn>\n<start_of_turn>model\n" in text
    assert text.count("<start_of_image>") == len(got[1]["images"])
    assert EDIT.strip() in text


def test_an_adjudicated_task_gives_the_adjudicators_text(people, client_for):
    services.project_reading_settings_set(
        project=people.project, readings_per_task=2, disagreement_words=5
    )
    people.project.refresh_from_db()
    reader2 = get_user_model().objects.create_user("rosa", password="x")
    services.membership_set(project=people.project, user=reader2, role=Role.PATHOLOGIST)
    ada = get_user_model().objects.create_user("ada", password="x")
    services.membership_set(project=people.project, user=ada, role=Role.ADJUDICATOR)
    task = make_drafted_task(people.project)
    Draft.objects.filter(task=task).update(instruction=INSTRUCTION)
    decide(task, people.pathologist, "accepted")
    decide(task, reader2, "rejected")
    services.adjudication_record(
        task_id=task.pk, adjudicator=ada, decision="edited", text="Benign fibroadenoma."
    )
    client = client_for(people.admin)
    (chat,) = rows(client, people.project, "format=chat")
    assert chat["messages"] == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": INSTRUCTION}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Benign fibroadenoma."}]},
    ]
    (dpo,) = rows(client, people.project, "format=dpo")
    assert (dpo["chosen"], dpo["rejected"]) == ("Benign fibroadenoma.", DRAFT)
