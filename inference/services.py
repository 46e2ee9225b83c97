"""Drafting: claimed tasks in, stored drafts (or visible failures) out, in batches.

A `DraftingLoop` keeps the device busy: while one batch generates, a preparer thread
claims the next batch and builds its inputs (images read, slide patches cut, tensors
built), and a recorder thread writes finished drafts to the database.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection

import imaging
from annotations import comparisons, services
from annotations.models import ComparisonDraft, ComparisonState, Draft, PromptTemplate, Task
from annotations.prompts import prompt_for
from imaging import patches
from inference.backends import BackendError, DraftRequest, DraftResult, get_backend

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One claimed task on its way through the loop."""

    task_id: int
    attempt: int
    claimed_at: float
    request: DraftRequest | None = None
    regions: list[dict] = field(default_factory=list)
    prompt_template_id: int | None = None
    error: str = ""


@dataclass
class LoopStats:
    drafts: int = 0
    failed: int = 0
    batches: int = 0
    wall_seconds: float = 0.0
    generate_seconds: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def idle_share(self) -> float:
        """Share of the loop's wall time with no generate call running."""
        if not self.wall_seconds:
            return 0.0
        return max(0.0, 1 - self.generate_seconds / self.wall_seconds)


def job_prepare(task: Task, template: PromptTemplate | None) -> Job:
    """Read the task's image (or cut its slide's patches) and render its prompt.

    Touches no database (task.project and task.image come loaded), so jobs of a batch can
    be prepared in parallel threads: image decoding and OpenSlide release the GIL.
    """
    job = Job(task_id=task.pk, attempt=task.attempt, claimed_at=time.perf_counter())
    try:
        image = task.image
        path = Path(settings.MEDIA_ROOT) / image.file
        if image.kind == "slide":
            plan = patches.plan_patches(
                path, patches.PatchSettings.from_dict(task.project.slide_settings)
            )
            pictures = patches.read_patches(path, plan)
            job.regions = [region.as_dict() for region in plan.regions]
            if not pictures:  # no tissue found: the model sees the whole slide, shrunk
                pictures = [imaging.load_for_model(path, image.info(), size=_model_size())]
        else:
            pictures = [imaging.load_for_model(path, image.info(), size=_model_size())]
        prompt = prompt_for(modality=task.project.modality, template=template, fields=task.metadata)
        job.prompt_template_id = template.pk if template else None
        job.request = DraftRequest(
            images=pictures,
            instruction=prompt.instruction,
            system=prompt.system,
            max_new_tokens=settings.MEDANNOT_MAX_NEW_TOKENS,
        )
    except imaging.ImageRejected as exc:
        job.error = f"image unreadable: {exc}"
    except (ValueError, OSError) as exc:
        job.error = f"could not prepare the image: {exc}"
    return job


def _model_size() -> int:
    return settings.MEDANNOT_MODEL_IMAGE_SIZE


def jobs_prepare(tasks: list[Task], pool: ThreadPoolExecutor | None = None) -> list[Job]:
    """Prepare a batch's jobs; in parallel when given a thread pool."""
    templates = {t.project_id: t.project.current_prompt() for t in tasks}  # one query a project
    args = [(task, templates[task.project_id]) for task in tasks]
    if pool is None:
        return [job_prepare(*a) for a in args]
    return list(pool.map(lambda a: job_prepare(*a), args))


def _draft_fields(job: Job, result: DraftResult) -> dict[str, Any]:
    return dict(
        text=result.text.strip(),
        thinking=result.thinking,
        truncated=result.truncated,
        backend=result.backend,
        model_id=result.model_id,
        model_revision=result.model_revision,
        prompt=result.prompt,
        system_prompt=job.request.system,
        instruction=job.request.instruction,
        prompt_template_id=job.prompt_template_id,
        regions=job.regions,
        generation=result.generation,
        tokens_in=result.tokens_in,
        tokens_out=result.tokens_out,
        seconds=result.seconds,
        seconds_total=time.perf_counter() - job.claimed_at,
    )


