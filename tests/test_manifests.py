"""import_images with manifest rows the database cannot take: the row is reported, the rest kept."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from annotations import manifests
from annotations.models import Task


def test_a_nul_byte_in_a_manifest_loses_neither_the_file_nor_the_ones_after_it(
    people, tmp_path, sample_files, django_capture_on_commit_callbacks
):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "file,organ,procedure\n"
        "lesion-1.jpg,bre\x00ast,core biopsy\n"
        "lesion-2.png,skin,excision\n"
        f"biopsy-1.tiff,{'x' * 5000},resection\n"
    )
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=False):
        with pytest.raises(CommandError, match="2 manifest row"):
            call_command(
                "import_images",
                str(sample_files["photo"]),
                str(sample_files["photo2"]),
                str(sample_files["slide"]),
                "--project",
                "Breast biopsies",
                "--manifest",
                str(manifest),
                stdout=out,
                stderr=StringIO(),
            )
    text = out.getvalue()
    assert (
        "manifest line 2 (lesion-1.jpg), field 'organ': contains the control character U+0000"
        in text
    )
    assert "manifest line 4 (biopsy-1.tiff), field 'organ': is 5000 characters long" in text
    metadata = {t.image.original_name: t.metadata for t in Task.objects.select_related("image")}
    assert metadata == {
        "lesion-1.jpg": {},
        "lesion-2.png": {"organ": "skin", "procedure": "excision"},
        "biopsy-1.tiff": {},
    }
    assert "3 imported, 0 duplicate, 0 rejected, 2 manifest row(s) rejected" in text


def test_a_control_character_in_a_column_name_drops_that_column(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("file,organ,no\x07te\nx.jpg,lung,hello\n")
    read = manifests.manifest_read(manifest)
    assert read.rows["x.jpg"] == {"organ": "lung"}
    assert [str(p) for p in read.problems] == [
        "manifest line 1, field 'no?te': the column name contains the control character "
        "U+0007; ignored"
    ]


def test_a_quoted_value_may_span_lines(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text('file,note\nx.jpg,"two\nlines"\ny.jpg,\x1bbad\n')
    read = manifests.manifest_read(manifest)
    assert read.rows["x.jpg"] == {"note": "two\nlines"}
    assert [(p.line, p.file, p.field) for p in read.problems] == [(4, "y.jpg", "note")]
