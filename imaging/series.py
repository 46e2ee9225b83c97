"""Which files belong together: the instances of a DICOM series, a MIRAX .mrxs and its folder.

A whole-slide image may be several files. DICOM WSI keeps each pyramid level, the thumbnail,
the label and the overview in instance files of one series (OpenSlide finds them in the
directory of the instance it opens); MIRAX keeps a ``slide.mrxs`` beside a folder ``slide/``
with ``Slidedat.ini`` and ``Data*.dat``. `group_files` turns the files of one upload into
units, each stored and inspected as one image. No Django.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pydicom
from pydicom.errors import InvalidDicomError

DICOM_WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image
# ImageType value 3 of a DICOM WSI instance: what the instance holds.
VOLUME, THUMBNAIL, LABEL, OVERVIEW = "VOLUME", "THUMBNAIL", "LABEL", "OVERVIEW"
# Photos of the glass slide: they can show the patient's name. Never stored, never an image.
NEVER_STORED = frozenset({LABEL, OVERVIEW})
_PART_NAMES = {
    THUMBNAIL: ("a thumbnail", "thumbnails"),
    LABEL: ("a label image", "label images"),
    OVERVIEW: ("an overview image", "overview images"),
}
_WITH_VOLUMES = "import it together with the series' volume files"
MIRAX_WITHOUT_FOLDER = (
    "a MIRAX .mrxs without its data folder: import the .mrxs together with the folder of "
    "the same name (a zip of both works)"
)
MIRAX_WITHOUT_MRXS = (
    "the data folder of a MIRAX slide without its .mrxs file: import it together with the "
    ".mrxs of the same name (a zip of both works)"
)
_DICOM_TAGS = [
    "SOPClassUID",
    "SeriesInstanceUID",
    "ImageType",
    "TotalPixelMatrixColumns",
    "TotalPixelMatrixRows",
]
# pydicom raises many types on hostile headers; all mean "not a DICOM file we can group".
_DICOM_ERRORS = (InvalidDicomError, OSError, ValueError, TypeError, KeyError, IndexError, EOFError)


@dataclass(frozen=True)
class Member:
    """One file of a unit: its name inside the unit (a relative POSIX path) and where it is."""

    name: str
    path: Path


@dataclass(frozen=True)
class Unit:
    """Files stored and inspected together as one image, or a reason they cannot be."""

    name: str  # how results call it: a file name, or "DICOM series (3 files)"
    kind: str  # "file" (stored alone, as before), "dicom" or "mirax" (stored as a folder)
    members: tuple[Member, ...]
    main: str = ""  # the member OpenSlide opens
    problem: str = ""  # non-empty: refused with this message before anything is stored
    left_out: tuple[str, ...] = field(default=())  # label/overview instances, never stored

    @property
    def main_member(self) -> Member:
        return next(m for m in self.members if m.name == self.main)


@dataclass(frozen=True)
class DicomHeader:
    sop_class: str
    series_uid: str
    image_type: tuple[str, ...]
    pixels: int  # total pixel matrix: the largest VOLUME is level 0

    @property
    def part(self) -> str:
        """VOLUME, THUMBNAIL, LABEL or OVERVIEW (ImageType value 3), "" if absent."""
        return self.image_type[2] if len(self.image_type) > 2 else ""


def is_dicom(path: Path) -> bool:
    """Whether `path` starts like a DICOM file (the 'DICM' magic after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def dicom_header(path: Path) -> DicomHeader | None:
    """The grouping fields of a DICOM file, read without its pixels; None if unreadable."""
    if not is_dicom(path):
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_DICOM_TAGS)
        image_type = ds.get("ImageType") or ()
        if isinstance(image_type, str):
            image_type = image_type.split("\\")
        cols = int(ds.get("TotalPixelMatrixColumns") or 0)
        rows = int(ds.get("TotalPixelMatrixRows") or 0)
        return DicomHeader(
            sop_class=str(ds.get("SOPClassUID") or ""),
            series_uid=str(ds.get("SeriesInstanceUID") or ""),
            image_type=tuple(str(v).strip().upper() for v in image_type),
            pixels=cols * rows,
        )
    except _DICOM_ERRORS:
        return None


