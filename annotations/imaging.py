"""Image intake for MedAnnot: stage, inspect, store, preview and prepare model input.

Framework-free (stdlib + Pillow + numpy + openslide) so the Django service, the
Celery worker and the tests share one implementation.

Typical caller (a Django service)::

    with staged_upload(upload, media_root, suffix=Path(upload.name).suffix) as staged:
        info = inspect_image(staged.temp_path)          # raises ImageRejected
        try:
            with transaction.atomic():
                row = Image.objects.create(sha256=staged.sha256, ...)
                row.file = staged.commit(suffix_for(info, upload.name))
                row.save()
        except Exception:
            staged.undo_commit()   # removes the stored file only if this upload created it
            raise

Leaving the ``with`` block always removes the temporary file; nothing
half-written is ever visible under ``images/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import re
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
import openslide
from PIL import (
    ExifTags,
    Image,
    ImageCms,
    ImageFile,
    ImageOps,
    UnidentifiedImageError,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PHOTO_PIXELS",
    "ImageInfo",
    "ImageRejected",
    "StagedUpload",
    "StoredFile",
    "discard",
    "finalise_file",
    "inspect_image",
    "load_for_model",
    "relative_path_for",
    "render_preview",
    "safe_suffix",
    "staged_upload",
    "store_file",
    "suffix_for",
    "sweep_tmp",
]

DEFAULT_MAX_BYTES = 20 * 1024**3
DEFAULT_MAX_PHOTO_PIXELS = 200_000_000
CHUNK_SIZE = 1024 * 1024
TMP_DIR = "tmp"
IMAGES_DIR = "images"

# Formats Pillow may try on uploads; anything else (EPS, PSD, ICO...) is not an image to us.
_PIL_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "JPEG2000")
_PIL_FORMAT_NAMES = {
    "JPEG": "jpeg",
    "MPO": "jpeg",  # phone cameras' multi-picture JPEGs; frame 0 is the photo
    "PNG": "png",
    "WEBP": "webp",
    "TIFF": "tiff",
    "BMP": "bmp",
    "JPEG2000": "jp2",
}
_VENDOR_FORMATS = {
    "aperio": "svs",
    "hamamatsu": "ndpi",
    "mirax": "mrxs",
    "generic-tiff": "tiff",
    "dicom": "dicom",
    "philips": "tiff",
    "ventana": "bif",
    "leica": "scn",
    "sakura": "svslide",
    "zeiss": "czi",
    "synthetic": "synthetic",
}
# First suffix is canonical; OpenSlide detects MIRAX by its .mrxs suffix, so keep suffixes exact.
_FORMAT_SUFFIXES: dict[str, tuple[str, ...]] = {
    "svs": (".svs", ".tif", ".tiff"),
    "ndpi": (".ndpi",),
    "vms": (".vms",),
    "vmu": (".vmu",),
    "mrxs": (".mrxs",),
    "tiff": (".tiff", ".tif"),
    "dicom": (".dcm",),
    "bif": (".bif", ".tif"),
    "scn": (".scn",),
    "svslide": (".svslide",),
    "czi": (".czi",),
    "jpeg": (".jpg", ".jpeg", ".jpe"),
    "png": (".png",),
    "webp": (".webp",),
    "bmp": (".bmp",),
    "jp2": (".jp2", ".j2k", ".jpf", ".jpx"),
}
_SUFFIX_RE = re.compile(r"^\.[a-z0-9]{1,10}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_GREY_MODES = _HIGH_BIT_MODES | {"1", "L", "LA", "La"}
# Pillow raises a zoo of exception types on hostile input; all mean "cannot decode this".
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
)
_SLIDE_VERIFY_PIXELS = 4096 * 4096  # read the whole lowest level when it is at most this big
_OVERVIEW_CHUNK = 4096
_OVERVIEW_READ_PIXELS = _OVERVIEW_CHUNK**2  # bigger levels are read in chunks to bound memory
_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
_NEUTRAL = (128, 128, 128)
_SRGB = ImageCms.createProfile("sRGB")


class ImageRejected(Exception):
    """An upload that is not a usable image; ``str(exc)`` is safe to show to a user.

    Messages never contain file contents or file names (the caller adds the
    escaped name).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    """What inspection learned about a stored image."""

    kind: str  # "slide" | "photo"
    format: str  # lowercase: svs, ndpi, mrxs, tiff, dicom, jpeg, png, webp, bmp, jp2...
    width: int  # level-0 width; for photos after EXIF orientation
    height: int
    levels: int
    mpp_x: float | None  # microns per pixel at level 0, when the file records it
    mpp_y: float | None
    vendor: str = ""  # OpenSlide vendor for slides ("aperio", "generic-tiff"...)

    @property
    def is_slide(self) -> bool:
        """True for whole-slide images read through OpenSlide."""
        return self.kind == "slide"


