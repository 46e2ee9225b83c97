from django.core.management.base import BaseCommand

from annotations import insights, tasklist
from annotations.counters import recount
from annotations.models import Project
from annotations.services import agreement_recount


class Command(BaseCommand):
    help = (
        "Recompute the per-project counters (tasks by state and review, labels, each "
        "reader's labels, the agreement between readers), the insights rollups (readings and "
        "drafting by day) and the task list's columns from the rows: a repair."
    )

    def add_arguments(self, parser):
        parser.add_argument("project_ids", nargs="*", type=int, help="only these projects")

    def handle(self, *args, project_ids, **options):
        n = recount(project_ids or None)
        projects = Project.objects.filter(readings_per_task__gt=1)
        for project in projects.filter(pk__in=project_ids) if project_ids else projects:
            agreement_recount(project)
        insights.recount(project_ids or None)
        tasklist.columns_rebuild(project_ids or None)
        self.stdout.write(f"Recounted {n} project{'s' if n != 1 else ''}.")
