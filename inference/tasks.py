"""Celery tasks: thin; ids in, one service called."""

from celery import shared_task
from django.conf import settings


@shared_task(
    name="inference.tasks.draft_task",
    queue="gpu",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def draft_task(task_id: int) -> None:
    """Wake the drafting loop. The message names a task, but the loop drains the queue in
    batches: a message whose task another batch already took has nothing left to do."""
    from inference.services import drafts_run  # loads the model lazily, in the worker

    drafts_run()


@shared_task(name="inference.tasks.sweep_task", ignore_result=True)
def sweep_task() -> None:
    """Put back tasks whose drafting worker was lost (celery beat runs this every minute)."""
    from annotations.services import tasks_sweep_stuck

    tasks_sweep_stuck(lease_seconds=settings.MEDANNOT_DRAFT_LEASE_SECONDS)
