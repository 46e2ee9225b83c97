"""Ingest in chunks: few statements for many files, one decode per file, and a chunk that
fails in the database ingested again one file at a time, nothing lost or left behind."""

import hashlib
import io
import random
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError
from PIL import Image as PILImage
from PIL import ImageFile

from annotations import counters, services
from annotations.models import AuditEvent, Image, Task


def write_photos(folder: Path, n: int, *, seed: int = 0) -> list[Path]:
    """`n` small JPEGs, each of other bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for i in range(n):
        colour = tuple(rng.randrange(256) for _ in range(3))
        picture = PILImage.new("RGB", (64, 48), colour)
        picture.putpixel((i % 64, 0), (255 - colour[0], 0, 0))
        out = io.BytesIO()
        picture.save(out, "JPEG", quality=90)
        path = folder / f"photo-{i:03d}.jpg"
        path.write_bytes(out.getvalue())
        paths.append(path)
    return paths


def import_folder(folder: Path) -> list[str]:
    out = StringIO()
    call_command("import_images", str(folder), "--project", "Breast biopsies", stdout=out)
    return out.getvalue().splitlines()


def stored_files(settings) -> list[Path]:
    return sorted(p for p in (Path(settings.MEDIA_ROOT) / "images").rglob("*") if p.is_file())


def assert_counters_match_the_rows(project) -> None:
    kept = counters.counts_for(project.pk)
    counters.recount([project.pk])
    assert counters.counts_for(project.pk) == kept


def test_importing_many_files_costs_a_few_statements_per_chunk(
    people, tmp_path, django_capture_on_commit_callbacks, django_assert_max_num_queries
):
    write_photos(tmp_path / "photos", 30)
    # One lookup, one INSERT each of images, tasks and audit events, one counters UPDATE,
    # the savepoint; after commit one UPDATE of the sent drafts. Per file it was about 20.
    with django_assert_max_num_queries(15):
        with django_capture_on_commit_callbacks(execute=True):
            lines = import_folder(tmp_path / "photos")
    assert sum(line.startswith("imported") for line in lines) == 30
    tasks = Task.objects.filter(project=people.project)
    assert tasks.count() == 30
    assert {(t.state, t.message_pending) for t in tasks} == {("queued", False)}
    assert AuditEvent.objects.filter(action="task.create", project=people.project).count() == 30
    assert AuditEvent.objects.filter(action="task.state", project=people.project).count() == 30
    assert_counters_match_the_rows(people.project)


def test_each_file_is_decoded_once(
    people, tmp_path, monkeypatch, django_capture_on_commit_callbacks
):
    write_photos(tmp_path / "photos", 12)
    loads = []
    load = ImageFile.ImageFile.load

    def counting_load(self):
        loads.append(self.filename)
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    with django_capture_on_commit_callbacks(execute=False):
        import_folder(tmp_path / "photos")
    assert len(loads) == 12 and len(set(loads)) == 12


def test_files_across_chunks_keep_their_order_and_duplicates(
    people, tmp_path, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(services, "INGEST_CHUNK_FILES", 3)
    folder = tmp_path / "photos"
    paths = write_photos(folder, 6)
    # the same bytes within a chunk, and in a later chunk; a bad file in between
    (folder / "photo-000b.jpg").write_bytes(paths[0].read_bytes())
    (folder / "photo-003-bad.jpg").write_bytes(b"not a picture")
    (folder / "photo-005b.jpg").write_bytes(paths[1].read_bytes())
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=False), pytest.raises(CommandError):
        call_command("import_images", str(folder), "--project", "Breast biopsies", stdout=out)
    lines = out.getvalue().splitlines()[:9]
    statuses = [(line.split()[0], Path(line.split()[1]).name.rstrip(":")) for line in lines]
    assert statuses == [
        ("imported", "photo-000.jpg"),
        ("duplicate", "photo-000b.jpg"),
        ("imported", "photo-001.jpg"),
        ("imported", "photo-002.jpg"),
        ("rejected", "photo-003-bad.jpg"),
        ("imported", "photo-003.jpg"),
        ("imported", "photo-004.jpg"),
        ("imported", "photo-005.jpg"),
        ("duplicate", "photo-005b.jpg"),
    ]
    tasks = {t.image.original_name: t.pk for t in Task.objects.filter(project=people.project)}
    assert sorted(tasks) == [p.name for p in paths]
    assert list(tasks.values()) == sorted(tasks.values())  # made in the order of the files
    assert Image.objects.count() == 6
    assert_counters_match_the_rows(people.project)


def test_the_same_bytes_twice_in_one_import_are_one_task(
    people, tmp_path, django_capture_on_commit_callbacks
):
    (path,) = write_photos(tmp_path / "photos", 1)
    (tmp_path / "photos" / "z-copy.jpg").write_bytes(path.read_bytes())
    (tmp_path / "photos" / "zz-bad.jpg").write_bytes(b"")
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=False), pytest.raises(CommandError):
        call_command(
            "import_images", str(tmp_path / "photos"), "--project", "Breast biopsies", stdout=out
        )
    lines = out.getvalue().splitlines()
    task = Task.objects.get(project=people.project)
    assert lines[0].startswith("imported") and f"(task {task.pk})" in lines[0]
    assert (
        lines[1].startswith("duplicate")
        and f"already in this project as task {task.pk}" in (lines[1])
    )
    assert lines[2].startswith("rejected") and "empty" in lines[2]


def test_a_chunk_that_fails_in_the_database_is_ingested_file_by_file(
    people, tmp_path, monkeypatch, settings, django_capture_on_commit_callbacks
):
    write_photos(tmp_path / "photos", 5)
    failures = []

    def failing_bulk_create(objs, *args, **kwargs):
        failures.append(len(objs))
        raise IntegrityError("the database refused the chunk")

    monkeypatch.setattr(AuditEvent.objects, "bulk_create", failing_bulk_create)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        lines = import_folder(tmp_path / "photos")
    assert failures == [10]
    assert sum(line.startswith("imported") for line in lines) == 5
    assert Task.objects.filter(project=people.project).count() == 5
    assert AuditEvent.objects.filter(action="task.create", project=people.project).count() == 5
    assert len(callbacks) == 10  # the chunk's were dropped with its rows; one by one's kept
    assert len(stored_files(settings)) == 5  # nothing orphaned, nothing lost
    assert_counters_match_the_rows(people.project)


def test_an_image_stored_meanwhile_by_another_import_is_taken_over(
    people, tmp_path, monkeypatch, settings, django_capture_on_commit_callbacks
):
    paths = write_photos(tmp_path / "photos", 3)
    raced = hashlib.sha256(paths[1].read_bytes()).hexdigest()
    chunk_rows = services._chunk_rows

    def racing_chunk_rows(*args):
        # another process committed the same bytes between our lookup and our INSERT
        Image.objects.create(
            sha256=raced,
            file=f"images/{raced[:2]}/{raced[2:4]}/{raced}.jpg",
            original_name="theirs.jpg",
            size_bytes=1,
            kind="photo",
            format="jpeg",
            width=64,
            height=48,
        )
        monkeypatch.setattr(services, "_chunk_rows", chunk_rows)
        return chunk_rows(*args)

    monkeypatch.setattr(services, "_chunk_rows", racing_chunk_rows)
    with django_capture_on_commit_callbacks(execute=False):
        lines = import_folder(tmp_path / "photos")
    assert sum(line.startswith("imported") for line in lines) == 3
    assert Image.objects.count() == 3
    assert Task.objects.filter(project=people.project, image__sha256=raced).exists()
    stored = stored_files(settings)
    assert len(stored) == 3 and any(raced in p.name for p in stored)
    assert_counters_match_the_rows(people.project)
