"""Exports written by a worker into a private file, for projects too large for a web request.

A job is created by the web and sent by name to the CPU queue after commit; the worker
claims it (queued → running, a conditional update), writes `exports.write_export` (or, for
a Hugging Face dataset or a training set with its images, `exports.write_export_file`: a
zip) into a temporary file in the exports folder, fsyncs it and renames it to its final
name, so that a half-written file is never offered. Old files are deleted by an hourly sweep.

An export made on the command line (`export_labels`) is recorded here too, once it ended
(`export_command_record`), and so is one the page streams straight to the browser
(`export_download_start`, `export_download_chunks`): a job of that origin, with no file to
offer, and the tasks it included, so that each task's history lists every export.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.http import FileResponse, Http404
from django.utils import timezone
from django.utils.text import slugify

from annotations import exports, messages, services
from annotations.models import (
    ExportedTask,
    ExportJob,
    ExportOrigin,
    ExportState,
    Project,
    ProjectCounters,
    ReviewState,
)
from annotations.queues import DEFAULT_QUEUE, EXPORT_TASK

log = logging.getLogger(__name__)

# Progress is written every this many rows (on a connection of its own: the export's COPY
# holds the main one), and the file is written through a buffer of this many bytes.
PROGRESS_ROWS = 5000
BUFFER_BYTES = 1024 * 1024
PART = ".part"  # the suffix of a file being written; never offered, swept when left behind


def exports_dir() -> Path:
    """The private folder of export files (MEDIA_ROOT/exports: nothing serves it)."""
    return Path(settings.MEDIA_ROOT) / "exports"


def export_job_file(job: ExportJob) -> Path:
    return exports_dir() / job.file


def export_job_filename(job: ExportJob) -> str:
    """The name the browser saves the file under."""
    options = exports.ExportOptions.from_query({"format": job.format} | job.options)
    return f"{slugify(job.project.name) or 'project'}-{options.file_name}"


def export_job_download(job: ExportJob) -> FileResponse:
    """A finished job's file as an attachment (for the page and the API alike); 404 if the
    file is gone, or if the export was made on the command line (its file is not here)."""
    if job.origin != ExportOrigin.WEB:
        raise Http404("This export was made on the command line: there is nothing to download.")
    try:
        handle = export_job_file(job).open("rb")
    except FileNotFoundError:
        raise Http404("This export's file is gone.") from None
    return FileResponse(
        handle,
        as_attachment=True,
        filename=export_job_filename(job),
        content_type=exports.CONTENT_TYPES[job.format],
    )


def _rows_expected(project: Project) -> int:
    counters = ProjectCounters.objects.filter(project=project).first()
    if counters is None:
        return 0
    if project.readings_per_task > 1:  # one row per final task
        return counters.accepted + counters.edited + counters.rejected
    return counters.labels


def export_job_start(
    *,
    project: Project,
    requested_by: AbstractBaseUser | None,
    options: exports.ExportOptions,
) -> ExportJob:
    """Queue an export of `project` with `options`: the job is sent to the CPU queue after
    commit (marked failed at once when the broker cannot take it)."""
    with transaction.atomic():
        job = ExportJob.objects.create(
            project=project,
            requested_by=requested_by,
            format=options.file_format,  # the file's; options keep a training format
            options=options.to_query(),  # plain JSON, read back by the worker
            rows_expected=_rows_expected(project),
        )
        services.audit_record(
            action="project.export",
            actor=requested_by,
            project=project,
            after=options.audit() | {"format": options.format, "job": job.pk},
        )
        transaction.on_commit(lambda: _send(job.pk), robust=True)
    return job


def export_command_record(
    *,
    project: Project,
    requested_by: AbstractBaseUser | None,
    options: exports.ExportOptions,
    output: str,
    rows: int,
    started_at: datetime,
    error: str = "",
) -> ExportJob:
    """Record an export that the `export_labels` command made, once it ended: a job of
    the command line (`output`: the path it wrote, or "stdout"; never offered for download),
    done with `rows` rows and the tasks it included (`exported_tasks_record`, the worker's
    filter), or failed with `error` and no task included; and its `project.export` audit
    row, as the page's. One transaction, after the writing: the export streams as fast as
    before, and a failed or killed one never lists tasks as exported."""
    with transaction.atomic():
        job = _job_outside(
            project=project,
            requested_by=requested_by,
            options=options,
            origin=ExportOrigin.COMMAND,
            output=output,
            state=ExportState.FAILED if error else ExportState.DONE,
            rows_done=rows,
            rows_expected=rows,
            error=error[:2000],
            started_at=started_at,
            finished_at=timezone.now(),
        )
        if not error:
            exported_tasks_record(job, options)
        more = {"format": options.format, "state": job.state, "rows": rows}
        _job_audit(job, options, more, error)
    return job


def _job_outside(*, project, requested_by, options: exports.ExportOptions, **fields) -> ExportJob:
    """A job for an export made outside the worker (no file of ours): the command line's
    or the page's download."""
    return ExportJob.objects.create(
        project=project,
        requested_by=requested_by,
        format=options.file_format,
        options=options.to_query(),
        **fields,
    )


