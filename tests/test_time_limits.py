"""Time limits come from the worker's own settings, never from the process that queued the
task: a worker started with a short limit stops a hung draft, and after a few such attempts
the task fails with the reason shown."""

import json
import time

import pytest
import redis
from django.conf import settings

from annotations import services
from annotations.models import Modality, Task, TaskState
from annotations.queues import GPU_QUEUE
from imaging import samples
from inference.tasks import draft_task
from tests.conftest import Worker
from tests.factories import make_task

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_drafting_message_carries_no_time_limit(people):
    # The sender knows the task (a worker re-sending, a command), with limits of its own...
    assert draft_task.time_limit == settings.CELERY_TASK_TIME_LIMIT
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(GPU_QUEUE)
    try:
        task = make_task(people.project, state=TaskState.QUEUED)
        assert services.draft_send(task.pk)
        (raw,) = client.lrange(GPU_QUEUE, 0, -1)
    finally:
        client.delete(GPU_QUEUE)
    headers = json.loads(raw)["headers"]
    assert headers["task"] == "inference.tasks.draft_task"
    assert not any(headers.get("timelimit") or []), headers.get("timelimit")  # ...not sent


@pytest.mark.e2e
def test_a_worker_with_a_short_limit_stops_a_hung_draft_and_gives_up(
    demo_model_dir, tmp_path, settings, django_db_setup
):
    from medannot.celery import app

    app.control.purge()
    assert settings.CELERY_TASK_TIME_LIMIT >= 1800  # this process: the default limit
    settings.MEDIA_ROOT = tmp_path / "media"
    project = services.project_create(name="Hung", modality=Modality.DERMATOLOGY)
    photo = samples.write_derm_photo(tmp_path / "lesion.jpg", seed=7)
    log = tmp_path / "worker.log"
    worker = Worker(
        media_root=settings.MEDIA_ROOT,
        log=log,
        model_dir=demo_model_dir,
        MEDANNOT_BACKEND="tests.hanging_backend.Hangs",
        MEDANNOT_TASK_TIME_LIMIT="4",  # soft limit 2 s
    )
    try:
        task = services.image_ingest(project=project, source=photo, original_name=photo.name).task
        deadline = time.monotonic() + 120  # generous: each attempt is cut after 2 s
        while Task.objects.get(pk=task.pk).state != TaskState.FAILED:
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.2)
    finally:
        worker.stop()
    task.refresh_from_db()
    assert task.lost_attempts == 3
    assert "gave up after 3 attempts" in task.error and "SoftTimeLimitExceeded" in task.error
