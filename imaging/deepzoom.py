"""Deep Zoom tiles of slides and large photos, for the viewer (OpenSeadragon).

No Django. Three parts:

- `SlideHandles`: a bounded, thread-safe LRU of open slides, all sharing one OpenSlide tile
  cache, each with its `DeepZoomGenerator`; a handle is closed when evicted (once no request
  uses it) and dropped after a read error (OpenSlide fails every later call on it).
- `render_tile` / `dzi_xml`: one tile as a metadata-free sRGB JPEG, and the .dzi descriptor.
- `TileStore`: rendered tiles on local disk under a size limit, written through a temporary
  file and a rename, the oldest evicted first.

TIFF pyramids (generic TIFF, Aperio SVS) with JPEG, deflate or raw tiles are read without
OpenSlide's pixel path where it is exact (`TiffPyramid`): their tiles decoded by Pillow,
kept decoded in a shared LRU, and cut into Deep Zoom tiles with numpy. OpenSlide's
per-pixel compositing costs more than decoding the source tile; a self-check against
OpenSlide at open time turns the fast path off for any file where the two disagree.

Photos (JPEG, PNG, TIFF...) open as a `PhotoSlide`: oriented and colour-managed like their
preview, with an in-memory pyramid of halvings so that zoomed-out tiles stay cheap.
Associated images (label, macro) are never read, and no slide property is served.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import queue
import re
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openslide
import tifffile
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image, ImageCms

from imaging.inspect import DECODE_ERRORS, ImageInfo, ImageRejected, clean_error
from imaging.pixels import SRGB, encode_jpeg, render_preview

TILE_SIZE = 254
OVERLAP = 1  # 254 + 2 × 1 = 256: tiles are at most 256 px, a power of two as OSD likes
TILE_FORMAT = "jpeg"
_PHOTO_SMALLEST_LEVEL = 256  # the photo pyramid halves until its long side is this or less
_WHOLE_PHOTO = 1 << 30  # "no limit" for render_preview: the photo at its own size
_SRGB_ICC = ImageCms.ImageCmsProfile(SRGB).tobytes()
_READ_ERRORS = (openslide.OpenSlideError, Image.DecompressionBombError, *DECODE_ERRORS)


class SlideUnreadable(ImageRejected):
    """The stored file cannot be opened or read (lost or damaged); the message is safe to show."""


class NoSuchTile(LookupError):
    """A Deep Zoom level, column or row outside the image."""


def _unreadable(path: Path, exc: BaseException) -> SlideUnreadable:
    if not path.is_file():  # OpenSlide reports a missing file as an unsupported format
        return SlideUnreadable("the stored file is missing")
    if isinstance(exc, ImageRejected):
        return SlideUnreadable(exc.message)
    return SlideUnreadable(clean_error(exc, path))


# --------------------------------------------------------------------------- photos


class PhotoSlide(openslide.AbstractSlide):
    """A photo as a slide: the decoded picture (EXIF orientation applied, sRGB) and its
    halvings, so that a zoomed-out Deep Zoom tile never resizes the whole photo."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        info = ImageInfo(
            kind="photo", format="", width=1, height=1, levels=1, mpp_x=None, mpp_y=None
        )
        level = render_preview(path, info, max_size=_WHOLE_PHOTO)
        self._levels = [level]
        while max(level.size) > _PHOTO_SMALLEST_LEVEL:
            level = level.reduce(2)
            self._levels.append(level)
        w0, h0 = self._levels[0].size
        self._downsamples = tuple((w0 / im.width + h0 / im.height) / 2 for im in self._levels)

    @classmethod
    def detect_format(cls, filename) -> str | None:  # not used: photos are known by kind
        return None

    def close(self) -> None:
        self._levels = []

    @property
    def level_count(self) -> int:
        return len(self._levels)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple(im.size for im in self._levels)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._downsamples

    @property
    def properties(self) -> Mapping[str, str]:
        return {}

    @property
    def associated_images(self) -> Mapping[str, Image.Image]:
        return {}

    @property
    def nbytes(self) -> int:
        return sum(im.width * im.height * 3 for im in self._levels)

    def get_best_level_for_downsample(self, downsample: float) -> int:
        # exact comparison: a level a hair too small would leave a tile a pixel short
        return max(i for i, ds in enumerate(self._downsamples) if i == 0 or ds <= downsample)

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> Image.Image:
        picture = self._levels[level]
        ds = self._downsamples[level]
        x, y = round(location[0] / ds), round(location[1] / ds)
        return picture.crop((x, y, x + size[0], y + size[1])).convert("RGBA")


