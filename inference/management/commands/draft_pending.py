from django.core.management.base import BaseCommand, CommandError

from annotations.models import Project
from inference.services import drafts_run


class Command(BaseCommand):
    help = (
        "Draft a project's queued tasks in this process, in batches (for sites that run "
        "drafting as a batch job on a GPU node)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True)
        parser.add_argument("--batch-size", type=int, default=None)

    def handle(self, *args, project, batch_size, **options):
        target = Project.objects.filter(name=project).first()
        if target is None:
            raise CommandError(f"No project named {project!r}.")
        if batch_size is not None and batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        stats = drafts_run(project_id=target.pk, batch_size=batch_size, max_seconds=float("inf"))
        self.stdout.write(
            f"drafted {stats.drafts}, failed {stats.failed}, in {stats.batches} batch(es) "
            f"of up to {batch_size or 'the default'}; {stats.wall_seconds:.1f} s, "
            f"{100 * stats.idle_share:.0f} % of it with no generate call running"
        )
        if stats.failed:
            raise CommandError(f"{stats.failed} task(s) failed; see the project page.")
