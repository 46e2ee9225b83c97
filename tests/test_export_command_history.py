"""Exports made with the `export_labels` command are recorded as the page's are: a job of
the command line (never downloadable), the tasks it included, and an audit row; each
exported task's history lists it."""

from __future__ import annotations

import io
import json
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.core.signals import request_finished
from django.db import close_old_connections
from django.urls import reverse

from annotations import exportjobs, exports, services
from annotations.models import (
    AuditEvent,
    ExportedTask,
    ExportJob,
    ExportOrigin,
    ExportState,
    Task,
)
from tests.factories import make_drafted_task
from tests.test_api import api_client

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_rate_windows():
    cache.clear()  # the API's rate windows: each test counts its own requests


def decide(task: Task, reviewer, decision: str) -> Task:
    services.label_record(
        task_id=task.pk,
        reviewer=reviewer,
        decision=decision,
        draft_id=task.latest_draft().pk,
        reason="Wrong organ." if decision == "rejected" else "",
    )
    return task


def export_labels(*args: str) -> str:
    """Run the command; what it says on stderr."""
    err = StringIO()
    call_command("export_labels", "--project", "Breast biopsies", *args, stderr=err)
    return err.getvalue()


def history(client, task: Task) -> str:
    response = client.get(reverse("task-history", args=[task.pk]))
    assert response.status_code == 200
    return response.content.decode()


def export_entries(html: str) -> list[str]:
    """The timeline's export entries, as their text."""
    entries = html.split('<li class="timeline-export">')[1:]
    return [entry[: entry.index("</li>")] for entry in entries]


def test_a_command_line_export_appears_in_each_exported_tasks_history(people, client_for, tmp_path):
    accepted = decide(make_drafted_task(people.project), people.pathologist, "accepted")
    rejected = decide(make_drafted_task(people.project), people.pathologist, "rejected")
    undecided = make_drafted_task(people.project)
    out = tmp_path / "accepted.csv"
    err = export_labels(
        "--format", "csv", "--decision", "accepted", "--out", str(out), "--user", "alice"
    )
    assert len(out.read_text().splitlines()) == 2  # the header and the accepted task
    job = ExportJob.objects.get()
    assert f"(export {job.pk})" in err
    assert (job.origin, job.state, job.requested_by) == (
        ExportOrigin.COMMAND,
        ExportState.DONE,
        people.admin,
    )
    assert (job.output, job.format, job.rows_done) == (str(out.resolve()), "csv", 1)
    assert job.options["decision"] == "accepted" and job.file == "" and job.expires_at is None
    assert job.started_at <= job.finished_at
    assert set(ExportedTask.objects.values_list("task_id", flat=True)) == {accepted.pk}
    # Its audit row, as the page's exports write.
    event = AuditEvent.objects.get(action="project.export")
    assert (event.actor, event.project) == (people.admin, people.project)
    assert event.after["origin"] == "command" and event.after["job"] == job.pk
    assert event.after["output"] == str(out.resolve()) and event.after["rows"] == 1
    assert event.after["format"] == "csv" and event.after["decision"] == "accepted"
    # The exported task's history says who, when and in which format, to its admin and
    # to its reader; the tasks the filter left out list no export.
    for user in (people.admin, people.pathologist):
        (entry,) = export_entries(history(client_for(user), accepted))
        assert "Exported</strong> by alice on the command line" in entry
        assert f"export {job.pk} (csv) included this task" in entry
        assert f'datetime="{job.finished_at.isoformat()}"' in entry
    client = client_for(people.admin)
    assert export_entries(history(client, rejected)) == []
    assert export_entries(history(client, undecided)) == []


def test_without_a_user_the_history_names_the_command_line(people, client_for, capsys):
    task = decide(make_drafted_task(people.project), people.pathologist, "accepted")
    export_labels()  # JSON Lines to stdout
    assert json.loads(capsys.readouterr().out)["task_id"] == task.pk
    job = ExportJob.objects.get()
    assert job.requested_by is None and job.output == "stdout" and job.rows_done == 1
    assert AuditEvent.objects.get(action="project.export").actor is None
    (entry,) = export_entries(history(client_for(people.admin), task))
    assert "Exported</strong> by the command line: export" in entry and "(jsonl)" in entry


