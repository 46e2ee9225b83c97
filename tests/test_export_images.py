"""Training exports with their images (`--with-images`, the export form's option): a zip of
the JSON Lines rows and every image they name, once; and the JSON Lines export's special
characters, byte for byte."""

from __future__ import annotations

import json
import os
import zipfile
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from annotations import exportjobs, exports
from annotations.models import Draft, ExportJob, ExportState, Task
from annotations.notice import AI_NOTICE
from imaging import samples
from inference.tasks import export_task
from tests.factories import make_drafted_task, make_task, record_draft
from tests.test_export_hf import draft, ingest, label

datasets = pytest.importorskip("datasets")

EDIT = 'Naevus — "compound",\nno atypia; C:\\path\\to \u00b5m\t\u2028 <b>&amp;</b>'
SYSTEM = "You are an expert dermatologist."
INSTRUCTION = "Describe the lesion."


@pytest.fixture
def labelled(people, tmp_path):
    """Three tasks of `other_project`, three photos (one named in HTML): accepted, edited,
    rejected; their drafts recorded the instruction."""
    project = people.other_project
    first = samples.write_derm_photo(tmp_path / "a.jpg", seed=1)
    second = samples.write_derm_photo(tmp_path / "b.png", seed=2, fmt="PNG")
    third = samples.write_derm_photo(tmp_path / "c.jpg", seed=3)
    shared = ingest(project, first, name="<i>a&b.jpg")
    twin = ingest(project, third)
    other = ingest(project, second)
    for task in (shared, twin, other):
        draft(task)
    Draft.objects.filter(task__project=project).update(
        system_prompt=SYSTEM, instruction=INSTRUCTION
    )
    label(shared, people.other_pathologist)
    label(twin, people.other_pathologist, "edited", EDIT)
    label(other, people.other_pathologist, "rejected")
    return project, [shared, twin, other]


def export_zip(project, out, format: str = "chat") -> str:
    err = StringIO()
    call_command(
        "export_labels",
        project=project.name,
        format=format,
        out=str(out),
        with_images=True,
        stderr=err,
    )
    return err.getvalue()


def read_zip(path) -> tuple[list[dict], dict[str, bytes], list[str]]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        (jsonl,) = [n for n in names if n.endswith(".jsonl")]
        rows = [json.loads(line) for line in archive.read(jsonl).decode().split("\n") if line]
        images = {n: archive.read(n) for n in names if n.startswith("images/")}
    return rows, images, names


def test_a_chat_zip_holds_every_image_its_rows_name_once(labelled, tmp_path, settings):
    project, (shared, twin, other) = labelled
    assert "exported 2 label(s)" in export_zip(project, tmp_path / "chat.zip")
    rows, images, names = read_zip(tmp_path / "chat.zip")
    assert names[0] == "labels-chat.jsonl"
    assert [r["task_id"] for r in rows] == [shared.pk, twin.pk]
    assert rows[0]["images"] == [f"images/{shared.image.sha256}.jpg"]
    assert sorted(images) == sorted(r["images"][0] for r in rows)  # not the rejected one's
    assert len(names) == len(set(names))
    for task in (shared, twin):
        stored = (settings.MEDIA_ROOT / task.image.file).read_bytes()
        assert images[f"images/{task.image.sha256}.jpg"] == stored
    assert all(".." not in n and not n.startswith("/") and "<" not in n for n in names)
    assert all(r["draft_notice"] == AI_NOTICE for r in rows)
    assert not list(tmp_path.glob(".chat.zip*"))


@pytest.mark.parametrize("format", ["dpo", "kto"])
def test_dpo_and_kto_zips_hold_their_images(labelled, tmp_path, format):
    project, (shared, twin, other) = labelled
    export_zip(project, tmp_path / "t.zip", format)
    rows, images, _ = read_zip(tmp_path / "t.zip")
    named = {path for row in rows for path in row["images"]}
    assert named == set(images) and named
    if format == "kto":
        assert f"images/{other.image.sha256}.png" in images


def test_the_chat_zip_loads_with_datasets_and_renders_through_the_chat_template(
    labelled, tmp_path, demo_model_dir
):
    project, _ = labelled
    export_zip(project, tmp_path / "chat.zip")
    with zipfile.ZipFile(tmp_path / "chat.zip") as archive:
        archive.extractall(tmp_path / "chat")
    loaded = datasets.load_dataset(
        "json",
        data_files=str(tmp_path / "chat" / "labels-chat.jsonl"),
        cache_dir=str(tmp_path / "hf-cache"),
    )["train"]
    assert len(loaded) == 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    processor = transformers.AutoProcessor.from_pretrained(str(demo_model_dir))
    for row in loaded:
        messages = [
            {"role": m["role"], "content": [c for c in m["content"] if c is not None]}
            for m in row["messages"]
        ]
        text = processor.apply_chat_template(messages, tokenize=False)
        assert f"{SYSTEM}\n\n<start_of_image>" in text
        assert text.count("<start_of_image>") == len(row["images"])
        for path in row["images"]:
            assert (tmp_path / "chat" / path).is_file()
    assert loaded[1]["messages"][-1]["content"][0]["text"] == EDIT


