"""A real MIRAX slide end to end: the synthetic writer gives a slide OpenSlide opens as
vendor "mirax"; ingested as a .mrxs with its data folder (as files or as a zip) it is ONE
image whose Deep Zoom descriptor and tiles are served; a lone .mrxs is refused."""

from __future__ import annotations

import html
import io
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import openslide
import pytest
from django.conf import settings
from django.urls import reverse
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image as PILImage

from annotations import services, tiles
from annotations.models import Image, Task
from imaging import samples, series

DZ = "{http://schemas.microsoft.com/deepzoom/2008}"
DATA_FILES = ("Slidedat.ini", "Index.dat", "Data0000.dat")


@pytest.fixture(autouse=True)
def _fresh_caches():
    """No open slide or cached tile of an earlier test (image ids repeat across tests)."""
    tiles.reset()
    yield
    tiles.reset()


@pytest.fixture(scope="module")
def mirax(tmp_path_factory) -> Path:
    """4 × 3 camera images of 256² px, three levels: slide.mrxs and its folder slide/."""
    return samples.write_mirax(tmp_path_factory.mktemp("mirax"), seed=3)


def members(mrxs: Path) -> list[tuple[str, Path]]:
    """The .mrxs and every file of its folder, named as an upload of both would name them."""
    folder = mrxs.with_suffix("")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return [(mrxs.name, mrxs)] + [(f"{folder.name}/{p.relative_to(folder)}", p) for p in files]


def upload(client, project, files):
    return client.post(reverse("project-upload", args=[project.pk]), {"files": files})


def media_files() -> list[Path]:
    return sorted(p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file())


def tissue_fraction(pixels: np.ndarray) -> float:
    """Share of pixels darker than glass in any channel (H&E pink or purple)."""
    return float((pixels[..., :3].min(axis=2) < 220).mean())


# --------------------------------------------------------------------------- the sample


def test_the_writer_gives_a_slide_openslide_opens_as_mirax(mirax):
    assert mirax.suffix == ".mrxs"
    assert sorted(p.name for p in mirax.with_suffix("").iterdir()) == sorted(DATA_FILES)
    assert openslide.OpenSlide.detect_format(mirax) == "mirax"
    with openslide.OpenSlide(mirax) as slide:
        assert slide.properties[openslide.PROPERTY_NAME_VENDOR] == "mirax"
        assert slide.level_count == 3
        assert slide.level_dimensions == ((1024, 768), (512, 384), (256, 192))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.25)
        for level in (0, slide.level_count - 1):
            size = slide.level_dimensions[level]
            pixels = np.asarray(slide.read_region((0, 0), level, size))
            assert pixels.shape == (size[1], size[0], 4) and (pixels[..., 3] == 255).all()
            assert 0.05 < tissue_fraction(pixels) < 0.9  # tissue on glass, not a blank fill


def test_the_writer_is_deterministic_and_small(tmp_path, mirax):
    again = samples.write_mirax(tmp_path, seed=3)
    for name in DATA_FILES:
        assert (again.with_suffix("") / name).read_bytes() == (
            mirax.with_suffix("") / name
        ).read_bytes()
    assert sum(p.stat().st_size for _, p in members(mirax)) < 1_000_000


def test_two_levels_and_a_partial_last_column(tmp_path):
    mrxs = samples.write_mirax(tmp_path, tiles_x=5, tiles_y=3, tile=128, levels=2, mpp=0.5)
    with openslide.OpenSlide(mrxs) as slide:
        assert slide.level_dimensions == ((640, 384), (320, 192))
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        # the last column of level 1 is half an image: its right half is padding, not data
        pixels = np.asarray(slide.read_region((0, 0), 1, (320, 192)))
        assert tissue_fraction(pixels) > 0.05


def test_grouping_makes_the_slide_one_unit(mirax):
    (unit,) = series.group_files(members(mirax))
    assert unit.kind == "mirax" and unit.main == "slide.mrxs" and not unit.problem
    assert sorted(m.name for m in unit.members) == sorted(
        ["slide.mrxs"] + [f"slide/{n}" for n in DATA_FILES]
    )


# --------------------------------------------------------------------------- end to end


