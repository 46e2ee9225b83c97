"""What a file is, or why it is refused: identify by content and prove the pixels decode.

No Django: the web process, the worker and the tests share this code.
"""

from __future__ import annotations

import contextlib
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import openslide
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from imaging import series

DEFAULT_MAX_PHOTO_PIXELS = 200_000_000

# Formats Pillow may try on uploads; anything else (EPS, PSD, ICO...) is not an image to us.
PIL_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "JPEG2000")
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
# Pillow raises a zoo of exception types on hostile input; all mean "cannot decode this".
DECODE_ERRORS = (
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
# Budget, in pixels, for any read of a whole slide level (overview, preview, tissue mask).
# Budget by pixels, not bytes: a 1 MB TIFF can declare 100,000 x 100,000 pixels.
MAX_OVERVIEW_LEVEL_PIXELS = 8192 * 8192
# Microns per pixel that microscopes produce; outside it a value is a photo's dpi, not a scan's.
PLAUSIBLE_MPP = (0.05, 20.0)
# Objective magnifications a scanner records (OpenSlide's openslide.objective-power).
PLAUSIBLE_OBJECTIVE_POWER = (1.0, 100.0)
# The only slide properties stored, shown or exported. Free-text ones (aperio.Filename,
# aperio.Date, openslide.comment, barcodes, DICOM patient tags) can name the patient.
ALLOWED_PROPERTIES = (
    "vendor",
    "width",
    "height",
    "levels",
    "level_dimensions",
    "mpp_x",
    "mpp_y",
    "objective_power",
)


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
    objective_power: float | None = None  # scanner objective (20, 40), when recorded
    # (width, height) of every pyramid level, level 0 first; a photo has one
    level_dimensions: tuple[tuple[int, int], ...] = ()


def reviewer_properties(image: object) -> dict:
    """The allowlisted properties of an ImageInfo or an Image row, for pages and exports.

    Dimensions, levels and their sizes, microns per pixel, objective power and vendor:
    nothing else a slide file says about itself is ever shown or exported.
    """
    props = {name: getattr(image, name, None) for name in ALLOWED_PROPERTIES}
    props["level_dimensions"] = [[int(w), int(h)] for w, h in (props["level_dimensions"] or ())]
    props["vendor"] = props["vendor"] or ""
    return props


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
    if vendor == "dicom":
        part = series.dicom_part_problem(path)  # a label, overview or thumbnail alone
        if part:
            raise ImageRejected(part)
    if vendor is not None:
        info, coarsest = _inspect_slide(path, vendor)
        # a small single-level tiled TIFF is just a photo that happens to be tiled
        small = _pixels(info) <= _photo_pixel_limit(max_photo_pixels)
        if vendor == "generic-tiff" and info.levels == 1 and small:
            with contextlib.suppress(ImageRejected):
                return _inspect_photo(path, max_photo_pixels)
        check_level_budget(coarsest)  # no preview or tissue mask could be made from it
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


def clean_error(exc: BaseException, path: Path) -> str:
    """An OpenSlide/Pillow error as short printable text with the file's path removed."""
    text = str(exc) or type(exc).__name__
    for needle in (str(path.resolve()), str(path), path.name):
        if needle:
            text = text.replace(needle, "the file")
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = re.sub(r"\s+", " ", text).strip()
    return text[:200]


def plausible_mpp(value: str | float | None) -> float | None:
    """Microns per pixel as a float when a microscope could have produced it, else None.

    Values outside 0.05..20 µm/px are not a scan's: OpenSlide reports a plain 72-dpi
    TIFF as 352.8 µm/px. Unparsable, infinite and non-positive values are None too.
    """
    try:
        mpp = float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return None
    lo, hi = PLAUSIBLE_MPP
    return mpp if math.isfinite(mpp) and lo <= mpp <= hi else None


def plausible_objective_power(value: str | float | None) -> float | None:
    """A recorded objective magnification (20, 40) when it lies in 1..100, else None."""
    try:
        power = float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return None
    lo, hi = PLAUSIBLE_OBJECTIVE_POWER
    return power if math.isfinite(power) and lo <= power <= hi else None


def no_overview_level(width: int, height: int) -> ImageRejected:
    """The rejection of a slide whose smallest level is too big to read whole."""
    return ImageRejected(
        "unreadable slide: it has no low-resolution level (its smallest level is "
        f"{width} × {height} pixels); save it as a pyramid (for example with "
        "`vips tiffsave --tile --pyramid`)"
    )


def check_level_budget(size: tuple[int, int]) -> None:
    """Raise ImageRejected when a level of `size` (w, h) is too big to read whole."""
    width, height = size
    if width * height > MAX_OVERVIEW_LEVEL_PIXELS:
        raise no_overview_level(width, height)


def _slide_format(vendor: str, path: Path) -> str:
    if vendor == "hamamatsu":
        suffix = path.suffix.lower()
        return suffix[1:] if suffix in (".vms", ".vmu") else "ndpi"
    fmt = _VENDOR_FORMATS.get(vendor)
    return fmt if fmt else re.sub(r"[^a-z0-9-]", "", vendor.lower())[:20] or "slide"


def _inspect_slide(path: Path, vendor: str) -> tuple[ImageInfo, tuple[int, int]]:
    """The slide's ImageInfo and the size of its coarsest level; pixels proven to decode."""
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
                mpp_x=plausible_mpp(props.get(openslide.PROPERTY_NAME_MPP_X)),
                mpp_y=plausible_mpp(props.get(openslide.PROPERTY_NAME_MPP_Y)),
                vendor=vendor,
                objective_power=plausible_objective_power(
                    props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
                ),
                level_dimensions=tuple((int(w), int(h)) for w, h in slide.level_dimensions),
            )
            coarsest = slide.level_dimensions[-1]
            stage = "its pixel data is damaged"
            _verify_slide_pixels(slide)
    except ImageRejected:
        raise
    except (openslide.OpenSlideError, UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageRejected(f"unreadable slide: {stage} ({clean_error(exc, path)})") from exc
    return info, coarsest


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
        with Image.open(path, formats=PIL_FORMATS) as img:
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
        with Image.open(path, formats=PIL_FORMATS) as img:
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
    except DECODE_ERRORS as exc:
        if "truncated" in str(exc).lower():
            raise ImageRejected(
                "truncated image: the file ends before the image data is complete "
                "(was the upload interrupted?)"
            ) from exc
        raise ImageRejected(
            f"corrupt image: the pixel data could not be decoded ({clean_error(exc, path)})"
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
        level_dimensions=((width, height),),
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
    except DECODE_ERRORS as exc:
        raise ImageRejected(
            "truncated image: the TIFF's page directory is damaged or incomplete"
        ) from exc
    if n_frames < 1:
        raise ImageRejected("not an image: the TIFF has no pages")
