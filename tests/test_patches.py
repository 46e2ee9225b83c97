"""Patch planning for MedGemma 1.5 whole-slide input (imaging.patches)."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image, ImageCms, ImageDraw

from imaging import ImageRejected, patches, samples
from imaging.patches import (
    PatchPlan,
    PatchSettings,
    Region,
    plan_patches,
    read_patches,
    tissue_mask,
)

GLASS = (243, 242, 244)
EOSIN = (232, 158, 192)
NUCLEUS = (92, 58, 148)
PEN_BLUE = (40, 70, 170)
PEN_GREEN = (40, 150, 70)

# Pen slide layout (level 0, 0.5 µm/px): tissue on the left, blank glass on the right,
# a blue marker stroke across both, a black blob and a green dot on the glass.
PEN_W, PEN_H = 3072, 2048
TISSUE_BOX = (200, 200, 1400, 1850)
STROKE_ROWS = (1400, 1600)
FAST = PatchSettings(patch_size=128)  # 1 µm/px, 128 px: 512 level-0 px on 0.25 µm/px slides


# --------------------------------------------------------------------------- slide writers


def _write_pyramid(
    path: Path, rgb: np.ndarray, mpp: float | None, tile: int = 256, *, pyramid: bool = True
) -> Path:
    """A tiled deflate pyramid (the samples.py generic-tiff recipe); mpp None: no resolution."""
    levels = [rgb]
    img = Image.fromarray(rgb)
    while pyramid and max(img.size) > tile:
        img = img.reduce(2)
        levels.append(np.asarray(img))
    with tifffile.TiffWriter(path) as tif:
        for i, level in enumerate(levels):
            extra = {}
            if mpp is not None:
                res = 1e4 / mpp / 2**i
                extra = {"resolution": (res, res), "resolutionunit": "CENTIMETER"}
            tif.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                compressionargs={"level": 1},
                metadata=None,
                subfiletype=1 if i else 0,
                **extra,
            )
    return path


def _glass(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-3, 4, (height, width, 1), dtype=np.int16)
    arr = np.clip(np.array(GLASS, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _draw_tissue(img: Image.Image, box: tuple[int, int, int, int], seed: int = 0) -> None:
    """A pink ellipse with purple nuclei inside `box`."""
    draw = ImageDraw.Draw(img)
    draw.ellipse(box, fill=EOSIN)
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    for _ in range(int(rx * ry / 400)):
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        if ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 0.9:
            draw.ellipse((x - 8, y - 6, x + 8, y + 6), fill=NUCLEUS)


def _pen_rgb() -> np.ndarray:
    img = _glass(PEN_W, PEN_H)
    _draw_tissue(img, TISSUE_BOX)
    draw = ImageDraw.Draw(img)
    draw.rectangle((150, STROKE_ROWS[0] + 20, 2950, STROKE_ROWS[1] - 20), fill=PEN_BLUE)
    # anti-aliased, paler fringe like a real scanned marker edge
    draw.rectangle((150, STROKE_ROWS[0], 2950, STROKE_ROWS[0] + 19), fill=(140, 160, 215))
    draw.rectangle((150, STROKE_ROWS[1] - 19, 2950, STROKE_ROWS[1]), fill=(140, 160, 215))
    draw.ellipse((2300, 300, 2700, 700), fill=(25, 25, 30))  # black marker / debris
    draw.ellipse((2200, 1700, 2500, 1950), fill=PEN_GREEN)
    return np.asarray(img)


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("slides")
    tiny_rgb = _glass(2048, 1536)
    ImageDraw.Draw(tiny_rgb).ellipse((940, 640, 1060, 760), fill=EOSIN)  # a 120 px speck
    nompp = _glass(3072, 2048)
    _draw_tissue(nompp, (600, 300, 2400, 1700))
    return {
        "generic": samples.write_synthetic_slide(d / "generic.tiff", mpp=0.25),
        "aperio": samples.write_synthetic_slide(d / "aperio.svs", flavour="aperio", seed=3),
        "small": samples.write_synthetic_slide(d / "small.tiff", width=512, height=384, seed=1),
        "pen": _write_pyramid(d / "pen.tiff", _pen_rgb(), mpp=0.5),
        "flat": _write_pyramid(d / "flat.tiff", _pen_rgb(), mpp=0.5, pyramid=False),
        "nompp": _write_pyramid(d / "nompp.tiff", np.asarray(nompp), mpp=None),
        "tiny": _write_pyramid(d / "tiny.tiff", np.asarray(tiny_rgb), mpp=0.25),
        "blank": _write_pyramid(d / "blank.tiff", np.asarray(_glass(2048, 1536)), mpp=0.25),
    }


# --------------------------------------------------------------------------- helpers


def _saturated_share(img: Image.Image) -> float:
    """Share of pixels a simple HSV rule calls stained (saturation > 0.1, not near-white)."""
    arr = np.asarray(img).astype(np.int16)
    maxc, minc = arr.max(axis=2), arr.min(axis=2)
    return float(np.mean((maxc - minc) > 0.1 * np.maximum(maxc, 1)))


def _overlap(a: Region, b: Region) -> bool:
    return (
        a.x < b.x + b.width
        and b.x < a.x + a.width
        and a.y < b.y + b.height
        and b.y < a.y + a.height
    )


def _inside(r: Region, bounds: tuple[int, int, int, int]) -> bool:
    bx, by, bw, bh = bounds
    return bx <= r.x and by <= r.y and r.x + r.width <= bx + bw and r.y + r.height <= by + bh


# --------------------------------------------------------------------------- settings


def test_settings_defaults_round_trip():
    s = PatchSettings()
    assert (s.target_mpp, s.patch_size, s.max_patches, s.min_tissue) == (1.0, 896, 125, 0.25)
    assert s.mask_level_max_side == 2048
    assert PatchSettings.from_dict(None) == s
    assert PatchSettings.from_dict({}) == s
    assert PatchSettings.from_dict(s.as_dict()) == s
    custom = PatchSettings.from_dict({"patch_size": 448.0, "target_mpp": 2, "max_patches": 16})
    assert custom.patch_size == 448 and isinstance(custom.patch_size, int)
    assert custom.target_mpp == 2.0 and isinstance(custom.target_mpp, float)
    assert json.loads(json.dumps(custom.as_dict())) == custom.as_dict()


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"patch_size": 32}, "patch_size"),
        ({"patch_size": 5000}, "patch_size"),
        ({"patch_size": 100.5}, "patch_size"),
        ({"patch_size": True}, "patch_size"),
        ({"max_patches": 0}, "max_patches"),
        ({"max_patches": 501}, "max_patches"),
        ({"target_mpp": 0}, "target_mpp"),
        ({"target_mpp": -1.0}, "target_mpp"),
        ({"target_mpp": float("nan")}, "target_mpp"),
        ({"target_mpp": "1.0"}, "target_mpp"),
        ({"min_tissue": 0}, "min_tissue"),
        ({"min_tissue": 1.5}, "min_tissue"),
        ({"mask_level_max_side": 0}, "mask_level_max_side"),
        ({"patchsize": 896}, "patchsize"),
    ],
)
def test_settings_reject_bad_values(values, key):
    with pytest.raises(ValueError, match=key):
        PatchSettings.from_dict(values)


def test_settings_reject_non_mapping():
    with pytest.raises(ValueError, match="mapping"):
        PatchSettings.from_dict([("patch_size", 896)])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- tissue mask


def test_tissue_mask_finds_tissue_not_glass(slides):
    with openslide.OpenSlide(slides["generic"]) as slide:
        mask, ds = tissue_mask(slide, max_side=2048)
    assert mask.dtype == bool and mask.shape == (1536, 2048) and ds == 2.0
    assert 0.1 < mask.mean() < 0.6
    # samples.py keeps 8 % of every side blank glass
    band = int(0.07 * 1536)
    assert not mask[:band].any() and not mask[-band:].any()
    assert not mask[:, :band].any() and not mask[:, -band:].any()


def test_tissue_mask_drops_pen_and_dark_marks(slides):
    with openslide.OpenSlide(slides["pen"]) as slide:
        mask, ds = tissue_mask(slide, max_side=1024)
    assert ds == 4.0  # level 2 (768 x 512) is the most detailed that fits 1024
    rows = slice(round(STROKE_ROWS[0] / ds), round(STROKE_ROWS[1] / ds))
    assert not mask[rows].any()  # the stroke, also where it crosses tissue
    assert not mask[:, round(1500 / ds) :].any()  # glass, black blob, green dot
    assert mask[round(600 / ds) : round(1200 / ds), round(500 / ds) : round(1100 / ds)].mean() > 0.9


def test_tissue_mask_of_a_level_too_big_is_read_in_chunks(slides, monkeypatch):
    monkeypatch.setattr(patches, "_MASK_CHUNK", 1000)  # 3072 x 2048 level 0: 4 x 3 chunks
    with openslide.OpenSlide(slides["flat"]) as slide:
        assert slide.level_count == 1
        mask, ds = tissue_mask(slide, max_side=768)
    with openslide.OpenSlide(slides["pen"]) as slide:
        reference, ref_ds = tissue_mask(slide, max_side=768)  # level 2: 768 x 512
    assert mask.shape == reference.shape == (512, 768) and ds == ref_ds == 4.0
    assert (mask & reference).sum() / (mask | reference).sum() > 0.95


# --------------------------------------------------------------------------- planning


def test_patches_lie_on_tissue_inside_the_slide(slides):
    plan = plan_patches(slides["generic"], FAST)
    assert isinstance(plan, PatchPlan) and len(plan.regions) >= 8
    assert plan.level == 2 and plan.mpp == pytest.approx(1.0)
    for a, b in itertools.combinations(plan.regions, 2):
        assert not _overlap(a, b)
    images = read_patches(slides["generic"], plan)
    assert len(images) == len(plan.regions)
    for region, img in zip(plan.regions, images, strict=True):
        assert _inside(region, (0, 0, 4096, 3072))
        assert (region.width, region.height, region.read_size, region.size) == (512, 512, 128, 128)
        assert region.tissue >= FAST.min_tissue
        assert img.mode == "RGB" and img.size == (128, 128)
        share = _saturated_share(img)
        assert share >= 0.2 and abs(share - region.tissue) < 0.2
        assert np.asarray(img).mean() < 235  # not blank glass
    # reading order: top to bottom, then left to right
    assert [(r.y, r.x) for r in plan.regions] == sorted((r.y, r.x) for r in plan.regions)
    json.dumps(plan.as_dict())  # stored with the draft


@pytest.mark.parametrize(
    ("target", "level", "read_size", "extent"),
    [(1.0, 2, 128, 512), (0.75, 1, 192, 384), (2.0, 3, 128, 1024), (0.5, 1, 128, 256)],
)
def test_level_and_read_size_follow_target_mpp(slides, target, level, read_size, extent):
    plan = plan_patches(slides["generic"], PatchSettings(patch_size=128, target_mpp=target))
    assert plan.level == level and plan.mpp == pytest.approx(target)
    assert plan.regions
    for r in plan.regions:
        assert (r.level, r.read_size, r.width, r.size) == (level, read_size, extent, 128)
        assert r.mpp == pytest.approx(target)


def test_target_finer_than_the_scan_reads_native_pixels_and_says_so(slides):
    plan = plan_patches(slides["generic"], PatchSettings(patch_size=128, target_mpp=0.2))
    assert plan.level == 0 and plan.mpp == pytest.approx(0.25)  # the scan's own, not 0.2
    assert "coarser than the target (0.25 µm/px): read at its native resolution" in plan.note
    assert plan.regions
    for r in plan.regions:  # never upsampled: 128 native pixels per 128-pixel patch
        assert (r.level, r.read_size, r.size, r.width, r.mpp) == (0, 128, 128, 128, 0.25)
    img = read_patches(slides["generic"], PatchPlan(plan.regions[:1], 0, plan.mpp, ""))[0]
    assert img.size == (128, 128)


def test_a_coarse_scan_is_covered_by_native_patches(tmp_path):
    rgb = _glass(1024, 768)
    _draw_tissue(rgb, (100, 100, 900, 700))
    path = _write_pyramid(tmp_path / "coarse.tiff", np.asarray(rgb), mpp=2.0)
    plan = plan_patches(path, PatchSettings(patch_size=128, target_mpp=0.5))
    assert plan.level == 0 and plan.mpp == pytest.approx(2.0)
    assert "read at its native resolution" in plan.note and len(plan.regions) >= 8
    for r in plan.regions:
        assert r.read_size == r.size == r.width == 128 and r.level == 0


def test_max_patches_is_honoured_deterministic_and_spread(slides):
    small = PatchSettings(patch_size=64, max_patches=8)
    every = plan_patches(slides["generic"], PatchSettings(patch_size=64, max_patches=500))
    plan = plan_patches(slides["generic"], small)
    assert len(every.regions) > 3 * 8
    assert len(plan.regions) == 8 and "8 of" in plan.note
    assert plan_patches(slides["generic"], small) == plan
    assert set(plan.regions) <= set(every.regions)
    for axis in ("x", "y"):
        full = [getattr(r, axis) for r in every.regions]
        chosen = [getattr(r, axis) for r in plan.regions]
        assert max(chosen) - min(chosen) >= 0.5 * (max(full) - min(full))


def test_pen_marks_black_blobs_and_blank_glass_get_no_patches(slides):
    plan = plan_patches(slides["pen"], FAST)  # 0.5 µm/px slide: level 1, 256 level-0 px
    assert len(plan.regions) >= 8
    for r in plan.regions:
        assert r.x + r.width / 2 < 1500  # nothing on the glass half
        assert r.y + r.height <= STROKE_ROWS[0] or r.y >= STROKE_ROWS[1]  # off the stroke
    for img in read_patches(slides["pen"], plan):
        arr = np.asarray(img).astype(np.int16)
        blue = (arr[..., 2] > arr[..., 0] + 60) & (arr[..., 2] > arr[..., 1] + 40)
        assert blue.mean() < 0.005
    # tissue below the stroke is still used
    assert any(r.y >= STROKE_ROWS[1] for r in plan.regions)


def test_threaded_reading_and_icc_profiles(slides, monkeypatch):
    plan = plan_patches(slides["generic"], FAST)
    plain = read_patches(slides["generic"], plan)
    threaded = read_patches(slides["generic"], plan, workers=2)
    assert [img.tobytes() for img in threaded] == [img.tobytes() for img in plain]

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    monkeypatch.setattr(openslide.OpenSlide, "color_profile", property(lambda self: srgb))
    tagged = read_patches(slides["generic"], plan)
    for a, b in zip(tagged, plain, strict=True):  # sRGB -> sRGB: (almost) unchanged
        diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
        assert a.mode == "RGB" and diff.max() <= 2


def test_slide_without_mpp_plans_with_a_note(slides):
    plan = plan_patches(slides["nompp"], FAST)
    assert plan.note.startswith("microns per pixel unknown:")
    assert plan.mpp is None and plan.level == 2  # assumed 0.25 µm/px: 4x downsample
    assert plan.regions and all(r.mpp is None and r.width == 512 for r in plan.regions)


def test_label_and_macro_are_never_read(slides, monkeypatch):
    def forbidden(self):
        raise AssertionError("associated images (label/macro) must never be read")

    monkeypatch.setattr(openslide.OpenSlide, "associated_images", property(forbidden))
    plan = plan_patches(slides["aperio"], PatchSettings(patch_size=128, min_tissue=0.05))
    images = read_patches(slides["aperio"], plan)
    assert images
    for img in images:
        arr = np.asarray(img).astype(np.int16)
        for colour in (samples.LABEL_RGB, samples.MACRO_RGB):
            assert not (np.abs(arr - np.array(colour)).max(axis=2) < 40).any()


def test_slide_smaller_than_one_patch_gets_one_covering_patch(slides):
    plan = plan_patches(slides["small"], PatchSettings())  # 896 px at 1 µm/px: 3584 level-0 px
    assert len(plan.regions) == 1 and "smaller than one patch" in plan.note
    r = plan.regions[0]
    # its own 512 native pixels, not blown up (or padded) to 896
    assert (r.x, r.y, r.width, r.height, r.level, r.read_size, r.size) == (
        0,
        0,
        512,
        512,
        0,
        512,
        512,
    )
    assert plan.level == 0 and r.mpp == plan.mpp == pytest.approx(0.25)
    img = read_patches(slides["small"], plan)[0]
    assert img.size == (512, 512)
    assert np.asarray(img)[400:].min() == 255  # beyond the slide (384 rows): padded white
    assert _saturated_share(img.crop((128, 96, 384, 288))) > 0.05  # the slide itself


@pytest.mark.parametrize("mpp", [0.25, 2.0, None])
def test_a_300_by_200_slide_is_one_native_patch(tmp_path, mpp):
    rgb = _glass(300, 200)
    _draw_tissue(rgb, (50, 40, 250, 160))
    path = _write_pyramid(tmp_path / "mini.tiff", np.asarray(rgb), mpp=mpp, tile=128)
    (r,) = plan_patches(path, PatchSettings()).regions
    assert (r.level, r.read_size, r.size, r.width) == (0, 300, 300, 300)
    assert r.mpp == mpp
    (img,) = read_patches(path, PatchPlan([r], 0, r.mpp, ""))
    assert img.size == (300, 300)


def test_a_slide_a_little_bigger_than_a_patch_is_shrunk_never_enlarged(tmp_path):
    rgb = _glass(1200, 600)
    _draw_tissue(rgb, (100, 100, 1100, 500))
    path = _write_pyramid(tmp_path / "wide.tiff", np.asarray(rgb), mpp=0.25)
    # 256 px at 1 µm/px is 1024 level-0 px: the 1200-px slide is two patches wide
    for settings in (PatchSettings(patch_size=256), PatchSettings(patch_size=896)):
        plan = plan_patches(path, settings)
        assert plan.regions
        for r in plan.regions:
            assert r.read_size >= r.size <= settings.patch_size


def test_tiny_biopsy_falls_back_to_the_best_patch(slides):
    plan = plan_patches(slides["tiny"], FAST)
    assert 1 <= len(plan.regions) <= 4 and "little tissue" in plan.note
    assert any(r.x <= 1000 < r.x + r.width and r.y <= 700 < r.y + r.height for r in plan.regions)


def test_blank_slide_gets_no_patches(slides):
    plan = plan_patches(slides["blank"], FAST)
    assert plan.regions == [] and "no tissue" in plan.note
    assert read_patches(slides["blank"], plan) == []


def test_bounds_are_respected(slides, monkeypatch):
    bounds = (1024, 512, 2048, 2048)

    class Bounded(openslide.OpenSlide):
        @property
        def properties(self):
            extra = dict(zip(("x", "y", "width", "height"), map(str, bounds), strict=True))
            return {**super().properties, **{f"openslide.bounds-{k}": v for k, v in extra.items()}}

    monkeypatch.setattr(openslide, "OpenSlide", Bounded)
    plan = plan_patches(slides["generic"], FAST)
    assert plan.regions
    assert all(_inside(r, bounds) for r in plan.regions)


def test_planning_is_fast(slides):
    plan_patches(slides["generic"], PatchSettings())  # warm caches and imports
    started = time.perf_counter()
    plan_patches(slides["generic"], PatchSettings())
    assert time.perf_counter() - started < 2.0  # ~0.2 s measured; generous for busy CI


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_corrupt_slide_is_rejected(tmp_path, how):
    path = samples.write_corrupt_slide(tmp_path / f"{how}.svs", how=how)
    with pytest.raises(ImageRejected, match="unreadable slide"):
        plan_patches(path, FAST)


def test_reading_a_corrupt_slide_is_rejected(tmp_path):
    path = samples.write_corrupt_slide(tmp_path / "garbage.svs", how="garbage")
    region = Region(
        x=0, y=0, width=256, height=256, level=0, read_size=256, size=128, mpp=None, tissue=1.0
    )
    with pytest.raises(ImageRejected, match="unreadable slide"):
        read_patches(path, PatchPlan([region], 0, None, ""))


def test_missing_file_and_photo_are_rejected(tmp_path):
    with pytest.raises(ImageRejected, match="missing"):
        plan_patches(tmp_path / "gone.svs", FAST)
    photo = samples.write_derm_photo(tmp_path / "skin.png", fmt="PNG")
    with pytest.raises(ImageRejected, match="not a whole-slide image"):
        plan_patches(photo, FAST)


def test_absurd_settings_for_the_slide_raise(slides, monkeypatch):
    monkeypatch.setattr(patches, "_MAX_CANDIDATES", 10)
    with pytest.raises(ValueError, match="candidate patches"):
        plan_patches(slides["generic"], PatchSettings(patch_size=64))
