from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotations import manifests, services
from annotations.models import Project


def iter_files(paths: list[str]):
    """Files named, and files below folders named, in a stable order; hidden files skipped."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and not any(
                    p.startswith(".") for p in child.relative_to(path).parts
                ):
                    yield child
        else:
            yield path


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
        for path in iter_files(paths):
            if not path.exists():
                result = services.IngestResult(str(path), "rejected", "no such file")
            else:
                result = services.image_ingest(
                    project=target,
                    source=path,
                    original_name=path.name,
                    enqueue=not no_draft,
                    metadata=rows.fields_for(path),
                )
            counts[result.status] += 1
            line = f"{result.status:9} {path}"
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
