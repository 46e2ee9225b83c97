"""import_images: progress shown as files are decided, a non-zero exit after keeping the
rest, and a rerun that imports only what is new."""

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from annotations import services
from annotations.models import Image, Task
from tests.test_ingest_chunks import stored_files, write_photos


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


def import_images(*paths, stdout=None, stderr=None) -> tuple[str, str]:
    out, err = stdout or StringIO(), stderr or StringIO()
    call_command(
        "import_images", *map(str, paths), "--project", "Breast biopsies", stdout=out, stderr=err
    )
    return out.getvalue(), err.getvalue()


def test_not_on_a_terminal_each_file_is_a_line_as_it_is_decided(
    people, tmp_path, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(services, "INGEST_CHUNK_FILES", 2)
    folder = tmp_path / "photos"
    write_photos(folder, 3)
    (folder / "photo-001-bad.jpg").write_bytes(b"not a picture")
    seen = []  # the tasks that exist when each line is written: lines come chunk by chunk
    out = StringIO()
    out.write = lambda text: seen.append((text, Task.objects.count())) or len(text)
    with django_capture_on_commit_callbacks(execute=False), pytest.raises(CommandError) as err:
        import_images(folder, tmp_path / "gone.jpg", stdout=out)
    lines = [text.rstrip("\n") for text, _ in seen]
    assert [line.split()[0] for line in lines[:5]] == [
        "rejected",
        "imported",
        "rejected",
        "imported",
        "imported",
    ]
    assert lines[0] == f"rejected  {tmp_path / 'gone.jpg'}: no such file"
    assert lines[1].startswith("imported  ") and lines[1].endswith(")")
    assert "photo-000.jpg (task " in lines[1]
    assert "photo-001-bad.jpg: " in lines[2]
    assert lines[5] == "3 imported, 0 duplicate, 2 rejected"
    assert [tasks for _, tasks in seen[:5]] == [0, 1, 1, 3, 3]  # chunk by chunk
    assert str(err.value) == "2 file(s) rejected; the others were kept."
    assert Task.objects.filter(project=people.project).count() == 3


def test_not_on_a_terminal_there_is_no_bar(people, tmp_path, django_capture_on_commit_callbacks):
    write_photos(tmp_path / "photos", 2)
    with django_capture_on_commit_callbacks(execute=False):
        out, err = import_images(tmp_path / "photos", stderr=StringIO())
    assert err == ""
    assert out.splitlines()[-1] == "2 imported, 0 duplicate, 0 rejected"


def test_on_a_terminal_a_bar_is_redrawn_in_place(
    people, tmp_path, django_capture_on_commit_callbacks
):
    folder = tmp_path / "photos"
    write_photos(folder, 3)
    (folder / "photo-001-bad.jpg").write_bytes(b"not a picture")
    terminal = Terminal()
    with django_capture_on_commit_callbacks(execute=False), pytest.raises(CommandError):
        import_images(folder, stdout=terminal, stderr=terminal)
    shown = terminal.getvalue()
    assert "\n" not in shown.split("rejected  ")[0]  # no line per imported file
    assert shown.count("rejected  ") == 1 and "photo-001-bad.jpg" in shown
    final = shown.rsplit("\r", 1)[1]
    assert final.startswith(f"[{'#' * 30}] 4/4 imported 3, duplicate 0, rejected 1\n")
    assert final.endswith("3 imported, 0 duplicate, 1 rejected\n")


def test_on_a_terminal_with_stdout_redirected_the_log_keeps_every_line(
    people, tmp_path, django_capture_on_commit_callbacks
):
    write_photos(tmp_path / "photos", 2)
    terminal = Terminal()
    with django_capture_on_commit_callbacks(execute=False):
        out, _ = import_images(tmp_path / "photos", stderr=terminal)
    assert [line.split()[0] for line in out.splitlines()] == ["imported", "imported", "2"]
    assert terminal.getvalue().startswith("\r[")


def test_a_rerun_imports_only_what_is_new(
    people, tmp_path, settings, django_capture_on_commit_callbacks
):
    folder = tmp_path / "photos"
    write_photos(folder, 3)
    with django_capture_on_commit_callbacks(execute=False):
        import_images(folder)
    before = {path: path.stat() for path in stored_files(settings)}
    write_photos(tmp_path / "more", 5)
    (tmp_path / "more" / "photo-003.jpg").rename(folder / "photo-003.jpg")

    with django_capture_on_commit_callbacks(execute=False):
        out, _ = import_images(folder)

    lines = out.splitlines()
    assert [line.split()[0] for line in lines[:4]] == ["duplicate"] * 3 + ["imported"]
    assert "already in this project as task" in lines[0]
    assert lines[-1] == "1 imported, 3 duplicate, 0 rejected"  # exit status 0
    assert Task.objects.filter(project=people.project).count() == 4
    assert Image.objects.count() == 4
    after = {path: path.stat() for path in stored_files(settings)}
    assert len(after) == 4
    for path, stat in before.items():  # not copied again
        assert (after[path].st_ino, after[path].st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    leftovers = list((Path(settings.MEDIA_ROOT) / "tmp").rglob("*"))
    assert leftovers == []
