from django.core.management.base import BaseCommand

from annotations.counters import recount


class Command(BaseCommand):
    help = "Recompute the per-project counters (tasks by state, labels) from the rows: a repair."

    def add_arguments(self, parser):
        parser.add_argument("project_ids", nargs="*", type=int, help="only these projects")

    def handle(self, *args, project_ids, **options):
        n = recount(project_ids or None)
        self.stdout.write(f"Recounted {n} project{'s' if n != 1 else ''}.")
