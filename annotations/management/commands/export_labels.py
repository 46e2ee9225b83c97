import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotations import exports
from annotations.models import Project


class Command(BaseCommand):
    help = "Export a project's validated labels."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True)
        parser.add_argument("--format", default="jsonl", choices=list(exports.FORMATS))
        parser.add_argument("--out", default="-", help="output file, or - for stdout")
        parser.add_argument(
            "--readings", action="store_true", help="every reading of a double-read task"
        )
        parser.add_argument(
            "--history", action="store_true", help="each label's earlier versions (the audit)"
        )

    def handle(self, *args, project, format, out, readings, history, **options):
        chosen = {"readings": readings, "history": history}
        target = Project.objects.filter(name=project).first()
        if target is None:
            raise CommandError(f"No project named {project!r}.")
        if out == "-":
            count = exports.write_export(target, sys.stdout, format=format, **chosen)
        else:
            path = Path(out)
            tmp = path.with_name(path.name + ".part")
            with tmp.open("w", encoding="utf-8", newline="") as fh:
                count = exports.write_export(target, fh, format=format, **chosen)
            tmp.replace(path)  # a reader never sees a half-written export
        self.stderr.write(f"exported {count} label(s) from {target.name!r}")
