"""Celery tasks: thin; ids in, one service called."""

import logging

from celery import shared_task
from django.conf import settings

from annotations import tus
from annotations.comparisons import comparison_drafts_sweep
from annotations.exportjobs import export_job_run, export_jobs_sweep
from annotations.previews import preview_make
from annotations.queues import (
    CLAIM_SWEEP_TASK,
    COMPARISON_DRAFT_TASK,
    DEFAULT_QUEUE,
    DRAFT_TASK,
    EXPORT_SWEEP_TASK,
    EXPORT_TASK,
    GPU_QUEUE,
    PREVIEW_TASK,
    SWEEP_TASK,
    TMP_SWEEP_TASK,
)
from annotations.services import claims_sweep_expired, tasks_sweep_stuck, uploads_sweep_tmp
from inference.services import comparison_draft_run, drafts_run

log = logging.getLogger(__name__)


@shared_task(
    name=DRAFT_TASK,
    queue=GPU_QUEUE,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def draft_task(task_id: int) -> None:
    """Wake the drafting loop. The message names a task, but the loop drains the queue in
    batches: a message whose task another batch already took has nothing left to do.
    The task id is logged, so one task can be followed from upload to draft."""
    log.info("draft message for task %s", task_id)
    drafts_run()


@shared_task(
    name=COMPARISON_DRAFT_TASK,
    queue=GPU_QUEUE,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def comparison_draft_task(draft_id: int) -> None:
    """Draft one candidate draft of a blind comparison (idempotent: a drafted one is left
    as it is)."""
    log.info("comparison draft %s", draft_id)
    comparison_draft_run(draft_id)


@shared_task(name=SWEEP_TASK, queue=DEFAULT_QUEUE, ignore_result=True)
def sweep_task() -> None:
    """Put back tasks whose drafting worker was lost and send the messages the broker missed
    (celery beat runs this every minute, on the `celery` queue: a hung draft cannot stop it)."""
    tasks_sweep_stuck(lease_seconds=settings.MEDANNOT_DRAFT_LEASE_SECONDS)
    comparison_drafts_sweep(lease_seconds=settings.MEDANNOT_DRAFT_LEASE_SECONDS)


@shared_task(name=TMP_SWEEP_TASK, queue=DEFAULT_QUEUE, ignore_result=True)
def sweep_tmp_task() -> None:
    """Delete the temporary files of interrupted uploads, and the resumable uploads left
    unfinished past their expiry (celery beat, every hour)."""
    uploads_sweep_tmp(older_than_s=settings.MEDANNOT_TMP_MAX_AGE_SECONDS)
    tus.uploads_sweep_expired()


@shared_task(name=CLAIM_SWEEP_TASK, queue=DEFAULT_QUEUE, ignore_result=True)
def sweep_claims_task() -> None:
    """Delete review claims abandoned long enough ago (celery beat, every hour)."""
    claims_sweep_expired(grace_s=settings.MEDANNOT_CLAIM_SWEEP_GRACE_SECONDS)


@shared_task(name=PREVIEW_TASK, queue=DEFAULT_QUEUE, ignore_result=True)
def preview_task(image_id: int) -> None:
    """Render an image's preview and first viewer tiles after import, on the CPU queue,
    so that no page view waits for them (idempotent: what exists is kept)."""
    preview_make(image_id=image_id)


@shared_task(name=EXPORT_TASK, queue=DEFAULT_QUEUE, ignore_result=True)
def export_task(job_id: int) -> None:
    """Write an export job's file, on the CPU queue (idempotent: only a queued job is run)."""
    export_job_run(job_id=job_id)


@shared_task(name=EXPORT_SWEEP_TASK, queue=DEFAULT_QUEUE, ignore_result=True)
def sweep_exports_task() -> None:
    """Delete export files past their days and fail exports whose worker was lost (celery
    beat, every hour)."""
    export_jobs_sweep(lost_after_s=settings.CELERY_TASK_TIME_LIMIT + 60)
