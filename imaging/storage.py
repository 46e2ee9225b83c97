"""Content-addressed storage: uploads stream into ``tmp/`` while hashed, then move
atomically to ``images/aa/bb/<sha256><suffix>``. Nothing half-written is ever visible.

Typical caller (a Django service)::

    with staged_upload(upload, media_root, suffix=safe_suffix(upload.name)) as staged:
        info = inspect_image(staged.temp_path)          # raises ImageRejected
        try:
            with transaction.atomic():
                row = Image.objects.create(sha256=staged.sha256, ...)
                row.file = staged.commit(suffix_for(info, upload.name))
                row.save()
        except Exception:
            staged.undo_commit()   # removes the stored file only if this upload created it
            raise
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from imaging.inspect import ImageInfo, ImageRejected

DEFAULT_MAX_BYTES = 20 * 1024**3
CHUNK_SIZE = 1024 * 1024
TMP_DIR = "tmp"
IMAGES_DIR = "images"

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
    """Delete files left in ``tmp/`` by a crashed process or an interrupted upload (ours and
    the web server's upload temp files alike); return how many."""
    tmp_dir = Path(media_root) / TMP_DIR
    if not tmp_dir.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for entry in tmp_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                entry.unlink()
                removed += 1
    return removed