def job_record(job: Job, result: DraftResult | BackendError | None) -> Draft | None:
    """Store a job's outcome: its draft, or its failure shown on the task."""
    if isinstance(result, DraftResult) and not result.text.strip():
        note = " (the token limit was hit inside a thinking trace)" if result.thinking else ""
        result = BackendError(f"the model returned an empty draft{note}", permanent=True)
    if isinstance(result, DraftResult):
        return services.draft_record(
            task_id=job.task_id, attempt=job.attempt, fields=_draft_fields(job, result)
        )
    error = job.error or str(result or "no result")
    services.draft_fail(task_id=job.task_id, attempt=job.attempt, error=error)
    return None


def _is_oom(exc: BackendError) -> bool:
    return not exc.permanent and "memory" in str(exc).lower()


class DraftingLoop:
    """Drain queued tasks in batches of `batch_size`, preparing the next batch while the
    current one generates. One bad image fails its own task, never its batch-mates; out of
    memory halves the batch, down to a single task that then fails with the error shown."""

    def __init__(
        self,
        *,
        batch_size: int | None = None,
        project_id: int | None = None,
        backend=None,
        max_seconds: float | None = None,
        max_batches: int | None = None,
    ) -> None:
        self.batch_size = max(1, batch_size or settings.MEDANNOT_BATCH_SIZE)
        self.project_id = project_id
        self.backend = backend
        # Stop claiming after this long, so that a Celery task stays inside its time limit.
        self.max_seconds = (
            max_seconds if max_seconds is not None else settings.MEDANNOT_LOOP_SECONDS
        )
        self.max_batches = max_batches
        self.stats = LoopStats()

    # The three stages ---------------------------------------------------------------------

    def _prepare_batches(self, out: queue.Queue, stop: threading.Event, started: float) -> None:
        pool = ThreadPoolExecutor(settings.MEDANNOT_PREPARE_THREADS, "draft-read")
        try:
            batches = 0
            while not stop.is_set():
                if time.perf_counter() - started > self.max_seconds:
                    break
                if self.max_batches is not None and batches >= self.max_batches:
                    break
                tasks = services.tasks_claim(limit=self.batch_size, project_id=self.project_id)
                if not tasks:
                    break
                batches += 1
                jobs = jobs_prepare(tasks, pool)
                ready = [job for job in jobs if not job.error]
                for job in jobs:
                    if job.error:
                        out.put(("failed", job))
                if ready:
                    out.put(("batch", ready, self._prepare_inputs(ready)))
        except Exception:
            log.exception("the drafting preparer failed")
        finally:
            pool.shutdown()
            out.put(("done",))
            connection.close()

    def _prepare_inputs(self, jobs: list[Job]):
        try:
            return self.backend.prepare([job.request for job in jobs])
        except BackendError:
            return None  # _generate prepares again, narrowing down to the culprit

    def _record(self, results: queue.Queue) -> None:
        try:
            while (item := results.get()) is not None:
                job, result = item
                try:
                    draft = job_record(job, result)
                except Exception:
                    log.exception("task %s: could not store its outcome", job.task_id)
                    continue
                if draft is not None:
                    self.stats.drafts += 1
                else:
                    self.stats.failed += 1
        finally:
            connection.close()

    def _generate(self, jobs: list[Job], prepared=None) -> list[DraftResult | BackendError]:
        """Results for jobs, in order; a batch-level error is narrowed down to its jobs."""
        started = time.perf_counter()
        try:
            if prepared is None:
                prepared = self.backend.prepare([job.request for job in jobs])
            results = self.backend.generate(prepared)
        except BackendError as exc:
            self.stats.generate_seconds += time.perf_counter() - started
            if len(jobs) == 1:
                return [exc]
            if _is_oom(exc):
                log.warning("out of memory at batch size %s: halving", len(jobs))
            half = len(jobs) // 2
            return self._generate(jobs[:half]) + self._generate(jobs[half:])
        self.stats.generate_seconds += time.perf_counter() - started
        self.stats.batches += 1
        self.stats.batch_sizes.append(len(jobs))
        return list(results)

    # The loop -----------------------------------------------------------------------------

    def run(self) -> LoopStats:
        if self.backend is None:
            self.backend = get_backend()
        started = time.perf_counter()
        batches: queue.Queue = queue.Queue(maxsize=1)  # one batch prepared ahead
        results: queue.Queue = queue.Queue()
        stop = threading.Event()
        preparer = threading.Thread(
            target=self._prepare_batches, args=(batches, stop, started), name="draft-prepare"
        )
        recorder = threading.Thread(target=self._record, args=(results,), name="draft-record")
        preparer.start()
        recorder.start()
        unfinished: list[Job] = []  # claimed, not drafted: given back if the loop stops early
        failure: BaseException | None = None
        try:
            while (item := batches.get())[0] != "done":
                if item[0] == "failed":
                    results.put((item[1], None))
                    continue
                _, unfinished, prepared = item
                for job, result in zip(
                    unfinished, self._generate(unfinished, prepared), strict=True
                ):
                    results.put((job, result))
                unfinished = []
        except BaseException as exc:  # an error, the soft time limit
            failure = exc
            raise
        finally:
            stop.set()
            # The batch being drafted when the loop broke counts as a lost attempt: a task
            # that breaks its worker each time then fails instead of coming back forever.
            interrupted, unfinished = unfinished, []
            while preparer.is_alive():  # unblock a preparer waiting on a full queue
                try:
                    item = batches.get(timeout=0.1)
                except queue.Empty:
                    continue
                unfinished += item[1] if item[0] == "batch" else []
                if item[0] == "failed":
                    results.put((item[1], None))
            preparer.join()
            results.put(None)
            recorder.join()
            lost = f"{type(failure).__name__}: {failure}"[:500] if failure else ""
            for job in interrupted:
                services.draft_release(task_id=job.task_id, attempt=job.attempt, lost=lost)
            for job in unfinished:
                services.draft_release(task_id=job.task_id, attempt=job.attempt)
            self.stats.wall_seconds = time.perf_counter() - started
        return self.stats


