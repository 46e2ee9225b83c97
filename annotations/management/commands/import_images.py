from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotations import manifests, services
from annotations.models import Project


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


class Command(BaseCommand):
    help = "Import image files or folders into a project; one line per file."

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+")
        parser.add_argument("--project", required=True)
        parser.add_argument(
            "--no-draft", action="store_true", help="create tasks without queueing drafts"
        )
        parser.add_argument(
            "--manifest",
            help="CSV with a `file` column (name or path) and fields such as organ or "
            "procedure, which prompt templates can use as {organ}",
        )

    def handle(self, *args, paths, project, no_draft, manifest, **options):
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
        counts = {"imported": 0, "duplicate": 0, "rejected": 0}
        files = list(iter_named_files(paths))
        results = [
            services.IngestResult(str(path), "rejected", "no such file", source=path)
            for _, path in files
            if not path.exists()
        ]
        # Grouped: the files of a DICOM series or a MIRAX slide become one image.
        results += services.images_ingest(
            project=target,
            files=[(name, path) for name, path in files if path.exists()],
            enqueue=not no_draft,
            metadata_for=rows.fields_for,
        )
        for result in results:
            path = result.source or Path(result.name)
            counts[result.status] += 1
            line = f"{result.status:9} {path}"
            if result.source is not None and result.name != result.source.name:
                line += f" [{result.name}]"
            if result.task is not None:
                line += f" (task {result.task.pk})"
            if result.message:
                line += f": {result.message}"
            problem = refused_rows.get(str(path)) or refused_rows.get(path.name)
            if problem is not None and result.status == "imported":
                line += f" (without manifest fields: line {problem.line} was rejected)"
            self.stdout.write(line)
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
