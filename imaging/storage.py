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

Inside ``linking_sources()`` (``import_images --link``), a file given by its path outside
the media root is hashed and inspected as usual, but the store keeps an absolute symlink to
it instead of a copy: the original must stay where it is, readable by the web and worker
processes. Cleanup here only ever removes the link, never what it points to.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
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

_LINKING: contextvars.ContextVar[bool] = contextvars.ContextVar("link_sources", default=False)


@contextlib.contextmanager
def linking_sources() -> Iterator[None]:
    """Store files given by path as symlinks to them instead of copies, inside the block.

    A context, not an argument threaded through every ingest function: the ingest code is
    the same for copies and links, only where the bytes end up differs.
    """
    token = _LINKING.set(True)
    try:
        yield
    finally:
        _LINKING.reset(token)


def _link_target(src: Path | str | BinaryIO, media_root: Path) -> Path | None:
    """The original to link to, or None to copy: linking is off, `src` is a stream, or it
    lies under the media root (a zip unpacked in tmp/ is gone once ingested)."""
    if not _LINKING.get() or not isinstance(src, str | os.PathLike):
        return None
    target = Path(src).resolve()
    if target.is_relative_to(Path(media_root).resolve()):
        return None
    return target


def _hash_file(path: Path, max_bytes: int) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    for chunk in _read_chunks(path):
        size += len(chunk)
        if size > max_bytes:
            raise ImageRejected(f"file too large: the limit is {_human_bytes(max_bytes)}")
        digest.update(chunk)
    return digest.hexdigest(), size


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
    target = _link_target(src, media_root)
    if target is not None:
        os.close(fd)
        return _stage_link(target, temp_path, max_bytes)
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


