"""The Hugging Face dataset export (`export_labels --format hf`, export jobs): Parquet shards
per split written by `datasets`, loaded back here by `datasets` itself, images decoded."""

from __future__ import annotations

import zipfile
from io import StringIO

import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from annotations import exportjobs, exports, services
from annotations.models import Draft, ExportJob, ExportState, Modality, Task, TaskState
from annotations.notice import AI_NOTICE
from imaging import samples
from inference.services import job_prepare
from inference.tasks import export_task
from tests.factories import draft_fields

datasets = pytest.importorskip("datasets")

EDIT = 'Naevus — "compound",\nno atypia; C:\\path \u00b5m'
SMALL_SLIDES = {"patch_size": 224, "max_patches": 3, "target_mpp": 1.0}


def ingest(project, path, *, name: str | None = None, metadata: dict | None = None) -> Task:
    result = services.image_ingest(
        project=project, source=path, original_name=name or path.name, enqueue=False
    )
    assert result.ok, result.message
    task = result.task
    if metadata:
        Task.objects.filter(pk=task.pk).update(metadata=metadata)
    return task


def draft(task: Task) -> Draft:
    """Draft `task` as the worker would: the patches of a slide planned by the worker's own
    code, without running a model."""
    services.task_transition(task_id=task.pk, to=TaskState.QUEUED)
    claimed = services.task_claim(task_id=task.pk)
    job = job_prepare(claimed, None)
    assert not job.error, job.error
    fields = draft_fields(text="Invasive ductal carcinoma, grade 2.", regions=job.regions)
    services.draft_record(task_id=task.pk, attempt=claimed.attempt, fields=fields)
    return Draft.objects.get(task=task)


def label(task: Task, reviewer, decision: str = "accepted", text: str = "") -> None:
    services.label_record(
        task_id=task.pk,
        reviewer=reviewer,
        decision=decision,
        draft_id=task.latest_draft().pk,
        text=text,
        reason="Blurred." if decision == "rejected" else "",
        label_revision=0,
    )


def load(folder, tmp_path):
    return datasets.load_dataset(
        "parquet", data_dir=str(folder), cache_dir=str(tmp_path / "hf-cache")
    )


def export_hf(project, out, **options) -> str:
    err = StringIO()
    call_command(
        "export_labels", project=project.name, format="hf", out=str(out), stderr=err, **options
    )
    return err.getvalue()


@pytest.fixture
def photo_project(people, tmp_path):
    """Two photos labelled in `other_project` (dermatology): accepted; edited (HTML in its
    file name)."""
    project = people.other_project
    photos = [samples.write_derm_photo(tmp_path / f"p{i}.jpg", seed=i) for i in range(2)]
    tasks = [ingest(project, photos[0]), ingest(project, photos[1], name="<i>x&y.jpg")]
    for task in tasks:
        draft(task)
    label(tasks[0], people.other_pathologist)
    label(tasks[1], people.other_pathologist, "edited", EDIT)
    return project, tasks


def test_the_dataset_loads_with_its_features_and_images(photo_project, tmp_path):
    project, tasks = photo_project
    err = export_hf(project, tmp_path / "ds")
    assert "exported 2 label(s)" in err
    assert not list(tmp_path.glob(".ds*"))  # no temporary left behind
    loaded = load(tmp_path / "ds", tmp_path)
    assert list(loaded) == ["train"]
    train = loaded["train"]
    assert train.features["images"] == datasets.List(datasets.Image())
    assert train.features["task_id"] == datasets.Value("int64")
    assert train.features["final_text"] == datasets.Value("string")
    rows = sorted(train, key=lambda r: r["task_id"])
    assert [r["task_id"] for r in rows] == [t.pk for t in tasks]
    assert rows[1]["final_text"] == EDIT
    assert rows[1]["image_file_name"] == "<i>x&y.jpg"
    for row in rows:
        assert row["draft_notice"] == AI_NOTICE
        assert row["model_id"] == "demo" and row["decision"] in ("accepted", "edited")
        (picture,) = row["images"]
        picture.load()
        assert max(picture.size) <= exports.HF_PHOTO_SIDE and picture.mode == "RGB"
    card = (tmp_path / "ds" / "README.md").read_text()
    assert AI_NOTICE in card and "license: other" in card and "LICENSE PLACEHOLDER" in card


