"""Celery tasks: thin; ids in, one service called."""

from celery import shared_task


@shared_task(
    name="inference.tasks.draft_task",
    queue="gpu",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def draft_task(task_id: int) -> None:
    from inference.services import draft_run  # loads the model lazily, in the worker

    draft_run(task_id=task_id)
