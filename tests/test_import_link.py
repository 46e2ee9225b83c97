"""import_images --link: files referenced in place (a symlink in the store, never a copy),
a rerun that imports nothing twice, and an original that disappears shown as a message,
never a 500; the store's cleanup removes links, never the originals."""

import os
import time
from io import StringIO
from pathlib import Path

import openslide
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.urls import reverse

from annotations import previews, tiles
from annotations.models import Image, Task
from imaging import ImageRejected, pixels, samples, storage
from tests.factories import record_draft
from tests.test_ingest_chunks import write_photos


@pytest.fixture(autouse=True)
def _fresh_caches():
    """No open slide or cached tile of an earlier test (image ids repeat across tests)."""
    tiles.reset()
    yield
    tiles.reset()


def import_images(*args) -> str:
    out = StringIO()
    call_command(
        "import_images",
        *map(str, args),
        "--project",
        "Breast biopsies",
        "--no-draft",
        stdout=out,
        stderr=StringIO(),
    )
    return out.getvalue()


def stored_entries() -> list[Path]:
    """Every file and link under images/ (links not followed)."""
    root = Path(settings.MEDIA_ROOT) / "images"
    return sorted(p for p in root.rglob("*") if p.is_symlink() or p.is_file())


def bytes_on_disk() -> int:
    """What the store itself holds: the size of its regular files (a link holds none)."""
    return sum(p.lstat().st_size for p in stored_entries() if not p.is_symlink())


def test_linked_files_are_symlinks_to_the_originals_not_copies(
    people, tmp_path, django_capture_on_commit_callbacks
):
    photos = write_photos(tmp_path / "shared" / "photos", 3)
    with django_capture_on_commit_callbacks(execute=False):
        out = import_images(tmp_path / "shared" / "photos", "--link")
    assert out.splitlines()[-1] == "3 imported, 0 duplicate, 0 rejected"
    entries = stored_entries()
    assert len(entries) == 3 and all(p.is_symlink() for p in entries)
    assert bytes_on_disk() == 0
    assert sorted(Path(os.readlink(p)) for p in entries) == sorted(p.resolve() for p in photos)
    assert all(Path(os.readlink(p)).is_absolute() for p in entries)
    assert all(p.stat().st_nlink == 1 for p in photos)  # no hard link to the original either
    assert not any((Path(settings.MEDIA_ROOT) / "tmp").iterdir())  # nothing staged is left
    # hashed and decoded as usual: the rows are those of a copy
    image = Image.objects.get(original_name="photo-000.jpg")
    assert (image.width, image.height, image.size_bytes) == (64, 48, photos[0].stat().st_size)
    assert previews.preview_file(image).is_file()


def test_without_link_the_files_are_copied(people, tmp_path, django_capture_on_commit_callbacks):
    photos = write_photos(tmp_path / "photos", 2)
    with django_capture_on_commit_callbacks(execute=False):
        import_images(*photos)
    assert not any(p.is_symlink() for p in stored_entries())
    assert bytes_on_disk() == sum(p.stat().st_size for p in photos)


def test_a_rerun_with_link_imports_nothing_twice(
    people, tmp_path, django_capture_on_commit_callbacks
):
    folder = tmp_path / "photos"
    write_photos(folder, 2)
    with django_capture_on_commit_callbacks(execute=False):
        import_images(folder, "--link")
        before = {p: os.readlink(p) for p in stored_entries()}
        write_photos(folder / "new", 1, seed=7)
        out = import_images(folder, "--link")
    assert out.splitlines()[-1] == "1 imported, 2 duplicate, 0 rejected"
    assert Task.objects.count() == 3 and Image.objects.count() == 3
    after = {p: os.readlink(p) for p in stored_entries()}
    assert {p: after[p] for p in before} == before and len(after) == 3


def test_the_link_points_at_the_resolved_original(
    people, tmp_path, monkeypatch, django_capture_on_commit_callbacks
):
    (photo,) = write_photos(tmp_path / "real", 1)
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    with django_capture_on_commit_callbacks(execute=False):
        import_images("alias/photo-000.jpg", "--link")  # relative, through a link
    (entry,) = stored_entries()
    assert os.readlink(entry) == str(photo.resolve())


def test_an_original_that_disappears_is_a_message_not_a_500(
    people, tmp_path, client_for, sample_files, django_capture_on_commit_callbacks
):
    slide = tmp_path / "shared" / "biopsy-1.tiff"
    slide.parent.mkdir()
    slide.write_bytes(sample_files["slide"].read_bytes())
    with django_capture_on_commit_callbacks(execute=False):
        import_images(slide, "--link")
    task = record_draft(Task.objects.get(), text="Fibroadenoma.")
    image = task.image
    slide.unlink()

    client = client_for(people.pathologist)
    page = client.get(reverse("task-detail", args=[task.pk]))
    assert page.status_code == 200
    assert b"The stored file of this image cannot be read" in page.content
    dzi = client.get(tiles.dzi_url(image, people.pathologist))
    assert dzi.status_code == 422 and b"the stored file is missing" in dzi.content
    assert client.get(reverse("task-preview", args=[task.pk])).status_code == 422
    with pytest.raises(ImageRejected, match="the stored file is missing"):  # drafting
        pixels.load_for_model(Path(settings.MEDIA_ROOT) / image.file, image.info())


