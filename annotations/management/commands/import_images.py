import contextlib
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotations import manifests, services
from annotations.models import Project
from imaging.storage import linking_sources


def _folder_files(folder: Path, prefix: str):
    for child in sorted(folder.rglob("*")):
        rel = child.relative_to(folder)
        if child.is_file() and not any(p.startswith(".") for p in rel.parts):
            yield f"{prefix}{rel.as_posix()}", child


def iter_named_files(paths: list[str]):
    """(name, path) of the files named and below the folders named, in a stable order.

    Names are what grouping sees: a file's own name, or a path that starts with the
    folder's name (a MIRAX ``slide.mrxs`` and ``slide/Slidedat.ini`` stay together). A
    ``.mrxs`` named alone brings the folder of the same name beside it.
    """
    folders = {Path(raw).resolve() for raw in paths if Path(raw).is_dir()}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from _folder_files(path, f"{path.resolve().name}/")
            continue
        yield path.name, path
        companion = path.with_suffix("")
        if path.suffix.lower() == ".mrxs" and companion.is_dir():
            if companion.resolve() not in folders:  # not named as well
                yield from _folder_files(companion, f"{companion.name}/")


class Progress:
    """What the command shows while it imports.

    On a terminal (stderr a tty): one line redrawn in place,
    ``[####    ] 120/1000 imported 118, duplicate 1, rejected 1``; lines for rejected files
    only, above it, when stdout is that terminal too. Otherwise one line per file on stdout
    (a log, a pipe, cron), as each is decided.
    """

    WIDTH = 30
    REDRAW_S = 0.1

    def __init__(self, command: BaseCommand, total: int, refused_rows: dict) -> None:
        self.out, self.err = command.stdout, command.stderr
        self.bar = self.err.isatty()
        self.every_line = not (self.bar and self.out.isatty())
        self.total = max(total, 1)
        self.done = 0
        self.counts = {"imported": 0, "duplicate": 0, "rejected": 0}
        self.refused_rows = refused_rows
        self.drawn_at = 0.0
        self.imported: list[services.IngestResult] = []

    def __call__(self, result: services.IngestResult, files: int) -> None:
        self.counts[result.status] += 1
        if result.status == "imported":
            self.imported.append(result)
        self.done += files
        if self.every_line or result.status == "rejected":
            self.clear()
            self.out.write(self.line(result))
        self.draw()

    def line(self, result: services.IngestResult) -> str:
        path = result.source or Path(result.name)
        line = f"{result.status:9} {path}"
        if result.source is not None and result.name != result.source.name:
            line += f" [{result.name}]"
        if result.task is not None:
            line += f" (task {result.task.pk})"
        if result.message:
            line += f": {result.message}"
        problem = self.refused_rows.get(str(path)) or self.refused_rows.get(path.name)
        if problem is not None and result.status == "imported":
            line += f" (without manifest fields: line {problem.line} was rejected)"
        return line

    def summary(self) -> str:
        return ", ".join(f"{status} {n}" for status, n in self.counts.items())

    def draw(self, *, final: bool = False) -> None:
        now = time.monotonic()
        if not self.bar or (not final and now - self.drawn_at < self.REDRAW_S):
            return
        self.drawn_at = now
        done = self.total if final else min(self.done, self.total)
        filled = self.WIDTH * done // self.total
        bar = "#" * filled + " " * (self.WIDTH - filled)
        self.err.write(f"\r[{bar}] {done}/{self.total} {self.summary()}", ending="")
        self.err.flush()

    def clear(self) -> None:
        if self.bar and self.drawn_at:
            self.err.write("\r\x1b[K", ending="")

    def finish(self) -> None:
        self.draw(final=True)
        if self.bar:
            self.err.write("")


def unnamed_by_manifest(rows: manifests.Manifest, imported: list[services.IngestResult]):
    """The imported files the manifest names nowhere: their tasks got no fields from it."""
    for result in imported:
        if result.task is not None and result.task.metadata:
            continue
        if result.source is not None and rows.fields_for(result.source) is not None:
            continue  # named, with no values (or a refused row, reported already)
        yield result.source or result.name


class Command(BaseCommand):
    help = (
        "Import image files or folders into a project: a progress bar on a terminal, "
        "otherwise one line per file. Exits non-zero if any file was rejected. A rerun "
        "imports only what is new. With --link, files are referenced where they are "
        "instead of copied: the originals must stay in place, readable by the web and "
        "worker processes."
    )

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+")
        parser.add_argument("--project", required=True)
        parser.add_argument(
            "--no-draft", action="store_true", help="create tasks without queueing drafts"
        )
        parser.add_argument(
            "--manifest",
            help="CSV, or JSON Lines (.jsonl), with a `file` column or key (name or path) and "
            "fields: case_id, patient_id, site, stain, body_site, reference, or any other "
            "such as organ, which prompt templates can use as {organ}. Names that match no "
            "file, and files the manifest does not name, are reported as warnings",
        )
        parser.add_argument(
            "--link",
            action="store_true",
            help="reference the files in place (a symlink in the store) instead of copying "
            "them; they are still read once to hash and check them. The originals must not "
            "be moved, renamed or deleted, and must stay readable by the web and worker "
            "processes: an image whose original is gone cannot be shown or drafted. "
            "Importing the same file again (with or without --link) restores it",
        )

    def handle(self, *args, paths, project, no_draft, manifest, link=False, **options):
        target = Project.objects.filter(name=project).first()
        if target is None:
            raise CommandError(f"No project named {project!r}.")
        try:
            rows = manifests.manifest_read(Path(manifest)) if manifest else manifests.Manifest()
        except manifests.ManifestError as exc:
            raise CommandError(str(exc)) from None
        refused_rows = {}  # file -> why its manifest row was left out
        for problem in rows.problems:
            self.stdout.write(f"{'rejected':9} {problem}")
            if problem.field != "file" and problem.file:
                refused_rows[problem.file] = refused_rows[Path(problem.file).name] = problem
        files = list(iter_named_files(paths))
        progress = Progress(self, len(files), refused_rows)
        for _, path in files:
            if not path.exists():
                progress(
                    services.IngestResult(path.name, "rejected", "no such file", source=path), 1
                )
        # Grouped: the files of a DICOM series or a MIRAX slide become one image.
        with linking_sources() if link else contextlib.nullcontext():
            services.images_ingest(
                project=target,
                files=[(name, path) for name, path in files if path.exists()],
                enqueue=not no_draft,
                metadata_for=rows.fields_for,
                progress=progress,
            )
        progress.finish()
        if manifest:
            self.manifest_warnings(rows, files, progress.imported)
        counts = progress.counts
        summary = ", ".join(f"{n} {status}" for status, n in counts.items())
        if rows.problems:
            summary += f", {len(rows.problems)} manifest row(s) rejected"
        self.stdout.write(summary)
        if counts["rejected"]:
            raise CommandError(f"{counts['rejected']} file(s) rejected; the others were kept.")
        if rows.problems:
            raise CommandError(
                f"{len(rows.problems)} manifest row(s) rejected; their files were imported "
                "without those fields."
            )

    def manifest_warnings(self, rows, files, imported) -> None:
        """Names on either side that found no partner: warnings, the import stands."""
        given = [str(path) for _, path in files] + [name for name, _ in files]
        for name in rows.unmatched(given):
            self.stdout.write(f"{'warning':9} the manifest names {name}, which matches no file")
        for path in unnamed_by_manifest(rows, imported):
            self.stdout.write(f"{'warning':9} {path} is not named in the manifest")
