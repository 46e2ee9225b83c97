"""Zip archives of images, unpacked safely: every entry is checked before anything is written.

A zip is how a MIRAX slide (``slide.mrxs`` plus its folder) or a DICOM series travels
through a browser, which sends file names without folders. No Django.
"""

from __future__ import annotations

import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from imaging.inspect import ImageRejected
from imaging.storage import CHUNK_SIZE, human_bytes

ZIP_SUFFIX = ".zip"
_SKIPPED_PARTS = ("__MACOSX",)  # macOS resource forks beside every file


@dataclass(frozen=True)
class ZipLimits:
    max_entries: int = 10_000
    max_total_bytes: int = 40 * 1024**3  # declared uncompressed size of all entries
    max_entry_bytes: int = 20 * 1024**3


def is_zip(name: str) -> bool:
    """Whether an upload is meant as a zip archive (`unpack_zip` says if it is a good one)."""
    return name.lower().endswith(ZIP_SUFFIX)


def _refused(why: str) -> ImageRejected:
    return ImageRejected(f"zip refused: {why}; nothing was imported from it")


def _entry_problem(info: zipfile.ZipInfo) -> str:
    """Why entry `info` may not be unpacked ("" if it may)."""
    name = info.filename
    shown = name if len(name) <= 80 else name[:77] + "..."
    shown = "".join(ch if ch.isprintable() else "?" for ch in shown)
    mode = info.external_attr >> 16
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (parts and ":" in parts[0]):
        return f"the entry {shown!r} has an absolute path"
    if ".." in parts:
        return f"the entry {shown!r} points outside the archive (..)"
    if stat.S_ISLNK(mode):
        return f"the entry {shown!r} is a symbolic link"
    kind = stat.S_IFMT(mode)  # 0 when the archiver recorded no file type (writestr, Windows)
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        return f"the entry {shown!r} is not a regular file"
    if info.flag_bits & 0x1:
        return f"the entry {shown!r} is encrypted"
    if "\0" in name:
        return f"the entry {shown!r} has a NUL in its name"
    return ""


def _skipped(name: str) -> bool:
    parts = [p for p in name.split("/") if p]
    return any(p.startswith(".") or p in _SKIPPED_PARTS for p in parts)


def unpack_zip(
    path: Path, dest: Path, *, limits: ZipLimits = ZipLimits()
) -> list[tuple[str, Path]]:
    """Unpack the zip at `path` into the empty folder `dest`; return (name, path) per file.

    Refuses the whole archive (ImageRejected, nothing written) when an entry is absolute,
    climbs out with ``..``, is a link or a device, is encrypted, or when the number of
    entries or their declared uncompressed sizes pass `limits` (a zip bomb is refused
    before a byte is written). While writing, an entry that inflates beyond its declared
    size is cut off and refused too. Hidden files and ``__MACOSX/`` are skipped.
    """
    dest = Path(dest)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ImageRejected("not a zip archive: the file is damaged or incomplete") from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_entries:
            raise _refused(f"it has {len(infos)} entries; at most {limits.max_entries} are allowed")
        files: list[zipfile.ZipInfo] = []
        seen: set[str] = set()
        total = 0
        for info in infos:
            problem = _entry_problem(info)
            if problem:
                raise _refused(problem)
            name = info.filename.replace("\\", "/")
            if info.is_dir() or _skipped(name):
                continue
            if info.file_size > limits.max_entry_bytes:
                raise _refused(
                    f"an entry would unpack to {human_bytes(info.file_size)}; the limit per "
                    f"file is {human_bytes(limits.max_entry_bytes)}"
                )
            total += info.file_size
            if total > limits.max_total_bytes:
                raise _refused(
                    f"its contents would unpack to more than {human_bytes(limits.max_total_bytes)}"
                )
            key = str(PurePosixPath(name)).lower()
            if key in seen:
                raise _refused("two entries have the same name")
            seen.add(key)
            files.append(info)
        out: list[tuple[str, Path]] = []
        root = dest.resolve()
        for index, info in enumerate(files):
            name = str(PurePosixPath(info.filename.replace("\\", "/")))
            # stored under a plain numbered name: the entry's own name never touches the disk
            target = root / f"{index:06d}"
            _extract(archive, info, target)
            out.append((name, target))
    return out


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    written = 0
    try:
        with archive.open(info) as src, open(target, "xb") as dst:
            while chunk := src.read(CHUNK_SIZE):
                written += len(chunk)
                if written > info.file_size:
                    raise _refused("an entry unpacks to more than its declared size")
                dst.write(chunk)
    except ImageRejected:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise _refused(f"an entry could not be unpacked ({type(exc).__name__})") from exc