# --------------------------------------------------------------------------- TIFF fast path

_FAST_VENDORS = frozenset({"generic-tiff", "aperio"})
_JPEG, _NONE, _DEFLATE, _ADOBE_DEFLATE = 7, 1, 8, 32946
_RGB, _YCBCR = 2, 6
_SELF_CHECK_TOLERANCE = 3.0  # mean absolute difference per channel, out of 255
_FAST_ERRORS = (*_READ_ERRORS, zlib.error)


class DecodedTiles:
    """Decoded source tiles of TIFF pyramids, least recently used first out, by bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._tiles: OrderedDict[tuple, tuple[Image.Image, int]] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple) -> Image.Image | None:
        with self._lock:
            found = self._tiles.get(key)
            if found is None:
                return None
            self._tiles.move_to_end(key)
            return found[0]

    def put(self, key: tuple, tile: Image.Image, nbytes: int) -> None:
        with self._lock:
            if key in self._tiles:
                return
            self._tiles[key] = (tile, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes and len(self._tiles) > 1:
                _key, (_old, size) = self._tiles.popitem(last=False)
                self._bytes -= size


@dataclass(frozen=True)
class _TiffLevel:
    width: int
    height: int
    tile_w: int
    tile_h: int
    cols: int
    offsets: tuple[int, ...]
    counts: tuple[int, ...]
    compression: int
    rgb_jpeg: bool  # JPEG tiles holding RGB, not YCbCr (Aperio): tell the decoder
    tables: bytes | None
    downsample: int  # exact: only such levels are read here


class TiffPyramid:
    """The tiles of a tiled TIFF pyramid read straight from the file (see module docstring).
    `probe` returns None for any file it does not fully understand."""

    _ids = itertools.count()

    def __init__(
        self, path: Path, levels: dict[int, _TiffLevel], memo: DecodedTiles, background
    ) -> None:
        self.uid = next(self._ids)
        self.levels = levels
        self.memo = memo
        self.background = background
        self._fd = os.open(path, os.O_RDONLY)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)

    @classmethod
    def probe(
        cls, path: Path, slide: openslide.AbstractSlide, generator: DeepZoomGenerator, memo
    ) -> TiffPyramid | None:
        """A fast reader for `slide` if it is a plain tiled TIFF pyramid and reads exactly as
        OpenSlide does (checked on two tiles); else None. Never raises."""
        try:
            if slide.properties.get(openslide.PROPERTY_NAME_VENDOR) not in _FAST_VENDORS:
                return None
            levels = cls._levels(path, slide)
            if not levels:
                return None
            background = _slide_background(slide)
            fast = cls(path, levels, memo, background)
        except Exception:  # an optimisation must never make a readable slide unreadable
            return None
        if not fast._agrees_with_openslide(generator):
            fast.close()
            return None
        return fast

    @staticmethod
    def _levels(path: Path, slide: openslide.AbstractSlide) -> dict[int, _TiffLevel]:
        found: dict[int, _TiffLevel] = {}
        with tifffile.TiffFile(path) as tif:
            pages = [
                p
                for p in tif.pages
                if p.is_tiled
                and p.tiledepth == 1
                and p.samplesperpixel == 3
                and p.bitspersample == 8
                and int(p.planarconfig) == 1
            ]
            for level, (w, h) in enumerate(slide.level_dimensions):
                matches = [p for p in pages if (p.imagewidth, p.imagelength) == (w, h)]
                if len(matches) != 1:
                    continue
                page = matches[0]
                compression, photometric = int(page.compression), int(page.photometric)
                plain = compression in (_NONE, _DEFLATE, _ADOBE_DEFLATE)
                if plain and (photometric != _RGB or int(page.predictor) != 1):
                    continue
                if compression == _JPEG and photometric not in (_RGB, _YCBCR):
                    continue
                if compression not in (_JPEG, _NONE, _DEFLATE, _ADOBE_DEFLATE):
                    continue
                ds = slide.level_downsamples[level]
                if ds != round(ds):  # OpenSlide would read between pixels: let it
                    continue
                found[level] = _TiffLevel(
                    width=w,
                    height=h,
                    tile_w=page.tilewidth,
                    tile_h=page.tilelength,
                    cols=-(-w // page.tilewidth),
                    offsets=tuple(page.dataoffsets),
                    counts=tuple(page.databytecounts),
                    compression=compression,
                    rgb_jpeg=compression == _JPEG and photometric == _RGB,
                    tables=page.jpegtables,
                    downsample=round(ds),
                )
        return found

    def _agrees_with_openslide(self, generator: DeepZoomGenerator) -> bool:
        checked = 0
        for level in (generator.level_count - 1, generator.level_count - 2):
            if level < 0:
                continue
            cols, rows = generator.level_tiles[level]
            address = (cols // 2, rows // 2)
            try:
                ours = self.tile(generator, level, address)
                theirs = generator.get_tile(level, address)
            except _FAST_ERRORS:
                return False
            if ours is None:
                continue
            if ours.size != theirs.size:
                return False
            diff = np.abs(np.asarray(ours, np.int16) - np.asarray(theirs, np.int16)).mean()
            if diff > _SELF_CHECK_TOLERANCE:
                return False
            checked += 1
        return checked > 0

    def tile(self, generator: DeepZoomGenerator, level: int, address: tuple[int, int]):
        """The Deep Zoom tile as an RGB image, or None where this reader cannot be exact
        (the caller asks OpenSlide)."""
        (x0, y0), slide_level, (w, h) = generator.get_tile_coordinates(level, address)
        lvl = self.levels.get(slide_level)
        if lvl is None or x0 % lvl.downsample or y0 % lvl.downsample:
            return None
        region = self._region(lvl, slide_level, x0 // lvl.downsample, y0 // lvl.downsample, w, h)
        z_size = generator.get_tile_dimensions(level, address)
        if region.size != z_size:
            region.thumbnail(z_size, Image.Resampling.LANCZOS)  # as DeepZoomGenerator does
        return region

    def _region(self, lvl: _TiffLevel, level: int, x: int, y: int, w: int, h: int) -> Image.Image:
        tw, th = lvl.tile_w, lvl.tile_h
        x_end, y_end = min(x + w, lvl.width), min(y + h, lvl.height)
        spans = [
            (tx, ty)
            for ty in range(y // th, (y_end - 1) // th + 1)
            for tx in range(x // tw, (x_end - 1) // tw + 1)
        ]
        covered = x_end - x == w and y_end - y == h
        covered = covered and all(lvl.counts[ty * lvl.cols + tx] for tx, ty in spans)
        # background only where a tile is missing (the scanner left it out) or off the level
        out = Image.new("RGB", (w, h), None if covered else self.background)
        for tx, ty in spans:
            src = self._source_tile(lvl, level, ty * lvl.cols + tx)
            if src is not None:
                # pasted whole: what falls outside `out` (edge padding too) is clipped
                out.paste(src, (tx * tw - x, ty * th - y))
        return out

    def _source_tile(self, lvl: _TiffLevel, level: int, index: int) -> Image.Image | None:
        key = (self.uid, level, index)
        found = self.memo.get(key)
        if found is not None:
            return found
        count = lvl.counts[index]
        if count == 0:
            return None
        data = os.pread(self._fd, count, lvl.offsets[index])
        if len(data) != count:
            raise OSError("the slide file is shorter than its tile table says")
        size = (lvl.tile_w, lvl.tile_h)
        if lvl.compression == _JPEG:
            if lvl.tables:
                data = lvl.tables[:-2] + data[2:]  # the shared tables, then this tile's scan
            # Pillow's JPEG decoder straight on the bytes (no marker parsing in Python); the
            # input colour space is named for Aperio's RGB tiles (no colour transform)
            jpegmode = "RGB" if lvl.rgb_jpeg else ""
            tile = Image.frombytes("RGB", size, data, "jpeg", "RGB", jpegmode)
        else:
            raw = data if lvl.compression == _NONE else zlib.decompress(data)
            tile = Image.frombytes("RGB", size, raw[: size[0] * size[1] * 3])
        self.memo.put(key, tile, size[0] * size[1] * 4)
        return tile


def _slide_background(slide: openslide.AbstractSlide) -> tuple[int, int, int]:
    value = slide.properties.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR, "ffffff")
    return tuple(bytes.fromhex(value[:6]))  # type: ignore[return-value]


# --------------------------------------------------------------------------- open handles


@dataclass(eq=False)
class OpenedSlide:
    """One open slide or photo and its Deep Zoom generator; `users` counts requests in it."""

    path: Path
    slide: openslide.AbstractSlide
    generator: DeepZoomGenerator
    to_srgb: ImageCms.ImageCmsTransform | None = None
    nbytes: int = 0  # decoded pixels held in memory (photos)
    fast: TiffPyramid | None = None
    users: int = 0
    evicted: bool = False
    closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                self.slide.close()
                if self.fast is not None:
                    self.fast.close()


def open_image(path: Path, kind: str) -> tuple[openslide.AbstractSlide, int]:
    """Open a stored slide (OpenSlide) or photo (`PhotoSlide`); SlideUnreadable if it fails.
    Also returns how many bytes of decoded pixels the handle holds."""
    path = Path(path)
    try:
        if kind == "slide":
            return openslide.OpenSlide(path), 0
        photo = PhotoSlide(path)
        return photo, photo.nbytes
    except (*_READ_ERRORS, ImageRejected) as exc:
        raise _unreadable(path, exc) from exc


def _srgb_transform(slide: openslide.AbstractSlide) -> ImageCms.ImageCmsTransform | None:
    """A transform from the slide's embedded profile to sRGB, built once per handle."""
    try:
        profile = slide.color_profile
        if profile is None:
            return None
        return ImageCms.buildTransform(profile, SRGB, "RGB", "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None  # a broken profile: untagged pixels are the best guess


class SlideHandles:
    """A bounded LRU of open slides, safe to share between threads.

    At most `max_handles` stay open, and photos hold at most `max_photo_bytes` of decoded
    pixels between them; all slides share one OpenSlide cache of `cache_bytes` (each handle
    would otherwise keep its own 32 MiB). An evicted handle is closed as soon as the last
    request using it is done.
    """

    def __init__(
        self,
        *,
        max_handles: int = 16,
        cache_bytes: int = 256 * 1024**2,
        max_photo_bytes: int = 1024**3,
    ) -> None:
        if max_handles < 1:
            raise ValueError("max_handles must be at least 1")
        self.max_handles = max_handles
        self.max_photo_bytes = max_photo_bytes
        self._cache = openslide.OpenSlideCache(cache_bytes)
        self._decoded = DecodedTiles(cache_bytes)
        self._lock = threading.Lock()
        self._open: OrderedDict[str, OpenedSlide] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, path: Path | str) -> bool:
        return str(path) in self._open

    @contextlib.contextmanager
    def use(self, path: Path, kind: str) -> Iterator[OpenedSlide]:
        """The open slide at `path`, opened on first use. A SlideUnreadable raised inside
        the block (a read error) drops the handle: the next request opens the file afresh."""
        opened = self._acquire(Path(path), kind)
        try:
            yield opened
        except SlideUnreadable:
            self._drop(opened)
            raise
        finally:
            self._release(opened)

    def drop(self, path: Path | str) -> None:
        """Forget the handle of `path` (closed once no request uses it)."""
        with self._lock:
            opened = self._open.get(str(path))
        if opened is not None:
            self._drop(opened)

    def close_all(self) -> None:
        with self._lock:
            victims = list(self._open.values())
        for opened in victims:
            self._drop(opened)

    def _acquire(self, path: Path, kind: str) -> OpenedSlide:
        key = str(path)
        with self._lock:
            opened = self._open.get(key)
            if opened is not None:
                self._open.move_to_end(key)
                opened.users += 1
                return opened
        # Opened outside the lock: decoding a photo or reading a slide's header can take time.
        opened = self._open_new(path, kind)
        with self._lock:
            existing = self._open.get(key)
            if existing is None:
                self._open[key] = opened
                victims = self._evict_locked(keep=key)
                loser = None
            else:  # another thread opened it meanwhile: use theirs
                loser, opened, victims = opened, existing, []
                self._open.move_to_end(key)
            opened.users += 1
        if loser is not None:
            loser.close()
        for victim in victims:
            victim.close()
        return opened

    def _open_new(self, path: Path, kind: str) -> OpenedSlide:
        slide, nbytes = open_image(path, kind)
        try:
            slide.set_cache(self._cache)
            generator = DeepZoomGenerator(
                slide, tile_size=TILE_SIZE, overlap=OVERLAP, limit_bounds=True
            )
        except (*_READ_ERRORS, ImageRejected) as exc:
            slide.close()
            raise _unreadable(path, exc) from exc
        fast = TiffPyramid.probe(path, slide, generator, self._decoded) if kind == "slide" else None
        return OpenedSlide(path, slide, generator, _srgb_transform(slide), nbytes, fast)

    def _evict_locked(self, *, keep: str) -> list[OpenedSlide]:
        """Pop the least recently used handles over the limits; return those to close now."""
        victims = []
        photo_bytes = sum(o.nbytes for o in self._open.values())
        for key in list(self._open):
            over = len(self._open) > self.max_handles or photo_bytes > self.max_photo_bytes
            if not over:
                break
            if key == keep:
                continue
            opened = self._open.pop(key)
            photo_bytes -= opened.nbytes
            opened.evicted = True
            if opened.users == 0:
                victims.append(opened)
        return victims

    def _drop(self, opened: OpenedSlide) -> None:
        with self._lock:
            if self._open.get(str(opened.path)) is opened:
                del self._open[str(opened.path)]
            opened.evicted = True
            close_now = opened.users == 0
        if close_now:
            opened.close()

    def _release(self, opened: OpenedSlide) -> None:
        with self._lock:
            opened.users -= 1
            close_now = opened.evicted and opened.users == 0
        if close_now:
            opened.close()