def test_a_double_read_export_records_its_final_tasks(people, client_for, tmp_path):
    services.project_reading_settings_set(
        project=people.project, readings_per_task=2, disagreement_words=5
    )
    people.project.refresh_from_db()
    final = make_drafted_task(people.project)
    half = make_drafted_task(people.project)
    decide(final, people.pathologist, "accepted")
    decide(final, people.admin, "accepted")
    decide(half, people.pathologist, "accepted")  # one reading of two: not final
    export_labels("--out", str(tmp_path / "final.jsonl"))
    assert set(ExportedTask.objects.values_list("task_id", flat=True)) == {final.pk}


def test_a_failed_export_records_no_task(people, client_for, tmp_path, monkeypatch):
    task = decide(make_drafted_task(people.project), people.pathologist, "accepted")

    def breaks(project, out, options):
        out.write('{"task_id": 1}\n')
        raise RuntimeError("disk full")

    monkeypatch.setattr(exports, "write_export_options", breaks)
    out = tmp_path / "labels.jsonl"
    with pytest.raises(RuntimeError, match="disk full"):
        export_labels("--out", str(out), "--user", "alice")
    assert not out.exists()
    assert not ExportedTask.objects.exists()
    job = ExportJob.objects.get()
    assert (job.state, job.origin, job.rows_done) == (ExportState.FAILED, "command", 0)
    assert "disk full" in job.error
    event = AuditEvent.objects.get(action="project.export")
    assert event.after["state"] == "failed" and "disk full" in event.reason
    assert export_entries(history(client_for(people.admin), task)) == []


def test_a_bad_user_is_refused_before_anything_is_written(people, tmp_path):
    decide(make_drafted_task(people.project), people.pathologist, "accepted")
    out = tmp_path / "labels.jsonl"
    for user in ("nobody", "paul", "adam"):  # unknown; a pathologist; ANOTHER project's admin
        with pytest.raises(CommandError):
            export_labels("--out", str(out), "--user", user)
    assert not out.exists()
    assert not ExportJob.objects.exists() and not ExportedTask.objects.exists()
    assert not AuditEvent.objects.filter(action="project.export").exists()


def test_the_command_line_export_is_never_offered_for_download(
    people, client_for, tmp_path, settings
):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    exportjobs.exports_dir().mkdir(parents=True)  # a server that has made exports before
    decide(make_drafted_task(people.project), people.pathologist, "accepted")
    export_labels("--out", str(tmp_path / "labels.jsonl"), "--user", "alice")
    job = ExportJob.objects.get()
    client = client_for(people.admin)
    response = client.get(reverse("export-download", args=[job.pk]))
    assert response.status_code == 404
    page = client.get(reverse("project-detail", args=[people.project.pk])).content.decode()
    card = page[page.index(f'id="export-job-{job.pk}"') :]
    card = card[: card.index("</div>")]
    assert "Made on the command line" in card and "No download here" in card
    assert "export-download" not in card and 'href="' not in card
    job_page = client.get(reverse("export-job", args=[job.pk]))
    assert job_page.status_code == 200 and b"No download here" in job_page.content
    # Nor through the API: no download link, and the download is a 404.
    api = api_client(people.admin)
    shown = api.get(f"/api/exports/{job.pk}").json()
    assert (shown["origin"], shown["state"], shown["download"]) == ("command", "done", None)
    assert api.get(f"/api/exports/{job.pk}/download").status_code == 404
    # Outsiders learn nothing of it.
    for user in (people.other_admin, people.outsider):
        assert client_for(user).get(reverse("export-job", args=[job.pk])).status_code == 404
        assert client_for(user).get(reverse("export-download", args=[job.pk])).status_code == 404
    pathologist = client_for(people.pathologist)  # a member without exports
    assert pathologist.get(reverse("export-job", args=[job.pk])).status_code == 403


def test_a_failed_command_line_export_is_not_offered_either(
    people, client_for, monkeypatch, tmp_path, settings
):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    exportjobs.exports_dir().mkdir(parents=True)

    def breaks(project, out, options):
        raise RuntimeError("lost the database")

    monkeypatch.setattr(exports, "write_export_options", breaks)
    with pytest.raises(RuntimeError):
        export_labels("--user", "alice")
    job = ExportJob.objects.get()
    client = client_for(people.admin)
    assert client.get(reverse("export-download", args=[job.pk])).status_code == 404
    page = client.get(reverse("export-job", args=[job.pk])).content.decode()
    assert "The command-line export failed" in page and "lost the database" in page
    assert api_client(people.admin).get(f"/api/exports/{job.pk}").json()["download"] is None