def test_a_slides_row_holds_the_patches_the_model_saw_and_a_thumbnail(
    people, sample_files, tmp_path
):
    project = services.project_create(
        name="Slides", modality=Modality.PATHOLOGY, slide_settings=SMALL_SLIDES
    )
    task = ingest(project, sample_files["slide"])
    regions = draft(task).regions
    assert regions  # the worker's plan found tissue
    label(task, people.pathologist)
    export_hf(project, tmp_path / "ds")
    (row,) = load(tmp_path / "ds", tmp_path)["train"]
    pictures = row["images"]
    assert len(pictures) == len(regions) + 1  # the patches, then the thumbnail
    for picture, region in zip(pictures, regions, strict=False):
        assert picture.size == (region["size"], region["size"])
    assert pictures[-1].size != pictures[0].size  # the whole slide, its own shape
    assert "draft_regions" in row and '"read_size"' in row["draft_regions"]


def test_splits_never_share_a_patient(people, tmp_path):
    project = people.other_project
    for i in range(12):
        photo = samples.write_derm_photo(tmp_path / f"p{i}.jpg", seed=i)
        task = ingest(project, photo, metadata={"patient_id": f"P{i % 6}"})
        draft(task)
        label(task, people.other_pathologist)
    export_hf(project, tmp_path / "ds", split="34,33,33", split_seed="7")
    loaded = load(tmp_path / "ds", tmp_path)
    assert set(loaded) <= {"train", "validation", "test"} and len(loaded) >= 2
    patients = {}
    for split, rows in loaded.items():
        patients[split] = {r["task_metadata"] for r in rows}
        assert all(r["split"] == split for r in rows)
    seen = [p for split in patients.values() for p in split]
    assert len(seen) == len(set(seen))  # a patient's rows lie in one split
    assert sum(len(rows) for rows in loaded.values()) == 12


def test_shards_hold_a_bounded_number_of_rows(photo_project, tmp_path, monkeypatch):
    project, _ = photo_project
    monkeypatch.setattr(exports, "HF_SHARD_ROWS", 1)
    export_hf(project, tmp_path / "ds")
    names = sorted(p.name for p in (tmp_path / "ds" / "data").iterdir())
    assert names == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert len(load(tmp_path / "ds", tmp_path)["train"]) == 2


def test_an_empty_project_gives_an_empty_shard_with_the_features(people, tmp_path):
    export_hf(people.project, tmp_path / "ds")
    (shard,) = (tmp_path / "ds" / "data").iterdir()
    assert shard.name == "train-00000-of-00001.parquet"
    table = pq.read_table(shard)
    assert table.num_rows == 0
    features = datasets.Features.from_arrow_schema(table.schema)
    assert features["images"] == datasets.List(datasets.Image())


