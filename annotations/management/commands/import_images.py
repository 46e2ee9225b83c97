from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotations import services
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

    def handle(self, *args, paths, project, no_draft, **options):
        target = Project.objects.filter(name=project).first()
        if target is None:
            raise CommandError(f"No project named {project!r}.")
        counts = {"imported": 0, "duplicate": 0, "rejected": 0}
        for path in iter_files(paths):
            if not path.exists():
                result = services.IngestResult(str(path), "rejected", "no such file")
            else:
                result = services.image_ingest(
                    project=target, source=path, original_name=path.name, enqueue=not no_draft
                )
            counts[result.status] += 1
            line = f"{result.status:9} {path}"
            if result.task is not None:
                line += f" (task {result.task.pk})"
            if result.message:
                line += f": {result.message}"
            self.stdout.write(line)
        summary = ", ".join(f"{n} {status}" for status, n in counts.items())
        self.stdout.write(summary)
        if counts["rejected"]:
            raise CommandError(f"{counts['rejected']} file(s) rejected; the others were kept.")