def drafts_run(**kwargs) -> LoopStats:
    """Draft queued tasks until none is left (or the time budget is spent)."""
    close_old_connections()
    stats = DraftingLoop(**kwargs).run()
    log.info(
        "drafted %s, failed %s, in %s batches, %.1f s (idle %.0f %%)",
        stats.drafts,
        stats.failed,
        stats.batches,
        stats.wall_seconds,
        100 * stats.idle_share,
    )
    return stats


def comparison_draft_run(draft_id: int, *, backend=None) -> bool:
    """Draft a blind comparison's candidate: the task's image, the comparison's prompt
    version, this worker's model; stored apart from the task's drafts. Whether one was
    stored (False: drafted already, or failed, the failure kept on it)."""
    close_old_connections()
    found = (
        ComparisonDraft.objects.filter(pk=draft_id, state=ComparisonState.QUEUED)
        .select_related("task__project", "task__image", "comparison__prompt_template")
        .first()
    )
    if found is None:
        return False
    job = job_prepare(found.task, found.comparison.prompt_template)
    if job.error:
        comparisons.comparison_draft_fail(draft_id=draft_id, error=job.error)
        return False
    backend = backend or get_backend()
    try:
        result = backend.generate(backend.prepare([job.request]))[0]
    except BackendError as exc:
        result = exc
    if isinstance(result, BackendError):  # shown on the comparison: its admin starts another
        comparisons.comparison_draft_fail(draft_id=draft_id, error=str(result))
        return False
    return comparisons.comparison_draft_record(draft_id=draft_id, fields=_draft_fields(job, result))