def test_it_refuses_to_write_over_an_existing_folder(people, tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(CommandError, match="exists already"):
        export_hf(people.project, tmp_path / "ds")
    with pytest.raises(CommandError, match="give --out"):
        export_hf(people.project, "-")


def test_a_lost_image_leaves_its_row_without_pictures(photo_project, tmp_path, settings):
    project, tasks = photo_project
    (settings.MEDIA_ROOT / tasks[0].image.file).unlink()
    export_hf(project, tmp_path / "ds")
    rows = {r["task_id"]: r for r in load(tmp_path / "ds", tmp_path)["train"]}
    assert rows[tasks[0].pk]["images"] == [] and len(rows[tasks[1].pk]["images"]) == 1


def test_an_export_job_writes_the_dataset_as_a_zip(photo_project, people, client_for, tmp_path):
    project, _ = photo_project
    client = client_for(people.other_admin)
    response = client.post(reverse("export-start", args=[project.pk]), {"format": "hf"})
    assert response.status_code == 302
    job = ExportJob.objects.get(project=project)
    assert job.format == "zip" and job.options["format"] == "hf"
    export_task(job.pk)
    job.refresh_from_db()
    assert job.state == ExportState.DONE, job.error
    assert job.rows_done == 2
    assert exportjobs.export_job_filename(job) == "melanoma-photos-labels-hf.zip"
    download = client.get(reverse("export-download", args=[job.pk]))
    assert download["Content-Type"] == "application/zip"
    (tmp_path / "job.zip").write_bytes(b"".join(download.streaming_content))
    with zipfile.ZipFile(tmp_path / "job.zip") as archive:
        assert "README.md" in archive.namelist()
        assert all(".." not in n and not n.startswith("/") for n in archive.namelist())
        archive.extractall(tmp_path / "unzipped")
    assert len(load(tmp_path / "unzipped", tmp_path)["train"]) == 2
    assert not [p for p in exportjobs.exports_dir().iterdir() if p.name != job.file]


def test_the_streamed_export_gives_the_same_zip(photo_project, people, client_for, tmp_path):
    project, _ = photo_project
    response = client_for(people.other_admin).get(
        reverse("project-export", args=[project.pk]) + "?format=hf"
    )
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"].endswith('-labels-hf.zip"')
    (tmp_path / "s.zip").write_bytes(b"".join(response.streaming_content))
    with zipfile.ZipFile(tmp_path / "s.zip") as archive:
        archive.extractall(tmp_path / "unzipped")
    assert len(load(tmp_path / "unzipped", tmp_path)["train"]) == 2


@pytest.mark.parametrize("who", ["other_pathologist", "admin", "outsider", "researcher"])
def test_only_the_projects_admins_export_a_dataset(photo_project, people, client_for, who):
    project, _ = photo_project
    client = client_for(getattr(people, who))
    started = client.post(reverse("export-start", args=[project.pk]), {"format": "hf"})
    streamed = client.get(reverse("project-export", args=[project.pk]) + "?format=hf")
    assert started.status_code in (403, 404) and streamed.status_code in (403, 404)
    assert not ExportJob.objects.filter(project=project).exists()


def test_the_format_reads_back_from_its_query():
    options = exports.ExportOptions.from_query({"format": "hf", "with_images": "1"})
    assert options.format == "hf" and options.file_format == "zip" and not options.with_images
    assert exports.ExportOptions.from_query(options.to_query()) == options


def test_row_groups_hold_a_bounded_number_of_rows(photo_project, tmp_path, monkeypatch):
    project, _ = photo_project
    monkeypatch.setattr(exports, "HF_GROUP_ROWS", 1)
    export_hf(project, tmp_path / "ds")
    (shard,) = (tmp_path / "ds" / "data").iterdir()
    assert pq.ParquetFile(shard).metadata.num_row_groups == 2


def test_the_cards_configs_load_the_splits_too(people, tmp_path):
    project = people.other_project
    for i in range(6):
        photo = samples.write_derm_photo(tmp_path / f"p{i}.jpg", seed=i)
        task = ingest(project, photo, metadata={"patient_id": f"P{i}"})
        draft(task)
        label(task, people.other_pathologist)
    export_hf(project, tmp_path / "ds", split="50,25,25")
    by_card = datasets.load_dataset(str(tmp_path / "ds"), cache_dir=str(tmp_path / "c"))
    by_parquet = load(tmp_path / "ds", tmp_path)
    assert {k: len(v) for k, v in by_card.items()} == {k: len(v) for k, v in by_parquet.items()}