def missing_parts_message(parts: Iterable[str]) -> str:
    """Why instances of a DICOM series without any VOLUME instance cannot be imported."""
    present = sorted({p for p in parts if p in _PART_NAMES}, key=list(_PART_NAMES).index)
    if len(present) == 1:
        return f"{_PART_NAMES[present[0]][0]} of a DICOM series: {_WITH_VOLUMES}"
    if present:
        names = [_PART_NAMES[p][1] for p in present]
        listed = ", ".join(names[:-1]) + " and " + names[-1]
        return (
            f"{listed} of a DICOM series without its volume files: import them together "
            "with the series' volume files"
        )
    return f"a DICOM series without whole-slide image data: {_WITH_VOLUMES}"


def dicom_part_problem(path: Path) -> str:
    """Why the DICOM instance at `path` cannot be opened as the image ("" if it may be).

    Only a VOLUME instance may be: a thumbnail, label or overview opened on its own fails
    with OpenSlide's bare "No pyramid levels found", and opened beside its series it would
    make the label the task's image.
    """
    header = dicom_header(path)
    if header is None or header.part in ("", VOLUME):
        return ""
    return missing_parts_message([header.part])


def one_level_problem() -> str:
    """The message for a series whose largest level is a resampled (lower) one."""
    return (
        "one level of a DICOM series (not its full-resolution level): import it together "
        "with the series' other volume files"
    )


# --------------------------------------------------------------------------- grouping


