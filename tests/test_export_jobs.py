"""Large exports as jobs: the web queues a job by name on the CPU queue, a worker writes the
file to a temporary name and renames it when complete, the page polls its progress, the
download checks the project's export permission, and old files expire."""

from __future__ import annotations

import io
import json
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from annotations import exportjobs, exports, services
from annotations.models import AuditEvent, ExportJob, ExportState, Label
from annotations.queues import DEFAULT_QUEUE, EXPORT_SWEEP_TASK, EXPORT_TASK
from inference.tasks import export_task, sweep_exports_task
from tests.factories import make_drafted_task


def decide(task, reviewer, decision="accepted", text=""):
    return services.label_record(
        task_id=task.pk,
        reviewer=reviewer,
        decision=decision,
        draft_id=task.latest_draft().pk,
        text=text,
        reason="Blurred." if decision == "rejected" else "",
        label_revision=0,
    )


@pytest.fixture
def decided(people):
    """Five labels of `project`, one with a newline and non-ASCII text."""
    for i in range(5):
        task = make_drafted_task(people.project)
        if i == 2:
            decide(task, people.pathologist, "edited", "Naevus;\nmargins clear, 5\u00b5m.")
        else:
            decide(task, people.pathologist)
    return people


def start(people, **query) -> ExportJob:
    return exportjobs.export_job_start(
        project=people.project,
        requested_by=people.admin,
        options=exports.ExportOptions.from_query(query),
    )


def expected(project, **options) -> str:
    out = io.StringIO(newline="")
    exports.write_export(project, out, **options)
    return out.getvalue()


def files() -> list[str]:
    folder = exportjobs.exports_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize(
    "query", [{}, {"format": "csv"}, {"history": "1"}, {"format": "csv", "history": "1"}]
)
def test_the_task_writes_the_whole_file_under_its_final_name(decided, query):
    job = start(decided, **query)
    assert job.state == ExportState.QUEUED and job.rows_expected == 5
    export_task(job.pk)  # what the worker runs
    job.refresh_from_db()
    assert job.state == ExportState.DONE, job.error
    assert job.rows_done == 5 and job.finished_at and job.error == ""
    assert job.expires_at - job.finished_at == timedelta(days=settings.MEDANNOT_EXPORT_DAYS)
    assert files() == [job.file] and not job.file.endswith(exportjobs.PART)
    path = exportjobs.export_job_file(job)
    assert path.parent == Path(settings.MEDIA_ROOT) / "exports"
    options = exports.ExportOptions.from_query(query)
    assert path.read_text(encoding="utf-8") == expected(
        decided.project, format=options.format, history=options.history
    )


def test_a_job_runs_once_however_often_its_message_comes(decided):
    job = start(decided)
    export_task(job.pk)
    export_task(job.pk)  # a redelivery: the job is not queued any more
    assert len(files()) == 1
    assert ExportJob.objects.get(pk=job.pk).state == ExportState.DONE


def test_the_job_passes_its_stored_options_to_write_export(people):
    double = services.project_create(name="Double", modality="pathology", members=[])
    double.readings_per_task = 2
    double.save()
    job = exportjobs.export_job_start(
        project=double,
        requested_by=people.admin,
        options=exports.ExportOptions.from_query({"readings": "all", "history": "1"}),
    )
    assert job.options == {"format": "jsonl", "readings": "all", "history": "1"}
    export_task(job.pk)
    job.refresh_from_db()
    assert job.state == ExportState.DONE and job.rows_done == 0


def test_the_stored_options_read_back_as_they_were_chosen():
    """A job keeps its options as the query that chose them (plain JSON: dates, splits and
    manifest fields included), and the worker reads them back the same."""
    query = {
        "format": "csv",
        "readings": "all",
        "history": "1",
        "decision": "edited",
        "review_state": "final",
        "reviewer": "paul",
        "from": "2026-01-31",
        "to": "2026-11-30",
        "model_id": "medgemma-1.5-4b-it",
        "prompt_version": "3",
        "meta.organ": "skin",
        "split": "70,20,10",
        "split_seed": "42",
        "reviewer_names": "1",
    }
    chosen = exports.ExportOptions.from_query(query)
    kept = json.loads(json.dumps(chosen.to_query()))
    assert exports.ExportOptions.from_query(kept) == chosen


@pytest.mark.django_db(transaction=True)
def test_progress_is_recorded_while_the_file_is_written(decided, monkeypatch):
    monkeypatch.setattr(exportjobs, "PROGRESS_ROWS", 2)
    monkeypatch.setattr(exportjobs, "BUFFER_BYTES", 1)  # every row reaches the file at once
    seen = []
    report = exportjobs._Progress.__call__

    def spy(self, rows):
        report(self, rows)
        # Read back on the progress connection: the main one is busy with the COPY.
        with self.connection.cursor() as cursor:
            cursor.execute(
                f"SELECT rows_done FROM {ExportJob._meta.db_table} WHERE id = %s", [job.pk]
            )
            seen.append((rows, cursor.fetchone()[0]))

    monkeypatch.setattr(exportjobs._Progress, "__call__", spy)
    job = start(decided)
    export_task(job.pk)
    job.refresh_from_db()
    assert job.state == ExportState.DONE and job.rows_done == 5
    assert seen and all(rows == stored for rows, stored in seen)
    assert [rows for rows, _ in seen] == sorted(rows for rows, _ in seen)
    assert max(rows for rows, _ in seen) >= 4


