"""Pixels for people and for the model: previews and model-sized pictures, in sRGB.

No Django. Associated images of slides (label, macro) are never read.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openslide
from PIL import Image, ImageCms, ImageOps

from imaging.inspect import (
    DECODE_ERRORS,
    MAX_OVERVIEW_LEVEL_PIXELS,
    PIL_FORMATS,
    ImageInfo,
    ImageRejected,
    clean_error,
    no_overview_level,
)

_HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_GREY_MODES = _HIGH_BIT_MODES | {"1", "L", "LA", "La"}
_OVERVIEW_CHUNK = 4096
_OVERVIEW_READ_PIXELS = _OVERVIEW_CHUNK**2  # bigger levels are read in chunks to bound memory
_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
_NEUTRAL = (128, 128, 128)
SRGB = ImageCms.createProfile("sRGB")
_SRGB_ICC = ImageCms.ImageCmsProfile(SRGB).tobytes()


# --------------------------------------------------------------------------- pixels


def render_preview(path: Path, info: ImageInfo, max_size: int = 1024) -> Image.Image:
    """An sRGB RGB preview whose longest side is at most `max_size` (never upscaled).

    Slides: the pyramid composited on the slide background (associated images such
    as label/macro are never read: they can show patient names). Photos: EXIF
    orientation applied, ICC profile converted, 16-bit greyscale rescaled.
    A missing or (since inspection) damaged file, or a slide whose smallest level is over
    MAX_OVERVIEW_LEVEL_PIXELS, raises ImageRejected.
    """
    with _reading(path, info):
        if info.kind == "slide":
            with openslide.OpenSlide(path) as slide:
                long_side = min(max_size, max(slide.dimensions))
                return _slide_overview(slide, long_side)
        img, _grey = _load_photo(path, max_size, upscale=False)
        return img


def load_for_model(path: Path, info: ImageInfo, size: int = 896) -> Image.Image:
    """A `size`×`size` sRGB RGB image for the vision-language model.

    Photos: oriented, colour-managed, fitted to the square and padded (black for
    greyscale such as X-rays, neutral grey for colour). Slides: the whole tissue at
    `size` on its long side, padded with white. Unreadable files raise ImageRejected.
    """
    with _reading(path, info):
        if info.kind == "slide":
            with openslide.OpenSlide(path) as slide:
                return _pad_square(_slide_overview(slide, size), size, _WHITE)
        img, grey = _load_photo(path, size, upscale=True)
        return _pad_square(img, size, _BLACK if grey else _NEUTRAL)


@contextlib.contextmanager
def _reading(path: Path, info: ImageInfo) -> Iterator[None]:
    """Turn decode failures of an already-stored image into ImageRejected for the caller."""
    what = "unreadable slide" if info.kind == "slide" else "unreadable image"
    try:
        yield
    except (openslide.OpenSlideError, Image.DecompressionBombError, *DECODE_ERRORS) as exc:
        if not Path(path).is_file():  # OpenSlide reports a missing file as "unsupported"
            raise ImageRejected(f"{what}: the stored file is missing") from exc
        raise ImageRejected(f"{what}: {clean_error(exc, Path(path))}") from exc


def _pad_square(img: Image.Image, size: int, colour: tuple[int, int, int]) -> Image.Image:
    """Fit `img` inside size×size (keeping aspect ratio) and centre it on `colour`."""
    scale = size / max(img.size)
    fitted = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    if fitted != img.size:
        img = img.resize(fitted, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), colour)
    canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return canvas


def _slide_background(slide: openslide.OpenSlide) -> tuple[int, int, int]:
    value = slide.properties.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR, "ffffff")
    try:
        return tuple(bytes.fromhex(value[:6]))  # type: ignore[return-value]
    except ValueError:
        return _WHITE


def flatten(region: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Composite an OpenSlide RGBA region (transparent outside tissue scans) onto RGB."""
    out = Image.new("RGB", region.size, background)
    out.paste(region.convert("RGB"), mask=region.getchannel("A"))
    return out


def overview_level(slide: openslide.OpenSlide, downsample: float) -> int:
    """The level to read whole for a view at `downsample`: the best one for it, or the
    first coarser one within MAX_OVERVIEW_LEVEL_PIXELS; ImageRejected when none is."""
    best = slide.get_best_level_for_downsample(downsample)
    for level in range(best, slide.level_count):
        lw, lh = slide.level_dimensions[level]
        if lw * lh <= MAX_OVERVIEW_LEVEL_PIXELS:
            return level
    raise no_overview_level(*slide.level_dimensions[-1])


