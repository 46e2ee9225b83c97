"""Multi-file slides: a DICOM series and a MIRAX slide are stored together as one image;
a part without its companions is refused with a message that says what is missing; zips
are unpacked safely."""

from __future__ import annotations

import html
import io
import shutil
import stat
import zipfile
from io import StringIO
from pathlib import Path

import openslide
import pydicom
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.urls import reverse

import imaging
from annotations import services
from annotations.management.commands.import_images import iter_named_files
from annotations.models import Image, Task
from imaging import archives, samples, series
from imaging.storage import safe_member_name, staged_folder

THUMBNAIL_ALONE = "a thumbnail of a DICOM series: import it together with the series' volume files"


@pytest.fixture(scope="module")
def dicom_series(tmp_path_factory) -> list[Path]:
    """Two levels, a thumbnail, a label and an overview: five instance files."""
    folder = tmp_path_factory.mktemp("dicom") / "series"
    return samples.write_dicom_series(folder, seed=5, label=True, overview=True)


def upload(client, project, files):
    return client.post(reverse("project-upload", args=[project.pk]), {"files": files})


def text(response) -> str:
    return html.unescape(response.content.decode())


def media_files() -> list[Path]:
    return sorted(p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file())


def zip_of(path: Path, entries: dict[str, Path | bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in entries.items():
            data = content if isinstance(content, bytes) else Path(content).read_bytes()
            zf.writestr(name, data)
    return path


# --------------------------------------------------------------------------- the sample


def test_the_sample_series_opens_in_openslide_with_two_levels(dicom_series):
    assert openslide.OpenSlide.detect_format(dicom_series[0]) == "dicom"
    with openslide.OpenSlide(dicom_series[0]) as slide:
        assert slide.level_count >= 2
        assert slide.dimensions == (1536, 1024)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)


# --------------------------------------------------------------------------- grouping


def test_it_groups_a_series_into_one_unit_without_its_label_and_overview(
    dicom_series, sample_files
):
    files = [(p.name, p) for p in dicom_series] + [("lesion.jpg", sample_files["photo"])]
    dicom, photo = series.group_files(files)
    assert dicom.kind == "dicom" and dicom.name == "DICOM series (5 files)"
    assert dicom.main == "level-0.dcm" and not dicom.problem
    assert {m.name for m in dicom.members} == {"level-0.dcm", "level-1.dcm", "thumbnail.dcm"}
    assert set(dicom.left_out) == {"label.dcm", "overview.dcm"}
    assert photo.kind == "file" and photo.name == "lesion.jpg"


@pytest.mark.parametrize(
    ("index", "message"),
    [
        (2, THUMBNAIL_ALONE),
        (3, "a label image of a DICOM series: import it together with the series' volume files"),
        (4, "an overview image of a DICOM series: import it together"),
        (1, "one level of a DICOM series (not its full-resolution level)"),
    ],
)
def test_a_lone_part_of_a_series_names_what_is_missing(dicom_series, index, message):
    path = dicom_series[index]
    (unit,) = series.group_files([(path.name, path)])
    assert unit.problem.startswith(message)


def test_label_and_thumbnail_together_still_lack_the_volumes(dicom_series):
    (unit,) = series.group_files([(p.name, p) for p in dicom_series[2:4]])
    assert unit.problem == (
        "thumbnails and label images of a DICOM series without its volume files: import "
        "them together with the series' volume files"
    )


def test_inspection_refuses_a_label_instance_even_beside_its_series(dicom_series):
    # OpenSlide opens the label file as the whole series when its volumes are beside it:
    # the label must never become the file a task's image points at.
    with pytest.raises(imaging.ImageRejected, match="a label image of a DICOM series"):
        imaging.inspect_image(dicom_series[3])


def test_it_groups_a_mirax_slide_with_its_folder(tmp_path):
    for name in ("slide.mrxs", "slide/Slidedat.ini", "slide/Data0000.dat", "lone.mrxs"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "orphan").mkdir()
    (tmp_path / "orphan" / "Slidedat.ini").write_bytes(b"x")
    (tmp_path / "orphan" / "Data0000.dat").write_bytes(b"x")
    names = [
        "scans/slide.mrxs",
        "scans/slide/Slidedat.ini",
        "scans/slide/Data0000.dat",
        "scans/lone.mrxs",
        "scans/orphan/Slidedat.ini",
        "scans/orphan/Data0000.dat",
    ]
    paths = [
        tmp_path / n
        for n in (
            "slide.mrxs",
            "slide/Slidedat.ini",
            "slide/Data0000.dat",
            "lone.mrxs",
            "orphan/Slidedat.ini",
            "orphan/Data0000.dat",
        )
    ]
    mirax, lone, orphan = series.group_files(zip(names, paths, strict=True))
    assert mirax.kind == "mirax" and mirax.main == "slide.mrxs" and not mirax.problem
    assert [m.name for m in mirax.members] == [
        "slide.mrxs",
        "slide/Slidedat.ini",
        "slide/Data0000.dat",
    ]
    assert lone.problem == series.MIRAX_WITHOUT_FOLDER
    assert "import the .mrxs together with the folder of the same name" in lone.problem
    assert orphan.problem == series.MIRAX_WITHOUT_MRXS and len(orphan.members) == 2


def test_a_flat_mirax_upload_is_put_back_in_its_folder(tmp_path):
    # a browser sends file names without folders
    for name in ("s.mrxs", "Slidedat.ini", "Data0000.dat"):
        (tmp_path / name).write_bytes(b"x")
    (unit,) = series.group_files(
        [(n, tmp_path / n) for n in ("s.mrxs", "Slidedat.ini", "Data0000.dat")]
    )
    assert unit.main == "s.mrxs" and not unit.problem
    assert [m.name for m in unit.members] == ["s.mrxs", "s/Slidedat.ini", "s/Data0000.dat"]


# --------------------------------------------------------------------------- storage


def test_a_folder_has_the_same_address_whatever_the_files_are_called(tmp_path, dicom_series):
    media = tmp_path / "media"
    members = [(p.name, p) for p in dicom_series[:3]]
    renamed = [(f"{i}.dcm", p) for i, p in enumerate(reversed(dicom_series[:3]))]
    with staged_folder(members, media, content_suffix=".dcm") as a:
        with staged_folder(renamed, media, content_suffix=".dcm") as b:
            assert a.sha256 == b.sha256
            assert a.temp_path("level-0.dcm").read_bytes() == dicom_series[0].read_bytes()
    assert list((media / "tmp").iterdir()) == []  # nothing left behind uncommitted


def test_a_folder_commits_by_one_rename_and_undoes_only_its_own(tmp_path, dicom_series):
    media = tmp_path / "media"
    members = [(p.name, p) for p in dicom_series[:3]]
    with staged_folder(members, media, content_suffix=".dcm") as staged:
        rel = staged.commit("level-0.dcm")
        assert rel.startswith(f"images/{staged.sha256[:2]}/{staged.sha256[2:4]}/{staged.sha256}/")
        assert (media / rel).read_bytes() == dicom_series[0].read_bytes()
    with staged_folder(members, media, content_suffix=".dcm") as again:
        assert again.commit("level-0.dcm") == rel and not again.created
        again.undo_commit()  # not ours: stays
    assert (media / rel).is_file()
    staged.undo_commit()
    assert not (media / rel).exists()
    assert list((media / "tmp").iterdir()) == []


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a/../../evil", "C:/x"])
def test_member_names_cannot_leave_the_folder(name):
    with pytest.raises(imaging.ImageRejected, match="unsafe file name"):
        safe_member_name(name)


def test_member_names_are_sanitised_the_same_way_in_a_name_and_its_folder():
    assert safe_member_name("my slide.mrxs") == "my_slide.mrxs"
    assert safe_member_name("my slide/Slidedat.ini") == "my_slide/Slidedat.ini"
    assert safe_member_name(".hidden/x") == "_hidden/x"


def test_the_tmp_sweep_removes_old_staging_folders(tmp_path):
    media = tmp_path / "media"
    old = media / "tmp" / "unit-abc"
    old.mkdir(parents=True)
    (old / "level-0.dcm").write_bytes(b"x")
    assert imaging.sweep_tmp(media, older_than_s=-1) == 1
    assert not old.exists()


# --------------------------------------------------------------------------- end to end


def test_a_series_uploaded_as_several_files_is_one_task(
    people, client_for, dicom_series, django_capture_on_commit_callbacks
):
    files = [p.open("rb") for p in dicom_series]
    with django_capture_on_commit_callbacks(execute=False):
        response = upload(client_for(people.researcher), people.project, files)
    body = text(response)
    assert response.status_code == 200, body
    assert "DICOM series (5 files)" in body and "label and overview images were left out" in body
    (task,) = Task.objects.filter(project=people.project)
    image = task.image
    assert image.format == "dicom" and image.vendor == "dicom" and image.kind == "slide"
    assert image.levels >= 2 and image.level_dimensions[:2] == [[1536, 1024], [384, 256]]
    assert image.mpp_x == pytest.approx(0.25) and image.objective_power == 40
    # one folder: the volumes and the thumbnail, never the label or the overview
    stored = media_files()
    folder = Path(settings.MEDIA_ROOT) / image.file
    assert folder.parent.name == image.sha256 and folder.is_file()
    assert sorted(p.read_bytes() for p in stored) == sorted(
        p.read_bytes() for p in dicom_series[:3]
    )
    with openslide.OpenSlide(folder) as slide:
        assert slide.level_count == image.levels
    assert (
        client_for(people.pathologist).get(reverse("task-preview", args=[task.pk])).status_code
        == 200
    )


def test_the_same_series_from_a_folder_is_a_duplicate(
    people, client_for, dicom_series, tmp_path, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        upload(client_for(people.researcher), people.project, [p.open("rb") for p in dicom_series])
    folder = tmp_path / "export" / "case-7"
    folder.mkdir(parents=True)
    for i, path in enumerate(dicom_series):
        shutil.copy(path, folder / f"IMG{i:04d}")  # other names, no suffix
    out = StringIO()
    call_command("import_images", str(folder.parent), "--project", "Breast biopsies", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("duplicate") and "DICOM series (5 files)" in lines[0]
    assert Task.objects.count() == 1 and Image.objects.count() == 1


def test_a_lone_thumbnail_is_refused_with_what_is_missing(people, client_for, dicom_series):
    response = upload(client_for(people.researcher), people.project, [dicom_series[2].open("rb")])
    assert response.status_code == 422
    assert THUMBNAIL_ALONE in text(response)
    assert "No pyramid levels found" not in text(response)
    assert not Task.objects.exists() and media_files() == []


def test_a_zip_of_the_series_is_one_task(
    people, client_for, dicom_series, tmp_path, django_capture_on_commit_callbacks
):
    archive = zip_of(
        tmp_path / "case.zip",
        {f"case/{p.name}": p for p in dicom_series} | {"__MACOSX/._x": b"junk"},
    )
    with django_capture_on_commit_callbacks(execute=False):
        response = upload(client_for(people.researcher), people.project, [archive.open("rb")])
    assert response.status_code == 200
    assert "case.zip/DICOM series (5 files)" in text(response)
    (task,) = Task.objects.all()
    assert task.image.levels >= 2
    # the unpacked copy is gone: only the stored series remains
    assert all("images" in p.parts for p in media_files())


def test_a_zip_keeps_its_good_entries_and_names_the_bad(
    people, sample_files, tmp_path, dicom_series, django_capture_on_commit_callbacks
):
    archive = zip_of(
        tmp_path / "batch.zip",
        {
            "a/lesion.jpg": sample_files["photo"],
            "a/notes.txt": b"not an image",
            "thumb.dcm": dicom_series[2],
        },
    )
    with django_capture_on_commit_callbacks(execute=False):
        results = services.images_ingest(
            project=people.project, files=[("batch.zip", archive)], enqueue=False
        )
    assert [(r.name, r.status) for r in results] == [
        ("batch.zip/lesion.jpg", "imported"),
        ("batch.zip/notes.txt", "rejected"),
        ("batch.zip/thumb.dcm", "rejected"),
    ]
    assert results[2].message == THUMBNAIL_ALONE


def _zip_with_entry(path: Path, info: zipfile.ZipInfo, data: bytes = b"x") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("good.txt", b"fine")
        zf.writestr(info, data)
    return path


def _symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (zipfile.ZipInfo("../evil"), "points outside the archive"),
        (zipfile.ZipInfo("a/../../evil"), "points outside the archive"),
        (zipfile.ZipInfo("/tmp/evil"), "has an absolute path"),
        (_symlink_entry(), "is a symbolic link"),
    ],
)
def test_a_zip_with_unsafe_entries_is_refused_and_writes_nothing(
    people, client_for, tmp_path, entry, message
):
    archive = _zip_with_entry(tmp_path / "bad.zip", entry, b"/etc/passwd")
    response = upload(client_for(people.researcher), people.project, [archive.open("rb")])
    body = text(response)
    assert response.status_code == 422
    assert "zip refused" in body and message in body
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()
    assert media_files() == [] and not Task.objects.exists()


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("small.txt", b"fine")
        zf.writestr("zeros.bin", bytes(8 * 1024 * 1024))  # compresses to a few KiB
    assert archive.stat().st_size < 100_000
    dest = tmp_path / "out"
    dest.mkdir()
    limits = archives.ZipLimits(max_total_bytes=1024 * 1024)
    with pytest.raises(imaging.ImageRejected, match="would unpack to more than 1 MiB"):
        archives.unpack_zip(archive, dest, limits=limits)
    assert list(dest.iterdir()) == []  # not even the small entry before it


def test_a_zip_with_too_many_entries_is_refused(people, client_for, tmp_path, settings):
    settings.MEDANNOT_MAX_ZIP_ENTRIES = 3
    archive = zip_of(tmp_path / "many.zip", {f"{i}.txt": b"x" for i in range(5)})
    response = upload(client_for(people.researcher), people.project, [archive.open("rb")])
    assert response.status_code == 422
    assert "it has 5 entries; at most 3 are allowed" in text(response)
    assert media_files() == []


def test_an_entry_that_inflates_beyond_its_declared_size_is_cut_off(tmp_path):
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", bytes(100_000))
    data = bytearray(archive.read_bytes())
    # declare 1000 bytes in the central directory (uncompressed size at offset 24)
    central = data.rindex(b"PK\x01\x02")
    data[central + 24 : central + 28] = (1000).to_bytes(4, "little")
    local = data.index(b"PK\x03\x04")
    data[local + 22 : local + 26] = (1000).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(imaging.ImageRejected, match="zip refused"):
        archives.unpack_zip(archive, dest)
    assert sum(p.stat().st_size for p in dest.iterdir()) <= 1000


def test_a_damaged_zip_is_refused(people, tmp_path):
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    (result,) = services.images_ingest(project=people.project, files=[("broken.zip", archive)])
    assert result.status == "rejected" and "not a zip archive" in result.message


def test_import_images_of_a_lone_mrxs_says_what_is_missing(people, tmp_path):
    (tmp_path / "slide.mrxs").write_bytes(b"[GENERAL]\n")
    out = StringIO()
    with pytest.raises(CommandError):
        call_command(
            "import_images",
            str(tmp_path / "slide.mrxs"),
            "--project",
            "Breast biopsies",
            stdout=out,
        )
    assert "a MIRAX .mrxs without its data folder" in out.getvalue()


def test_import_images_takes_the_folder_beside_a_mrxs(tmp_path):
    (tmp_path / "s.mrxs").write_bytes(b"x")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "Slidedat.ini").write_bytes(b"x")
    names = [n for n, _ in iter_named_files([str(tmp_path / "s.mrxs")])]
    assert names == ["s.mrxs", "s/Slidedat.ini"]
    both = [n for n, _ in iter_named_files([str(tmp_path / "s.mrxs"), str(tmp_path / "s")])]
    assert both == ["s.mrxs", "s/Slidedat.ini"]


