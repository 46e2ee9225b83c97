"""Tests for annotations.imaging and annotations.samples (pure: no Django, no database)."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image, ImageCms, ImageFile

import imaging
import imaging.pixels
from imaging import ImageInfo, ImageRejected, samples

SLIDE_SIZE = (1536, 1024)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slides")


@pytest.fixture(scope="module")
def generic_slide(slide_dir: Path) -> Path:
    w, h = SLIDE_SIZE
    return samples.write_synthetic_slide(
        slide_dir / "generic.tiff", width=w, height=h, mpp=0.25, flavour="generic-tiff"
    )


@pytest.fixture(scope="module")
def aperio_slide(slide_dir: Path) -> Path:
    w, h = SLIDE_SIZE
    return samples.write_synthetic_slide(
        slide_dir / "aperio.svs", width=w, height=h, mpp=0.5, flavour="aperio", seed=3
    )


@pytest.fixture
def media_root(tmp_path: Path) -> Path:
    # not "media": the project conftest's autouse fixture already uses tmp_path/"media"
    root = tmp_path / "imaging-media"
    root.mkdir()
    return root


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- samples


@pytest.mark.parametrize("flavour", ["generic-tiff", "aperio"])
def test_synthetic_slide_is_a_native_openslide_pyramid(tmp_path: Path, flavour: str) -> None:
    path = samples.write_synthetic_slide(
        tmp_path / "s.svs", width=1024, height=768, mpp=0.3, flavour=flavour
    )
    assert openslide.OpenSlide.detect_format(path) == flavour
    with openslide.OpenSlide(path) as slide:
        assert slide.dimensions == (1024, 768)
        assert slide.level_count >= 3
        assert slide.level_downsamples[1] == pytest.approx(2.0)
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.3, rel=1e-3)
        assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.3, rel=1e-3)
        low = slide.read_region((0, 0), slide.level_count - 1, slide.level_dimensions[-1])
        arr = np.asarray(low.convert("RGB"), dtype=np.int16)
    # tissue (pink: red clearly above green) and blank glass (near white) both present
    pink = (arr[..., 0] - arr[..., 1]) > 40
    glass = arr.min(axis=2) > 225
    assert 0.05 < pink.mean() < 0.8
    assert glass.mean() > 0.15


def test_synthetic_slide_is_deterministic(tmp_path: Path) -> None:
    a = samples.write_synthetic_slide(tmp_path / "a.tiff", width=512, height=384, seed=7)
    b = samples.write_synthetic_slide(tmp_path / "b.tiff", width=512, height=384, seed=7)
    c = samples.write_synthetic_slide(tmp_path / "c.tiff", width=512, height=384, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_aperio_sample_has_label_and_macro(aperio_slide: Path) -> None:
    # guards the label test below: the distinctive colours really are in the file
    with openslide.OpenSlide(aperio_slide) as slide:
        assert {"label", "macro"} <= set(slide.associated_images)
        assert slide.associated_images["label"].getpixel((2, 2))[:3] == samples.LABEL_RGB
        assert slide.associated_images["macro"].getpixel((2, 2))[:3] == samples.MACRO_RGB


# --------------------------------------------------------------------------- inspect


def test_inspect_generic_tiff_slide(generic_slide: Path) -> None:
    info = imaging.inspect_image(generic_slide)
    assert info.kind == "slide"
    assert info.format == "tiff"
    assert info.vendor == "generic-tiff"
    assert (info.width, info.height) == SLIDE_SIZE
    assert info.levels >= 3
    assert info.mpp_x == pytest.approx(0.25, rel=1e-3)
    assert info.mpp_y == pytest.approx(0.25, rel=1e-3)


def test_inspect_aperio_slide(aperio_slide: Path) -> None:
    info = imaging.inspect_image(aperio_slide)
    assert info == ImageInfo(
        kind="slide",
        format="svs",
        width=SLIDE_SIZE[0],
        height=SLIDE_SIZE[1],
        levels=info.levels,
        mpp_x=pytest.approx(0.5),
        mpp_y=pytest.approx(0.5),
        vendor="aperio",
        objective_power=20.0,  # AppMag
        level_dimensions=info.level_dimensions,
    )
    assert info.levels >= 3 and len(info.level_dimensions) == info.levels
    assert info.level_dimensions[0] == SLIDE_SIZE
    assert imaging.suffix_for(info, "case 12.SVS") == ".svs"
    assert imaging.suffix_for(info, "case.tif") == ".tif"
    assert imaging.suffix_for(info, "case.jpg") == ".svs"


@pytest.mark.parametrize(("fmt", "suffix"), [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp")])
def test_inspect_derm_photo(tmp_path: Path, fmt: str, suffix: str) -> None:
    path = samples.write_derm_photo(tmp_path / f"derm{suffix}", size=(640, 480), fmt=fmt)
    info = imaging.inspect_image(path)
    assert info.kind == "photo"
    assert info.format == fmt.lower()
    assert (info.width, info.height, info.levels) == (640, 480, 1)
    assert info.mpp_x is None and info.mpp_y is None
    assert imaging.suffix_for(info, f"lesion{suffix.upper()}") == suffix


def test_content_wins_over_extension(tmp_path: Path) -> None:
    path = samples.write_derm_photo(tmp_path / "really_a_jpeg.svs", size=(320, 240))
    info = imaging.inspect_image(path)
    assert (info.kind, info.format) == ("photo", "jpeg")
    assert imaging.suffix_for(info, "really_a_jpeg.svs") == ".jpg"
    assert imaging.suffix_for(info, "x.JPEG") == ".jpeg"


@pytest.mark.parametrize("orientation", [6, 8, 5, 7])
def test_exif_rotated_photo_reports_swapped_size(tmp_path: Path, orientation: int) -> None:
    path = samples.write_derm_photo(tmp_path / "rot.jpg", size=(400, 300), orientation=orientation)
    info = imaging.inspect_image(path)
    assert (info.width, info.height) == (300, 400)
    preview = imaging.render_preview(path, info, max_size=200)
    assert preview.size == (150, 200)


def test_exif_upright_orientation_keeps_size(tmp_path: Path) -> None:
    path = samples.write_derm_photo(tmp_path / "up.jpg", size=(400, 300), orientation=3)
    info = imaging.inspect_image(path)
    assert (info.width, info.height) == (400, 300)


def test_plain_small_tiff_is_a_photo(tmp_path: Path) -> None:
    path = tmp_path / "scan.tiff"
    Image.new("RGB", (300, 200), (200, 100, 50)).save(path)
    info = imaging.inspect_image(path)
    assert (info.kind, info.format, info.levels) == ("photo", "tiff", 1)
    assert imaging.suffix_for(info, "scan.TIF") == ".tif"


def test_small_single_level_tiled_tiff_is_a_photo(tmp_path: Path) -> None:
    path = tmp_path / "tiled.tiff"
    rgb = np.zeros((300, 400, 3), dtype=np.uint8)
    tifffile.imwrite(path, rgb, tile=(128, 128), photometric="rgb", compression="zlib")
    assert openslide.OpenSlide.detect_format(path) == "generic-tiff"
    info = imaging.inspect_image(path)
    assert (info.kind, info.format, info.width, info.height) == ("photo", "tiff", 400, 300)


def test_16bit_greyscale_png_is_a_photo(tmp_path: Path) -> None:
    path = samples.write_xray_png(tmp_path / "cxr.png")
    info = imaging.inspect_image(path)
    assert (info.kind, info.format, info.width, info.height) == ("photo", "png", 512, 640)


def _rejection(path: Path) -> str:
    with pytest.raises(ImageRejected) as excinfo:
        imaging.inspect_image(path)
    message = str(excinfo.value)
    assert message == excinfo.value.message
    assert path.name not in message and str(path.parent) not in message
    return message


def test_reject_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.svs"
    path.touch()
    assert _rejection(path) == "not an image: the file is empty"


def test_reject_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("Patient: Jane Doe\nsecret text\n")
    message = _rejection(path)
    assert message.startswith("not an image: unrecognised content")
    assert "Jane" not in message


def test_reject_html_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "<img src=x onerror=alert(1)>.jpg"
    path.write_text("<!doctype html><html><body><script>alert(1)</script></body></html>")
    message = _rejection(path)
    assert message.startswith("not an image: unrecognised content")
    assert "<" not in message


def test_reject_truncated_jpeg(tmp_path: Path) -> None:
    path = samples.write_truncated_jpeg(tmp_path / "cut.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert _rejection(path).startswith("truncated image:")


def test_reject_truncated_png(tmp_path: Path) -> None:
    full = samples.write_derm_photo(tmp_path / "full.png", size=(300, 200), fmt="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    message = _rejection(path)
    assert message.startswith(("truncated image:", "corrupt image:"))


def test_reject_corrupt_slide_tiles(tmp_path: Path) -> None:
    path = samples.write_corrupt_slide(tmp_path / "broken.svs", how="garbage")
    assert openslide.OpenSlide.detect_format(path) == "aperio"  # header still says Aperio
    message = _rejection(path)
    assert message.startswith("unreadable slide: its pixel data is damaged")


def test_reject_truncated_slide(tmp_path: Path) -> None:
    path = samples.write_corrupt_slide(tmp_path / "cut.svs", how="truncated")
    assert _rejection(path).startswith("unreadable slide:")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@pytest.mark.parametrize("keep", [0.2, 0.6, 0.95])
def test_reject_truncated_generic_tiff(generic_slide: Path, tmp_path: Path, keep: float) -> None:
    data = generic_slide.read_bytes()
    path = tmp_path / "cut.tiff"
    path.write_bytes(data[: int(len(data) * keep)])
    assert _rejection(path).startswith(("truncated image:", "unreadable slide:"))


def test_reject_non_wsi_dicom(tmp_path: Path) -> None:
    path = tmp_path / "cxr.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + b"\0" * 64)
    assert _rejection(path) == "DICOM files other than whole-slide images are not supported yet"


def test_reject_photo_over_pixel_limit(tmp_path: Path) -> None:
    path = samples.write_derm_photo(tmp_path / "big.png", size=(400, 300), fmt="PNG")
    with pytest.raises(ImageRejected, match=r"^image too large: .* at most 0 megapixels"):
        imaging.inspect_image(path, max_photo_pixels=100_000)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_reject_decompression_bomb_header(tmp_path: Path) -> None:
    # a 60000 x 60000 PNG (3.6 gigapixels) in a few bytes: must fail before any decoding
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    path = tmp_path / "bomb.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )
    message = _rejection(path)
    assert message.startswith("image too large: photos may have at most 179 megapixels")


# --------------------------------------------------------------------------- storage


def test_store_same_content_twice_same_path(tmp_path: Path, media_root: Path) -> None:
    photo = samples.write_derm_photo(tmp_path / "d.jpg", size=(320, 240))
    sha = hashlib.sha256(photo.read_bytes()).hexdigest()

    first = imaging.store_file(photo, media_root, suffix=".jpg")
    assert first.sha256 == sha and first.size == photo.stat().st_size
    assert first.temp_path.parent == media_root / "tmp"
    info = imaging.inspect_image(first.temp_path)
    rel1 = imaging.finalise_file(first, media_root, imaging.suffix_for(info, "d.jpg"))
    assert rel1 == f"images/{sha[:2]}/{sha[2:4]}/{sha}.jpg"

    with photo.open("rb") as fh:  # a file object this time, and a different spelling
        second = imaging.store_file(fh, media_root, suffix=".JPEG")
    rel2 = imaging.finalise_file(second, media_root, ".jpeg")
    assert rel2 == rel1
    assert not second.temp_path.exists()
    assert list((media_root / "tmp").iterdir()) == []
    assert all_files(media_root) == [media_root / rel1]
    assert (media_root / rel1).read_bytes() == photo.read_bytes()


def test_staged_upload_commit(tmp_path: Path, media_root: Path, generic_slide: Path) -> None:
    with (
        generic_slide.open("rb") as fh,
        imaging.staged_upload(fh, media_root, suffix=".tiff") as staged,
    ):
        assert staged.temp_path.suffix == ".tiff"
        info = imaging.inspect_image(staged.temp_path)
        rel = staged.commit(imaging.suffix_for(info, "slide.tiff"))
        assert staged.created
        assert staged.commit(".tiff") == rel  # idempotent
    assert all_files(media_root) == [media_root / rel]
    assert imaging.inspect_image(media_root / rel) == info


def test_staged_upload_rejected_leaves_nothing(tmp_path: Path, media_root: Path) -> None:
    upload = io.BytesIO(b"<html>not an image</html>")
    with pytest.raises(ImageRejected):
        with imaging.staged_upload(upload, media_root, suffix=".jpg") as staged:
            imaging.inspect_image(staged.temp_path)
    assert all_files(media_root) == []


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_rejected_slide_leaves_nothing(tmp_path: Path, media_root: Path, how: str) -> None:
    bad = samples.write_corrupt_slide(tmp_path / "bad.svs", how=how)
    with pytest.raises(ImageRejected):
        with imaging.staged_upload(bad, media_root, suffix=".svs") as staged:
            imaging.inspect_image(staged.temp_path)
            staged.commit(".svs")
    assert all_files(media_root) == []


def test_staged_upload_without_commit_removes_temp(media_root: Path) -> None:
    with imaging.staged_upload(io.BytesIO(b"abc"), media_root) as staged:
        assert staged.temp_path.exists()
    assert all_files(media_root) == []


def test_undo_commit_only_removes_files_it_created(tmp_path: Path, media_root: Path) -> None:
    photo = samples.write_derm_photo(tmp_path / "d.png", size=(100, 80), fmt="PNG")
    with imaging.staged_upload(photo, media_root, suffix=".png") as staged:
        rel = staged.commit(".png")
        staged.undo_commit()  # e.g. the DB transaction failed
    assert all_files(media_root) == []

    with imaging.staged_upload(photo, media_root, suffix=".png") as first:
        rel = first.commit(".png")
    with imaging.staged_upload(photo, media_root, suffix=".png") as again:
        assert again.commit(".png") == rel
        assert not again.created
        again.undo_commit()  # the file pre-existed: it must survive
    assert all_files(media_root) == [media_root / rel]


def test_size_limit_rejects_and_cleans_up(media_root: Path) -> None:
    upload = io.BytesIO(b"x" * (3 * 1024 * 1024))
    with pytest.raises(ImageRejected, match="file too large"):
        imaging.store_file(upload, media_root, max_bytes=2 * 1024 * 1024)
    assert all_files(media_root) == []


def test_unsafe_suffixes_are_refused(media_root: Path) -> None:
    stored = imaging.store_file(io.BytesIO(b"abc"), media_root, suffix="./../x")
    assert stored.temp_path.parent == media_root / "tmp"
    with pytest.raises(ValueError):
        imaging.finalise_file(stored, media_root, "/../../etc")
    imaging.discard(stored)
    assert imaging.safe_suffix("<img src=x>.jpg") == ".jpg"
    assert imaging.safe_suffix("a.j<p>g") == ""
    assert all_files(media_root) == []


def test_sweep_tmp_removes_stale_uploads(media_root: Path) -> None:
    stored = imaging.store_file(io.BytesIO(b"abc"), media_root)
    assert imaging.sweep_tmp(media_root, older_than_s=3600) == 0
    assert imaging.sweep_tmp(media_root, older_than_s=-1) == 1
    assert not stored.temp_path.exists()


# --------------------------------------------------------------------------- pixels


def test_slide_preview(generic_slide: Path) -> None:
    info = imaging.inspect_image(generic_slide)
    preview = imaging.render_preview(generic_slide, info, max_size=512)
    assert preview.mode == "RGB"
    assert max(preview.size) == 512
    assert preview.size == (512, 341)


def test_chunked_overview_matches_single_read(
    generic_slide: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = imaging.inspect_image(generic_slide)
    whole = np.asarray(imaging.render_preview(generic_slide, info, max_size=700), dtype=float)
    # pretend memory is tight: the level is then read in 256-px chunks
    monkeypatch.setattr(imaging.pixels, "_OVERVIEW_CHUNK", 256)
    monkeypatch.setattr(imaging.pixels, "_OVERVIEW_READ_PIXELS", 256 * 256)
    chunked = np.asarray(imaging.render_preview(generic_slide, info, max_size=700), dtype=float)
    assert chunked.shape == whole.shape
    assert np.abs(chunked - whole).mean() < 2.0


def test_aperio_preview_never_shows_label_or_macro(aperio_slide: Path) -> None:
    info = imaging.inspect_image(aperio_slide)
    for max_size in (64, 300, 1024, 4096):
        preview = imaging.render_preview(aperio_slide, info, max_size=max_size)
        arr = np.asarray(preview, dtype=np.int16)
        r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
        assert not ((g - np.maximum(r, b)) > 100).any(), "label green leaked into preview"
        assert not ((b - np.maximum(r, g)) > 150).any(), "macro blue leaked into preview"
    model = np.asarray(imaging.load_for_model(aperio_slide, info, size=256), dtype=np.int16)
    assert not ((model[..., 1] - np.maximum(model[..., 0], model[..., 2])) > 100).any()


def test_photo_preview_bounded_rgb(tmp_path: Path) -> None:
    path = samples.write_derm_photo(tmp_path / "d.jpg", size=(1200, 900))
    info = imaging.inspect_image(path)
    preview = imaging.render_preview(path, info, max_size=256)
    assert preview.mode == "RGB" and max(preview.size) <= 256
    small = imaging.render_preview(path, info, max_size=4096)
    assert small.size == (1200, 900)  # never upscaled


def test_16bit_greyscale_preview_not_clipped(tmp_path: Path) -> None:
    path = samples.write_xray_png(tmp_path / "cxr.png", bits=12)
    raw = np.asarray(Image.open(path))
    assert raw.max() < 4096  # 12-bit values: a naive 16->8 bit conversion would clip
    info = imaging.inspect_image(path)
    preview = imaging.render_preview(path, info, max_size=256)
    arr = np.asarray(preview)
    assert preview.mode == "RGB" and max(preview.size) <= 256
    assert (arr == 255).mean() < 0.05
    assert arr.max() > 200 and arr.min() < 60  # full range used
    assert np.unique(arr[..., 0]).size > 64  # real gradation, not a few clipped levels


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "I"])
def test_preview_handles_modes(tmp_path: Path, mode: str) -> None:
    base = Image.open(samples.write_derm_photo(tmp_path / "d.png", size=(120, 90), fmt="PNG"))
    img = base.convert("I") if mode == "I" else base.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode == "I" else "PNG"
    path = tmp_path / f"m.{fmt.lower()}"
    img.save(path, format=fmt)
    info = imaging.inspect_image(path)
    preview = imaging.render_preview(path, info, max_size=64)
    assert preview.mode == "RGB" and max(preview.size) == 64
    assert np.asarray(preview).std() > 1  # not a blank image


def test_icc_profile_is_converted_to_srgb(tmp_path: Path) -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = tmp_path / "tagged.jpg"
    Image.new("RGB", (64, 48), (200, 120, 90)).save(path, icc_profile=srgb, quality=95)
    info = imaging.inspect_image(path)
    px = imaging.render_preview(path, info).getpixel((10, 10))
    assert all(abs(a - b) <= 4 for a, b in zip(px, (200, 120, 90), strict=True))

    broken = tmp_path / "broken_icc.png"
    Image.new("RGB", (64, 48), (10, 20, 30)).save(broken, icc_profile=b"not a profile")
    info = imaging.inspect_image(broken)
    assert imaging.render_preview(broken, info).getpixel((0, 0)) == (10, 20, 30)


@pytest.mark.parametrize("size", [896, 224])
def test_load_for_model_photo_is_square(tmp_path: Path, size: int) -> None:
    path = samples.write_derm_photo(tmp_path / "d.jpg", size=(800, 600), orientation=6)
    info = imaging.inspect_image(path)
    img = imaging.load_for_model(path, info, size=size)
    assert img.mode == "RGB" and img.size == (size, size)
    # portrait after rotation: padding left and right, neutral colour
    assert img.getpixel((0, size // 2)) == (128, 128, 128)
    assert img.getpixel((size // 2, 0)) != (128, 128, 128)


def test_load_for_model_greyscale_pads_black(tmp_path: Path) -> None:
    path = samples.write_xray_png(tmp_path / "cxr.png", size=(400, 500))
    info = imaging.inspect_image(path)
    img = imaging.load_for_model(path, info, size=128)
    assert img.size == (128, 128) and img.mode == "RGB"
    assert img.getpixel((0, 64)) == (0, 0, 0)


def test_load_for_model_slide_is_square_on_white(generic_slide: Path) -> None:
    info = imaging.inspect_image(generic_slide)
    img = imaging.load_for_model(generic_slide, info, size=896)
    assert img.mode == "RGB" and img.size == (896, 896)
    assert img.getpixel((448, 0)) == (255, 255, 255)  # landscape slide: padded top and bottom
    tiny = samples.write_synthetic_slide(
        generic_slide.parent / "tiny.tiff", width=256, height=192, tile=64
    )
    tiny_info = imaging.inspect_image(tiny)
    assert tiny_info.kind == "slide"
    assert imaging.load_for_model(tiny, tiny_info, size=512).size == (512, 512)


def test_pixels_of_missing_or_damaged_files_raise_image_rejected(
    tmp_path: Path, generic_slide: Path
) -> None:
    slide_info = imaging.inspect_image(generic_slide)
    photo = samples.write_derm_photo(tmp_path / "d.jpg", size=(200, 150))
    photo_info = imaging.inspect_image(photo)
    with pytest.raises(ImageRejected, match="^unreadable slide: the stored file is missing"):
        imaging.render_preview(tmp_path / "gone.tiff", slide_info)
    with pytest.raises(ImageRejected, match="^unreadable image: the stored file is missing"):
        imaging.load_for_model(tmp_path / "gone.jpg", photo_info)
    broken = samples.write_corrupt_slide(tmp_path / "broken.svs")
    with pytest.raises(ImageRejected, match="^unreadable slide:"):
        imaging.load_for_model(broken, slide_info, size=128)
    photo.write_bytes(photo.read_bytes()[:300])  # damaged after inspection
    with pytest.raises(ImageRejected, match="^unreadable image:") as excinfo:
        imaging.render_preview(photo, photo_info)
    assert "d.jpg" not in str(excinfo.value)


def test_load_for_model_applies_exif_orientation_before_padding(tmp_path: Path) -> None:
    # Stored landscape 400×300 with orientation 6: upright it is portrait, so the square
    # gets its padding left and right, not above and below.
    path = samples.write_derm_photo(tmp_path / "rot.jpg", size=(400, 300), orientation=6)
    info = imaging.inspect_image(path)
    img = np.asarray(imaging.load_for_model(path, info, size=400), dtype=np.int16)
    left, top = img[200, 5], img[5, 200]
    assert np.abs(left - 128).max() <= 2  # neutral padding
    assert np.abs(top - 128).max() > 10  # skin, not padding
