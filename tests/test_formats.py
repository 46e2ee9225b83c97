"""What is stored about an image at import: vendor, level sizes, microns per pixel and
objective power, from an allowlist; OpenSlide's own words when a slide is damaged."""

from __future__ import annotations

from pathlib import Path

import openslide
import pytest

import imaging
from annotations import services
from annotations.models import Image
from imaging import samples
from imaging.inspect import (
    ALLOWED_PROPERTIES,
    plausible_objective_power,
    reviewer_properties,
)


def ingest(project, path: Path, name: str | None = None):
    result = services.image_ingest(
        project=project, source=path, original_name=name or path.name, enqueue=False
    )
    return result


def test_an_aperio_slide_keeps_vendor_levels_mpp_and_objective_power(people, sample_files):
    result = ingest(people.project, sample_files["svs"])
    assert result.status == "imported", result.message
    image = result.task.image
    with openslide.OpenSlide(sample_files["svs"]) as slide:
        sizes = [list(d) for d in slide.level_dimensions]
    assert (image.kind, image.format, image.vendor) == ("slide", "svs", "aperio")
    assert image.levels == len(sizes) >= 3 and image.level_dimensions == sizes
    assert image.mpp_x == pytest.approx(0.25) and image.mpp_y == pytest.approx(0.25)
    assert image.objective_power == 40  # AppMag = 40
    assert Image.objects.get(pk=image.pk).info().level_dimensions[0] == (1536, 1024)


def test_a_generic_tiff_has_levels_but_no_objective_power(people, sample_files):
    image = ingest(people.project, sample_files["slide"]).task.image
    assert image.vendor == "generic-tiff" and image.levels >= 3
    assert image.objective_power is None
    assert image.level_dimensions[0] == [1536, 1024]


def test_a_photo_is_one_level_of_its_shown_size(people, tmp_path):
    path = samples.write_derm_photo(tmp_path / "turned.jpg", size=(320, 200), orientation=6)
    image = ingest(people.project, path).task.image
    assert (image.kind, image.levels, image.vendor) == ("photo", 1, "")
    assert image.level_dimensions == [[200, 320]]  # EXIF orientation 6 turns it
    assert image.objective_power is None and image.mpp_x is None


def test_a_png_photo_is_one_level(sample_files):
    info = imaging.inspect_image(sample_files["photo2"])
    assert info.level_dimensions == ((info.width, info.height),)


def test_a_damaged_slide_is_refused_in_openslides_own_words(people, tmp_path):
    path = samples.write_corrupt_slide(tmp_path / "damaged.svs", how="garbage")
    result = ingest(people.project, path)
    assert result.status == "rejected"
    assert result.message.startswith("unreadable slide: its pixel data is damaged (")
    assert "Decoding error" in result.message  # libtiff's message, via OpenSlide
    assert str(tmp_path) not in result.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("40", 40.0),
        ("20.0", 20.0),
        (2.5, 2.5),
        ("0", None),
        ("400", None),
        ("x", None),
        (None, None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_objective_power_must_be_plausible(value, expected):
    assert plausible_objective_power(value) == expected


def test_reviewer_properties_are_the_allowlist_only(people, tmp_path):
    path = samples.write_synthetic_slide(
        tmp_path / "named.svs",
        width=1024,
        height=768,
        flavour="aperio",
        description_extra="|Filename = JaneDoe-1950|Date = 01/02/1950",
    )
    info = imaging.inspect_image(path)
    image = ingest(people.project, path).task.image
    for props in (reviewer_properties(info), reviewer_properties(image)):
        assert tuple(props) == ALLOWED_PROPERTIES
        assert props["vendor"] == "aperio" and props["objective_power"] == 40
        assert props["level_dimensions"][0] == [1024, 768]
        assert "JaneDoe" not in repr(props) and "1950" not in repr(props)
    assert set(ALLOWED_PROPERTIES) <= set(Image.INFO_FIELDS)


def test_a_dicom_slide_reports_format_vendor_and_objective_power(tmp_path):
    paths = samples.write_dicom_series(tmp_path / "series", mpp=0.5)
    info = imaging.inspect_image(paths[0])
    assert (info.format, info.vendor, info.levels) == ("dicom", "dicom", 2)
    assert info.mpp_x == pytest.approx(0.5) and info.objective_power == 20
    assert info.level_dimensions == ((1536, 1024), (384, 256))