# --------------------------------------------------------------------------- inspection


def inspect_image(path: Path, *, max_photo_pixels: int = DEFAULT_MAX_PHOTO_PIXELS) -> ImageInfo:
    """Identify `path` by content and prove its pixels decode, or raise ImageRejected.

    Whole-slide formats go through OpenSlide (a small region is force-read so corrupt
    tile data is caught now, not at review time); everything else through Pillow with
    truncation and decompression-bomb checks. The file suffix only matters where
    OpenSlide itself needs it (MIRAX: .mrxs) and to tell Hamamatsu NDPI from VMS/VMU.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # a programming error elsewhere: truncated uploads would silently be accepted
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False")
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageRejected("not an image: the file could not be read") from exc
    if size == 0:
        raise ImageRejected("not an image: the file is empty")
    with path.open("rb") as fh:
        head = fh.read(132)

    vendor = _detect_vendor(path)
    if vendor is None and head[128:132] == b"DICM":
        raise ImageRejected("DICOM files other than whole-slide images are not supported yet")
    if vendor is not None:
        info = _inspect_slide(path, vendor)
        # a small single-level tiled TIFF is just a photo that happens to be tiled
        small = _pixels(info) <= _photo_pixel_limit(max_photo_pixels)
        if vendor == "generic-tiff" and info.levels == 1 and small:
            with contextlib.suppress(ImageRejected):
                return _inspect_photo(path, max_photo_pixels)
        return info
    return _inspect_photo(path, max_photo_pixels)


def _pixels(info: ImageInfo) -> int:
    return info.width * info.height


def _detect_vendor(path: Path) -> str | None:
    """OpenSlide's vendor for `path`, or None when it is no slide OpenSlide knows."""
    try:
        return openslide.OpenSlide.detect_format(path)
    except (openslide.OpenSlideError, OSError, ValueError):
        return None


def _clean_error(exc: BaseException, path: Path) -> str:
    """An OpenSlide/Pillow error as short printable text with the file's path removed."""
    text = str(exc) or type(exc).__name__
    for needle in (str(path.resolve()), str(path), path.name):
        if needle:
            text = text.replace(needle, "the file")
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = re.sub(r"\s+", " ", text).strip()
    return text[:200]


def _parse_mpp(value: str | None) -> float | None:
    """A positive, finite microns-per-pixel value, else None."""
    try:
        mpp = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return mpp if math.isfinite(mpp) and mpp > 0 else None


def _slide_format(vendor: str, path: Path) -> str:
    if vendor == "hamamatsu":
        suffix = path.suffix.lower()
        return suffix[1:] if suffix in (".vms", ".vmu") else "ndpi"
    fmt = _VENDOR_FORMATS.get(vendor)
    return fmt if fmt else re.sub(r"[^a-z0-9-]", "", vendor.lower())[:20] or "slide"


