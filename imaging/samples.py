"""Deterministic synthetic images for the demo and the tests.

Everything here is generated from a seed with numpy, so the same call always
writes the same pixels. The slides are real pyramids that OpenSlide opens
natively (generic tiled TIFF, Aperio-style SVS with thumbnail, label and
macro pages, a DICOM WSI series, a MIRAX .mrxs with its data folder); the
photos are plain JPEG/PNG files with optional EXIF orientation.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from imaging.series import DICOM_WSI_SOP_CLASS

__all__ = [
    "LABEL_RGB",
    "MACRO_RGB",
    "write_corrupt_slide",
    "write_derm_photo",
    "write_dicom_series",
    "write_mirax",
    "write_poison_tiff",
    "write_synthetic_slide",
    "write_truncated_jpeg",
    "write_xray_png",
]

# Colours no H&E stain produces, so a test can prove label/macro pixels never leak.
LABEL_RGB: tuple[int, int, int] = (0, 255, 0)
MACRO_RGB: tuple[int, int, int] = (0, 0, 255)

_GLASS_RGB = np.array([243.0, 242.0, 244.0], dtype=np.float32)
_EOSIN_RGB = np.array([232.0, 158.0, 192.0], dtype=np.float32)
_NUCLEUS_RGB = np.array([92.0, 58.0, 148.0], dtype=np.float32)
_SKIN_RGB = np.array([222.0, 172.0, 142.0], dtype=np.float32)
_LESION_RGB = np.array([118.0, 74.0, 52.0], dtype=np.float32)

# deflate is the only TIFF codec OpenSlide reads that tifffile can encode without imagecodecs
_TIFF_COMPRESSION = "zlib"
# level 1: ~5x faster than the default for ~20 % larger files, which is the right trade here
_TIFF_COMPRESSION_ARGS = {"level": 1}


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """Value noise in [0, 1] of `size` (w, h): a coarse random grid bicubically upsampled."""
    return np.asarray(_noise_image(rng, size, cells, 1.0), dtype=np.float32).clip(0.0, 1.0)


def _noise_image(
    rng: np.random.Generator, size: tuple[int, int], cells: int, scale: float
) -> Image.Image:
    """Value noise as a float ("F") image in [0, scale], upsampled in C by Pillow."""
    w, h = size
    gw = max(2, cells)
    gh = max(2, round(cells * h / max(w, 1)))
    grid = rng.random((gh, gw), dtype=np.float32) * np.float32(scale)
    return Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BICUBIC)


def _index_plane(field: np.ndarray, size: tuple[int, int], levels: int) -> np.ndarray:
    """Upsample a low-res field in [0, 1] to `size` and quantise it to uint16 [0, levels)."""
    scaled = np.ascontiguousarray(field * np.float32(levels - 1), dtype=np.float32)
    img = Image.fromarray(scaled, mode="F").resize(size, Image.Resampling.BILINEAR)
    return np.asarray(img.convert("L"), dtype=np.uint16)  # convert("L") rounds and clips in C


def _tissue_field(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Low-resolution tissue likelihood (>0 inside tissue), blobs kept off the slide edges."""
    sw, sh = max(16, width // 16), max(16, height // 16)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    xx /= sw
    yy /= sh
    field = np.full((sh, sw), -1.0, dtype=np.float32)
    for _ in range(int(rng.integers(2, 5))):
        cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
        rx, ry = rng.uniform(0.1, 0.2), rng.uniform(0.1, 0.2)
        theta = rng.uniform(0, np.pi)
        dx, dy = xx - cx, yy - cy
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / rx
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ry
        field = np.maximum(field, 1.0 - (u * u + v * v))
    # ragged edges like a real section
    field += 0.35 * (_smooth_noise(rng, (sw, sh), 12) - 0.5)
    # guarantee blank glass along the border whatever the blobs did
    margin = np.minimum.reduce([xx, 1 - xx, yy, 1 - yy])
    return np.where(margin < 0.08, -1.0, field).astype(np.float32)


def _he_pixels(rng: np.random.Generator, width: int, height: int, mpp: float) -> np.ndarray:
    """H&E-like RGB uint8 array (height, width, 3): pink tissue, purple nuclei, white glass.

    Colours come from one lookup table indexed by quantised (tissue, texture, nucleus,
    noise) planes packed into uint16: full-size float RGB arithmetic is far slower.
    """
    n_a, n_t, n_n, n_z = 32, 16, 8, 8  # 5 + 4 + 3 + 3 bits = 15 bits, fits uint16
    size = (width, height)
    # soft tissue edge over ~1/8 of the field range
    a_idx = _index_plane(np.clip(_tissue_field(rng, width, height) * 8.0, 0.0, 1.0), size, n_a)
    t_idx = np.asarray(
        _noise_image(rng, size, max(8, width // 64), n_t - 1).convert("L"), dtype=np.uint16
    )

    # nuclei: ~8 µm ellipses, about one per 250 µm² of tissue (~15 % cover)
    radius = max(1.5, 4.0 / mpp)
    tissue_px = float(np.count_nonzero(a_idx > n_a // 2))
    count = int(tissue_px * mpp * mpp / 250.0)
    mask = Image.new("L", size, 0)
    if count:
        xs = rng.integers(0, width, count * 4)
        ys = rng.integers(0, height, count * 4)
        inside = a_idx[ys, xs] >= n_a - 2
        xs, ys = xs[inside][:count], ys[inside][:count]
        radii = radius * rng.uniform(0.7, 1.3, xs.size)
        draw = ImageDraw.Draw(mask)
        for x, y, r in zip(xs.tolist(), ys.tolist(), radii.tolist(), strict=True):
            draw.ellipse((x - r, y - r * 0.8, x + r, y + r * 0.8), fill=n_n - 1)
    n_idx = np.asarray(mask, dtype=np.uint16)
    z_idx = _noise_index(rng, width, height, n_z).astype(np.uint16)

    a = np.linspace(0.0, 1.0, n_a, dtype=np.float32)[:, None, None, None, None]
    t = np.linspace(-0.5, 0.5, n_t, dtype=np.float32)[None, :, None, None, None]
    n = np.linspace(0.0, 0.9, n_n, dtype=np.float32)[None, None, :, None, None]
    z = np.linspace(-3.0, 3.0, n_z, dtype=np.float32)[None, None, None, :, None]
    pink = _EOSIN_RGB + t * np.array([30.0, 50.0, 30.0], dtype=np.float32)
    colour = _GLASS_RGB + a * (pink - _GLASS_RGB)
    colour = colour + n * (_NUCLEUS_RGB - colour) + z
    lut = np.clip(colour, 0, 255).astype(np.uint8).reshape(-1, 3)
    a_idx <<= 10
    t_idx <<= 6
    n_idx <<= 3
    a_idx |= t_idx
    a_idx |= n_idx
    a_idx |= z_idx
    return lut[a_idx]


def _noise_index(rng: np.random.Generator, width: int, height: int, levels: int) -> np.ndarray:
    """Per-pixel noise index in [0, levels): a random 256² block tiled (cheap, still grainy)."""
    block = rng.integers(0, levels, (256, 256), dtype=np.uint8)
    reps = (-(-height // 256), -(-width // 256))
    return np.tile(block, reps)[:height, :width]


def _pyramid(level0: np.ndarray, tile: int) -> list[np.ndarray]:
    """Levels downsampled by 2 until the long side fits one tile (at least 3 levels)."""
    levels = [level0]
    img = Image.fromarray(level0)
    while (max(img.size) > tile or len(levels) < 3) and min(img.size) >= 2:
        img = img.reduce(2)
        levels.append(np.asarray(img))
    return levels


def _label_pixels(width: int = 400, height: int = 300) -> np.ndarray:
    """A label in LABEL_RGB with black 'barcode' bars (stands in for patient details)."""
    arr = np.empty((height, width, 3), dtype=np.uint8)
    arr[:] = LABEL_RGB
    arr[height // 2 :, 20 : width - 20 : 12] = 0
    return arr


def write_synthetic_slide(
    path: Path,
    *,
    width: int = 4096,
    height: int = 3072,
    tile: int = 256,
    mpp: float = 0.25,
    seed: int = 0,
    flavour: Literal["generic-tiff", "aperio"] = "generic-tiff",
    description_extra: str = "",
) -> Path:
    """Write a tiled, deflate-compressed H&E-like pyramid that OpenSlide opens natively.

    ``generic-tiff``: level 0 plus one top-level tiled page per lower level with
    NewSubfileType=1, microns per pixel in the resolution tags (pixels/cm).
    ``aperio``: an SVS layout — level 0 with an ``Aperio ...|AppMag|MPP`` description,
    an untiled thumbnail, the other levels, then a label (NewSubfileType 1, coloured
    LABEL_RGB) and a macro (NewSubfileType 9, coloured MACRO_RGB).
    `description_extra` (``"|Filename = ...|Date = ..."``) is appended to the Aperio
    description: free-text properties that must never be stored or shown.
    """
    if flavour not in ("generic-tiff", "aperio"):
        raise ValueError(f"unknown slide flavour {flavour!r}")
    if tile % 16:
        raise ValueError("TIFF tile size must be a multiple of 16")
    path = Path(path)
    rng = np.random.default_rng(seed)
    levels = _pyramid(_he_pixels(rng, width, height, mpp), tile)
    px_per_cm = 1e4 / mpp
    tiled = {
        "tile": (tile, tile),
        "photometric": "rgb",
        "compression": _TIFF_COMPRESSION,
        "compressionargs": _TIFF_COMPRESSION_ARGS,
        "metadata": None,
        "resolutionunit": "CENTIMETER",
    }
    plain = {
        "photometric": "rgb",
        "compression": _TIFF_COMPRESSION,
        "compressionargs": _TIFF_COMPRESSION_ARGS,
        "metadata": None,
    }
    with tifffile.TiffWriter(path, bigtiff=levels[0].nbytes > 2**31) as tif:
        if flavour == "generic-tiff":
            for i, level in enumerate(levels):
                res = px_per_cm / 2**i
                tif.write(level, subfiletype=1 if i else 0, resolution=(res, res), **tiled)
            return path

        head = f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}]"
        tags = f"|AppMag = {round(10 / mpp)}|MPP = {mpp:g}{description_extra}"
        tif.write(
            levels[0],
            description=f"{head} ({tile}x{tile}) RGB{tags}",
            resolution=(px_per_cm, px_per_cm),
            **tiled,
        )
        thumb = Image.fromarray(levels[0])
        thumb.thumbnail((768, 768))
        tif.write(np.asarray(thumb), description=f"{head} -> {thumb.width}x{thumb.height}", **plain)
        for i, level in enumerate(levels[1:], start=1):
            res = px_per_cm / 2**i
            h, w = level.shape[:2]
            desc = f"{head} ({tile}x{tile}) -> {w}x{h} RGB"
            tif.write(level, description=desc, resolution=(res, res), **tiled)
        tif.write(_label_pixels(), subfiletype=1, description="label 400x300", **plain)
        macro = np.empty((300, 800, 3), dtype=np.uint8)
        macro[:] = MACRO_RGB
        tif.write(macro, subfiletype=9, description="macro 800x300", **plain)
    return path


def _skin_pixels(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Skin-toned background with shading and pores, plus one irregular brown lesion.

    Smooth parts (shading, lesion shape, mottling) are computed at 1/4 resolution and
    upsampled by Pillow; only the fine pore texture and grain are full-size.
    """
    sw, sh = max(8, width // 4), max(8, height // 4)
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    shade = _smooth_noise(rng, (sw, sh), 4)[..., None] - 0.5
    img = _SKIN_RGB + shade * 40.0

    # lesion: a polar blob whose radius wobbles with a few random harmonics
    cx = sw * rng.uniform(0.4, 0.6)
    cy = sh * rng.uniform(0.4, 0.6)
    base = min(sw, sh) * rng.uniform(0.15, 0.22)
    angle = np.arctan2(yy - cy, xx - cx)
    radius = np.full_like(angle, base)
    for k in range(2, 7):
        radius += base * rng.uniform(0.02, 0.1) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    dist = np.hypot(xx - cx, yy - cy)
    alpha = np.clip((radius - dist) / (0.08 * base), 0.0, 1.0)[..., None]
    mottling = _smooth_noise(rng, (sw, sh), max(6, sw // 10))[..., None] - 0.5
    img += alpha * (_LESION_RGB + mottling * 60.0 - img)
    smooth = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC
    )

    pores = np.asarray(_noise_image(rng, (width, height), max(8, width // 6), 18.0).convert("L"))
    grain = _noise_index(rng, width, height, 6)
    detail = pores.astype(np.int16) + grain - 11  # roughly -11..+12 around zero
    out = np.asarray(smooth, dtype=np.int16) + detail[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def write_derm_photo(
    path: Path,
    *,
    size: tuple[int, int] = (800, 600),
    seed: int = 0,
    fmt: str = "JPEG",
    orientation: int | None = None,
) -> Path:
    """Write a dermatology-like photo of `size` (w, h) in Pillow format `fmt`.

    `orientation` (1-8) is stored as the EXIF Orientation tag, so the stored pixels
    are as a camera would write them and viewers must rotate them.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    img = Image.fromarray(_skin_pixels(rng, *size))
    kwargs: dict[str, object] = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    if fmt.upper() == "JPEG":
        kwargs["quality"] = 90
    img.save(path, format=fmt, **kwargs)
    return path


def write_xray_png(
    path: Path, *, size: tuple[int, int] = (512, 640), seed: int = 0, bits: int = 12
) -> Path:
    """Write a chest-X-ray-like 16-bit greyscale PNG whose values use `bits` of range.

    Values stay well below 65535, so a naive 16→8-bit clip would turn it all white.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = xx / w - 0.5, yy / h - 0.5
    body = np.clip(1.0 - (x / 0.45) ** 2 - (y / 0.55) ** 2, 0.0, 1.0)
    lungs = np.zeros_like(body)
    for side in (-1.0, 1.0):
        lungs += np.clip(1.0 - ((x - side * 0.17) / 0.13) ** 2 - ((y + 0.02) / 0.3) ** 2, 0, 1)
    ribs = 0.5 + 0.5 * np.sin(yy / h * 40.0 + 3.0 * np.abs(x))
    value = 0.15 + 0.7 * body - 0.45 * lungs + 0.08 * ribs * body
    value += 0.03 * (_smooth_noise(rng, (w, h), 16) - 0.5)
    top = 2**bits - 1
    arr = np.clip(value * top, 0, top).astype(np.uint16)
    Image.fromarray(arr).save(path, format="PNG")
    return path


def write_corrupt_slide(
    path: Path, *, how: Literal["garbage", "truncated"] = "garbage", seed: int = 0
) -> Path:
    """Write an Aperio-looking SVS that must be rejected.

    ``garbage``: headers and Aperio description intact, every tile's bytes replaced
    by random noise (OpenSlide opens it, decoding fails). ``truncated``: a valid
    slide cut off part-way through, as an interrupted upload would leave it.
    """
    path = Path(path)
    write_synthetic_slide(path, width=1024, height=768, flavour="aperio", seed=seed)
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 3 // 5])
        return path
    if how != "garbage":
        raise ValueError(f"unknown corruption {how!r}")
    with tifffile.TiffFile(path) as tif:
        segments = [
            (offset, count)
            for page in tif.pages
            if page.is_tiled
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True)
        ]
    rng = np.random.default_rng(seed)
    with path.open("r+b") as fh:
        for offset, count in segments:
            fh.seek(offset)
            fh.write(rng.integers(0, 256, count, dtype=np.uint8).tobytes())
    return path


def write_truncated_jpeg(path: Path, *, seed: int = 0) -> Path:
    """Write a derm JPEG cut off half-way through its entropy-coded data."""
    path = Path(path)
    buf = io.BytesIO()
    Image.fromarray(_skin_pixels(np.random.default_rng(seed), 640, 480)).save(
        buf, format="JPEG", quality=90
    )
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_poison_tiff(
    path: Path, width: int = 100_000, height: int = 100_000, *, mpp: float | None = 0.25
) -> Path:
    """Write a tiled TIFF declaring `width` × `height` pixels in about a megabyte.

    Every tile offset points at the same deflate-compressed 256² RGB tile, so OpenSlide
    opens it as a single-level generic-tiff slide and reads any region of it: a picture
    that is cheap to upload and ruinous to read whole. Written by hand (little-endian
    classic TIFF, one IFD) because no writer produces such a file on purpose.
    """
    path = Path(path)
    tile = 256
    n_tiles = math.ceil(width / tile) * math.ceil(height / tile)
    rng = np.random.default_rng(0)
    pixels = np.clip(_EOSIN_RGB + rng.normal(0.0, 6.0, (tile, tile, 3)), 0, 255).astype(np.uint8)
    data = zlib.compress(pixels.tobytes(), 9)

    # layout: header, tile data, out-of-line tag values, the IFD last
    blobs = bytearray()
    offset_of: dict[str, int] = {}

    def put(name: str, payload: bytes) -> None:
        if (8 + len(blobs)) % 2:
            blobs.append(0)  # TIFF values start on a word boundary
        offset_of[name] = 8 + len(blobs)
        blobs.extend(payload)

    put("tile", data)
    put("bits", struct.pack("<3H", 8, 8, 8))
    put("offsets", struct.pack(f"<{n_tiles}I", *([offset_of["tile"]] * n_tiles)))
    put("counts", struct.pack(f"<{n_tiles}I", *([len(data)] * n_tiles)))
    short, long_, rational = 3, 4, 5
    entries = [
        (256, long_, 1, width),
        (257, long_, 1, height),
        (258, short, 3, offset_of["bits"]),
        (259, short, 1, 8),  # deflate
        (262, short, 1, 2),  # RGB
        (277, short, 1, 3),
        (284, short, 1, 1),  # chunky
        (322, short, 1, tile),
        (323, short, 1, tile),
        (324, long_, n_tiles, offset_of["offsets"]),
        (325, long_, n_tiles, offset_of["counts"]),
    ]
    if mpp is not None:
        px_per_cm = round(1e4 / mpp)
        put("res", struct.pack("<2I", px_per_cm, 1))
        entries += [
            (282, rational, 1, offset_of["res"]),
            (283, rational, 1, offset_of["res"]),
            (296, short, 1, 3),  # centimetre
        ]
    entries.sort()
    if (8 + len(blobs)) % 2:
        blobs.append(0)
    ifd = bytearray(struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        inline = struct.pack("<H", value) + b"\0\0" if kind == short and count == 1 else None
        ifd += struct.pack("<HHI", tag, kind, count)
        ifd += inline if inline is not None else struct.pack("<I", value)
    ifd += struct.pack("<I", 0)  # no further IFD
    header = b"II*\0" + struct.pack("<I", 8 + len(blobs))
    path.write_bytes(header + bytes(blobs) + bytes(ifd))
    return path


# --------------------------------------------------------------------------- DICOM WSI


ORIGINAL_VOLUME = ("ORIGINAL", "PRIMARY", "VOLUME", "NONE")  # level 0
RESAMPLED_VOLUME = ("DERIVED", "PRIMARY", "VOLUME", "RESAMPLED")  # the lower levels


def _jpeg(pixels: np.ndarray, quality: int = 80) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _dicom_instance(
    path: Path,
    pixels: np.ndarray,
    *,
    tile: int,
    image_type: tuple[str, str, str, str],
    mpp: float,
    number: int,
    series: dict[str, str],
) -> Path:
    """One VL Whole Slide Microscopy Image instance, TILED_FULL, JPEG baseline frames."""
    height, width = pixels.shape[:2]
    tw, th = min(tile, width), min(tile, height)
    frames = []
    for y in range(0, height, th):
        for x in range(0, width, tw):
            frame = np.full((th, tw, 3), 255, dtype=np.uint8)  # edge tiles padded with white
            part = pixels[y : y + th, x : x + tw]
            frame[: part.shape[0], : part.shape[1]] = part
            frames.append(_jpeg(frame))
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DICOM_WSI_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DICOM_WSI_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = series["study"]
    ds.SeriesInstanceUID = series["series"]
    ds.FrameOfReferenceUID = series["frame"]
    ds.Modality = "SM"
    ds.ImageType = list(image_type)
    ds.InstanceNumber = number
    # patient details, as every instance of a real series carries them
    ds.PatientName = series["patient_name"]
    ds.PatientID = series["patient_id"]
    ds.PatientBirthDate = series["birth_date"]
    ds.BarcodeValue = series["barcode"]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.Rows, ds.Columns = th, tw
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = width, height
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.NumberOfFrames = len(frames)
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.ImagedVolumeWidth = width * mpp / 1000  # millimetres
    ds.ImagedVolumeHeight = height * mpp / 1000
    ds.ImagedVolumeDepth = 0.001
    measures = Dataset()
    measures.PixelSpacing = [mpp / 1000, mpp / 1000]  # millimetres: rows, columns
    measures.SliceThickness = 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    optical = Dataset()
    optical.OpticalPathIdentifier = "1"
    optical.ObjectiveLensPower = series["objective"]
    ds.OpticalPathSequence = [optical]
    ds.NumberOfOpticalPaths = 1
    ds.NumberOfFocalPlanes = 1
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom_series(
    folder: Path,
    *,
    width: int = 1536,
    height: int = 1024,
    tile: int = 256,
    mpp: float = 0.25,
    seed: int = 0,
    downsamples: tuple[int, ...] = (1, 4),
    thumbnail: bool = True,
    label: bool = False,
    overview: bool = False,
    patient_name: str = "Doe^Jane",
) -> list[Path]:
    """Write a DICOM WSI series into `folder`: one VOLUME instance per pyramid level, and
    optionally a THUMBNAIL, a LABEL (LABEL_RGB with 'barcode' bars) and an OVERVIEW
    (MACRO_RGB), every instance naming the patient. OpenSlide opens any VOLUME instance
    and finds the rest in the folder.

    Returns the paths written: level 0 first, then the lower levels, the thumbnail, the
    label and the overview. New UIDs each call: two calls write two different series.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    level0 = Image.fromarray(_he_pixels(rng, width, height, mpp))
    series = {
        "study": generate_uid(),
        "series": generate_uid(),
        "frame": generate_uid(),
        "patient_name": patient_name,
        "patient_id": "MRN-1950-0042",
        "birth_date": "19500101",
        "barcode": "BC-1950-0042",
        "objective": round(10 / mpp),
    }
    paths = []
    for i, factor in enumerate(downsamples):
        pixels = np.asarray(level0 if factor == 1 else level0.reduce(factor))
        kind = ORIGINAL_VOLUME if factor == 1 else RESAMPLED_VOLUME
        paths.append(
            _dicom_instance(
                folder / f"level-{i}.dcm",
                pixels,
                tile=tile,
                image_type=kind,
                mpp=mpp * factor,
                number=i + 1,
                series=series,
            )
        )
    extras: list[tuple[str, np.ndarray, tuple[str, str, str, str]]] = []
    if thumbnail:
        thumb = level0.copy()
        thumb.thumbnail((256, 256))
        kind = ("DERIVED", "PRIMARY", "THUMBNAIL", "RESAMPLED")
        extras.append(("thumbnail", np.asarray(thumb), kind))
    if label:
        extras.append(("label", _label_pixels(), ("ORIGINAL", "PRIMARY", "LABEL", "NONE")))
    if overview:
        macro = np.empty((300, 800, 3), dtype=np.uint8)
        macro[:] = MACRO_RGB
        extras.append(("overview", macro, ("ORIGINAL", "PRIMARY", "OVERVIEW", "NONE")))
    for j, (name, pixels, kind) in enumerate(extras, start=len(paths) + 1):
        h, w = pixels.shape[:2]
        paths.append(
            _dicom_instance(
                folder / f"{name}.dcm",
                pixels,
                tile=max(w, h),
                image_type=kind,
                mpp=mpp * width / w,
                number=j,
                series=series,
            )
        )
    return paths


# --------------------------------------------------------------------------- MIRAX

_MIRAX_INDEX_VERSION = b"01.02"
_MIRAX_POSITION_RECORD = struct.Struct("<Bii")  # flag, x, y: one camera position


def _mirax_slidedat(
    *, slide_id: str, tiles_x: int, tiles_y: int, tile: int, levels: int, mpp: float
) -> str:
    """Slidedat.ini: one "Slide zoom level" hierarchy (one value per level), the position
    buffer as the only nonhierarchical layer, one data file."""
    general = {
        "SLIDE_VERSION": "01.02",
        "SLIDE_ID": slide_id,
        "SLIDE_NAME": "synthetic",
        "IMAGENUMBER_X": tiles_x,
        "IMAGENUMBER_Y": tiles_y,
        "OBJECTIVE_MAGNIFICATION": round(10 / mpp),
        "CameraImageDivisionsPerSide": 1,
    }
    hier: dict[str, object] = {
        "HIER_COUNT": 1,
        "NONHIER_COUNT": 1,
        "INDEXFILE": "Index.dat",
        "HIER_0_NAME": "Slide zoom level",
        "HIER_0_COUNT": levels,
    }
    for n in range(levels):
        hier[f"HIER_0_VAL_{n}"] = f"ZoomLevel_{n}"
        hier[f"HIER_0_VAL_{n}_SECTION"] = f"LAYER_0_LEVEL_{n}_SECTION"
    hier |= {
        "NONHIER_0_NAME": "VIMSLIDE_POSITION_BUFFER",
        "NONHIER_0_COUNT": 1,
        "NONHIER_0_VAL_0": "default",
        "NONHIER_0_VAL_0_SECTION": "NONHIER_0_VAL_0_SECTION",
    }
    sections: dict[str, dict[str, object]] = {"GENERAL": general, "HIERARCHICAL": hier}
    for n in range(levels):
        sections[f"LAYER_0_LEVEL_{n}_SECTION"] = {
            "OVERLAP_X": 0,
            "OVERLAP_Y": 0,
            "MICROMETER_PER_PIXEL_X": f"{mpp * 2**n:.6f}",
            "MICROMETER_PER_PIXEL_Y": f"{mpp * 2**n:.6f}",
            "IMAGE_FORMAT": "JPEG",
            "IMAGE_QUALITY": 85,
            "IMAGE_FILL_COLOR_BGR": 0xFFFFFF,
            "DIGITIZER_WIDTH": tile,
            "DIGITIZER_HEIGHT": tile,
            # log2 of how many images of the level above make one image of this level
            "IMAGE_CONCAT_FACTOR": 0 if n == 0 else 1,
        }
    sections["NONHIER_0_VAL_0_SECTION"] = {}
    sections["DATAFILE"] = {"FILE_COUNT": 1, "FILE_0": "Data0000.dat"}
    lines = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in keys.items())
        lines.append("")
    return "\r\n".join(lines)


def _mirax_index(
    slide_id: str, levels: list[list[tuple[int, int, int]]], position: tuple[int, int]
) -> bytes:
    """Index.dat: version and slide id, then the two root pointers (hierarchical and
    nonhierarchical). Each hierarchical record (one per zoom level) is a list head
    (0, first page) whose one page holds (image index, offset, length, file number)
    entries; the nonhierarchical record (the position buffer) is a page of one
    (0, 0, offset, length, file number) entry. All integers are little-endian int32."""
    head = _MIRAX_INDEX_VERSION + slide_id.encode("ascii")
    out = bytearray(head)
    out += b"\0" * 8  # hier root pointer, nonhier root pointer: patched below

    def here() -> int:
        return len(out)

    def i32(*values: int) -> bytes:
        return struct.pack(f"<{len(values)}i", *values)

    # hierarchical: a table of one pointer per level, each to a list head, then its page
    hier_table = here()
    out += b"\0" * (4 * len(levels))
    for n, entries in enumerate(levels):
        record = here()
        out[hier_table + 4 * n : hier_table + 4 * n + 4] = i32(record)
        out += i32(0, record + 8)
        out += i32(len(entries), 0)  # entry count, next page (none)
        for index, offset, length in entries:
            out += i32(index, offset, length, 0)
    # nonhierarchical: a table of one pointer per record, then the record's head and page
    nonhier_table = here()
    record = nonhier_table + 4
    out += i32(record)
    out += i32(0, record + 8)
    out += i32(1, 0, 0, 0, position[0], position[1], 0)
    root = len(head)
    out[root : root + 8] = i32(hier_table, nonhier_table)
    return bytes(out)


def write_mirax(
    folder: Path,
    *,
    tiles_x: int = 4,
    tiles_y: int = 3,
    tile: int = 256,
    levels: int = 3,
    seed: int = 0,
    mpp: float = 0.25,
    name: str = "slide",
) -> Path:
    """Write a small MIRAX slide that OpenSlide opens natively: ``folder/<name>.mrxs`` and
    the folder ``folder/<name>/`` with ``Slidedat.ini``, ``Index.dat`` and ``Data0000.dat``.

    Level 0 is `tiles_x` × `tiles_y` JPEG camera images of `tile`² pixels placed edge to
    edge (no overlap, one image per camera position); each further level halves the
    previous one, one image of it covering 2 × 2 images of the level above (padded with
    white at the edges). The position buffer (VIMSLIDE_POSITION_BUFFER) gives each camera
    image's level-0 position. Deterministic: the same arguments write the same bytes.
    Returns the path of the .mrxs.
    """
    if levels < 1 or tiles_x < 1 or tiles_y < 1 or tile < 16:
        raise ValueError("a MIRAX slide needs at least one level and one tile of 16 px")
    folder = Path(folder)
    data_dir = folder / name
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = tiles_x * tile, tiles_y * tile
    level_img = Image.fromarray(_he_pixels(rng, width, height, mpp))
    slide_id = f"{rng.integers(0, 2**63):016x}-{seed:04d}-synthetic-mirax"

    data = bytearray()
    index_levels: list[list[tuple[int, int, int]]] = []
    for n in range(levels):
        if n:
            level_img = level_img.reduce(2)
        concat = 2**n  # level-0 images per image of this level, in each direction
        entries = []
        for y in range(0, tiles_y, concat):
            for x in range(0, tiles_x, concat):
                # the image at level-0 image (x, y) starts at pixel (x, y) * tile / concat here
                left, top = x * tile // concat, y * tile // concat
                right = min(left + tile, level_img.width)
                bottom = min(top + tile, level_img.height)
                canvas = Image.new("RGB", (tile, tile), (255, 255, 255))  # glass past the edge
                canvas.paste(level_img.crop((left, top, right, bottom)), (0, 0))
                jpeg = _jpeg(np.asarray(canvas), quality=85)
                entries.append((y * tiles_x + x, len(data), len(jpeg)))
                data += jpeg
        index_levels.append(entries)
    positions = b"".join(
        _MIRAX_POSITION_RECORD.pack(1, x * tile, y * tile)
        for y in range(tiles_y)
        for x in range(tiles_x)
    )
    position = (len(data), len(positions))
    data += positions

    (data_dir / "Data0000.dat").write_bytes(bytes(data))
    (data_dir / "Index.dat").write_bytes(_mirax_index(slide_id, index_levels, position))
    ini = _mirax_slidedat(
        slide_id=slide_id, tiles_x=tiles_x, tiles_y=tiles_y, tile=tile, levels=levels, mpp=mpp
    )
    (data_dir / "Slidedat.ini").write_text(ini, encoding="ascii", newline="")
    mrxs = folder / f"{name}.mrxs"
    # OpenSlide only checks the name; a real .mrxs is a small, opaque viewer stub
    mrxs.write_bytes(b"MIRAX synthetic slide\r\n" + slide_id.encode("ascii") + b"\r\n")
    return mrxs