def test_a_stream_without_a_path_is_spooled(people, sample_files):
    data = io.BytesIO(sample_files["photo"].read_bytes())
    (result,) = services.images_ingest(
        project=people.project, files=[("lesion.jpg", data)], enqueue=False
    )
    assert result.status == "imported"
    assert list((Path(settings.MEDIA_ROOT) / "tmp").iterdir()) == []


def test_a_dicom_series_of_another_kind_is_one_refusal(people, dicom_series, tmp_path):
    files = []
    for i, path in enumerate(dicom_series[:2]):
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.save_as(tmp_path / f"ct-{i}.dcm")
        files.append((f"ct-{i}.dcm", tmp_path / f"ct-{i}.dcm"))
    (result,) = services.images_ingest(project=people.project, files=files, enqueue=False)
    assert result.name == "DICOM series (2 files)" and result.status == "rejected"
    assert result.message == "DICOM files other than whole-slide images are not supported yet"


def test_a_file_named_zip_that_is_none_says_so(people, tmp_path):
    (tmp_path / "notes.zip").write_bytes(b"just text")
    (result,) = services.images_ingest(
        project=people.project, files=[("notes.zip", tmp_path / "notes.zip")]
    )
    assert result.status == "rejected" and result.message.startswith("not a zip archive")