def test_ingesting_the_mrxs_and_its_folder_gives_one_slide_task(
    people, client_for, mirax, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        (result,) = services.images_ingest(
            project=people.project, files=members(mirax), enqueue=False
        )
    assert result.status == "imported", result.message
    (task,) = Task.objects.filter(project=people.project)
    image = task.image
    assert image.kind == "slide" and image.vendor == "mirax" and image.format == "mrxs"
    assert image.levels == 3 and (image.width, image.height) == (1024, 768)
    assert image.level_dimensions[:2] == [[1024, 768], [512, 384]]
    assert image.mpp_x == pytest.approx(0.25) and image.mpp_y == pytest.approx(0.25)
    assert image.original_name == "slide.mrxs"

    # stored as one folder: the .mrxs, with its data folder beside it
    stored = Path(settings.MEDIA_ROOT) / image.file
    assert stored.name == "slide.mrxs" and stored.is_file()
    assert sorted(p.name for p in stored.with_suffix("").iterdir()) == sorted(DATA_FILES)
    assert openslide.OpenSlide.detect_format(stored) == "mirax"
    assert sorted(p.read_bytes() for p in media_files()) == sorted(
        p.read_bytes() for _, p in members(mirax)
    )

    # the viewer: the descriptor and a tile at every Deep Zoom level
    client = client_for(people.pathologist)
    url = tiles.dzi_url(image, people.pathologist)
    response = client.get(url)
    assert response.status_code == 200
    root = ET.fromstring(response.content)
    size = root.find(f"{DZ}Size")
    assert (int(size.get("Width")), int(size.get("Height"))) == (image.width, image.height)
    token = parse_qs(urlsplit(url).query)["t"][0]
    with openslide.OpenSlide(stored) as slide:
        generator = DeepZoomGenerator(slide, tile_size=254, overlap=1, limit_bounds=True)
        levels = [(level, generator.level_tiles[level]) for level in range(generator.level_count)]
    for level, (cols, rows) in levels:
        for col, row in {(0, 0), (cols - 1, rows - 1)}:
            tile_url = reverse("slide-tile", args=[image.pk, level, col, row]) + f"?t={token}"
            response = client.get(tile_url)
            assert response.status_code == 200, (level, col, row, response.content[:200])
            assert response["Content-Type"] == "image/jpeg"
            tile = PILImage.open(io.BytesIO(response.content))
            tile.load()
            assert 0 < max(tile.size) <= 256
    # the largest Deep Zoom level that is one tile shows the whole slide: tissue, not a fill
    whole_level = max(level for level, tiles_ in levels if tiles_ == (1, 1))
    url = reverse("slide-tile", args=[image.pk, whole_level, 0, 0]) + f"?t={token}"
    response = client.get(url)
    whole = np.asarray(PILImage.open(io.BytesIO(response.content)).convert("RGB"))
    assert tissue_fraction(whole) > 0.05


def test_a_zip_of_the_mrxs_and_its_folder_uploaded_is_one_task(
    people, client_for, mirax, tmp_path, django_capture_on_commit_callbacks
):
    archive = tmp_path / "case.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, path in members(mirax):
            zf.write(path, f"case/{name}")
    with (
        django_capture_on_commit_callbacks(execute=False),
        archive.open("rb") as fh,
    ):
        response = upload(client_for(people.researcher), people.project, [fh])
    body = html.unescape(response.content.decode())
    assert response.status_code == 200, body
    assert "case.zip/slide.mrxs" in body
    (task,) = Task.objects.filter(project=people.project)
    assert task.image.vendor == "mirax" and task.image.levels == 3
    assert Image.objects.count() == 1
    # the unpacked copy is gone: only the stored slide remains
    assert all("images" in p.parts for p in media_files())


def test_the_mrxs_alone_is_refused_with_what_is_missing(people, client_for, mirax):
    (result,) = services.images_ingest(
        project=people.project, files=[(mirax.name, mirax)], enqueue=False
    )
    assert result.status == "rejected" and result.message == series.MIRAX_WITHOUT_FOLDER
    with mirax.open("rb") as fh:
        response = upload(client_for(people.researcher), people.project, [fh])
    assert response.status_code == 422
    assert "a MIRAX .mrxs without its data folder" in html.unescape(response.content.decode())
    assert not Task.objects.exists() and media_files() == []


def test_the_files_uploaded_without_folders_are_one_task(
    people, client_for, mirax, django_capture_on_commit_callbacks
):
    # a browser sends bare file names: the .mrxs and Slidedat.ini, Index.dat, Data0000.dat
    handles = [path.open("rb") for _, path in members(mirax)]
    try:
        with django_capture_on_commit_callbacks(execute=False):
            response = upload(client_for(people.researcher), people.project, handles)
    finally:
        for fh in handles:
            fh.close()
    assert response.status_code == 200, html.unescape(response.content.decode())
    (task,) = Task.objects.filter(project=people.project)
    stored = Path(settings.MEDIA_ROOT) / task.image.file
    assert stored.name == "slide.mrxs" and task.image.vendor == "mirax"
    with openslide.OpenSlide(stored) as slide:
        assert slide.level_count == task.image.levels == 3