def _slide_overview(slide: openslide.OpenSlide, long_side: int) -> Image.Image:
    """The whole slide at `long_side` px on its long side, sRGB RGB, from pyramid levels only.

    Never reads a level bigger than MAX_OVERVIEW_LEVEL_PIXELS (ImageRejected instead).
    """
    w0, h0 = slide.dimensions
    scale = long_side / max(w0, h0)
    out_size = (max(1, round(w0 * scale)), max(1, round(h0 * scale)))
    level = overview_level(slide, 1 / scale)
    lw, lh = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    bg = _slide_background(slide)
    if lw * lh <= _OVERVIEW_READ_PIXELS:
        region = flatten(slide.read_region((0, 0), level, (lw, lh)), bg)
        out = region.resize(out_size, Image.Resampling.LANCZOS)
    else:
        # a slide with too few levels: read the level in chunks to bound memory
        out = Image.new("RGB", out_size, bg)
        fx, fy = out_size[0] / lw, out_size[1] / lh
        for ly in range(0, lh, _OVERVIEW_CHUNK):
            for lx in range(0, lw, _OVERVIEW_CHUNK):
                cw, ch = min(_OVERVIEW_CHUNK, lw - lx), min(_OVERVIEW_CHUNK, lh - ly)
                x0, y0 = math.floor(lx * fx), math.floor(ly * fy)
                x1, y1 = math.ceil((lx + cw) * fx), math.ceil((ly + ch) * fy)
                region = slide.read_region((round(lx * ds), round(ly * ds)), level, (cw, ch))
                part = flatten(region, bg).resize(
                    (max(1, x1 - x0), max(1, y1 - y0)), Image.Resampling.LANCZOS
                )
                out.paste(part, (x0, y0))
    return _icc_to_srgb(out, slide.color_profile)


def encode_jpeg(img: Image.Image, quality: int = 85) -> bytes:
    """`img` as JPEG bytes holding pixels and the sRGB profile only.

    Every picture we serve or export goes through here: a source's JPEG comment, EXIF,
    XMP or IPTC (names, birth dates, GPS) must never travel with its pixels. The pixels
    are copied into a fresh image, so no `info` of the source reaches the encoder.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    clean = Image.new("RGB", img.size)
    clean.paste(img)
    buf = io.BytesIO()
    clean.save(buf, "JPEG", quality=quality, icc_profile=_SRGB_ICC)
    return buf.getvalue()


def encode_png(img: Image.Image) -> bytes:
    """`img` as PNG bytes in its own mode with no text, EXIF or other metadata chunks.

    Only what the pixels need survives (a palette and its transparency); RGB(A)
    pictures carry the sRGB profile (they are sRGB here), others none.
    """
    clean = img.copy()
    clean.info = {}
    extra: dict[str, object] = {}
    if "transparency" in img.info:
        extra["transparency"] = img.info["transparency"]
    if img.mode in ("RGB", "RGBA"):
        extra["icc_profile"] = _SRGB_ICC
    buf = io.BytesIO()
    clean.save(buf, "PNG", **extra)
    return buf.getvalue()


def _icc_to_srgb(img: Image.Image, profile: ImageCms.ImageCmsProfile | bytes | None) -> Image.Image:
    """Convert `img` (RGB, L or CMYK) from its embedded profile to sRGB RGB; as-is on failure."""
    if profile is not None:
        try:
            src = (
                ImageCms.ImageCmsProfile(io.BytesIO(profile))
                if isinstance(profile, bytes)
                else profile
            )
            converted = ImageCms.profileToProfile(img, src, SRGB, outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass  # a broken or mismatched profile: untagged pixels are the best guess
    return img if img.mode == "RGB" else img.convert("RGB")


def _scale_to_8bit(img: Image.Image) -> Image.Image:
    """Linearly map a high-bit greyscale image's own min..max to 0..255 (no clipping)."""
    arr = np.asarray(img).astype(np.float32)
    if arr.ndim != 2:
        arr = arr.reshape(img.height, img.width)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return Image.new("L", img.size, 0)
    out = (arr - lo) * (255.0 / (hi - lo)) + 0.5
    return Image.fromarray(out.astype(np.uint8), mode="L")


def _normalise_mode(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Reduce any Pillow mode to RGB, L or CMYK; transparency flattened onto `background`."""
    if img.mode in _HIGH_BIT_MODES:
        return _scale_to_8bit(img)
    if img.mode == "1":
        return img.convert("L")
    if img.mode in ("P", "PA"):
        has_alpha = img.mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
    if img.mode in ("RGBa", "La"):
        img = img.convert(img.mode[:-1] + "A")
    if img.mode in ("RGBA", "LA"):
        base_mode = img.mode[:-1]
        fill = background if base_mode == "RGB" else background[0]
        base = Image.new(base_mode, img.size, fill)
        base.paste(img.convert(base_mode), mask=img.getchannel("A"))
        return base
    if img.mode in ("RGB", "L", "CMYK"):
        return img
    return img.convert("RGB")  # YCbCr, LAB, HSV...


def _load_photo(path: Path, long_side: int, *, upscale: bool) -> tuple[Image.Image, bool]:
    """Decode a photo to sRGB RGB with its long side at `long_side`; also say if greyscale."""
    with Image.open(path, formats=PIL_FORMATS) as img:
        img.draft(None, (long_side, long_side))  # JPEG: decode at 1/2..1/8 scale when possible
        img.load()
        grey = img.mode in _GREY_MODES
        icc = img.info.get("icc_profile")
        img = ImageOps.exif_transpose(img)
    if img.mode in _HIGH_BIT_MODES:
        icc = None  # the profile describes the raw values, not our rescaled ones
    img = _normalise_mode(img, _WHITE)
    scale = long_side / max(img.size)
    if scale < 1 or (upscale and scale > 1):
        new_size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(new_size, Image.Resampling.LANCZOS)
    return _icc_to_srgb(img, icc if icc else None), grey