def _inspect_slide(path: Path, vendor: str) -> ImageInfo:
    stage = "it could not be opened"
    try:
        with openslide.OpenSlide(path) as slide:
            width, height = slide.dimensions
            if width <= 0 or height <= 0:
                raise ImageRejected("unreadable slide: it has no pixels")
            props = slide.properties
            info = ImageInfo(
                kind="slide",
                format=_slide_format(vendor, path),
                width=width,
                height=height,
                levels=slide.level_count,
                mpp_x=_parse_mpp(props.get(openslide.PROPERTY_NAME_MPP_X)),
                mpp_y=_parse_mpp(props.get(openslide.PROPERTY_NAME_MPP_Y)),
                vendor=vendor,
            )
            stage = "its pixel data is damaged"
            _verify_slide_pixels(slide)
    except ImageRejected:
        raise
    except (openslide.OpenSlideError, UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageRejected(f"unreadable slide: {stage} ({_clean_error(exc, path)})") from exc
    return info


def _verify_slide_pixels(slide: openslide.OpenSlide) -> None:
    """Decode the lowest level (or part of it) and a patch at the centre of level 0."""
    low = slide.level_count - 1
    lw, lh = slide.level_dimensions[low]
    if lw * lh <= _SLIDE_VERIFY_PIXELS:
        slide.read_region((0, 0), low, (lw, lh))
    else:
        ds = slide.level_downsamples[low]
        cw, ch = min(lw, 1024), min(lh, 1024)
        x, y = (lw - cw) // 2, (lh - ch) // 2
        slide.read_region((int(x * ds), int(y * ds)), low, (cw, ch))
    w, h = slide.dimensions
    pw, ph = min(w, 256), min(h, 256)
    slide.read_region(((w - pw) // 2, (h - ph) // 2), 0, (pw, ph))


def _photo_pixel_limit(max_pixels: int) -> int:
    """Our limit, or Pillow's own bomb-error threshold (2 x MAX_IMAGE_PIXELS) if lower."""
    pillow = Image.MAX_IMAGE_PIXELS
    return max_pixels if pillow is None else min(max_pixels, 2 * pillow)


def _too_large(limit: int) -> ImageRejected:
    return ImageRejected(
        f"image too large: photos may have at most {limit / 1e6:.0f} megapixels "
        "(whole-slide images have no such limit)"
    )


def _inspect_photo(path: Path, max_pixels: int) -> ImageInfo:
    try:
        with Image.open(path, formats=_PIL_FORMATS) as img:
            fmt = img.format or ""
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageRejected("not an image: it has no pixels")
            if fmt == "TIFF":
                _check_tiff_structure(img)
            if width * height > _photo_pixel_limit(max_pixels):
                if fmt == "TIFF":
                    # a big TIFF OpenSlide refused is almost always a damaged or odd slide
                    raise ImageRejected(
                        "unreadable slide: this large TIFF is damaged or in a slide layout "
                        "that is not supported"
                    )
                raise _too_large(_photo_pixel_limit(max_pixels))
            img.verify()  # checksums (PNG CRCs) before spending time on decoding
        with Image.open(path, formats=_PIL_FORMATS) as img:
            img.load()  # decodes everything: truncation shows up here
            orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise _too_large(_photo_pixel_limit(max_pixels)) from exc
    except Image.DecompressionBombWarning as exc:  # only raised when warnings are errors
        raise _too_large(min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected(
            "not an image: unrecognised content (supported: JPEG, PNG, WebP, TIFF, BMP, "
            "JPEG 2000 and whole-slide formats such as SVS, NDPI, MRXS, DICOM)"
        ) from exc
    except _DECODE_ERRORS as exc:
        if "truncated" in str(exc).lower():
            raise ImageRejected(
                "truncated image: the file ends before the image data is complete "
                "(was the upload interrupted?)"
            ) from exc
        raise ImageRejected(
            f"corrupt image: the pixel data could not be decoded ({_clean_error(exc, path)})"
        ) from exc
    if orientation in (5, 6, 7, 8):  # these EXIF orientations rotate by 90°
        width, height = height, width
    return ImageInfo(
        kind="photo",
        format=_PIL_FORMAT_NAMES.get(fmt, fmt.lower()),
        width=width,
        height=height,
        levels=1,
        mpp_x=None,
        mpp_y=None,
    )


def _check_tiff_structure(img: Image.Image) -> None:
    """Reject slide-like TIFFs that OpenSlide could not read but Pillow half-can."""
    description = str(getattr(img, "tag_v2", {}).get(270, ""))
    if description.startswith("Aperio"):
        raise ImageRejected(
            "unreadable slide: it looks like an Aperio SVS slide but it is damaged or truncated"
        )
    try:
        n_frames = getattr(img, "n_frames", 1)  # walks every IFD: a cut-off file fails here
        img.seek(0)
    except _DECODE_ERRORS as exc:
        raise ImageRejected(
            "truncated image: the TIFF's page directory is damaged or incomplete"
        ) from exc
    if n_frames < 1:
        raise ImageRejected("not an image: the TIFF has no pages")


# --------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class StoredFile:
    """An upload streamed to ``media_root/tmp/``, hashed, not yet in its final place."""

    sha256: str
    size: int
    temp_path: Path


def safe_suffix(name: str) -> str:
    """The lowercase suffix of `name` if it is a plain ``.ext`` (≤10 alphanumerics), else ""."""
    suffix = PurePosixPath(name.replace("\\", "/")).suffix.lower()
    return suffix if _SUFFIX_RE.match(suffix) else ""


def suffix_for(info: ImageInfo, original_name: str) -> str:
    """The suffix to store `info` under: the original one when it agrees with the format.

    OpenSlide detects some formats by suffix, so an image is never stored under a
    suffix that contradicts its content (a JPEG named ``.svs`` becomes ``.jpg``).
    """
    allowed = _FORMAT_SUFFIXES.get(info.format)
    if not allowed:
        return "." + info.format if _SUFFIX_RE.match("." + info.format) else ".bin"
    original = safe_suffix(original_name)
    return original if original in allowed else allowed[0]


def _read_chunks(src: Path | str | BinaryIO) -> Iterator[bytes]:
    if isinstance(src, str | os.PathLike):
        with open(src, "rb") as fh:
            yield from iter(lambda: fh.read(CHUNK_SIZE), b"")
        return
    # an upload object may have been read already (e.g. by form validation)
    seekable = getattr(src, "seekable", None)
    if seekable is not None and seekable():
        src.seek(0)
    while chunk := src.read(CHUNK_SIZE):
        yield chunk


def store_file(
    src: Path | BinaryIO,
    media_root: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    suffix: str = "",
    file_mode: int = 0o644,
) -> StoredFile:
    """Stream `src` into ``media_root/tmp/`` while hashing it (sha256, 1 MiB chunks).

    `suffix` (e.g. the upload's original ``.mrxs``) is given to the temp file because
    OpenSlide recognises some formats only by suffix; it is sanitised first. Over
    `max_bytes` raises ImageRejected. On any failure the temp file is removed.
    """
    tmp_dir = Path(media_root) / TMP_DIR
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", suffix=safe_suffix("x" + suffix), dir=tmp_dir)
    temp_path = Path(name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in _read_chunks(src):
                size += len(chunk)
                if size > max_bytes:
                    raise ImageRejected(f"file too large: the limit is {_human_bytes(max_bytes)}")
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())  # the rename below must never expose unwritten data
        os.chmod(temp_path, file_mode)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    return StoredFile(sha256=digest.hexdigest(), size=size, temp_path=temp_path)


def _human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    exponent = min(3, int(math.log(n, 1024)))
    return f"{n / 1024**exponent:.4g} {('KiB', 'MiB', 'GiB')[exponent - 1]}"


def relative_path_for(sha256: str, suffix: str) -> str:
    """``images/<sha[:2]>/<sha[2:4]>/<sha><suffix>`` (POSIX separators, relative to media root)."""
    if not _SHA_RE.match(sha256):
        raise ValueError("not a lowercase hex sha256")
    if not _SUFFIX_RE.match(suffix):
        raise ValueError(f"unsafe file suffix {suffix!r}")
    return str(PurePosixPath(IMAGES_DIR, sha256[:2], sha256[2:4], sha256 + suffix))


def _existing_copy(folder: Path, sha256: str) -> Path | None:
    """A file already stored for this content, whatever suffix it got (.jpg vs .jpeg)."""
    if not folder.is_dir():
        return None
    for entry in sorted(folder.iterdir()):
        stem, dot, ext = entry.name.partition(".")
        if stem == sha256 and dot and _SUFFIX_RE.match("." + ext) and entry.is_file():
            return entry
    return None


def _place(stored: StoredFile, media_root: Path, suffix: str) -> tuple[str, bool]:
    """Move the temp file to its content address; return (relative path, created)."""
    media_root = Path(media_root)
    rel = relative_path_for(stored.sha256, suffix)
    dest = media_root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    existing = _existing_copy(dest.parent, stored.sha256)
    if existing is not None:
        discard(stored)
        return existing.relative_to(media_root).as_posix(), False
    try:
        # link() fails if a concurrent upload of the same bytes won the race: exclusive create
        os.link(stored.temp_path, dest)
    except FileExistsError:
        discard(stored)
        return rel, False
    except OSError:
        # no hard links on this filesystem: os.replace is atomic; same bytes, so overwriting is fine
        os.replace(stored.temp_path, dest)
        return rel, True
    discard(stored)
    return rel, True


def finalise_file(stored: StoredFile, media_root: Path, suffix: str) -> str:
    """Atomically move a staged file to ``images/aa/bb/<sha><suffix>``; return that relative path.

    If the content is already stored (under any suffix) the temp file is deleted and
    the existing relative path returned.
    """
    return _place(stored, media_root, suffix)[0]


def discard(stored: StoredFile) -> None:
    """Remove a staged temp file (e.g. after inspection rejected it); no error if gone."""
    stored.temp_path.unlink(missing_ok=True)


class StagedUpload:
    """A staged upload inside ``staged_upload``: inspect ``temp_path``, then ``commit``."""

    def __init__(self, stored: StoredFile, media_root: Path) -> None:
        self.stored = stored
        self.media_root = Path(media_root)
        self.relative_path: str | None = None
        self.created = False  # True when commit() put a new file in place (not a duplicate)

    @property
    def temp_path(self) -> Path:
        """Where the bytes are now (until commit)."""
        return self.stored.temp_path

    @property
    def sha256(self) -> str:
        """Hex sha256 of the content."""
        return self.stored.sha256

    @property
    def size(self) -> int:
        """Size in bytes."""
        return self.stored.size

    def commit(self, suffix: str) -> str:
        """Move the file to its content address (idempotent); return the relative path."""
        if self.relative_path is None:
            self.relative_path, self.created = _place(self.stored, self.media_root, suffix)
        return self.relative_path

    def undo_commit(self) -> None:
        """Remove the committed file if (and only if) this upload created it.

        Call when the database work that should reference the file failed. If another
        row may reference the same sha256 (a concurrent identical upload), check the
        database first: content-addressed files are shared.
        """
        if self.created and self.relative_path is not None:
            (self.media_root / self.relative_path).unlink(missing_ok=True)
            self.created = False
        self.relative_path = None


@contextlib.contextmanager
def staged_upload(
    src: Path | BinaryIO,
    media_root: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    suffix: str = "",
) -> Iterator[StagedUpload]:
    """Stage `src` under ``media_root/tmp/``; the temp file is always gone on exit.

    Leaving the block (normally or by exception) never removes a committed file;
    use ``StagedUpload.undo_commit`` for that.
    """
    staged = StagedUpload(
        store_file(src, media_root, max_bytes=max_bytes, suffix=suffix), media_root
    )
    try:
        yield staged
    finally:
        discard(staged.stored)


def sweep_tmp(media_root: Path, *, older_than_s: float = 24 * 3600) -> int:
    """Delete staged files left in ``tmp/`` by a crashed process; return how many."""
    tmp_dir = Path(media_root) / TMP_DIR
    if not tmp_dir.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for entry in tmp_dir.glob("upload-*"):
        with contextlib.suppress(FileNotFoundError):
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                entry.unlink()
                removed += 1
    return removed


# --------------------------------------------------------------------------- pixels


def render_preview(path: Path, info: ImageInfo, max_size: int = 1024) -> Image.Image:
    """An sRGB RGB preview whose longest side is at most `max_size` (never upscaled).

    Slides: the pyramid composited on the slide background (associated images such
    as label/macro are never read: they can show patient names). Photos: EXIF
    orientation applied, ICC profile converted, 16-bit greyscale rescaled.
    A missing or (since inspection) damaged file raises ImageRejected.
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
    except (openslide.OpenSlideError, Image.DecompressionBombError, *_DECODE_ERRORS) as exc:
        if not Path(path).is_file():  # OpenSlide reports a missing file as "unsupported"
            raise ImageRejected(f"{what}: the stored file is missing") from exc
        raise ImageRejected(f"{what}: {_clean_error(exc, Path(path))}") from exc


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


def _flatten(region: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Composite an OpenSlide RGBA region (transparent outside tissue scans) onto RGB."""
    out = Image.new("RGB", region.size, background)
    out.paste(region.convert("RGB"), mask=region.getchannel("A"))
    return out


def _slide_overview(slide: openslide.OpenSlide, long_side: int) -> Image.Image:
    """The whole slide at `long_side` px on its long side, sRGB RGB, from pyramid levels only."""
    w0, h0 = slide.dimensions
    scale = long_side / max(w0, h0)
    out_size = (max(1, round(w0 * scale)), max(1, round(h0 * scale)))
    level = slide.get_best_level_for_downsample(1 / scale)
    lw, lh = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    bg = _slide_background(slide)
    if lw * lh <= _OVERVIEW_READ_PIXELS:
        region = _flatten(slide.read_region((0, 0), level, (lw, lh)), bg)
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
                part = _flatten(region, bg).resize(
                    (max(1, x1 - x0), max(1, y1 - y0)), Image.Resampling.LANCZOS
                )
                out.paste(part, (x0, y0))
    return _icc_to_srgb(out, slide.color_profile)


def _icc_to_srgb(img: Image.Image, profile: ImageCms.ImageCmsProfile | bytes | None) -> Image.Image:
    """Convert `img` (RGB, L or CMYK) from its embedded profile to sRGB RGB; as-is on failure."""
    if profile is not None:
        try:
            src = (
                ImageCms.ImageCmsProfile(io.BytesIO(profile))
                if isinstance(profile, bytes)
                else profile
            )
            converted = ImageCms.profileToProfile(img, src, _SRGB, outputMode="RGB")
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
    with Image.open(path, formats=_PIL_FORMATS) as img:
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