def _job_audit(job: ExportJob, options: exports.ExportOptions, more: dict, reason="") -> None:
    """The `project.export` audit row of such a job: its options, where it went, `more`."""
    services.audit_record(
        action="project.export",
        actor=job.requested_by,
        project=job.project,
        after=options.audit() | {"job": job.pk, "origin": job.origin, "output": job.output} | more,
        reason=reason[:2000],
    )


def export_download_start(
    *, project: Project, requested_by: AbstractBaseUser, options: exports.ExportOptions, name: str
) -> ExportJob:
    """Record an export the page streams to the browser as it is made (`name`: the file
    name it is given): a running job of that origin, never offered again, and its
    `project.export` audit row, before the first byte leaves. `export_download_chunks`
    finishes the record when the last byte has gone."""
    with transaction.atomic():
        job = _job_outside(
            project=project,
            requested_by=requested_by,
            options=options,
            origin=ExportOrigin.DOWNLOAD,
            output=name,
            state=ExportState.RUNNING,
            started_at=timezone.now(),
        )
        _job_audit(job, options, {})
    return job


def export_download_chunks(
    job: ExportJob, options: exports.ExportOptions, chunks: Iterable[bytes]
) -> Iterable[bytes]:
    """`chunks`, streamed, then the download's record finished: done, with its rows (a
    line each; a CSV's end outside quotes, less its header) and the tasks it included
    (`exported_tasks_record`), once the last chunk was handed over; failed, with no task
    included, if the download stopped before (the browser left, or making it failed), even
    before its first chunk."""
    return _Download(job, options, chunks)


class _Download:
    """`export_download_chunks`' stream. Closed by the response once sent or given up: a
    generator closed before it started runs no `finally`, so the record is ended here."""

    def __init__(self, job: ExportJob, options: exports.ExportOptions, chunks: Iterable[bytes]):
        self.job, self.options, self.chunks = job, options, chunks
        self.rows, self.ended = 0, False
        # A CSV's field may hold a newline: its rows end at newlines outside quotes.
        self.csv, self.quoted = options.format == "csv", False
        self.stream = self._stream()

    def __iter__(self) -> Iterator[bytes]:
        return self.stream

    def close(self) -> None:
        self.stream.close()  # a started stream ends its record in its `finally`
        if not self.ended:  # never started: nothing of the export was made
            self._end(finished=False)

    def _stream(self) -> Iterator[bytes]:
        finished = False
        blocks = iter(self.chunks)
        try:
            for block in blocks:
                chunk = bytes(block)  # a COPY's are memoryviews; the response makes bytes
                self.rows += self._csv_rows(chunk) if self.csv else chunk.count(b"\n")
                yield chunk
            finished = True
        finally:
            if not finished and hasattr(blocks, "close"):
                blocks.close()  # a COPY cut short is given up first: the connection is free
            self._end(finished=finished)

    def _csv_rows(self, chunk: bytes) -> int:
        """The CSV rows that end in `chunk` (quotes inside a field are doubled: a line's
        count of them says whether a field is still open at its end)."""
        if not self.quoted and b'"' not in chunk:
            return chunk.count(b"\n")
        ended = 0
        *lines, rest = chunk.split(b"\n")
        for line in lines:
            self.quoted ^= line.count(b'"') % 2 == 1
            ended += not self.quoted
        self.quoted ^= rest.count(b'"') % 2 == 1
        return ended

    def _end(self, *, finished: bool) -> None:
        self.ended = True
        job, options = self.job, self.options
        with transaction.atomic():
            ExportJob.objects.filter(pk=job.pk).update(
                state=ExportState.DONE if finished else ExportState.FAILED,
                rows_done=max(self.rows - self.csv, 0),  # less a CSV's header
                error="" if finished else "The download stopped before its end.",
                finished_at=timezone.now(),
            )
            if finished:
                job.refresh_from_db()
                exported_tasks_record(job, options)