def test_the_sweep_leaves_command_line_exports_alone(people, tmp_path, settings):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    decide(make_drafted_task(people.project), people.pathologist, "accepted")
    out = tmp_path / "labels.jsonl"
    export_labels("--out", str(out))
    assert exportjobs.export_jobs_sweep(lost_after_s=0) == 0
    assert ExportJob.objects.get().state == ExportState.DONE and Path(out).exists()


class _ClosedPipe(io.TextIOWrapper):
    """stdout read by `head`, which has gone: every write of the export fails."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8")
        self.buffer.write = self._broken  # the export's COPY writes its blocks here

    @staticmethod
    def _broken(data) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_pipe_mid_copy_is_recorded_as_failed(people, monkeypatch):
    """The fast path (PostgreSQL's COPY, to stdout) cut short: the failure is recorded on
    the same connection, the COPY given up first."""
    for _ in range(3):
        decide(make_drafted_task(people.project), people.pathologist, "accepted")
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    with pytest.raises(BrokenPipeError):
        export_labels("--format", "csv", "--user", "alice")
    job = ExportJob.objects.get()
    assert job.state == ExportState.FAILED and "BrokenPipeError" in job.error
    assert not ExportedTask.objects.exists()
    assert AuditEvent.objects.get(action="project.export").after["state"] == "failed"


# The page's direct download ---------------------------------------------------------------


def download(client, project, query: str = "") -> bytes:
    url = reverse("project-export", args=[project.pk]) + (f"?{query}" if query else "")
    response = client.get(url)
    assert response.status_code == 200
    return b"".join(response.streaming_content)


@pytest.mark.parametrize("query", ["", "format=csv", "readings=all&history=1"])
def test_a_page_download_is_recorded_with_the_tasks_it_included(people, client_for, query):
    """The "Download now" link streams the export: once the last byte went, the job is done
    with its rows, and each task it included lists it in its history; the others do not."""
    decided = [decide(make_drafted_task(people.project), people.pathologist, "accepted")]
    decided.append(decide(make_drafted_task(people.project), people.pathologist, "rejected"))
    left_out = make_drafted_task(people.project)  # no reading: not in the export
    client = client_for(people.project_admin)
    body = download(client, people.project, query)
    job = ExportJob.objects.get()
    assert (job.origin, job.state, job.requested_by) == (
        ExportOrigin.DOWNLOAD,
        ExportState.DONE,
        people.project_admin,
    )
    assert job.rows_done == 2 and job.output.startswith("breast-biopsies-")
    assert body.count(b"\n") == 2 + ("csv" in query)
    included = set(ExportedTask.objects.values_list("task_id", flat=True))
    assert included == {t.pk for t in decided}
    assert f"export {job.pk}" in history(client, decided[0])
    assert f"export {job.pk}" not in history(client, left_out)
    event = AuditEvent.objects.get(action="project.export")
    assert (event.after["job"], event.after["origin"]) == (job.pk, "download")


@pytest.mark.django_db(transaction=True)  # as in production: no test transaction around it
def test_a_download_cut_short_includes_no_task(people, client_for):
    """The browser leaves after the first rows (PostgreSQL's COPY, the fast path, cut
    short): the job fails, no task is listed as exported, and the connection still works.
    (Inside a test's transaction the COPY's cancel would abort that transaction.)"""
    for _ in range(3):
        decide(make_drafted_task(people.project), people.pathologist, "accepted")
    client = client_for(people.project_admin)
    response = client.get(reverse("project-export", args=[people.project.pk]))
    assert next(response.streaming_content).count(b"\n") == 1
    # The client went: the server closes the response (as the test client would, keeping
    # the test's connection open).
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)
    job = ExportJob.objects.get()
    assert job.state == ExportState.FAILED and "stopped" in job.error
    assert not ExportedTask.objects.exists()
    assert Task.objects.count() == 3  # the connection is usable again


def test_a_page_download_is_never_offered_again(people, client_for):
    decide(make_drafted_task(people.project), people.pathologist, "accepted")
    client = client_for(people.project_admin)
    download(client, people.project)
    job = ExportJob.objects.get()
    assert client.get(reverse("export-download", args=[job.pk])).status_code == 404
    page = client.get(reverse("export-job", args=[job.pk])).content.decode()
    assert "Downloaded from the page" in page and 'rel="download"' not in page
    listed = api_client(people.project_admin).get(f"/api/exports/{job.pk}")
    assert listed.status_code == 200 and listed.json()["download"] is None
