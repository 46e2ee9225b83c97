"""A worker killed with SIGKILL in the middle of a batch, then a new worker: every task
ends with exactly one draft and none is left stuck in drafting."""

import time

import pytest
from django.db.models import Count

from annotations import services
from annotations.models import Draft, Modality, Task, TaskState
from imaging import samples
from tests.conftest import Worker

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_killed_worker_loses_nothing_and_duplicates_nothing(
    demo_model_dir, tmp_path, settings, django_db_setup
):
    from medannot.celery import app

    app.control.purge()
    settings.MEDIA_ROOT = tmp_path / "media"
    project = services.project_create(name="Crash", modality=Modality.DERMATOLOGY)
    for i in range(8):
        photo = samples.write_derm_photo(tmp_path / f"lesion-{i}.jpg", seed=i)
        services.image_ingest(project=project, source=photo, original_name=photo.name)

    # Long drafts in batches of 2, so that the kill lands in the middle of the work.
    slow = {"MEDANNOT_MAX_NEW_TOKENS": "400", "MEDANNOT_BATCH_SIZE": "2"}
    log = tmp_path / "worker.log"
    first = Worker(media_root=settings.MEDIA_ROOT, log=log, model_dir=demo_model_dir, **slow)
    deadline = time.monotonic() + 120
    while not Draft.objects.exists():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    first.kill()

    drafted = Draft.objects.count()
    assert drafted < 8, "the worker finished before it could be killed; make drafts longer"
    assert Task.objects.filter(state=TaskState.DRAFTING).exists()  # claimed by the dead worker

    second = Worker(media_root=settings.MEDIA_ROOT, log=log, model_dir=demo_model_dir, **slow)
    try:
        # What celery beat does once the lease of the lost batch runs out.
        swept = services.tasks_sweep_stuck(lease_seconds=0)
        assert swept
        deadline = time.monotonic() + 180
        while Task.objects.filter(project=project).exclude(state=TaskState.DRAFTED).exists():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        second.stop()

    per_task = Draft.objects.values("task").annotate(n=Count("id")).values_list("n", flat=True)
    assert sorted(per_task) == [1] * 8
    assert not Task.objects.filter(state=TaskState.DRAFTING).exists()
