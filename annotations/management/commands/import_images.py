import csv
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


def read_manifest(path: Path) -> dict[str, dict[str, str]]:
    """Rows of a CSV manifest by file (as written, and by name): its other columns."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "file" not in reader.fieldnames:
                raise CommandError(f"{path}: the manifest needs a `file` column")
            rows = {}
            for row in reader:
                name = (row.pop("file") or "").strip()
                values = {k.strip(): (v or "").strip() for k, v in row.items() if k and v}
                if name:
                    rows[name] = rows[Path(name).name] = values
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CommandError(f"{path}: cannot read the manifest: {exc}") from None


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
        fields = read_manifest(Path(manifest)) if manifest else {}
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
                    metadata=fields.get(str(path)) or fields.get(path.name),
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