def test_an_export_job_writes_the_training_zip(labelled, people, client_for):
    project, (shared, _, _) = labelled
    client = client_for(people.other_admin)
    response = client.post(
        reverse("export-start", args=[project.pk]), {"format": "chat", "with_images": "on"}
    )
    assert response.status_code == 302
    job = ExportJob.objects.get(project=project)
    assert job.format == "zip" and job.options["with_images"] == "1"
    export_task(job.pk)
    job.refresh_from_db()
    assert job.state == ExportState.DONE, job.error
    assert job.rows_done == 2
    assert exportjobs.export_job_filename(job).endswith("-labels-chat.zip")
    rows, images, _ = read_zip(exportjobs.export_job_file(job))
    assert f"images/{shared.image.sha256}.jpg" in images and len(images) == len(rows) == 2


def test_the_streamed_training_zip_says_it_is_a_zip(labelled, people, client_for):
    project, _ = labelled
    client = client_for(people.other_admin)
    data = {"format": "chat", "with_images": "1"}
    response = client.get(reverse("project-export", args=[project.pk]), data)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"].endswith('.zip"')
    assert b"".join(response.streaming_content)[:2] == b"PK"


@pytest.mark.parametrize("who", ["other_pathologist", "admin", "outsider", "researcher"])
def test_only_the_projects_admins_export_images(labelled, people, client_for, who):
    project, _ = labelled
    client = client_for(getattr(people, who))
    data = {"format": "chat", "with_images": "1"}
    started = client.post(reverse("export-start", args=[project.pk]), data)
    streamed = client.get(reverse("project-export", args=[project.pk]), data)
    assert started.status_code in (403, 404) and streamed.status_code in (403, 404)
    assert not ExportJob.objects.filter(project=project).exists()


def test_with_images_means_nothing_to_other_formats(people, tmp_path):
    for format in ("jsonl", "csv", "geojson"):
        options = exports.ExportOptions.from_query({"format": format, "with_images": "1"})
        assert not options.with_images and options.file_format != "zip"
    options = exports.ExportOptions.from_query({"format": "dpo", "with_images": "yes"})
    assert options.file_format == "zip" and options.file_name == "labels-dpo.zip"
    assert exports.ExportOptions.from_query(options.to_query()) == options
    with pytest.raises(CommandError, match="chat, dpo or kto"):
        export_zip(people.project, tmp_path / "x.zip", "jsonl")


def test_jsonl_special_characters_survive_byte_exact(people, tmp_path):
    """The plain export is PostgreSQL's JSON text passed through COPY: nothing of COPY's own
    escaping (backslashes doubled, newlines as \\n) may reach the file."""
    texts = [EDIT, "back\\\\slash\\", "quote \" and '", "line\r\nbreak", "\u00e9\u4e2d\U0001f52c"]
    tasks = [make_drafted_task(people.project) for _ in texts]
    for task, text in zip(tasks, texts, strict=True):
        label(task, people.pathologist, "edited", text)
    out = tmp_path / "labels.jsonl"
    call_command("export_labels", project=people.project.name, out=str(out), stderr=StringIO())
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(texts) + 1
    rows = [json.loads(line) for line in lines[:-1]]
    assert [r["final_text"] for r in rows] == texts
    assert all(list(row) == list(exports.COLUMNS) for row in rows)  # the keys in order
    assert isinstance(rows[0]["image_properties"], dict)  # nested: an object, not its text
    streamed = b"".join(exports.export_chunks(people.project))
    assert streamed == out.read_bytes()
    assert b"\x01" not in streamed and b"\x02" not in streamed
    assert "\U0001f52c".encode() in streamed  # UTF-8 as it is, not escaped


def test_a_rows_image_folder_is_shipped_file_by_file(people, tmp_path, settings):
    task = record_draft(make_task(people.project), text="x")
    folder = settings.MEDIA_ROOT / "slides" / "case"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "Slidedat.ini").write_text("[GENERAL]")
    Task.objects.get(pk=task.pk).image.__class__.objects.filter(pk=task.image_id).update(
        file="slides/case"
    )
    label(task, people.pathologist)
    export_zip(people.project, tmp_path / "c.zip")
    _, images, _ = read_zip(tmp_path / "c.zip")
    assert list(images) == [f"images/{task.image.sha256}/data/Slidedat.ini"]


def test_the_export_form_offers_the_dataset_and_the_images(people, client_for, labelled):
    project, _ = labelled
    page = client_for(people.other_admin).get(reverse("project-detail", args=[project.pk]))
    assert b'name="format" value="hf"' in page.content
    assert b'name="with_images"' in page.content
    job = exportjobs.export_job_start(
        project=project,
        requested_by=people.other_admin,
        options=exports.ExportOptions.from_query({"format": "kto", "with_images": "1"}),
    )
    shown = client_for(people.other_admin).get(reverse("export-job", args=[job.pk]))
    assert b"KTO, with images" in shown.content


def test_jsonl_lines_split_rows_at_newlines_only(people):
    texts = ["one\u2028two\u2029three\x85four\x1cfive", "second\r\nrow"]
    for text in texts:
        label(make_drafted_task(people.project), people.pathologist, "edited", text)
    lines = list(exports.jsonl_lines(people.project))
    assert [json.loads(line)["final_text"] for line in lines] == texts
    assert all(line.endswith("\n") for line in lines)