def test_a_write_that_fails_leaves_no_file_and_says_why(decided, monkeypatch):
    def disk_full(project, out, options):
        out.write('{"task_id": 1, "half a row')
        out.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(exports, "write_export_options", disk_full)
    job = start(decided)
    export_task(job.pk)
    job.refresh_from_db()
    assert job.state == ExportState.FAILED and job.file == ""
    assert "No space left on device" in job.error
    assert files() == []


def test_a_stored_option_gone_bad_is_read_as_the_address_would_be(decided):
    """Options are read back like the export URL's query: a value that means nothing is
    the default, never a failed export."""
    job = start(decided)
    ExportJob.objects.filter(pk=job.pk).update(options={"split": "by-organ", "decision": "x"})
    export_task(job.pk)
    job.refresh_from_db()
    assert job.state == ExportState.DONE and len(files()) == 1


@pytest.fixture
def cpu_queue():
    """The real `celery` queue in this test run's Redis database, emptied before and after."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(DEFAULT_QUEUE)
    yield client
    client.delete(DEFAULT_QUEUE)


def test_the_form_starts_a_job_sent_by_name_after_commit(
    decided, client_for, cpu_queue, django_capture_on_commit_callbacks
):
    url = reverse("export-start", args=[decided.project.pk])
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(decided.admin).post(url, {"history": "1", "format": "csv"})
    job = ExportJob.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse(
        "export-job", args=[job.pk]
    )
    assert job.format == "csv" and job.options == {"format": "csv", "history": "1"}
    assert job.requested_by == decided.admin and job.state == ExportState.QUEUED
    message = json.loads(cpu_queue.lindex(DEFAULT_QUEUE, 0))
    assert message["headers"]["task"] == EXPORT_TASK
    assert str(job.pk) in message["headers"]["argsrepr"]
    event = AuditEvent.objects.get(action="project.export")
    assert event.after == {"readings": False, "history": True, "format": "csv", "job": job.pk}


def test_with_the_broker_down_the_job_fails_at_once(
    decided, client_for, broker_down, django_capture_on_commit_callbacks
):
    url = reverse("export-start", args=[decided.project.pk])
    with django_capture_on_commit_callbacks(execute=True):
        client_for(decided.admin).post(url, HTTP_HX_REQUEST="true")
    job = ExportJob.objects.get()
    assert job.state == ExportState.FAILED and "broker is unreachable" in job.error


def test_the_htmx_form_gets_the_polling_job(decided, client_for):
    url = reverse("export-start", args=[decided.project.pk])
    response = client_for(decided.admin).post(url, HTTP_HX_REQUEST="true")
    job = ExportJob.objects.get()
    body = response.content.decode()
    assert response.status_code == 200
    assert f'hx-get="{reverse("export-job", args=[job.pk])}" hx-trigger="every 2s"' in body
    # the progress bar has its label
    assert f'<label for="export-progress-{job.pk}"' in body
    assert f'<progress id="export-progress-{job.pk}"' in body


def test_the_job_shows_its_progress_then_its_download_link(decided, client_for):
    job = start(decided)
    client = client_for(decided.admin)
    url = reverse("export-job", args=[job.pk])
    ExportJob.objects.filter(pk=job.pk).update(state=ExportState.RUNNING, rows_done=2)
    body = client.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert 'max="5" value="2"' in body and "Rows written: 2 of about 5" in body
    assert "<html" not in body  # the fragment alone
    ExportJob.objects.filter(pk=job.pk).update(state=ExportState.QUEUED)
    export_task(job.pk)
    body = client.get(url).content.decode()
    assert "every 2s" not in body  # done: the polling stops
    assert reverse("export-download", args=[job.pk]) in body and "5 rows" in body
    page = client.get(reverse("project-detail", args=[decided.project.pk])).content.decode()
    assert f'id="export-job-{job.pk}"' in page


def test_a_failed_job_shows_its_message(decided, client_for):
    job = start(decided)
    ExportJob.objects.filter(pk=job.pk).update(state=ExportState.FAILED, error="Disk full.")
    body = client_for(decided.admin).get(reverse("export-job", args=[job.pk])).content.decode()
    assert "Disk full." in body and 'role="alert"' in body
    assert reverse("export-download", args=[job.pk]) not in body


def test_the_download_streams_the_file_to_those_who_may_export(decided, client_for):
    job = start(decided, format="csv")
    export_task(job.pk)
    url = reverse("export-download", args=[job.pk])
    response = client_for(decided.admin).get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == exports.CONTENT_TYPES["csv"]
    assert response["Content-Disposition"] == 'attachment; filename="breast-biopsies-labels.csv"'
    assert b"".join(response.streaming_content).decode() == expected(decided.project, format="csv")
    assert client_for(decided.superuser).get(url).status_code == 200
    # the admin of ANOTHER project, and outsiders, do not learn that it exists
    assert client_for(decided.other_admin).get(url).status_code == 404
    assert client_for(decided.outsider).get(url).status_code == 404
    # members whose role cannot export
    assert client_for(decided.researcher).get(url).status_code == 403
    assert client_for(decided.pathologist).get(url).status_code == 403
    assert client_for(None).get(url).status_code == 302


def test_a_job_not_finished_has_nothing_to_download(decided, client_for):
    job = start(decided)
    url = reverse("export-download", args=[job.pk])
    assert client_for(decided.admin).get(url).status_code == 404


def test_the_sweep_deletes_expired_files_and_fails_lost_jobs(decided, client_for):
    old, fresh, lost = start(decided), start(decided), start(decided)
    for job in (old, fresh):
        export_task(job.pk)
    ExportJob.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    long_ago = timezone.now() - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 120)
    ExportJob.objects.filter(pk=lost.pk).update(state=ExportState.RUNNING, started_at=long_ago)
    # what a worker killed mid-write left behind
    left = exportjobs.exports_dir() / f"1-{lost.pk}-dead.jsonl{exportjobs.PART}"
    left.write_text('{"half')
    os.utime(left, (long_ago.timestamp(), long_ago.timestamp()))
    old_file = exportjobs.export_job_file(ExportJob.objects.get(pk=old.pk))

    sweep_exports_task()  # what beat runs

    states = dict(ExportJob.objects.values_list("pk", "state"))
    assert states == {
        old.pk: ExportState.EXPIRED,
        fresh.pk: ExportState.DONE,
        lost.pk: ExportState.FAILED,
    }
    assert not old_file.exists() and not left.exists()
    assert files() == [ExportJob.objects.get(pk=fresh.pk).file]
    assert "worker was lost" in ExportJob.objects.get(pk=lost.pk).error
    response = client_for(decided.admin).get(reverse("export-download", args=[old.pk]))
    assert response.status_code == 410
    body = client_for(decided.admin).get(reverse("export-job", args=[old.pk])).content.decode()
    assert "expired" in body


def test_a_file_being_written_is_not_swept(decided):
    exportjobs.exports_dir().mkdir(parents=True)
    writing = exportjobs.exports_dir() / f"1-2-abc.jsonl{exportjobs.PART}"
    writing.write_text("{}\n")
    exportjobs.export_jobs_sweep(lost_after_s=3600)
    assert writing.exists()
    assert time.time() - writing.stat().st_mtime < 3600


def test_the_sweep_is_scheduled_on_the_celery_queue():
    entries = [e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == EXPORT_SWEEP_TASK]
    assert entries
    assert settings.CELERY_TASK_ROUTES[EXPORT_SWEEP_TASK]["queue"] == DEFAULT_QUEUE
    assert settings.CELERY_TASK_ROUTES[EXPORT_TASK]["queue"] == DEFAULT_QUEUE


def test_the_direct_download_still_works(decided, client_for):
    response = client_for(decided.admin).get(reverse("project-export", args=[decided.project.pk]))
    assert response.status_code == 200
    assert len(b"".join(response.streaming_content).splitlines()) == Label.objects.count()


@pytest.mark.django_db(transaction=True)  # as served: each request ends its connection
@pytest.mark.parametrize("read", [0, 1, None])
def test_a_direct_download_records_how_it_ended_even_before_its_first_chunk(
    decided, client_for, read
):
    """The browser leaves before the first chunk (0), after one (1), or reads it all (None):
    the download's job is failed in the first two cases, done in the last with its rows
    counted (a CSV field holding a newline is one row), never left running for the sweep."""
    url = reverse("project-export", args=[decided.project.pk]) + "?format=csv"
    response = client_for(decided.admin).get(url)
    job = ExportJob.objects.get(origin="download")
    assert job.state == ExportState.RUNNING
    chunks = response.streaming_content
    if read is None:
        body = b"".join(chunks)  # the test client closes the response at its end
    else:
        for _ in range(read):
            next(chunks)
        response.close()  # what a WSGI server does when the client is gone
    job.refresh_from_db()
    if read is None:
        assert job.state == ExportState.DONE
        assert job.rows_done == Label.objects.count() == 5 and body.count(b"\n") == 7
    else:
        assert job.state == ExportState.FAILED
        assert job.error == "The download stopped before its end."
    response.close()  # closed twice (a server may): recorded once, unchanged
    assert ExportJob.objects.get(pk=job.pk).state == job.state