def _send(job_id: int) -> None:
    if not messages.send(EXPORT_TASK, args=[job_id], queue=DEFAULT_QUEUE):
        ExportJob.objects.filter(pk=job_id, state=ExportState.QUEUED).update(
            state=ExportState.FAILED,
            error="The message broker is unreachable: start the export again later.",
            finished_at=timezone.now(),
        )


class _Progress:
    """Writes a job's rows so far, on a database connection of its own, opened on first use
    (the export's COPY keeps the main connection busy until it ends)."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.connection = None

    def __call__(self, rows: int) -> None:
        if self.connection is None:
            self.connection = connections.create_connection(DEFAULT_DB_ALIAS)
        with self.connection.cursor() as cursor:
            table = ExportJob._meta.db_table
            cursor.execute(
                f"UPDATE {table} SET rows_done = %s WHERE id = %s AND state = %s",
                [rows, self.job_id, ExportState.RUNNING],
            )

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


class CountingFile(io.FileIO):
    """A file that counts the lines written to it and reports every PROGRESS_ROWS: one
    bytes.count per buffered block, nothing per row. (A CSV field may hold a newline, so
    the count is a progress figure; the job's final rows come from write_export.)"""

    def __init__(self, path: Path, report: Callable[[int], None], skip: int = 0) -> None:
        super().__init__(path, "xb")
        self.lines, self.skip, self.report, self.next_report = 0, skip, report, PROGRESS_ROWS

    def write(self, data) -> int:
        written = super().write(data)
        self.lines += memoryview(data)[:written].tobytes().count(b"\n")
        if self.lines - self.skip >= self.next_report:
            self.report(self.lines - self.skip)
            self.next_report = self.lines - self.skip + PROGRESS_ROWS
        return written


def export_job_run(*, job_id: int) -> ExportJob | None:
    """Write a queued job's file (the worker's export task). Idempotent: a job that is not
    queued any more (taken by another delivery, done, failed) is left alone; None then."""
    claimed = ExportJob.objects.filter(pk=job_id, state=ExportState.QUEUED).update(
        state=ExportState.RUNNING, started_at=timezone.now()
    )
    if not claimed:
        log.info("export job %s: not queued any more; nothing to do", job_id)
        return None
    job = ExportJob.objects.select_related("project").get(pk=job_id)
    folder = exports_dir()
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{job.project_id}-{job.pk}-{secrets.token_hex(8)}.{job.format}"
    part = folder / (name + PART)
    progress = _Progress(job.pk)
    options = exports.ExportOptions.from_query({"format": job.format} | job.options)
    try:
        if options.file_format == "zip":
            rows = _write_zip(job, part, options, progress)
        else:
            rows = _write_text(job, part, options, progress)
        os.replace(part, folder / name)
        _fsync_dir(folder)
    except Exception as exc:
        part.unlink(missing_ok=True)
        log.exception("export job %s failed", job_id)
        ExportJob.objects.filter(pk=job_id, state=ExportState.RUNNING).update(
            state=ExportState.FAILED,
            error=f"The export failed: {type(exc).__name__}: {exc}"[:2000],
            finished_at=timezone.now(),
        )
        job.refresh_from_db()
        return job
    finally:
        progress.close()
    now = timezone.now()
    with transaction.atomic():  # done and its tasks recorded, or neither
        finished = ExportJob.objects.filter(pk=job_id, state=ExportState.RUNNING).update(
            state=ExportState.DONE,
            rows_done=rows,
            file=name,
            finished_at=now,
            expires_at=now + timedelta(days=settings.MEDANNOT_EXPORT_DAYS),
        )
        if finished:
            exported_tasks_record(job, options)
    if not finished:  # failed or expired by the sweep meanwhile: its file is nobody's
        (folder / name).unlink(missing_ok=True)
    job.refresh_from_db()
    return job


def _write_text(
    job: ExportJob, part: Path, options: exports.ExportOptions, progress: _Progress
) -> int:
    with CountingFile(part, progress, skip=1 if job.format == "csv" else 0) as raw:
        buffered = io.BufferedWriter(raw, buffer_size=BUFFER_BYTES)
        out = io.TextIOWrapper(buffered, encoding="utf-8", newline="")
        rows = exports.write_export_options(job.project, out, options)
        out.flush()
        os.fsync(raw.fileno())
        out.detach()  # the raw file closes once, below
    return rows


def _write_zip(
    job: ExportJob, part: Path, options: exports.ExportOptions, progress: _Progress
) -> int:
    """A Hugging Face dataset, or a training set with its images: one zip."""
    rows = exports.write_export_file(job.project, part, options, progress)
    with part.open("rb") as written:
        os.fsync(written.fileno())
    return rows


# The rows a training format keeps of a single-reading export (`exports.training_rows`
# drops the others), as conditions on the label `l` and its draft `d`.
_TRAINING_KEPT = {
    "chat": "l.decision IN ('accepted', 'edited')",
    "dpo": "l.decision = 'edited' AND l.text <> d.text",
    "geojson": "jsonb_array_length(l.regions) > 0",
}


def exported_tasks_record(job: ExportJob, options: exports.ExportOptions) -> int:
    """Record the tasks `job`'s file included (a task's history lists its exports): one
    INSERT ... SELECT with the export's own filter (`exports._query`, the code that wrote
    the rows), run once the file is written, so the writing itself is not slowed. Exact
    for the plain and the double-read exports and for single-reading training formats; a
    double-read training export records its final tasks, some of which its format may
    leave out. Returns how many tasks were recorded."""
    project = job.project
    query = exports._query(project, options)
    where = query.where
    if project.readings_per_task > 1:  # final tasks only, as final_rows
        where += f" AND t.review_state = '{ReviewState.FINAL}'"
    elif options.format in _TRAINING_KEPT:
        where += " AND " + _TRAINING_KEPT[options.format]
    included = exports._sql("DISTINCT l.task_id", where, order="l.task_id")
    sql = (
        f"INSERT INTO {ExportedTask._meta.db_table} (job_id, task_id) "
        f"SELECT %(exported_job)s, task_id FROM ({included}) included ON CONFLICT DO NOTHING"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, query.params | {"exported_job": job.pk})
        return cursor.rowcount


def _fsync_dir(folder: Path) -> None:
    # The rename itself survives a crash only once the folder is on disk.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export_jobs_sweep(*, lost_after_s: float) -> int:
    """Expire finished exports past their `expires_at` (their files deleted), fail jobs
    running for longer than `lost_after_s` (their worker was lost), and delete files left
    behind by either. Returns how many jobs expired."""
    now = timezone.now()
    lost = ExportJob.objects.filter(
        state=ExportState.RUNNING, started_at__lt=now - timedelta(seconds=lost_after_s)
    ).update(
        state=ExportState.FAILED,
        error="The export's worker was lost: start the export again.",
        finished_at=now,
    )
    if lost:
        log.warning("%s export job(s) lost their worker", lost)
    expired = 0
    due = ExportJob.objects.filter(state=ExportState.DONE, expires_at__lte=now)
    for job in due.only("pk", "file").iterator():
        # Marked first: a download that starts now is refused rather than cut short.
        if ExportJob.objects.filter(pk=job.pk, state=ExportState.DONE).update(
            state=ExportState.EXPIRED
        ):
            export_job_file(job).unlink(missing_ok=True)
            expired += 1
    _sweep_orphans(now, lost_after_s)
    if expired:
        log.info("%s export file(s) expired", expired)
    return expired


def _sweep_orphans(now, lost_after_s: float) -> None:
    """Files no done job names (a worker killed mid-write, a job failed meanwhile), once
    older than any running export can be."""
    folder = exports_dir()
    if not folder.is_dir():
        return
    offered = set(ExportJob.objects.filter(state=ExportState.DONE).values_list("file", flat=True))
    cutoff = now.timestamp() - lost_after_s
    for path in folder.iterdir():
        if path.name in offered or not path.is_file():
            continue
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass


def export_jobs_recent(project: Project, limit: int = 3) -> list[ExportJob]:
    """The project's latest export jobs, newest first (the project page lists them)."""
    return list(ExportJob.objects.filter(project=project).order_by("-created_at", "-pk")[:limit])
