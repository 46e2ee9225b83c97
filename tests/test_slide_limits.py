"""Slides that lie: a poison TIFF with no low-resolution level, and a photo's dpi taken for µm/px.

Reads of a poison slide run in a subprocess with a timeout: before the pixel budget,
its preview took over ten minutes, and a test must fail rather than hang.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from django.urls import reverse
from PIL import Image as PILImage
from PIL import ImageDraw

import imaging.pixels
from annotations.models import Image, Task
from imaging import ImageRejected, inspect_image, render_preview, samples
from imaging.inspect import MAX_OVERVIEW_LEVEL_PIXELS, plausible_mpp
from imaging.patches import PatchSettings, plan_patches
from inference.services import job_prepare
from tests.factories import make_image, make_task

ROOT = Path(__file__).resolve().parent.parent
NO_LOW_RES = "unreadable slide: it has no low-resolution level"
POISON_MESSAGE = (
    "unreadable slide: it has no low-resolution level (its smallest level is "
    "100000 × 100000 pixels); save it as a pyramid (for example with "
    "`vips tiffsave --tile --pyramid`)"
)
PX_PER_CM_72_DPI = 72 / 2.54  # 28.35: what an image editor writes for a 72-dpi picture


@pytest.fixture(scope="module")
def poison(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return samples.write_poison_tiff(tmp_path_factory.mktemp("poison") / "poison.tiff")


def _refusal_in_subprocess(call: str, path: Path) -> str:
    """Run `call` on the slide at `path` in a fresh interpreter; the ImageRejected message.

    A read that takes minutes fails the test at the timeout instead of hanging it.
    """
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from imaging import ImageInfo, ImageRejected, inspect_image, load_for_model, "
        "render_preview\n"
        "from imaging.patches import plan_patches\n"
        "path = Path(sys.argv[1])\n"
        "info = ImageInfo(kind='slide', format='tiff', width=100000, height=100000, levels=1,"
        " mpp_x=0.25, mpp_y=0.25, vendor='generic-tiff')\n"
        "try:\n"
        f"    {call}\n"
        "except ImageRejected as exc:\n"
        "    print(exc.message)\n"
        "else:\n"
        "    print('accepted')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# --------------------------------------------------------------------------- the poison file


def test_the_poison_file_is_small_and_openslide_reads_it_as_a_huge_slide(poison: Path) -> None:
    assert poison.stat().st_size < 2_000_000
    assert openslide.OpenSlide.detect_format(poison) == "generic-tiff"
    with openslide.OpenSlide(poison) as slide:
        assert slide.dimensions == (100_000, 100_000) and slide.level_count == 1
        region = slide.read_region((77_000, 31_000), 0, (64, 64)).convert("RGB")
        assert region.getextrema()[0][0] > 150  # the pink tile, not a hole


def test_inspect_rejects_a_slide_without_a_low_resolution_level(poison: Path) -> None:
    assert _refusal_in_subprocess("inspect_image(path)", poison) == POISON_MESSAGE


@pytest.mark.parametrize(
    "call",
    [
        "render_preview(path, info)",
        "render_preview(path, info, max_size=64)",
        "load_for_model(path, info)",
        "plan_patches(path)",
    ],
)
def test_previews_and_patch_planning_refuse_the_poison_fast(poison: Path, call: str) -> None:
    assert _refusal_in_subprocess(call, poison) == POISON_MESSAGE


def test_the_budget_is_the_only_thing_between_a_slide_and_acceptance(tmp_path: Path) -> None:
    # one level just within the budget is accepted: the check is not "single level = bad"
    side = int(MAX_OVERVIEW_LEVEL_PIXELS**0.5)
    path = samples.write_poison_tiff(tmp_path / "edge.tiff", width=side, height=side)
    info = inspect_image(path, max_photo_pixels=1)  # no photo fallback: read as a slide
    assert info.kind == "slide" and (info.width, info.height) == (side, side)
    path = samples.write_poison_tiff(tmp_path / "over.tiff", width=side + 256, height=side)
    with pytest.raises(ImageRejected, match=NO_LOW_RES):
        inspect_image(path, max_photo_pixels=1)


def test_a_real_pyramid_still_works(tmp_path: Path) -> None:
    path = samples.write_synthetic_slide(tmp_path / "pyramid.tiff", width=2048, height=1536)
    info = inspect_image(path)
    assert info.kind == "slide" and info.levels > 1 and info.mpp_x == pytest.approx(0.25)
    assert render_preview(path, info, max_size=512).size == (512, 384)
    plan = plan_patches(path, PatchSettings(patch_size=128))
    assert plan.regions


def test_an_upload_keeps_the_photo_and_rejects_the_poison(
    people, client_for, sample_files, poison: Path
) -> None:
    with poison.open("rb") as bad, sample_files["photo"].open("rb") as good:
        response = client_for(people.researcher).post(
            reverse("project-upload", args=[people.project.pk]), {"files": [bad, good]}
        )
    body = response.content.decode()
    assert response.status_code == 200
    assert "poison.tiff" in body and NO_LOW_RES in body and "vips tiffsave" in body
    assert Task.objects.filter(project=people.project).count() == 1
    assert Image.objects.get().kind == "photo"


# --------------------------------------------------------------------------- microns per pixel


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.2527", 0.2527),
        (0.05, 0.05),
        ("20", 20.0),
        ("352.77777", None),  # a 72-dpi picture
        ("0.01", None),
        ("0", None),
        ("-0.25", None),
        ("inf", None),
        ("nan", None),
        ("", None),
        ("abc", None),
        (None, None),
    ],
)
def test_plausible_mpp_keeps_what_microscopes_produce(value, expected) -> None:
    assert plausible_mpp(value) == expected


def _72_dpi_slide(path: Path, *, width: int, height: int) -> Path:
    """A tiled two-page pyramid (the samples.py generic-tiff recipe) saved at 72 dpi, as an
    image editor would: pink tissue on glass. OpenSlide reports ~352.8 µm/px for it."""
    img = PILImage.new("RGB", (width, height), (243, 242, 244))
    ImageDraw.Draw(img).ellipse(
        (width // 5, height // 5, width * 4 // 5, height * 4 // 5), (232, 158, 192)
    )
    levels = [np.asarray(img), np.asarray(img.reduce(2))]
    with tifffile.TiffWriter(path) as tif:
        for i, level in enumerate(levels):
            res = PX_PER_CM_72_DPI / 2**i
            tif.write(
                level,
                tile=(256, 256),
                photometric="rgb",
                compression="zlib",
                metadata=None,
                subfiletype=1 if i else 0,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
            )
    return path


def test_a_72_dpi_tiff_has_unknown_microns_per_pixel(tmp_path: Path) -> None:
    path = _72_dpi_slide(tmp_path / "dpi72.tiff", width=1024, height=768)
    with openslide.OpenSlide(path) as slide:
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(352.8, rel=1e-3)
    info = inspect_image(path)
    assert info.kind == "slide" and info.levels > 1
    assert info.mpp_x is None and info.mpp_y is None


def test_a_72_dpi_slide_is_planned_as_unknown_and_never_upsampled(tmp_path: Path) -> None:
    path = _72_dpi_slide(tmp_path / "dpi72.tiff", width=2048, height=1536)
    plan = plan_patches(path, PatchSettings(patch_size=128))
    assert plan.note.startswith("microns per pixel unknown:")
    assert plan.mpp is None and plan.regions
    for r in plan.regions:
        assert r.mpp is None and r.read_size >= r.size and r.size == 128


def test_drafting_a_stored_poison_fails_fast_with_the_reason(people, poison: Path, settings):
    # a slide stored before the budget existed: the worker refuses it instead of reading it
    stored = Path(settings.MEDIA_ROOT) / "images" / "poison.tiff"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(poison.read_bytes())
    image = make_image(
        file="images/poison.tiff", kind="slide", format="tiff", width=100_000, height=100_000
    )
    task = make_task(people.project, image=image)
    job = job_prepare(task, None)
    assert job.request is None
    assert job.error == f"image unreadable: {POISON_MESSAGE}"


def test_a_preview_comes_from_a_level_within_the_budget(tmp_path: Path, monkeypatch) -> None:
    path = samples.write_synthetic_slide(tmp_path / "s.tiff", width=1536, height=1024)
    info = inspect_image(path)
    monkeypatch.setattr(imaging.pixels, "MAX_OVERVIEW_LEVEL_PIXELS", 800 * 600)
    levels_read = []
    real_read = openslide.OpenSlide.read_region

    def spy(self, location, level, size):
        levels_read.append(level)
        return real_read(self, location, level, size)

    monkeypatch.setattr(openslide.OpenSlide, "read_region", spy)
    assert render_preview(path, info, max_size=1024).size == (1024, 683)
    assert levels_read == [1]  # 768 x 512: level 0 (1536 x 1024) is over the budget


@pytest.mark.django_db
def test_stored_implausible_mpp_become_unknown():
    """Rows imported before the plausibility rule lose their 352.8 µm/px (migration 0005)."""
    import importlib

    from django.apps import apps as django_apps

    from annotations.models import Image
    from tests.factories import make_image

    migration = importlib.import_module("annotations.migrations.0005_forget_implausible_mpp")
    bad = make_image(kind="slide", format="tiff", mpp_x=352.8, mpp_y=352.8)
    good = make_image(kind="slide", format="svs", mpp_x=0.25, mpp_y=0.2501)
    migration.forget_implausible(django_apps, None)
    bad.refresh_from_db(), good.refresh_from_db()
    assert (bad.mpp_x, bad.mpp_y) == (None, None)
    assert (good.mpp_x, good.mpp_y) == (0.25, 0.2501)
    assert Image.objects.filter(mpp_x__isnull=True).count() == 1