# --------------------------------------------------------------------------- tiles


def dzi_xml(opened: OpenedSlide) -> str:
    """The .dzi descriptor. Reads one pixel of the smallest level first, so that a slide
    whose tiles no longer decode fails here (SlideUnreadable) rather than tile by tile."""
    slide = opened.slide
    level = slide.level_count - 1
    w, h = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    try:
        slide.read_region((int(w // 2 * ds), int(h // 2 * ds)), level, (1, 1))
    except _READ_ERRORS as exc:
        raise _unreadable(opened.path, exc) from exc
    return opened.generator.get_dzi(TILE_FORMAT)


def check_address(opened: OpenedSlide, level: int, col: int, row: int) -> None:
    """NoSuchTile unless (level, col, row) is a tile of this image."""
    generator = opened.generator
    if not 0 <= level < generator.level_count:
        raise NoSuchTile(f"no level {level}")
    cols, rows = generator.level_tiles[level]
    if not (0 <= col < cols and 0 <= row < rows):
        raise NoSuchTile(f"no tile {col}_{row} at level {level}")


def render_tile(opened: OpenedSlide, level: int, col: int, row: int, *, quality: int) -> bytes:
    """One Deep Zoom tile as sRGB JPEG bytes with no metadata (at most 256 × 256 px).

    NoSuchTile for an address outside the image; SlideUnreadable when the pixels cannot be
    read (the caller drops the handle).
    """
    check_address(opened, level, col, row)
    tile = None
    if opened.fast is not None:
        try:
            tile = opened.fast.tile(opened.generator, level, (col, row))
        except _FAST_ERRORS:
            tile = None  # OpenSlide decides: it reads it, or says why not
    try:
        if tile is None:
            tile = opened.generator.get_tile(level, (col, row))
        if opened.to_srgb is not None:
            tile = ImageCms.applyTransform(tile, opened.to_srgb)
    except _READ_ERRORS as exc:
        raise _unreadable(opened.path, exc) from exc
    return _encode(tile, quality)


def _encode(tile: Image.Image, quality: int) -> bytes:
    """Like `pixels.encode_jpeg` (pixels and the sRGB profile only), without its copy: the
    tile is ours, made from pixels alone, so clearing its `info` is all it takes."""
    if tile.mode != "RGB":
        return encode_jpeg(tile, quality=quality)
    tile.info = {}
    buf = io.BytesIO()
    tile.save(buf, "JPEG", quality=quality, icc_profile=_SRGB_ICC)
    return buf.getvalue()


def small_levels(opened: OpenedSlide, max_side: int = 1024) -> Iterator[tuple[int, int, int]]:
    """(level, col, row) of every tile of the levels at most `max_side` px on their long
    side: what a viewer asks for first, worth rendering ahead of the first page view."""
    generator = opened.generator
    for level, (w, h) in enumerate(generator.level_dimensions):
        if max(w, h) > max_side:
            break
        cols, rows = generator.level_tiles[level]
        for row in range(rows):
            for col in range(cols):
                yield level, col, row


# --------------------------------------------------------------------------- tiles on disk

_KEY_PART = re.compile(r"[0-9a-z_.-]+")


class TileStore:
    """Rendered tiles on local disk, at most about `max_bytes` in all.

    Keys are relative POSIX paths (`<image>/<quality>/<level>/<col>_<row>.jpeg`). Writes go
    through a temporary file and a rename, so a reader never sees half a tile. The total is
    tracked in-process and the folder is scanned only on the first write, every
    `scan_every` writes, and when the tracked total passes the limit; a scan over the limit
    deletes the oldest tiles (by mtime) down to 90 % of it. `write_later` hands a tile to
    one writer thread, so a request answers without waiting for the file system.
    """

    def __init__(
        self, root: Path, max_bytes: int, *, scan_every: int = 1000, queue_size: int = 256
    ) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.scan_every = max(1, scan_every)
        self._root = str(self.root)
        self._lock = threading.Lock()
        self._sweeping = threading.Lock()
        self._total: int | None = None  # unknown until the first scan
        self._writes = 0
        # write-behind: a request hands its tile to one writer thread and answers at once
        self._queue_size = queue_size
        self._queue: queue.Queue | None = None
        self._queue_pid = 0
        self._pending: dict[str, bytes] = {}

    @staticmethod
    def key(image: str, quality: int, level: int, col: int, row: int) -> str:
        if not _KEY_PART.fullmatch(image):
            raise ValueError("unsafe tile key")
        return f"{image}/{quality}/{level}/{col}_{row}.jpeg"

    def read(self, key: str) -> bytes | None:
        pending = self._pending.get(key)
        if pending is not None:
            return pending
        try:
            with open(os.path.join(self._root, key), "rb") as fh:
                return fh.read()
        except OSError:
            return None

    def write_later(self, key: str, data: bytes) -> None:
        """Queue `data` for the writer thread (readers see it at once); written now when
        the queue is full, so a burst cannot grow memory without bound."""
        if self.max_bytes <= 0:
            return
        writes = self._writer_queue()
        with self._lock:
            self._pending[key] = data
        try:
            writes.put_nowait(key)
        except queue.Full:
            self._write_pending(key)

    def flush(self) -> None:
        """Wait until every queued tile is on disk."""
        if self._queue is not None and self._queue_pid == os.getpid():
            self._queue.join()

    def _writer_queue(self) -> queue.Queue:
        if self._queue is None or self._queue_pid != os.getpid():  # none yet, or forked
            with self._lock:
                if self._queue is None or self._queue_pid != os.getpid():
                    self._pending = {}
                    self._queue = queue.Queue(self._queue_size)
                    self._queue_pid = os.getpid()
                    threading.Thread(
                        target=self._writer, args=(self._queue,), name="tile-writer", daemon=True
                    ).start()
        return self._queue

    def _writer(self, writes: queue.Queue) -> None:
        while True:
            key = writes.get()
            try:
                self._write_pending(key)
            finally:
                writes.task_done()

    def _write_pending(self, key: str) -> None:
        data = self._pending.get(key)
        if data is not None:
            self.write(key, data)
        with self._lock:
            self._pending.pop(key, None)

    def write(self, key: str, data: bytes) -> None:
        """Store `data` under `key`; never raises (a tile that cannot be kept is re-rendered)."""
        if self.max_bytes <= 0:
            return
        path = os.path.join(self._root, key)
        # private to this process and thread: no other writer can open the same temporary file
        tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.part"
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError:
            return
        with self._lock:
            self._writes += 1
            if self._total is not None:
                self._total += len(data)
            due = (
                self._total is None
                or self._total > self.max_bytes
                or self._writes % self.scan_every == 0
            )
        if due:
            self.sweep()

    @property
    def total_bytes(self) -> int | None:
        return self._total

    def sweep(self) -> int:
        """Scan the folder, evict the oldest tiles if it is over the limit; return its size.
        One sweep at a time: a thread that finds one running goes on without waiting."""
        if not self._sweeping.acquire(blocking=False):
            return self._total or 0
        try:
            files = []
            total = 0
            for dirpath, _dirs, names in os.walk(self.root):
                for name in names:
                    p = os.path.join(dirpath, name)
                    try:
                        st = os.stat(p)
                    except OSError:
                        continue
                    files.append((st.st_mtime, st.st_size, p))
                    total += st.st_size
            if total > self.max_bytes:
                target = self.max_bytes * 9 // 10
                files.sort()
                for _mtime, size, p in files:
                    if total <= target:
                        break
                    with contextlib.suppress(OSError):
                        os.unlink(p)
                        total -= size
            with self._lock:
                self._total = total
            return total
        finally:
            self._sweeping.release()