def _clean(name: str) -> str:
    """`name` as a relative POSIX path: backslashes to slashes, no leading ./ or /."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts) or "unnamed"


def group_files(files: Iterable[tuple[str, Path]]) -> list[Unit]:
    """Group (name, path) pairs of one upload, folder or zip into units, in input order.

    Names are relative paths as the user gave them (``slide.mrxs``, ``slide/Data0000.dat``);
    they matter for MIRAX only. DICOM files group by SeriesInstanceUID (their names do not
    matter); a ``.mrxs`` takes the files under the folder of its stem; everything else is
    a unit of its own.
    """
    entries = [(_clean(name), Path(path)) for name, path in files]
    claimed: set[int] = set()
    units: list[tuple[int, Unit]] = []  # (position of first member, unit)

    # MIRAX: a .mrxs and the folder of the same name beside it.
    for i, (name, _) in enumerate(entries):
        if not name.lower().endswith(".mrxs") or i in claimed:
            continue
        units.append((i, _mirax_unit(i, entries, claimed)))
    # Folders holding a Slidedat.ini that no .mrxs claimed: MIRAX data without its .mrxs.
    orphan_dirs: dict[str, list[int]] = {}
    ini_dirs = {
        str(PurePosixPath(n).parent)
        for j, (n, _) in enumerate(entries)
        if j not in claimed and PurePosixPath(n).name.lower() == "slidedat.ini"
    }
    for i, (name, _) in enumerate(entries):
        parent = str(PurePosixPath(name).parent)
        if i not in claimed and parent in ini_dirs and parent != ".":
            orphan_dirs.setdefault(parent, []).append(i)
    for folder, indexes in orphan_dirs.items():
        claimed.update(indexes)
        members = tuple(Member(entries[j][0], entries[j][1]) for j in indexes)
        units.append((indexes[0], Unit(folder + "/", "mirax", members, problem=MIRAX_WITHOUT_MRXS)))

    # DICOM: instances of one series together.
    series: dict[str, list[tuple[int, DicomHeader]]] = {}
    for i, (_, path) in enumerate(entries):
        if i in claimed:
            continue
        header = dicom_header(path)
        if header is not None and header.series_uid:
            series.setdefault(header.series_uid, []).append((i, header))
    for instances in series.values():
        claimed.update(i for i, _ in instances)
        units.append((instances[0][0], _dicom_unit(instances, entries)))

    for i, (name, path) in enumerate(entries):
        if i not in claimed:
            units.append((i, Unit(PurePosixPath(name).name, "file", (Member(name, path),), name)))
    return [unit for _, unit in sorted(units, key=lambda pair: pair[0])]


def _mirax_unit(i: int, entries: list[tuple[str, Path]], claimed: set[int]) -> Unit:
    name, path = entries[i]
    mrxs = PurePosixPath(name)
    folder = mrxs.parent
    stem = mrxs.stem

    def rel(n: str) -> str:
        return str(PurePosixPath(n).relative_to(folder)) if str(folder) != "." else n

    prefix = f"{folder}/{stem}/" if str(folder) != "." else f"{stem}/"
    companions = [
        j for j, (n, _) in enumerate(entries) if n.startswith(prefix) and j not in claimed
    ]
    has_ini = any(
        PurePosixPath(entries[j][0]).name.lower() == "slidedat.ini"
        and str(PurePosixPath(entries[j][0]).parent) + "/" == prefix
        for j in companions
    )
    display = mrxs.name
    if has_ini:
        claimed.add(i)
        claimed.update(companions)
        members = (Member(rel(name), path),) + tuple(
            Member(rel(entries[j][0]), entries[j][1]) for j in companions
        )
        return Unit(display, "mirax", members, main=rel(name))
    # A flat upload (a browser sends file names without folders): the .mrxs with a
    # Slidedat.ini and Data*.dat beside it, when this .mrxs is the only one there.
    siblings = [
        j
        for j, (n, _) in enumerate(entries)
        if j != i and j not in claimed and PurePosixPath(n).parent == folder
    ]
    others = [j for j in siblings if entries[j][0].lower().endswith(".mrxs")]
    ini = [j for j in siblings if PurePosixPath(entries[j][0]).name.lower() == "slidedat.ini"]
    data = [j for j in siblings if PurePosixPath(entries[j][0]).suffix.lower() == ".dat"]
    if ini and not others:
        claimed.add(i)
        claimed.update(ini[:1] + data)
        members = (Member(mrxs.name, path),) + tuple(
            Member(f"{stem}/{PurePosixPath(entries[j][0]).name}", entries[j][1])
            for j in ini[:1] + data
        )
        return Unit(display, "mirax", members, main=mrxs.name)
    claimed.add(i)
    return Unit(display, "mirax", (Member(mrxs.name, path),), problem=MIRAX_WITHOUT_FOLDER)


def _dicom_unit(instances: list[tuple[int, DicomHeader]], entries: list[tuple[str, Path]]) -> Unit:
    members, left_out, seen = [], [], set()
    for i, header in instances:
        name, path = entries[i]
        if header.part in NEVER_STORED:
            left_out.append(name)
            continue
        # one folder holds the series: names from different folders must not collide
        short = PurePosixPath(name).name
        if short.lower() in seen:
            short = f"{len(seen)}-{short}"
        seen.add(short.lower())
        members.append((Member(short, path), header))
    n = len(instances)
    first = PurePosixPath(entries[instances[0][0]][0]).name
    display = first if n == 1 else f"DICOM series ({n} files)"
    headers = [h for _, h in instances]
    if any(h.sop_class != DICOM_WSI_SOP_CLASS for h in headers):
        problem = "DICOM files other than whole-slide images are not supported yet"
        return Unit(display, "dicom", tuple(m for m, _ in members), problem=problem)
    volumes = [(m, h) for m, h in members if h.part == VOLUME]
    if not volumes:
        return Unit(
            display,
            "dicom",
            tuple(m for m, _ in members),
            problem=missing_parts_message(h.part for h in headers),
            left_out=tuple(left_out),
        )
    main, base = max(volumes, key=lambda pair: pair[1].pixels)
    problem = one_level_problem() if "RESAMPLED" in base.image_type[3:4] else ""
    return Unit(
        display,
        "dicom",
        tuple(m for m, _ in members),
        main=main.name,
        problem=problem,
        left_out=tuple(left_out),
    )
