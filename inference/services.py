"""Drafting: one claimed task in, one stored draft (or a visible failure) out."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from django.conf import settings

from annotations import imaging, services
from annotations.models import Draft
from inference.backends import BackendError, DraftRequest, get_backend
from inference.prompts import prompt_for

log = logging.getLogger(__name__)


def draft_run(*, task_id: int) -> Draft | None:
    """Draft one queued task. Idempotent: a second delivery finds it claimed and does nothing."""
    task = services.task_claim(task_id=task_id)
    if task is None:
        log.info("task %s is not queued; nothing to do", task_id)
        return None
    started = time.perf_counter()
    try:
        request = draft_request_for(task)
        result = get_backend().draft(request)
        if not result.text.strip():
            raise BackendError("the model returned an empty draft", permanent=True)
    except BackendError as exc:
        services.draft_fail(task_id=task.pk, attempt=task.attempt, error=str(exc))
        return None
    except imaging.ImageRejected as exc:
        services.draft_fail(task_id=task.pk, attempt=task.attempt, error=f"image unreadable: {exc}")
        return None
    except Exception as exc:
        log.exception("task %s: drafting failed", task_id)
        services.draft_fail(
            task_id=task.pk, attempt=task.attempt, error=f"{type(exc).__name__}: {exc}"
        )
        return None
    generation = dict(result.generation) | {"seconds_total": time.perf_counter() - started}
    return services.draft_record(
        task_id=task.pk,
        attempt=task.attempt,
        fields=dict(
            text=result.text.strip(),
            backend=result.backend,
            model_id=result.model_id,
            model_revision=result.model_revision,
            prompt=result.prompt,
            system_prompt=request.system,
            instruction=request.instruction,
            generation=generation,
            tokens_in=result.tokens_in,
            tokens_out=result.tokens_out,
            seconds=result.seconds,
        ),
    )


def draft_request_for(task) -> DraftRequest:
    image = task.image
    info = imaging.ImageInfo(
        kind=image.kind,
        format=image.format,
        width=image.width,
        height=image.height,
        levels=image.levels,
        mpp_x=image.mpp_x,
        mpp_y=image.mpp_y,
    )
    path = Path(settings.MEDIA_ROOT) / image.file
    picture = imaging.load_for_model(path, info, size=settings.MEDANNOT_MODEL_IMAGE_SIZE)
    prompt = prompt_for(
        modality=task.project.modality,
        system=task.project.system_prompt,
        instruction=task.project.prompt,
    )
    return DraftRequest(
        images=[picture],
        instruction=prompt.instruction,
        system=prompt.system,
        max_new_tokens=settings.MEDANNOT_MAX_NEW_TOKENS,
    )