def test_importing_the_file_again_restores_a_link_whose_original_moved(
    people, tmp_path, django_capture_on_commit_callbacks
):
    (photo,) = write_photos(tmp_path / "old", 1)
    with django_capture_on_commit_callbacks(execute=False):
        import_images(photo, "--link")
        moved = tmp_path / "new" / photo.name
        moved.parent.mkdir()
        photo.rename(moved)
        assert not previews.image_file_present(Image.objects.get())
        out = import_images(moved, "--link")
    assert out.splitlines()[-1] == "0 imported, 1 duplicate, 0 rejected"
    (entry,) = stored_entries()
    assert os.readlink(entry) == str(moved.resolve())
    assert previews.image_file_present(Image.objects.get())


def test_a_linked_mirax_slide_links_each_of_its_files(
    people, tmp_path, client_for, django_capture_on_commit_callbacks
):
    mrxs = samples.write_mirax(tmp_path / "shared", seed=3)
    originals = [mrxs, *(p for p in mrxs.with_suffix("").rglob("*") if p.is_file())]
    with django_capture_on_commit_callbacks(execute=False):
        out = import_images(mrxs, "--link")
        assert out.splitlines()[-1] == "1 imported, 0 duplicate, 0 rejected"
        again = import_images(mrxs, "--link")
    assert again.splitlines()[-1] == "0 imported, 1 duplicate, 0 rejected"
    entries = stored_entries()
    assert len(entries) == len(originals) and all(p.is_symlink() for p in entries)
    assert sorted(os.readlink(p) for p in entries) == sorted(str(p.resolve()) for p in originals)
    image = Image.objects.get()
    assert image.vendor == "mirax" and image.levels == 3
    with openslide.OpenSlide(Path(settings.MEDIA_ROOT) / image.file) as opened:
        assert opened.dimensions == (1024, 768)
    dzi = client_for(people.pathologist).get(tiles.dzi_url(image, people.pathologist))
    assert dzi.status_code == 200


def test_a_linked_dicom_series_links_each_instance(
    people, tmp_path, django_capture_on_commit_callbacks
):
    instances = samples.write_dicom_series(tmp_path / "series", seed=2)
    with django_capture_on_commit_callbacks(execute=False):
        out = import_images(tmp_path / "series", "--link")
    assert out.splitlines()[-1].startswith("1 imported"), out
    entries = stored_entries()
    assert entries and all(p.is_symlink() for p in entries) and bytes_on_disk() == 0
    assert {os.readlink(p) for p in entries} <= {str(p.resolve()) for p in instances}
    image = Image.objects.get()
    assert image.kind == "slide"
    assert previews.preview_file(image).is_file()


def test_the_sweep_removes_a_stale_staged_link_and_never_its_original(tmp_path, settings):
    (photo,) = write_photos(tmp_path / "shared", 1)
    media = Path(settings.MEDIA_ROOT)
    with storage.linking_sources():
        staged = storage.store_file(photo, media, suffix=".jpg")
    assert staged.temp_path.is_symlink()
    old = time.time() - 3 * 24 * 3600
    os.utime(staged.temp_path, (old, old), follow_symlinks=False)
    os.utime(photo, (old, old))  # an old original must not make it look stale either
    assert storage.sweep_tmp(media) == 1
    assert not staged.temp_path.is_symlink() and photo.is_file()


def test_undoing_a_linked_commit_removes_the_link_only(tmp_path, settings):
    (photo,) = write_photos(tmp_path / "shared", 1)
    media = Path(settings.MEDIA_ROOT)
    with storage.linking_sources(), storage.staged_upload(photo, media, suffix=".jpg") as staged:
        stored = media / staged.commit(".jpg")
        assert stored.is_symlink() and staged.created
        staged.undo_commit()
    assert not stored.is_symlink() and not stored.exists()
    assert photo.is_file() and photo.stat().st_nlink == 1


def test_files_under_the_media_root_are_copied_even_when_linking(tmp_path, settings):
    media = Path(settings.MEDIA_ROOT)
    (inside,) = write_photos(media / "tmp" / "unzip-x", 1)  # a zip's unpacked member
    with storage.linking_sources(), storage.staged_upload(inside, media, suffix=".jpg") as staged:
        assert not staged.temp_path.is_symlink()
        stored = media / staged.commit(".jpg")
    assert stored.is_file() and not stored.is_symlink()


def test_a_linked_file_over_the_size_limit_is_rejected_and_leaves_nothing(
    people, tmp_path, settings, django_capture_on_commit_callbacks
):
    settings.MEDANNOT_MAX_FILE_BYTES = 100
    (photo,) = write_photos(tmp_path / "shared", 1)
    with django_capture_on_commit_callbacks(execute=False), pytest.raises(CommandError):
        import_images(photo, "--link")
    assert stored_entries() == [] and not any((Path(settings.MEDIA_ROOT) / "tmp").iterdir())
    assert photo.is_file()


def test_the_help_says_the_originals_must_stay_in_place(capsys):
    with pytest.raises(SystemExit):
        call_command("import_images", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "--link" in text and "must stay in place" in text
    assert "readable by the web and worker processes" in text


def test_importing_a_moved_mirax_slide_again_restores_its_links(
    people, tmp_path, django_capture_on_commit_callbacks
):
    mrxs = samples.write_mirax(tmp_path / "old", seed=3)
    with django_capture_on_commit_callbacks(execute=False):
        import_images(mrxs, "--link")
        (tmp_path / "old").rename(tmp_path / "new")
        assert not previews.image_file_present(Image.objects.get())
        out = import_images(tmp_path / "new" / mrxs.name, "--link")
    assert out.splitlines()[-1] == "0 imported, 1 duplicate, 0 rejected"
    assert previews.image_file_present(Image.objects.get())
    assert all(
        os.readlink(p).startswith(str((tmp_path / "new").resolve())) for p in stored_entries()
    )
