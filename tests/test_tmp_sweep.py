"""Temporary files of interrupted uploads (ours and Django's) are swept on a schedule."""

import os
import time
from pathlib import Path

from django.conf import settings

from annotations.queues import DEFAULT_QUEUE, TMP_SWEEP_TASK
from inference.tasks import sweep_tmp_task


def test_the_scheduled_sweep_removes_old_temporary_files_and_keeps_fresh_ones(settings, db):
    settings.MEDANNOT_TMP_MAX_AGE_SECONDS = 3600
    tmp = Path(settings.MEDIA_ROOT) / "tmp"
    tmp.mkdir()
    old_ours, old_django, fresh = tmp / "upload-a.jpg", tmp / "tmpk3j4h5.upload.svs", tmp / "x"
    for path in (old_ours, old_django, fresh):
        path.write_bytes(b"partial")
    long_ago = time.time() - 2 * 3600
    for path in (old_ours, old_django):
        os.utime(path, (long_ago, long_ago))
    sweep_tmp_task()  # what beat runs (it also sweeps expired resumable uploads: the database)
    assert sorted(p.name for p in tmp.iterdir()) == ["x"]


def test_the_sweep_is_scheduled_on_the_celery_queue():
    entries = [e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == TMP_SWEEP_TASK]
    assert entries
    assert settings.CELERY_TASK_ROUTES[TMP_SWEEP_TASK]["queue"] == DEFAULT_QUEUE


def test_django_writes_upload_temp_files_where_the_sweep_looks():
    temp_dir = Path(settings.FILE_UPLOAD_TEMP_DIR)
    assert temp_dir.name == "tmp" and temp_dir.is_dir()