def _stage_link(target: Path, temp_path: Path, max_bytes: int) -> StoredFile:
    """The temp file replaced by a symlink to `target` (keeping its suffix for OpenSlide)."""
    try:
        sha256, size = _hash_file(target, max_bytes)
        temp_path.unlink()
        os.symlink(target, temp_path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    return StoredFile(sha256=sha256, size=size, temp_path=temp_path)


def human_bytes(n: int) -> str:
    """`n` bytes for people: "512 bytes", "1.5 GiB"."""
    if n < 1024:
        return f"{n} bytes"
    exponent = min(3, int(math.log(n, 1024)))
    return f"{n / 1024**exponent:.4g} {('KiB', 'MiB', 'GiB')[exponent - 1]}"


_human_bytes = human_bytes


def relative_path_for(sha256: str, suffix: str) -> str:
    """``images/<sha[:2]>/<sha[2:4]>/<sha><suffix>`` (POSIX separators, relative to media root)."""
    if not _SHA_RE.match(sha256):
        raise ValueError("not a lowercase hex sha256")
    if not _SUFFIX_RE.match(suffix):
        raise ValueError(f"unsafe file suffix {suffix!r}")
    return str(PurePosixPath(IMAGES_DIR, sha256[:2], sha256[2:4], sha256 + suffix))


def _existing_copy(folder: Path, sha256: str) -> Path | None:
    """A file already stored for this content, whatever suffix it got (.jpg vs .jpeg).

    A link whose original is gone is no copy: it is removed (only the link), so that this
    file takes its place.
    """
    if not folder.is_dir():
        return None
    for entry in sorted(folder.iterdir()):
        stem, dot, ext = entry.name.partition(".")
        if stem == sha256 and dot and _SUFFIX_RE.match("." + ext):
            if entry.is_file():
                return entry
            if entry.is_symlink():
                entry.unlink(missing_ok=True)
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
        os.link(stored.temp_path, dest, follow_symlinks=False)  # a link stays a link
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
    the web server's upload temp files alike), and our staging folders; return how many."""
    tmp_dir = Path(media_root) / TMP_DIR
    if not tmp_dir.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for entry in tmp_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if entry.is_symlink():  # a link staged for --link: remove it, never its original
                if entry.lstat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
                continue
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                entry.unlink()
                removed += 1
            elif (
                entry.is_dir()
                and entry.name.startswith(TMP_FOLDER_PREFIXES)
                and entry.stat().st_mtime < cutoff
            ):
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
    return removed


# --------------------------------------------------------------------------- folders

# Staging folders in tmp/: a multi-file image being stored, a zip being unpacked.
TMP_FOLDER_PREFIXES = ("unit-", "unzip-")
_NAME_PART_RE = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME_PART = 100


def safe_member_name(name: str) -> str:
    """`name` (a relative path inside a multi-file image) made safe to store.

    Raises ImageRejected on an absolute path or a ``..`` component; other characters
    outside ``[A-Za-z0-9._-]`` become ``_`` and a leading dot does too, the same way in a
    MIRAX ``.mrxs`` name and its folder, so that they still match.
    """
    raw = name.replace("\\", "/")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if raw.startswith("/") or not parts or ".." in parts or ":" in parts[0]:
        raise ImageRejected("unsafe file name: a path inside the upload leaves its folder")
    cleaned = []
    for part in parts:
        part = _NAME_PART_RE.sub("_", part)[:_MAX_NAME_PART]
        cleaned.append("_" + part[1:] if part.startswith(".") else part)
    return "/".join(cleaned)


def folder_path_for(sha256: str) -> str:
    """``images/<sha[:2]>/<sha[2:4]>/<sha>``: where a multi-file image's folder lives."""
    if not _SHA_RE.match(sha256):
        raise ValueError("not a lowercase hex sha256")
    return str(PurePosixPath(IMAGES_DIR, sha256[:2], sha256[2:4], sha256))


class StagedFolder:
    """The files of one multi-file image (a DICOM series, a MIRAX slide) in a folder under
    ``tmp/``: inspect ``temp_path(main)``, then ``commit(main)`` renames the folder into place.

    Its sha256 is over the sorted (stored name, file sha256) list, so the same files give
    the same address however they arrived (a web upload, a folder, a zip).
    """

    def __init__(
        self, temp_dir: Path, media_root: Path, names: dict[str, str], files: dict[str, str]
    ) -> None:
        self.temp_dir = temp_dir
        self.media_root = Path(media_root)
        self.names = names  # member name -> stored name
        self.files = files  # stored name -> file sha256
        listing = "".join(f"{name}\t{sha}\n" for name, sha in sorted(files.items()))
        self.sha256 = hashlib.sha256(listing.encode()).hexdigest()
        self.size = sum((temp_dir / name).stat().st_size for name in files)
        self.relative_path: str | None = None
        self.created = False

    def temp_path(self, member: str) -> Path:
        """Where member `member` is now (until commit)."""
        return self.temp_dir / self.names[member]

    def commit(self, main: str) -> str:
        """Rename the folder to ``images/aa/bb/<sha>/`` (atomic; idempotent); return the
        relative path of member `main` inside it, the file OpenSlide opens."""
        if self.relative_path is None:
            folder = folder_path_for(self.sha256)
            dest = self.media_root / folder
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_dir() and not (dest / self.names[main]).exists():
                # its main file lost, or linked to an original that moved: these replace it
                shutil.rmtree(dest, ignore_errors=True)  # removes links, never originals
            if not dest.is_dir():
                try:
                    os.rename(self.temp_dir, dest)  # a directory rename is atomic
                    self.created = True
                except OSError:
                    if not dest.is_dir():
                        raise
                    # a concurrent upload of the same files won the race: theirs is ours
            self.relative_path = f"{folder}/{self.names[main]}"
        return self.relative_path

    def undo_commit(self) -> None:
        """Remove the committed folder if (and only if) this upload created it."""
        if self.created and self.relative_path is not None:
            shutil.rmtree(self.media_root / folder_path_for(self.sha256), ignore_errors=True)
            self.created = False
        self.relative_path = None


def _stage_member(
    src: Path | BinaryIO, dest: Path, max_bytes: int, file_mode: int, media_root: Path
) -> str:
    """Copy `src` to `dest` while hashing it, or (linking) make `dest` a link to it."""
    target = _link_target(src, media_root)
    if target is None:
        return _copy_hashed(src, dest, max_bytes, file_mode)
    sha256, _ = _hash_file(target, max_bytes)
    os.symlink(target, dest)
    return sha256


def _copy_hashed(src: Path | BinaryIO, dest: Path, max_bytes: int, file_mode: int) -> str:
    digest = hashlib.sha256()
    size = 0
    with open(dest, "xb") as out:
        for chunk in _read_chunks(src):
            size += len(chunk)
            if size > max_bytes:
                raise ImageRejected(f"file too large: the limit is {_human_bytes(max_bytes)}")
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(dest, file_mode)
    return digest.hexdigest()


@contextlib.contextmanager
def staged_folder(
    members: Iterable[tuple[str, Path | BinaryIO]],
    media_root: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    content_suffix: str | None = None,
    file_mode: int = 0o644,
) -> Iterator[StagedFolder]:
    """Copy (name, source) members into a new folder under ``media_root/tmp/`` while
    hashing them (inside `linking_sources`, link each one instead); the folder is always
    gone on exit unless committed.

    Names are relative paths kept as given (made safe by `safe_member_name`): MIRAX needs
    ``slide.mrxs`` beside ``slide/``. With `content_suffix` (``".dcm"``), files are named
    by their content instead (a DICOM series: names mean nothing, and a renamed copy of the
    series is still the same image); identical files are then kept once.
    """
    tmp_root = Path(media_root) / TMP_DIR
    tmp_root.mkdir(parents=True, exist_ok=True)
    temp_dir = Path(tempfile.mkdtemp(prefix=TMP_FOLDER_PREFIXES[0], dir=tmp_root))
    staged: StagedFolder | None = None
    try:
        names: dict[str, str] = {}
        files: dict[str, str] = {}
        for i, (name, src) in enumerate(members):
            if content_suffix is not None:
                part = temp_dir / f".part-{i}"
                sha = _stage_member(src, part, max_bytes, file_mode, media_root)
                stored = sha[:32] + content_suffix
                if stored in files:
                    part.unlink()
                else:
                    os.rename(part, temp_dir / stored)
            else:
                stored = safe_member_name(name)
                if stored.lower() in {n.lower() for n in files}:
                    raise ImageRejected(f"two files of one image are both named {stored!r}")
                (temp_dir / stored).parent.mkdir(parents=True, exist_ok=True)
                sha = _stage_member(src, temp_dir / stored, max_bytes, file_mode, media_root)
            names[name] = stored
            files[stored] = sha
        for folder in [temp_dir, *(p for p in temp_dir.rglob("*") if p.is_dir())]:
            os.chmod(folder, 0o755)  # mkdtemp's 0700 would hide it from other readers
        staged = StagedFolder(temp_dir, media_root, names, files)
        yield staged
    finally:
        if staged is None or not staged.created:
            shutil.rmtree(temp_dir, ignore_errors=True)
