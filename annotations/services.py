"""Writes that touch several models, the file store or Celery.

Every task state change goes through `task_transition`, which checks the transition
inside a transaction with the task row locked, and appends an audit event.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import IO, Any, NamedTuple

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DEFAULT_DB_ALIAS, connection, connections, models, transaction
from django.db.models import F, Q
from django.utils import timezone

import imaging
from annotations import agreement, backfills, counters, hotsql, insights, messages
from annotations.models import (
    NO_DECISION,
    TO_READ,
    Adjudication,
    AgreementCell,
    AuditEvent,
    Claim,
    Decision,
    Draft,
    EditAutosave,
    Image,
    Label,
    Membership,
    Modality,
    Project,
    ProjectCounters,
    PromptTemplate,
    ReviewState,
    Role,
    Task,
    TaskState,
    correction_categories_clean,
    reading_settings_clean,
)
from annotations.previews import preview_send, previews_send
from annotations.prompts import validate_template
from annotations.queues import DRAFT_TASK, GPU_QUEUE
from annotations.regions import validate_regions
from annotations.rouge import rouge_l
from annotations.textdiff import char_distance, word_distance
from imaging import archives, series
from imaging.patches import PatchSettings

log = logging.getLogger(__name__)

S = TaskState
TRANSITIONS: dict[str, frozenset[str]] = {
    S.NEW: frozenset({S.QUEUED}),
    S.QUEUED: frozenset({S.DRAFTING, S.FAILED}),
    S.DRAFTING: frozenset({S.DRAFTED, S.FAILED, S.QUEUED}),
    # A drafted task may be drafted again (another model or prompt), read or not: its
    # labels stay. Decisions do not move it: its review is `review_state` and `outcome`.
    S.DRAFTED: frozenset({S.QUEUED}),
    S.FAILED: frozenset({S.QUEUED}),
}


class InvalidTransition(Exception):
    """A task cannot move from its state to the one asked for."""


class ReviewConflict(Exception):
    """A decision made on stale state: the draft the reviewer judged was replaced, or their
    label changed since the form was shown (another tab, the Back button)."""


class Signature(NamedTuple):
    """A reader's signature of a decision (21 CFR Part 11 §11.50): their printed name,
    when they signed, and what signing meant."""

    name: str
    at: datetime
    meaning: str


NEWER_DRAFT = (
    "A newer draft replaced the one you judged: here it is. Your text is kept below to reuse."
)
LABEL_CHANGED = (
    "You decided this task again elsewhere (another tab, or the Back button): here is what is "
    "saved now. Your text is kept below to reuse."
)


def audit_record(
    *,
    action: str,
    actor: AbstractBaseUser | None = None,
    project: Project | None = None,
    task: Task | None = None,
    before: Any = None,
    after: Any = None,
    reason: str = "",
) -> AuditEvent:
    return AuditEvent.objects.create(
        action=action,
        actor=actor if actor is not None and actor.is_authenticated else None,
        project=project or (task.project if task else None),
        task=task,
        before=before,
        after=after,
        reason=reason,
    )


def task_transition(
    *,
    task_id: int,
    to: str,
    actor: AbstractBaseUser | None = None,
    error: str = "",
    reason: str = "",
    allowed_from: Iterable[str] | None = None,
) -> Task:
    """Move a task to state `to`, or raise InvalidTransition. Locks the row."""
    with transaction.atomic():
        task = Task.objects.select_for_update().get(pk=task_id)
        sources = set(allowed_from) if allowed_from is not None else None
        if to not in TRANSITIONS[task.state] or (sources is not None and task.state not in sources):
            raise InvalidTransition(f"task {task.pk} cannot go from {task.state} to {to}")
        before = {"state": task.state}
        if to == S.QUEUED:
            task.message_pending = True  # the outbox: cleared once the broker has the message
            if task.state != S.DRAFTING:
                task.lost_attempts = 0  # queued by a person (retry, redraft): a fresh start
        task.state = to
        task.error = error if to == S.FAILED else ""
        if to == S.DRAFTING:
            task.drafting_started_at = timezone.now()
        task.save(
            update_fields=[
                "state",
                "error",
                "drafting_started_at",
                "message_pending",
                "lost_attempts",
                "updated_at",
            ]
        )
        counters.task_moved(
            task.project_id,
            (before["state"], task.review_state, task.outcome),
            (to, task.review_state, task.outcome),
        )
        if to == S.FAILED:  # the insights' drafting failures, by reason
            insights.draft_day_add(task.project_id, timezone.now(), error=error)
        after = {"state": to} | ({"error": error} if error else {})
        audit_record(
            action="task.state", actor=actor, task=task, before=before, after=after, reason=reason
        )
        return task


# Projects and members --------------------------------------------------------------------


def project_create(
    *,
    name: str,
    modality: str,
    members: Iterable[tuple[AbstractBaseUser, str]] = (),
    prompt: str = "",
    system_prompt: str = "",
    slide_settings: dict | None = None,
    actor: AbstractBaseUser | None = None,
) -> Project:
    if modality not in Modality.values:
        raise ValueError(f"unknown modality {modality!r}: use one of {', '.join(Modality.values)}")
    with transaction.atomic():
        project = Project.objects.create(
            name=name, modality=modality, slide_settings=slide_settings or {}
        )
        ProjectCounters.objects.create(project=project)
        audit_record(
            action="project.create",
            actor=actor,
            project=project,
            after={"name": name, "modality": modality},
        )
        if prompt.strip():
            prompt_template_save(
                project=project, instruction=prompt, system=system_prompt, actor=actor
            )
        for user, role in members:
            membership_set(project=project, user=user, role=role, actor=actor)
    return project


def prompt_template_save(
    *, project: Project, instruction: str, system: str = "", actor: AbstractBaseUser | None = None
) -> PromptTemplate:
    """Save a project's prompt as a new version; drafts keep the version they were made with."""
    instruction, system = instruction.strip(), system.strip()
    if not instruction:
        raise ValueError("A prompt needs an instruction.")
    validate_template(instruction)
    validate_template(system)
    with transaction.atomic():
        Project.objects.select_for_update().get(pk=project.pk)  # serialise version numbers
        current = project.current_prompt()
        template = PromptTemplate.objects.create(
            project=project,
            version=(current.version + 1) if current else 1,
            instruction=instruction,
            system=system,
            created_by=actor,
        )
        audit_record(
            action="prompt.save",
            actor=actor,
            project=project,
            before={"version": current.version} if current else None,
            after={"version": template.version, "system": system, "instruction": instruction},
        )
    return template


def project_slide_settings_set(
    *, project: Project, values: dict, actor: AbstractBaseUser | None = None
) -> Project:
    """Validate and store a project's whole-slide patch settings."""
    merged = PatchSettings.from_dict(project.slide_settings | values).as_dict()  # ValueError
    if merged != project.slide_settings:
        with transaction.atomic():
            before = project.slide_settings
            project.slide_settings = merged
            project.save(update_fields=["slide_settings"])
            audit_record(
                action="project.slide_settings",
                actor=actor,
                project=project,
                before=before,
                after=merged,
            )
    return project


def project_review_settings_set(
    *,
    project: Project,
    correction_categories: list[str],
    fast_accept_seconds: int,
    actor: AbstractBaseUser | None = None,
) -> Project:
    """Store the categories reviewers pick from and the fast-accept threshold.

    ValueError if the list is not 1 to 30 unique non-empty entries of at most 80 characters
    or the threshold is negative. Labels keep the categories they were given.
    """
    categories = correction_categories_clean(correction_categories)
    if fast_accept_seconds < 0:
        raise ValueError("The fast-accept threshold cannot be negative.")
    with transaction.atomic():
        project = Project.objects.select_for_update().get(pk=project.pk)
        before = {
            "correction_categories": project.correction_categories,
            "fast_accept_seconds": project.fast_accept_seconds,
        }
        after = {
            "correction_categories": categories,
            "fast_accept_seconds": fast_accept_seconds,
        }
        if after != before:
            project.correction_categories = categories
            project.fast_accept_seconds = fast_accept_seconds
            project.save(update_fields=["correction_categories", "fast_accept_seconds"])
            audit_record(
                action="project.review_settings",
                actor=actor,
                project=project,
                before=before,
                after=after,
            )
    return project


def membership_set(
    *, project: Project, user: AbstractBaseUser, role: str, actor: AbstractBaseUser | None = None
) -> Membership:
    """Give `user` a role in `project`, and in no other: roles write no global groups."""
    if role not in Role.values:
        raise ValueError(f"unknown role {role!r}: use one of {', '.join(Role.values)}")
    with transaction.atomic():
        membership, created = Membership.objects.select_for_update().get_or_create(
            project=project, user=user, defaults={"role": role}
        )
        before = None if created else {"role": membership.role}
        if not created and membership.role != role:
            membership.role = role
            membership.save(update_fields=["role"])
        if created or before != {"role": role}:
            audit_record(
                action="membership.set",
                actor=actor,
                project=project,
                before=before,
                after={"user": user.get_username(), "role": role},
            )
    return membership


# Images and tasks -----------------------------------------------------------------------


@dataclass(frozen=True)
class IngestResult:
    name: str
    status: str  # "imported", "duplicate" or "rejected"
    message: str = ""
    task: Task | None = None
    source: Path | None = None  # the file given (a series' main file); None inside a zip

    @property
    def ok(self) -> bool:
        return self.status != "rejected"


def image_ingest(
    *,
    project: Project,
    source: Path | IO[bytes],
    original_name: str,
    uploaded_by: AbstractBaseUser | None = None,
    enqueue: bool = True,
    metadata: dict[str, str] | None = None,
) -> IngestResult:
    """Store one file, inspect it, and make it a task of `project`.

    A rejected file leaves nothing behind: no row, no file. Several files are ingested
    one by one, so one bad file never loses the rest of an upload.
    """
    name = Path(original_name).name[:255] or "unnamed"
    media_root = Path(settings.MEDIA_ROOT)
    try:
        with imaging.staged_upload(
            source,
            media_root,
            max_bytes=settings.MEDANNOT_MAX_FILE_BYTES,
            suffix=imaging.safe_suffix(name),  # OpenSlide knows some formats by suffix
        ) as staged:
            existing = Image.objects.filter(sha256=staged.sha256).first()
            if existing is not None and not (media_root / existing.file).exists():
                # The row outlived its file (a lost disk): this upload restores it.
                staged.commit(Path(existing.file).suffix)
            info = None if existing else imaging.inspect_image(staged.temp_path)

            def commit(info: imaging.ImageInfo) -> str:
                return staged.commit(imaging.suffix_for(info, name))

            try:
                return _ingest_rows(
                    project,
                    staged,
                    commit,
                    existing,
                    info,
                    name,
                    uploaded_by,
                    enqueue,
                    metadata or {},
                )
            except BaseException:
                _undo_unreferenced(staged)
                raise
    except imaging.ImageRejected as exc:
        return IngestResult(name, "rejected", str(exc))


def _undo_unreferenced(staged) -> None:
    """The rows rolled back: drop the stored file if we created it and no row points to it."""
    try:
        referenced = Image.objects.filter(sha256=staged.sha256).exists()
    except Exception:
        referenced = True  # cannot tell: an orphan file is harmless, a lost one is not
    if not referenced:
        staged.undo_commit()


def _ingest_rows(
    project, staged, commit, image, info, name, uploaded_by, enqueue, metadata
) -> IngestResult:
    with transaction.atomic():
        if image is None:
            relpath = commit(info)
            image, image_created = Image.objects.get_or_create(
                sha256=staged.sha256,
                defaults=dict(
                    file=relpath,
                    original_name=name,
                    size_bytes=staged.size,
                    uploaded_by=uploaded_by,
                    **Image.fields_from(info),
                ),
            )
            if image_created:  # preview and first viewer tiles on the CPU queue, not on a view
                image_id = image.pk
                transaction.on_commit(lambda: preview_send(image_id), robust=True)
        task, created = Task.objects.get_or_create(
            project=project, image=image, defaults={"metadata": metadata}
        )
        if not created:
            return IngestResult(
                name, "duplicate", f"already in this project as task {task.pk}", task
            )
        counters.task_moved(project.pk, None, (S.NEW, ReviewState.OPEN, ""))
        audit_record(
            action="task.create",
            actor=uploaded_by,
            task=task,
            after={"image": image.sha256, "name": name, "metadata": metadata},
        )
        if enqueue:
            task_enqueue(task_id=task.pk, actor=uploaded_by)
        return IngestResult(name, "imported", "", task)


# The label and overview instances of a DICOM series are photos of the glass: never stored.
LEFT_OUT_NOTE = "its label and overview images were left out (they can show patient details)"


def images_ingest(
    *,
    project: Project,
    files: Sequence[tuple[str, Path | IO[bytes]]],
    uploaded_by: AbstractBaseUser | None = None,
    enqueue: bool = True,
    metadata_for: Callable[[Path], dict[str, str] | None] | None = None,
    progress: Callable[[IngestResult, int], None] | None = None,
) -> list[IngestResult]:
    """Store the files of one upload, folder or zip as images and make them tasks.

    `files` are (name, path or upload) pairs; a name may be a relative path
    (``slide/Data0000.dat``).
    Files of one slide are stored together as ONE image (imaging.series): the instances of
    a DICOM series, a MIRAX ``.mrxs`` with its folder. A ``.zip`` is unpacked safely and its
    contents grouped the same way. One result per image (or per refused file, series or
    zip), loose files first; one bad unit never loses the rest. `metadata_for` gives the
    manifest fields of a file given by its path.
    Files stored alone are written in chunks (`_chunk_ingest`): each is staged, hashed while
    copied and decoded once, then a chunk's rows go in one transaction.
    `progress(result, files)` is called with each result once it is final, in order, and
    the number of the given files it accounts for (a zip's count comes with its last result).
    """
    report = progress or (lambda result, files: None)
    with contextlib.ExitStack() as spooled:
        loose, zips = [], []
        for name, source in files:
            path = _as_path(source, spooled)
            (zips if archives.is_zip(name) else loose).append((name, path))
        results = _units_ingest(
            project,
            series.group_files(loose),
            uploaded_by,
            enqueue,
            metadata_for,
            given=True,
            progress=report,
        )
        for name, path in zips:
            found = _zip_ingest(project, name, path, uploaded_by, enqueue)
            for i, result in enumerate(found):
                report(result, int(i == len(found) - 1))
            results += found
    return results


def _as_path(source: Path | str | IO[bytes], spooled: contextlib.ExitStack) -> Path:
    """A path to the bytes of `source`: an upload's temporary file, or a spooled copy of a
    stream (grouping reads file headers; OpenSlide reads paths)."""
    if isinstance(source, str | Path):
        return Path(source)
    if hasattr(source, "temporary_file_path"):
        return Path(source.temporary_file_path())
    tmp_root = Path(settings.MEDIA_ROOT) / imaging.storage.TMP_DIR
    tmp_root.mkdir(parents=True, exist_ok=True)
    out = spooled.enter_context(tempfile.NamedTemporaryFile(dir=tmp_root, prefix="upload-"))
    if getattr(source, "seekable", lambda: False)():
        source.seek(0)
    shutil.copyfileobj(source, out, imaging.storage.CHUNK_SIZE)
    out.flush()
    return Path(out.name)


def _zip_limits() -> archives.ZipLimits:
    return archives.ZipLimits(
        max_entries=settings.MEDANNOT_MAX_ZIP_ENTRIES,
        max_total_bytes=settings.MEDANNOT_MAX_ZIP_BYTES,
        max_entry_bytes=settings.MEDANNOT_MAX_FILE_BYTES,
    )


def _zip_ingest(project, name, path, uploaded_by, enqueue) -> list[IngestResult]:
    shown = PurePosixPath(name.replace("\\", "/")).name or "archive.zip"
    tmp_root = Path(settings.MEDIA_ROOT) / imaging.storage.TMP_DIR
    tmp_root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="unzip-", dir=tmp_root))
    try:
        try:
            entries = archives.unpack_zip(path, folder, limits=_zip_limits())
        except imaging.ImageRejected as exc:
            return [IngestResult(shown, "rejected", str(exc), source=Path(path))]
        if not entries:
            return [IngestResult(shown, "rejected", "the zip holds no files", source=Path(path))]
        return _units_ingest(
            project, series.group_files(entries), uploaded_by, enqueue, None, prefix=f"{shown}/"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _unit_metadata(unit: series.Unit, metadata_for) -> dict[str, str] | None:
    if metadata_for is None:
        return None
    return next((found for m in unit.members if (found := metadata_for(m.path)) is not None), None)


def _unit_ingest(
    project, unit: series.Unit, uploaded_by, enqueue, metadata_for, *, prefix="", given=False
) -> IngestResult:
    name = (prefix + unit.name)[:255]
    source = unit.main_member.path if given and unit.main else None
    if unit.problem:
        first = unit.members[0].path if given and unit.members else None
        return IngestResult(name, "rejected", unit.problem, source=first)
    metadata = _unit_metadata(unit, metadata_for)
    if unit.kind == "file":
        member = unit.main_member
        result = image_ingest(
            project=project,
            source=member.path,
            original_name=PurePosixPath(member.name).name,
            uploaded_by=uploaded_by,
            enqueue=enqueue,
            metadata=metadata,
        )
        return replace(result, name=name, source=source)
    result = _folder_ingest(project, unit, name, uploaded_by, enqueue, metadata or {})
    if result.ok and unit.left_out:
        result = replace(result, message="; ".join(filter(None, [result.message, LEFT_OUT_NOTE])))
    # the unit's name as shown (with its zip's name), not the .mrxs name the image keeps
    return replace(result, name=name, source=source)


# Files stored alone are ingested in chunks: staged and inspected one by one (no database),
# then written together in one transaction. A chunk is closed at this many files or bytes.
INGEST_CHUNK_FILES = 200
INGEST_CHUNK_BYTES = 1024**3


@dataclass
class _Pending:
    """A file of a chunk: staged, looked up, inspected; its result once known."""

    index: int  # its place in the results
    unit: series.Unit
    name: str  # the unit's name as results show it
    original: str  # the file's own name, which the image keeps
    source: Path | None
    metadata: dict[str, str]
    staged: imaging.storage.StagedUpload | None = None
    info: imaging.ImageInfo | None = None
    image: Image | None = None  # the existing row of the same content
    first: _Pending | None = None  # an earlier file of the chunk with the same content
    result: IngestResult | None = None


def _units_ingest(
    project,
    units,
    uploaded_by,
    enqueue,
    metadata_for,
    *,
    prefix="",
    given=False,
    progress=None,
) -> list[IngestResult]:
    """One result per unit, in order. Files stored alone go through `_chunk_ingest`; a
    multi-file unit is ingested alone, after the files before it. `progress` is told of
    each result once it is final (see `images_ingest`)."""
    results: list[IngestResult | None] = []
    files: list[int] = []  # how many given files each result accounts for
    reported = 0

    def report() -> None:
        nonlocal reported
        while progress and reported < len(results) and results[reported] is not None:
            progress(results[reported], files[reported])
            reported += 1

    chunk: list[_Pending] = []
    chunk_bytes = 0
    with contextlib.ExitStack() as staging:
        for unit in units:
            files.append(len(unit.members) + len(unit.left_out))
            if unit.problem or unit.kind != "file":
                _chunk_ingest(project, chunk, uploaded_by, enqueue, results, staging)
                chunk, chunk_bytes = [], 0
                report()
                results.append(
                    _unit_ingest(
                        project,
                        unit,
                        uploaded_by,
                        enqueue,
                        metadata_for,
                        prefix=prefix,
                        given=given,
                    )
                )
                report()
                continue
            member = unit.main_member
            item = _Pending(
                index=len(results),
                unit=unit,
                name=(prefix + unit.name)[:255],
                original=Path(PurePosixPath(member.name).name).name[:255] or "unnamed",
                source=member.path if given else None,
                metadata=_unit_metadata(unit, metadata_for) or {},
            )
            results.append(None)
            try:
                item.staged = staging.enter_context(
                    imaging.staged_upload(
                        member.path,
                        Path(settings.MEDIA_ROOT),
                        max_bytes=settings.MEDANNOT_MAX_FILE_BYTES,
                        suffix=imaging.safe_suffix(item.original),
                    )
                )
            except imaging.ImageRejected as exc:
                item.result = IngestResult(item.original, "rejected", str(exc))
            chunk.append(item)
            chunk_bytes += item.staged.size if item.staged else 0
            if len(chunk) >= INGEST_CHUNK_FILES or chunk_bytes >= INGEST_CHUNK_BYTES:
                _chunk_ingest(project, chunk, uploaded_by, enqueue, results, staging)
                chunk, chunk_bytes = [], 0
                report()
        _chunk_ingest(project, chunk, uploaded_by, enqueue, results, staging)
        report()
    return results  # type: ignore[return-value]


def _chunk_ingest(project, chunk, uploaded_by, enqueue, results, staging) -> None:
    """Ingest staged files: one query for the images already stored, each new content
    inspected once, then every row of the chunk in one transaction (`_chunk_rows`). Should
    that fail, its files are undone and ingested one by one (`image_ingest`), as before."""
    if not chunk:
        return
    media_root = Path(settings.MEDIA_ROOT)
    staged = [item for item in chunk if item.result is None]
    known = {
        image.sha256: image
        for image in Image.objects.filter(sha256__in={item.staged.sha256 for item in staged})
    }
    firsts: dict[str, _Pending] = {}
    for item in staged:
        sha = item.staged.sha256
        item.image = known.get(sha)
        item.first = firsts.setdefault(sha, item)
        if item.first is not item:
            continue
        if item.image is not None:
            if not (media_root / item.image.file).exists():
                # The row outlived its file (a lost disk): this upload restores it.
                item.staged.commit(Path(item.image.file).suffix)
            continue
        try:
            item.info = imaging.inspect_image(item.staged.temp_path)
        except imaging.ImageRejected as exc:
            item.result = IngestResult(item.original, "rejected", str(exc))
    for item in staged:
        if item.first is not item and item.first.result is not None:
            item.result = item.first.result  # the same bytes: the same verdict
    try:
        _chunk_rows(project, chunk, uploaded_by, enqueue)
    except Exception:
        _chunk_undo(chunk)
        log.warning("ingest: a chunk failed; its files are ingested one by one", exc_info=True)
        for item in chunk:
            if item.result is None or item.result.status != "rejected":
                item.result = image_ingest(
                    project=project,
                    source=item.unit.main_member.path,
                    original_name=item.original,
                    uploaded_by=uploaded_by,
                    enqueue=enqueue,
                    metadata=item.metadata,
                )
    except BaseException:
        _chunk_undo(chunk)
        raise
    finally:
        staging.close()  # the temp files of the chunk, in every case
    for item in chunk:
        results[item.index] = replace(item.result, name=item.name, source=item.source)


def _chunk_undo(chunk) -> None:
    """The rows rolled back: drop the files the chunk stored that no row points to."""
    placed = [item.staged for item in chunk if item.staged and item.staged.created]
    if not placed:
        return
    try:
        kept = set(
            Image.objects.filter(sha256__in=[s.sha256 for s in placed]).values_list(
                "sha256", flat=True
            )
        )
    except Exception:
        return  # cannot tell: an orphan file is harmless, a lost one is not
    for staged_file in placed:
        if staged_file.sha256 not in kept:
            staged_file.undo_commit()


def _chunk_rows(project, chunk, uploaded_by, enqueue) -> None:
    """The rows of a chunk in one transaction: new images, tasks and their audit events in
    three INSERTs, and the project's counters in one UPDATE; previews and drafting messages
    are sent after commit. A file whose image is already a task of the project is a
    duplicate."""
    actor = uploaded_by if uploaded_by is not None and uploaded_by.is_authenticated else None
    with transaction.atomic():
        created_images = []
        for item in chunk:
            if item.result is None and item.first is item and item.image is None:
                relpath = item.staged.commit(imaging.suffix_for(item.info, item.original))
                item.image = Image(
                    sha256=item.staged.sha256,
                    file=relpath,
                    original_name=item.original,
                    size_bytes=item.staged.size,
                    uploaded_by=uploaded_by,
                    **Image.fields_from(item.info),
                )
                created_images.append(item.image)
        Image.objects.bulk_create(created_images)
        image_ids = {item.first.image.pk for item in chunk if item.result is None}
        existing_tasks = {
            task.image_id: task
            for task in Task.objects.filter(project=project, image_id__in=image_ids)
        }
        state = (S.QUEUED if enqueue else S.NEW).value
        new_tasks: dict[int, Task] = {}
        for item in chunk:
            if item.result is not None:
                continue
            image = item.first.image
            if image.pk in existing_tasks or image.pk in new_tasks:
                continue
            new_tasks[image.pk] = Task(
                project=project,
                image=image,
                metadata=item.metadata,
                state=state,
                message_pending=enqueue,
            )
            item.result = IngestResult(item.original, "imported", "", new_tasks[image.pk])
        Task.objects.bulk_create(new_tasks.values())
        for item in chunk:
            if item.result is None:
                image_id = item.first.image.pk
                task = existing_tasks.get(image_id) or new_tasks[image_id]
                message = f"already in this project as task {task.pk}"
                item.result = IngestResult(item.original, "duplicate", message, task)
        events = []
        for item in chunk:
            if item.result.status != "imported":
                continue
            task = item.result.task
            after = {"image": task.image.sha256, "name": item.original, "metadata": item.metadata}
            events.append(
                AuditEvent(
                    action="task.create", actor=actor, project=project, task=task, after=after
                )
            )
            if enqueue:
                events.append(
                    AuditEvent(
                        action="task.state",
                        actor=actor,
                        project=project,
                        task=task,
                        before={"state": S.NEW.value},
                        after={"state": S.QUEUED.value},
                    )
                )
        AuditEvent.objects.bulk_create(events)
        if new_tasks:
            counters.counters_add(project.pk, {state: len(new_tasks)})
        image_ids = [image.pk for image in created_images]
        task_ids = [task.pk for task in new_tasks.values()]
        if image_ids:  # preview and first viewer tiles on the CPU queue, not on a view
            transaction.on_commit(lambda: previews_send(image_ids), robust=True)
        if enqueue and task_ids:
            transaction.on_commit(lambda: drafts_send(task_ids), robust=True)


def _folder_ingest(project, unit, name, uploaded_by, enqueue, metadata) -> IngestResult:
    """Store a multi-file slide in one folder, inspect it there, and make it a task.

    A rejected unit leaves nothing behind; the folder appears under images/ in one rename.
    """
    media_root = Path(settings.MEDIA_ROOT)
    original = PurePosixPath(unit.main).name if unit.kind == "mirax" else name
    try:
        with imaging.staged_folder(
            [(m.name, m.path) for m in unit.members],
            media_root,
            max_bytes=settings.MEDANNOT_MAX_FILE_BYTES,
            # DICOM names mean nothing: named by content, a renamed copy is the same image
            content_suffix=".dcm" if unit.kind == "dicom" else None,
        ) as staged:
            existing = Image.objects.filter(sha256=staged.sha256).first()
            if existing is not None and not (media_root / existing.file).exists():
                staged.commit(unit.main)  # the row outlived its files: this upload restores them
            info = None if existing else imaging.inspect_image(staged.temp_path(unit.main))
            try:
                return _ingest_rows(
                    project,
                    staged,
                    lambda info: staged.commit(unit.main),
                    existing,
                    info,
                    original[:255],
                    uploaded_by,
                    enqueue,
                    metadata,
                )
            except BaseException:
                _undo_unreferenced(staged)
                raise
    except imaging.ImageRejected as exc:
        return IngestResult(name, "rejected", str(exc))


def draft_send(task_id: int) -> bool:
    """Send the drafting message of a queued task and clear its pending mark. Never raises:
    unsent, the task stays pending, for the sweep to send once the broker is back."""
    if not messages.send(DRAFT_TASK, args=[task_id], queue=GPU_QUEUE):
        return False
    Task.objects.filter(pk=task_id, message_pending=True).update(message_pending=False)
    return True


def drafts_send(task_ids: Sequence[int]) -> int:
    """Send the drafting messages of queued tasks and clear their pending marks in one
    UPDATE; return how many went. Never raises: once the broker fails, the rest stay
    pending, for the sweep to send."""
    sent = messages.send_many(DRAFT_TASK, args=[[pk] for pk in task_ids], queue=GPU_QUEUE)
    if sent:
        Task.objects.filter(pk__in=task_ids[:sent], message_pending=True).update(
            message_pending=False
        )
    return sent


def _send_on_commit(task_id: int) -> None:
    # After commit: the worker must find the task queued. draft_send never raises; robust
    # anyway, so that nothing after commit can undo the change.
    transaction.on_commit(lambda: draft_send(task_id), robust=True)


def task_enqueue(*, task_id: int, actor: AbstractBaseUser | None = None, reason: str = "") -> Task:
    """Queue a task for drafting; the Celery message is sent once the transaction commits."""
    with transaction.atomic():
        task = task_transition(task_id=task_id, to=S.QUEUED, actor=actor, reason=reason)
        _send_on_commit(task.pk)
    return task


def task_retry(*, task_id: int, actor: AbstractBaseUser) -> Task:
    return task_enqueue(task_id=task_id, actor=actor, reason="retry")


def tasks_retry_failed(*, project: Project, actor: AbstractBaseUser) -> int:
    """Queue every failed task of a project again; returns how many."""
    count = 0
    for task_id in project.tasks.filter(state=S.FAILED).values_list("id", flat=True):
        try:
            task_retry(task_id=task_id, actor=actor)
            count += 1
        except InvalidTransition:
            continue  # retried by someone else meanwhile
    return count


def task_redraft(*, task_id: int, actor: AbstractBaseUser) -> Task:
    """Draft a task again (another model or prompt): a new draft, the old one kept."""
    return task_enqueue(task_id=task_id, actor=actor, reason="redraft")


# Review --------------------------------------------------------------------------------


def label_record(
    *,
    task_id: int,
    reviewer: AbstractBaseUser,
    decision: str,
    draft_id: int,
    text: str = "",
    reason: str = "",
    regions: list[dict] | None = None,
    label_revision: int = 0,
    client_id: uuid.UUID | None = None,
    category: str = "",
    time_on_task_ms: int | None = None,
    signature: Signature | None = None,
) -> Label:
    """Record (or revise) `reviewer`'s decision on the draft they saw.

    Accept keeps the draft text; edit stores the reviewer's text; reject needs a reason.
    `regions`: the reviewer's region pointers (GeoJSON Features, level-0 pixels), which
    replace the ones stored before; InvalidRegions (a ValueError) if they do not fit.
    `label_revision`: the revision of the reviewer's label the decision was made on (0: none
    yet). `client_id`: the id of the form instance; the same form posted again returns the
    label unchanged, with no new audit row.
    `category`: what was wrong with the draft, one of the project's correction categories
    (a reject given none is filed under "other"; an accept keeps none). `time_on_task_ms`:
    from the form's render to the decision, None if unknown; an accept faster than the
    project's fast_accept_seconds is flagged. The edit distance from the draft is stored.
    `signature`: the reader's signature of this decision (None: unsigned; a revision
    unsigned clears an earlier one, which signed other content).
    The reviewer's autosaved edit of the task is dropped.
    Raises ReviewConflict if a newer draft replaced the one the reviewer judged, or if the
    label is no longer at `label_revision`.
    """
    with transaction.atomic():
        label, _ = _label_write(
            task_id=task_id,
            reviewer=reviewer,
            decision=decision,
            draft_id=draft_id,
            text=text,
            reason=reason,
            regions=regions,
            label_revision=label_revision,
            client_id=client_id,
            category=category,
            time_on_task_ms=time_on_task_ms,
            signature=signature,
        )
    return label


def decide_and_claim(
    *,
    project: Project,
    skipped: Sequence[int] = (),
    prefetched: int | None = None,
    **decision: Any,
) -> tuple[Label, Claimed | None]:
    """`label_record(**decision)`, then the reviewer's next task of `project`, in one
    transaction: the hot path of the review queue (decide and next). The next task is
    `prefetched` (claimed ahead by `claim_for`, while they read) if they still hold it;
    else `claim_for` claims one now."""
    reviewer = decision["reviewer"]
    with transaction.atomic():
        label, renewed = _label_write(renew=prefetched, **decision)
        if renewed:
            return label, Claimed(prefetched, prefetched=True)
        return label, _claim(project=project, reviewer=reviewer, skipped=skipped)


def decide_locked(
    *,
    task: Task,
    skipped: Sequence[int] = (),
    prefetched: int | None = None,
    meanwhile: Callable[[], object] | None = None,
    **decision: Any,
) -> tuple[Label, Claimed | None]:
    """`decide_and_claim` in the caller's transaction, on a task it has locked
    (`task_for_decision`): the label and the other writes, then the next task. When the
    caller's is the outermost transaction (`hotsql.decision()`'s own, or an outermost
    `transaction.atomic()`), it is committed with the writes, in their round trip
    (`hotsql.commit_early`): what follows (claiming the next task now, if the one claimed
    ahead was lost) is a transaction of its own. `meanwhile`: Python work that needs no
    answer from the database (the answer to send if the claim ahead holds), done while
    PostgreSQL runs the writes and commits."""
    reviewer = decision["reviewer"]
    label, renewed = _label_write(
        locked=task, renew=prefetched, commit=True, meanwhile=meanwhile, **decision
    )
    if renewed:
        return label, Claimed(prefetched, prefetched=True)
    # After `hotsql.decision()`'s own COMMIT Django is in autocommit: the claim needs one.
    claiming = contextlib.nullcontext() if connection.in_atomic_block else transaction.atomic()
    with claiming:
        return label, _claim(project=task.project, reviewer=reviewer, skipped=skipped)


def _label_write(
    *,
    task_id: int,
    reviewer: AbstractBaseUser,
    decision: str,
    draft_id: int,
    text: str = "",
    reason: str = "",
    regions: list[dict] | None = None,
    label_revision: int = 0,
    client_id: uuid.UUID | None = None,
    category: str = "",
    time_on_task_ms: int | None = None,
    signature: Signature | None = None,
    locked: Task | None = None,
    renew: int | None = None,
    commit: bool = False,
    meanwhile: Callable[[], object] | None = None,
) -> tuple[Label, bool]:
    """`label_record` in the caller's transaction. Two statements: the task locked with
    what the decision is checked against and its readings (`task_for_decision`; none when
    the caller has it `locked` already), then the label and every other write in one.
    `renew`: a task the reviewer claimed ahead, whose claim is renewed with the writes;
    with the label, whether they still held it."""
    if decision not in Decision.values:
        raise ValueError(f"unknown decision {decision!r}")
    text, reason = text.strip(), reason.strip()
    if decision == Decision.EDITED and not text:
        raise ValueError("An edited label needs text.")
    if decision == Decision.REJECTED and not reason:
        raise ValueError("Say why the draft is rejected.")
    category = "" if decision == Decision.ACCEPTED else category.strip()
    if decision == Decision.REJECTED and not category:
        category = "other"
    task = locked if locked is not None and locked.pk == task_id else _task_for_decision(task_id)
    project = task.project
    if category and category not in project.correction_categories:
        raise ValueError(f"{category!r} is not one of this project's correction categories.")
    checked = (
        validate_regions(regions, width=task.image.width, height=task.image.height)
        if regions
        else []
    )
    readings = task.readings
    label = next((r for r in readings if r.reviewer_id == reviewer.pk), None)
    cells_before = _agreement_cells(readings, project)
    if _repeats(label, client_id, decision, draft_id, text, reason, checked):
        return label, False  # already recorded: answered like the first time, no new audit
    wanted = project.readings_per_task
    if label is None and wanted > 1 and len(readings) >= wanted:
        raise InvalidTransition(f"task {task.pk} already has its {wanted} readings")
    if task.state != S.DRAFTED or task.draft_pk is None:
        raise InvalidTransition(f"task {task.pk} is {task.state}: there is no draft to judge")
    if task.draft_pk != draft_id:
        raise ReviewConflict(NEWER_DRAFT)
    if (label.revision if label else 0) != label_revision:
        raise ReviewConflict(LABEL_CHANGED)
    final = {"accepted": task.draft_text, "edited": text, "rejected": ""}[decision]
    before = _label_state(label)
    if label is None:
        label = Label(task=task, reviewer=reviewer, revision=0)
        readings.append(label)
    label.revision += 1
    label.client_id = client_id
    label.draft_id, label.decision, label.text = draft_id, decision, final
    label.reason = reason if decision == Decision.REJECTED else ""
    label.regions = checked
    label.category = category
    if decision == Decision.REJECTED:
        label.edit_chars = label.edit_words = None
    else:
        label.edit_chars = char_distance(task.draft_text, final)
        label.edit_words = word_distance(task.draft_text, final)
    label.rouge_l = _kept_rouge(decision, task.draft_text, final)
    label.time_on_task_ms = time_on_task_ms
    fast = project.fast_accept_seconds * 1000
    label.fast_accept = (
        decision == Decision.ACCEPTED and time_on_task_ms is not None and time_on_task_ms < fast
    )
    # Written with the label's other fields, in its one statement.
    label.signed_by_name, label.signed_at, label.signature_meaning = signature or ("", None, "")
    events = [
        _audit_event("label.record", reviewer, task, before, _label_state(label), reason=reason)
    ]
    renewed = _review_settle(
        task,
        readings,
        reviewer,
        events,
        labels=1 if before is None else 0,
        reader=reviewer.pk,
        release=reviewer.pk,
        cells_before=cells_before,
        renew=renew,
        saving=label,
        commit=commit,
        reading=(label, before, _label_state(label)),
        meanwhile=meanwhile,
    )
    return label, renewed


def task_for_decision(
    task_id: int,
    user: AbstractBaseUser | None,
    *,
    meanwhile: Callable[[], object] | None = None,
) -> Task | None:
    """The task locked for a decision by `user`, in the caller's transaction, with all a
    decision needs, read in one statement once the lock is held: its project and image,
    `role` (the user's in the project, None if not a member or no user), `draft_pk` and
    `draft_text` (its newest draft), `draft_arms` (each of its drafts' prompt version and
    model revision, for the comparison rollup), `adjudicated` (the adjudication's
    decision, blank if none), `readings` (its labels, oldest first) and `ahead` (the
    user's next task claimed ahead while they read this one, with its page; None if none).
    None if there is no such task. Every
    reading's write loads its task so (the review queue's hot path among them): plain SQL,
    nothing compiled per request. `meanwhile`: Python work that needs no answer from the
    database (reading the decision's form), done while PostgreSQL runs the statements."""
    # The lock first, in a statement of its own: a statement that waits for it keeps the
    # snapshot it began with, and would miss the readings committed by the holder it waited
    # for. The read is sent with it all the same: PostgreSQL runs it once the lock is held,
    # with a snapshot taken then; only the waits are saved.
    with hotsql.prepared_cursor() as lock, hotsql.prepared_cursor() as read:
        with hotsql.pipelined():
            lock.execute(_LOCK_SQL, {"task": task_id})
            read.execute(_decision_sql(), {"task": task_id, "me": user.pk if user else None})
            if meanwhile is not None:
                meanwhile()
        row = read.fetchone()  # none without the task: the lock found nothing either
    if row is None:
        return None
    task_fields, project_fields, image_fields = (_FIELDS[m] for m in (Task, Project, Image))
    a, b = len(task_fields), len(task_fields) + len(project_fields)
    c = b + len(image_fields)
    task = _from_row(Task, task_fields, row[:a])
    task.project = _from_row(Project, project_fields, row[a:b])
    task.image = _from_row(Image, image_fields, row[b:c])
    task.role, task.draft_pk, task.draft_text, arms, task.adjudicated, readings = row[c:-2]
    if isinstance(arms, str):
        arms = json.loads(arms)
    task.draft_arms = {int(k): (v[0], v[1]) for k, v in (arms or {}).items()}
    if isinstance(readings, str):
        readings = json.loads(readings)
    task.readings = [_label_from_json(task, r) for r in readings or ()]
    ahead_id, page = row[-2:]
    task.ahead = Ahead(ahead_id, page) if ahead_id is not None else None
    return task


@dataclass(frozen=True)
class Ahead:
    """The reader's next task, claimed while they read this one, and its review area as
    rendered then (`claim_page_keep`)."""

    task_id: int
    page: str


def ahead_of(task_id: int, reviewer: AbstractBaseUser) -> Ahead | None:
    """`task_for_decision`'s `ahead`, alone."""
    held = Claim.objects.filter(reviewer=reviewer, after_task=task_id).exclude(page="")
    found = held.order_by("-expires_at").values_list("task_id", "page").first()
    return Ahead(*found) if found else None


def claim_page_keep(*, task_id: int, reviewer: AbstractBaseUser, after: int, page: str) -> bool:
    """Keep the review area of a task `reviewer` claimed ahead while reading `after`, with
    their claim: the decision on `after` sends it (`task_for_decision` reads it as
    `task.ahead`). False if they no longer hold the claim."""
    held = Claim.objects.filter(task_id=task_id, reviewer=reviewer)
    return held.update(after_task=after, page=page) == 1


_FIELDS = {m: m._meta.concrete_fields for m in (Task, Project, Image)}
_LOCK_SQL = "SELECT 1 FROM annotations_task WHERE id = %(task)s FOR UPDATE"


@functools.cache
def _decision_sql() -> str:
    def columns(model, alias):
        return ", ".join(f'{alias}."{f.column}"' for f in _FIELDS[model])

    return f"""
SELECT {columns(Task, "t")}, {columns(Project, "p")}, {columns(Image, "i")},
  (SELECT m.role FROM annotations_membership m
   WHERE m.project_id = t.project_id AND m.user_id = %(me)s),
  d.id, d.text,
  (SELECT json_object_agg(dd.id, json_build_array(COALESCE(pt.version, 0), dd.model_revision))
   FROM annotations_draft dd
   LEFT JOIN annotations_prompttemplate pt ON pt.id = dd.prompt_template_id
   WHERE dd.task_id = t.id),
  COALESCE((SELECT a.decision FROM annotations_adjudication a WHERE a.task_id = t.id), ''),
  (SELECT json_agg(l ORDER BY l.created_at, l.id) FROM annotations_label l
   WHERE l.task_id = t.id),
  ahead.task_id, ahead.page
FROM annotations_task t
JOIN annotations_project p ON p.id = t.project_id
JOIN annotations_image i ON i.id = t.image_id
LEFT JOIN LATERAL (
  SELECT id, text FROM annotations_draft WHERE task_id = t.id
  ORDER BY created_at DESC, id DESC LIMIT 1
) d ON true
LEFT JOIN LATERAL (
  SELECT c.task_id, c.page FROM annotations_claim c
  WHERE c.reviewer_id = %(me)s AND c.after_task = t.id AND octet_length(c.page) > 0
  ORDER BY c.expires_at DESC LIMIT 1
) ahead ON true
WHERE t.id = %(task)s
"""


def _from_row(model, fields, values):
    """A model instance from its columns as the database gave them (the fields' own
    conversions applied, as a queryset would)."""
    attnames, converters = _row_loading(model, tuple(fields))
    values = list(values)
    for i, convert in converters:
        if values[i] is not None:
            values[i] = convert(values[i], None, connection)
    return model.from_db(connection.alias, attnames, values)


@functools.cache
def _row_loading(model, fields: tuple) -> tuple[list[str], list[tuple[int, Callable]]]:
    """`_from_row`'s attribute names and the conversions to apply, by column position."""
    converters = [(i, f.from_db_value) for i, f in enumerate(fields) if hasattr(f, "from_db_value")]
    return [f.attname for f in fields], converters


def _label_from_json(task: Task, row: dict) -> Label:
    """A label from its row as `json_agg` gives it (times as ISO text, JSON as JSON)."""
    values = []
    for f in Label._meta.concrete_fields:
        v = row[f.column]
        if v is not None and isinstance(f, models.DateTimeField):
            v = datetime.fromisoformat(v)
        elif v is not None and isinstance(f, models.UUIDField):
            v = uuid.UUID(v)
        values.append(v)
    label = Label.from_db(
        connection.alias, [f.attname for f in Label._meta.concrete_fields], values
    )
    label.task = task
    return label


def _task_for_decision(task_id: int) -> Task:
    """`task_for_decision` for the services (no user: no role); Task.DoesNotExist if
    there is no such task."""
    task = task_for_decision(task_id, None)
    if task is None:
        raise Task.DoesNotExist(f"no task {task_id}")
    return task


def review_of(
    readings: Sequence[Label], *, wanted: int, words: int, adjudicated: str = ""
) -> tuple[str, str]:
    """A task's (review_state, outcome) from its readings, oldest first, and the decision
    of its adjudication (`adjudicated`, blank if none), which settles it."""
    if adjudicated:
        return ReviewState.FINAL, adjudicated
    if not readings:
        return ReviewState.OPEN, ""
    if wanted == 1:
        return ReviewState.FINAL, readings[0].decision  # its reading is the final label
    if len(readings) < wanted:
        return ReviewState.IN_REVIEW, ""
    if readings_disagree(readings, words=words):
        return ReviewState.DISAGREEMENT, ""
    return ReviewState.FINAL, readings[0].decision  # they agree: one decision


def _review_settle(
    task: Task,
    readings: Sequence[Label],
    actor: AbstractBaseUser,
    events: list[_Event],
    *,
    labels: int = 0,
    reader: int | None = None,
    release: int | None = None,
    cells_before: Counter | None = None,
    renew: int | None = None,
    saving: Label | None = None,
    commit: bool = False,
    reading: tuple[Label, dict | None, dict | None] | None = None,
    meanwhile: Callable[[], object] | None = None,
) -> bool:
    """After a reading changed: store the task's review state and outcome (with an audit
    row) if they changed, keep the counters (`labels`: readings added by `reader`, their
    id; the project's and theirs; with double reading the agreement cells, from the task's
    `cells_before` the change), write the label `saving` (new or changed), renew the
    reader's claim on `renew` (a task claimed ahead: whether they still hold it is
    returned), drop the reader's
    autosave and claim (`release`: their id), and write `events`. One statement; `task` is
    locked and annotated by `_task_for_decision`. `commit`: see `_execute_together`.
    `reading`: (label, its state before, after) of a reading that changed, for the
    insights rollups (an UPSERT of the reader's day and one of the drafts' arms, in the
    same statement)."""
    project = task.project
    state, outcome = review_of(
        readings,
        wanted=project.readings_per_task,
        words=project.disagreement_words,
        adjudicated=task.adjudicated,
    )
    before = (task.state, task.review_state, task.outcome)
    after = (task.state, state, outcome)
    parts: list[tuple[str, list]] = []
    if saving is not None:
        parts.append(_label_save_sql(saving))
    # The task list's columns (`Task.readings_count`, `decided_at`), from the readings as
    # they now stand (`saving`'s time set just above).
    listed = (len(readings), max((r.updated_at for r in readings), default=NO_DECISION))
    if after != before or listed != (task.readings_count, task.decided_at):
        parts.append(
            (
                "UPDATE annotations_task SET review_state = %s, outcome = %s, "
                "readings_count = %s, decided_at = %s WHERE id = %s",
                [state, outcome, *listed, task.pk],
            )
        )
        task.readings_count, task.decided_at = listed
    if after != before:
        events.append(
            _audit_event(
                "task.review_state",
                actor,
                task,
                {"review_state": task.review_state, "outcome": task.outcome},
                {"review_state": state, "outcome": outcome},
            )
        )
        task.review_state, task.outcome = state, outcome
    deltas = counters.task_deltas(before, after)
    if labels:
        deltas["labels"] = labels
    if deltas:
        counted_part = counters.add_sql(project.pk, deltas)
        parts.append(counted_part)
    if labels:
        parts.append(counters.reader_add_sql(project.pk, reader, labels))
    if reading is not None:
        changed, was, now = reading
        delta = insights.figures_delta(was, now)
        if delta:
            parts.append(
                insights.review_day_sql(project.pk, changed.reviewer_id, changed.created_at, delta)
            )
        arms = insights.arms_delta(was, now, task.draft_arms)
        if arms:
            parts.append(insights.arm_day_sql(project.pk, changed.created_at, arms))
    if cells_before is not None:
        cells = agreement.cells_delta(cells_before, _agreement_cells(readings, project))
        if cells:
            parts.append(counters.agreement_add_sql(project.pk, cells))
    if release is not None:
        for table in ("annotations_editautosave", "annotations_claim"):
            parts.append(
                (f"DELETE FROM {table} WHERE task_id = %s AND reviewer_id = %s", [task.pk, release])
            )
    if events:
        parts.append(_audit_sql(events))
    renewing = None
    if renew is not None and release is not None:
        renewing = (
            "UPDATE annotations_claim SET expires_at = %s "
            "WHERE task_id = %s AND reviewer_id = %s RETURNING 1",
            [_claim_expiry(), renew, release],
        )
        parts.append(renewing)
    if not parts:
        return False
    watched = [p for p in (counted_part if deltas else None, renewing) if p is not None]
    counts = _execute_together(
        parts,
        returning=[parts.index(p) + 1 for p in watched],
        first_id=saving is not None,
        commit=commit,
        meanwhile=meanwhile,
    )
    if saving is not None:
        saving.pk, counts = counts[0], counts[1:]
        saving._state.adding, saving._state.db = False, connection.alias
    found = dict(zip([id(p) for p in watched], counts, strict=True))
    if deltas and not found[id(counted_part)]:  # a project without counters yet: count it
        counters.recount([project.pk])
    return bool(renewing and found[id(renewing)])


def _label_save_sql(label: Label) -> tuple[str, list]:
    """The INSERT (RETURNING its id) or UPDATE that `label.save()` would run, with its
    times set as auto_now would, for `_execute_together`."""
    now = timezone.now()
    label.updated_at = now
    if label._state.adding:
        label.created_at = now
    insert, update, preps = _label_saving()
    db = connections[label._state.db or DEFAULT_DB_ALIAS]
    values = [prep(getattr(label, attname), db) for attname, prep in preps]
    if label._state.adding:
        return insert, values
    return update, [*values, label.pk]


@functools.cache
def _label_saving() -> tuple[str, str, list[tuple[str, Callable]]]:
    """`_label_save_sql`'s INSERT and UPDATE, and each column's attribute and conversion."""
    fields = [f for f in Label._meta.concrete_fields if not f.primary_key]
    columns = ", ".join(f.column for f in fields)  # plain names: a shorter statement
    marks = ", ".join(["%s"] * len(fields))
    insert = f"INSERT INTO annotations_label ({columns}) VALUES ({marks}) RETURNING id"
    sets = ", ".join(f'"{f.column}" = %s' for f in fields)
    update = f"UPDATE annotations_label SET {sets} WHERE id = %s RETURNING id"
    return insert, update, [(f.attname, f.get_db_prep_save) for f in fields]


def _agreement_cells(readings: Sequence[Label], project: Project) -> Counter | None:
    """What the task of `readings` adds to its project's agreement (None when the project
    reads each task once: nothing is kept)."""
    if project.readings_per_task < 2:
        return None
    return agreement.task_cells(
        [(r.decision, r.text) for r in readings],
        wanted=project.readings_per_task,
        distance=word_distance,
    )


def _execute_together(
    parts: list[tuple[str, list]],
    *,
    returning: Sequence[int] = (),
    first_id: bool = False,
    commit: bool = False,
    meanwhile: Callable[[], object] | None = None,
):
    """Run several writes as one statement (data-modifying CTEs: one snapshot, one round
    trip). `returning`: the 1-based indexes of parts with RETURNING whose row counts to give
    back, in that order, after the id the first part returns if `first_id`. The parts touch
    different rows, so their order does not matter. `commit`: the transaction is committed
    with them, in the same round trip, when it is the outermost (`hotsql.commit_early`).
    `meanwhile`: called once they are sent, before waiting for the answer."""
    names = [f"w{i}" for i in range(len(parts))]
    sql = "WITH " + ", ".join(f"{n} AS ({q})" for n, (q, _) in zip(names, parts, strict=True))
    counted = [f"(SELECT count(*) FROM {names[i - 1]})" for i in returning]
    if first_id:
        counted.insert(0, "(SELECT id FROM w0)")
    sql += " SELECT " + (", ".join(counted) if counted else "1")
    params = [p for _, ps in parts for p in ps]
    with hotsql.prepared_cursor() as cursor:
        with hotsql.pipelined():
            cursor.execute(sql, params)
            if commit:
                hotsql.commit_early()
            if meanwhile is not None:
                meanwhile()
        return cursor.fetchone() if counted else ()


class _Event(NamedTuple):
    """An audit row to write with a decision's other writes (`_audit_sql`)."""

    action: str
    actor_id: int | None
    project_id: int
    task_id: int
    before: dict | None
    after: dict | None
    reason: str


def _audit_event(action, actor, task, before, after, *, reason: str = "") -> _Event:
    actor_id = actor.pk if actor is not None and actor.is_authenticated else None
    return _Event(action, actor_id, task.project_id, task.pk, before, after, reason)


def _audit_sql(events: Sequence[_Event]) -> tuple[str, list]:
    """An INSERT of audit rows, as `audit_record` would write them one by one, in order. The
    rows go as one JSON parameter: the statement it joins keeps few enough parameters for
    psycopg to cache its parsing (at most 50)."""
    now = timezone.now()
    rows = [
        {
            "at": now.isoformat(),  # to the microsecond (DjangoJSONEncoder keeps milliseconds)
            "actor_id": e.actor_id,
            "action": e.action,
            "project_id": e.project_id,
            "task_id": e.task_id,
            "before": e.before,
            "after": e.after,
            "reason": e.reason,
        }
        for e in events
    ]
    sql = (
        "INSERT INTO annotations_auditevent "
        "(at, actor_id, action, project_id, task_id, before, after, reason) "
        "SELECT r.at, r.actor_id, r.action, r.project_id, r.task_id, r.before, r.after, r.reason "
        "FROM jsonb_populate_recordset(NULL::annotations_auditevent, %s::jsonb) "
        "WITH ORDINALITY r ORDER BY r.ordinality"
    )
    return sql, [json.dumps(rows, cls=DjangoJSONEncoder)]


class UndoRefused(Exception):
    """The reviewer's last decision cannot be undone (adjudicated, or nothing to undo)."""


NOTHING_TO_UNDO = "There is no decision of yours to undo on this task."
UNDO_ADJUDICATED = "This task has been adjudicated since your decision: it cannot be undone."
UNDO_CHANGED = "Your decision on this task changed since (another tab): undo it there."


_RESTORED_FIELDS = (
    "decision",
    "text",
    "reason",
    "regions",
    "category",
    "edit_chars",
    "edit_words",
    "time_on_task_ms",
    "fast_accept",
)


def label_undo(*, task_id: int, reviewer: AbstractBaseUser) -> Task:
    """Undo `reviewer`'s last decision on a task: the label gets back what it held before
    (a new revision), or goes if that decision was the first; the task gets back its state
    if nobody changed it since; the reviewer claims the task again. The audit keeps the
    decision and records the undo (`label.undo`). Returns the task.

    Raises UndoRefused once the task is adjudicated, or when the label is not the one the
    last decision wrote (undone already, or changed since).
    """
    with transaction.atomic():
        task = _task_for_decision(task_id)
        if task.adjudicated:
            raise UndoRefused(UNDO_ADJUDICATED)
        readings = task.readings
        label = next((r for r in readings if r.reviewer_id == reviewer.pk), None)
        record = (
            AuditEvent.objects.filter(task=task, actor=reviewer, action="label.record")
            .order_by("-id")
            .first()
        )
        if label is None or record is None:
            raise UndoRefused(NOTHING_TO_UNDO)
        if (record.after or {}).get("revision") != label.revision:
            raise UndoRefused(UNDO_CHANGED)
        cells_before = _agreement_cells(readings, task.project)
        current, restored = _label_state(label), record.before
        if restored is None:
            label.delete()
            readings.remove(label)
        else:
            for name in _RESTORED_FIELDS:
                setattr(label, name, restored[name])
            if "rouge_l" in restored:
                label.rouge_l = restored["rouge_l"]
            else:  # an audit row from before it was kept (0028): computed as it was then
                judged = Draft.objects.filter(pk=restored["draft"]).values_list("text", flat=True)
                label.rouge_l = _kept_rouge(label.decision, judged.first() or "", label.text)
            # The earlier version's own signature, if it had one: not the undone one's.
            signed_at = restored.get("signed_at")
            label.signed_at = datetime.fromisoformat(signed_at) if signed_at else None
            label.signed_by_name = restored.get("signed_by_name", "")
            label.signature_meaning = restored.get("signature_meaning", "")
            label.draft_id = restored["draft"]
            label.revision += 1
            label.client_id = None
            label.save()
            restored = _label_state(label)
        events = [_audit_event("label.undo", reviewer, task, current, restored)]
        _review_settle(
            task,
            readings,
            reviewer,
            events,
            labels=-1 if restored is None else 0,
            reader=reviewer.pk,
            cells_before=cells_before,
            reading=(label, current, restored),
        )
        Claim.objects.update_or_create(
            task_id=task.pk,
            reviewer=reviewer,
            defaults={"expires_at": _claim_expiry(), "created_at": timezone.now()},
        )
    return Task.objects.select_related("project", "image").get(pk=task_id)


def _repeats(label, client_id, decision, draft_id, text, reason, regions) -> bool:
    """Whether this is the decision that `label` records, posted again by the same form (a
    double click, a retried request). Another decision from that form is not a repeat: it
    was made on the state before the label changed."""
    if label is None or client_id is None or label.client_id != client_id:
        return False
    asked = {
        "decision": decision,
        "draft": draft_id,  # an accepted draft's text is the draft's
        "reason": reason if decision == Decision.REJECTED else "",
        "regions": regions,
    }
    if decision == Decision.EDITED:
        asked["text"] = text
    saved = _label_state(label)
    return all(saved[key] == value for key, value in asked.items())


def _kept_rouge(decision: str, draft_text: str, final: str) -> float | None:
    """A reading's ROUGE-L, of the draft against the kept text: 1 for an accept (it keeps
    the draft, nothing to compute), none for a reject."""
    if decision == Decision.ACCEPTED:
        return 1.0
    return rouge_l(draft_text, final) if decision == Decision.EDITED else None


def _label_state(label: Label | None) -> dict | None:
    if label is None:
        return None
    return {
        "decision": label.decision,
        "text": label.text,
        "reason": label.reason,
        "draft": label.draft_id,
        "regions": label.regions,
        "revision": label.revision,
        "category": label.category,
        "edit_chars": label.edit_chars,
        "edit_words": label.edit_words,
        "rouge_l": label.rouge_l,
        "time_on_task_ms": label.time_on_task_ms,
        "fast_accept": label.fast_accept,
    } | _signature_state(label)


def _signature_state(signed: Label | Adjudication) -> dict:
    """A signed decision's signature (a reading's or an adjudication's), for its audit row
    (nothing for an unsigned one)."""
    if signed.signed_at is None:
        return {}
    return {
        "signed_by_name": signed.signed_by_name,
        "signed_at": signed.signed_at.isoformat(),
        "signature_meaning": signed.signature_meaning,
    }


def edit_autosave(
    *, task: Task, reviewer: AbstractBaseUser, text: str, label_revision: int = 0
) -> EditAutosave | None:
    """Keep the text `reviewer` is editing on `task`, so a closed tab loses nothing.

    `label_revision`: the revision of the reviewer's label the page was shown with. If they
    decided since (a keystroke's request overtaken by the decision), nothing is kept: None.
    """
    with transaction.atomic():
        Task.objects.select_for_update().filter(pk=task.pk).first()  # serialise with decisions
        label = Label.objects.filter(task=task, reviewer=reviewer).only("revision").first()
        if (label.revision if label else 0) != label_revision:
            return None
        autosave, _ = EditAutosave.objects.update_or_create(
            task=task, reviewer=reviewer, defaults={"text": text}
        )
    return autosave


# Double reading and adjudication ---------------------------------------------------------


def readings_disagree(readings: Sequence[Label], *, words: int) -> bool:
    """Whether readers disagree: different decisions, or kept texts (accepted or edited) more
    than `words` words apart, for any two of them."""
    for a, b in itertools.combinations(readings, 2):
        if a.decision != b.decision:
            return True
        if a.decision != Decision.REJECTED and word_distance(a.text, b.text) > words:
            return True
    return False


def task_review_state_refresh(*, task_id: int, actor: AbstractBaseUser | None = None) -> str:
    """Compute a task's review state and outcome from its readings and adjudication, store
    them if they changed (with an audit row and the counters) and return the state. The
    services that record or undo a reading or an adjudication do this in their transaction."""
    with transaction.atomic():
        task = _task_for_decision(task_id)
        _review_settle(task, task.readings, actor, [])
    return task.review_state


def agreement_recount(project: Project) -> None:
    """Compute a project's agreement cells again from its labels (a change of the readings
    per task, a repair): one pass over them, in task order."""
    with transaction.atomic():
        backfills.agreement_cells_recount(project, Label, AgreementCell)


def project_reading_settings_set(
    *,
    project: Project,
    readings_per_task: int,
    disagreement_words: int,
    actor: AbstractBaseUser | None = None,
) -> Project:
    """Store how many readers read each task (1 to 5) and how many words apart two edited
    texts may be and still agree; ValueError if out of range. Review states of tasks read
    before are computed again when a reading or an adjudication is next recorded."""
    after = dict(
        zip(
            ("readings_per_task", "disagreement_words"),
            reading_settings_clean(readings_per_task, disagreement_words),
            strict=True,
        )
    )
    with transaction.atomic():
        project = Project.objects.select_for_update().get(pk=project.pk)
        before = {key: getattr(project, key) for key in after}
        if after != before:
            for key, value in after.items():
                setattr(project, key, value)
            project.save(update_fields=list(after))
            agreement_recount(project)  # a task's part depends on the readings wanted
            audit_record(
                action="project.reading_settings",
                actor=actor,
                project=project,
                before=before,
                after=after,
            )
    return project


def adjudication_record(
    *,
    task_id: int,
    adjudicator: AbstractBaseUser,
    decision: str,
    text: str = "",
    reason: str = "",
    category: str = "",
    signature: Signature | None = None,
) -> Adjudication:
    """Record (or revise) the final label of a task whose readers disagree, resolving all its
    readings: accept keeps the newest draft's text, edit stores the adjudicator's text,
    reject needs a reason (and is filed under "other" without a category). The task's review
    state becomes final. InvalidTransition if the readers do not disagree (or no draft).
    `signature`: the adjudicator's signature of this final label, kept with it and in its
    audit row (None: unsigned; a revision unsigned clears an earlier one, as for a reading).
    """
    if decision not in Decision.values:
        raise ValueError(f"unknown decision {decision!r}")
    text, reason, category = text.strip(), reason.strip(), category.strip()
    if decision == Decision.EDITED and not text:
        raise ValueError("An edited label needs text.")
    if decision == Decision.REJECTED and not reason:
        raise ValueError("Say why the draft is rejected.")
    if decision == Decision.ACCEPTED:
        category = ""
    elif decision == Decision.REJECTED and not category:
        category = "other"
    with transaction.atomic():
        task = Task.objects.select_for_update().get(pk=task_id)
        if category and category not in task.project.correction_categories:
            raise ValueError(f"{category!r} is not one of this project's correction categories.")
        adjudication = Adjudication.objects.filter(task=task).first()
        if adjudication is None and task.review_state != ReviewState.DISAGREEMENT:
            raise InvalidTransition(f"task {task.pk} is {task.review_state}: nothing to adjudicate")
        draft = task.latest_draft()
        if draft is None:
            raise InvalidTransition(f"task {task.pk} has no draft")
        before = _adjudication_state(adjudication)
        if adjudication is None:
            adjudication = Adjudication(task=task)
        adjudication.adjudicator, adjudication.draft = adjudicator, draft
        adjudication.decision, adjudication.category = decision, category
        adjudication.text = {"accepted": draft.text, "edited": text, "rejected": ""}[decision]
        adjudication.reason = reason if decision == Decision.REJECTED else ""
        adjudication.signed_by_name, adjudication.signed_at, adjudication.signature_meaning = (
            signature or ("", None, "")
        )
        adjudication.save()
        adjudication.readings.set(task.labels.all())
        audit_record(
            action="adjudication.record",
            actor=adjudicator,
            task=task,
            before=before,
            after=_adjudication_state(adjudication),
            reason=reason,
        )
        task_review_state_refresh(task_id=task.pk, actor=adjudicator)  # final, its outcome
    return adjudication


def _adjudication_state(adjudication: Adjudication | None) -> dict | None:
    if adjudication is None:
        return None
    return {
        "decision": adjudication.decision,
        "text": adjudication.text,
        "reason": adjudication.reason,
        "category": adjudication.category,
        "draft": adjudication.draft_id,
        "readings": sorted(adjudication.readings.values_list("pk", flat=True)),
    } | _signature_state(adjudication)


# The review queue -----------------------------------------------------------------------


def _claim_expiry():
    return timezone.now() + timedelta(seconds=settings.MEDANNOT_CLAIM_SECONDS)


@dataclass(frozen=True)
class Claimed:
    """What `claim_for` gives: the claimed task's id, and the task the queue would give
    next (not claimed: its image is prefetched while the reviewer reads)."""

    task_id: int
    upcoming_id: int | None = None
    upcoming_image: Image | None = None
    prefetched: bool = False  # claimed ahead, and still held (`decide_and_claim`)


def claim_next(
    *, project: Project, reviewer: AbstractBaseUser, skipped: Sequence[int] = ()
) -> Task | None:
    """Claim the next task of `project` that `reviewer` has not read (see `claim_for`), with
    its project and image; None when nothing is left for them."""
    claimed = claim_for(project=project, reviewer=reviewer, skipped=skipped)
    if claimed is None:
        return None
    return Task.objects.select_related("project", "image").get(pk=claimed.task_id)


# The candidates: drafted tasks still to read (the task_to_read partial index, in id order)
# that the reader has not read and fewer than `wanted` readers hold or have read. Locked
# with SKIP LOCKED: two readers never wait for each other, nor get the same row.
_CANDIDATES = """
SELECT t.id, t.image_id FROM annotations_task t
WHERE t.project_id = %(project)s AND t.state = 'drafted' AND t.review_state = ANY(%(to_read)s)
  AND {where}
  AND NOT EXISTS (
    SELECT 1 FROM annotations_label l WHERE l.task_id = t.id AND l.reviewer_id = %(me)s)
  AND {readers} < %(wanted)s
ORDER BY {order} LIMIT 1 {lock}
"""
_ONE_READER = (
    "(SELECT count(*) FROM annotations_claim c WHERE c.task_id = t.id AND c.expires_at > %(now)s)"
)
_READERS = (
    "((SELECT count(*) FROM annotations_label l WHERE l.task_id = t.id)"
    " + (SELECT count(*) FROM annotations_claim c"
    " WHERE c.task_id = t.id AND c.expires_at > %(now)s))"
)
_HELD = """
SELECT c.task_id AS id, t.image_id FROM annotations_claim c
JOIN annotations_task t ON t.id = c.task_id
WHERE c.reviewer_id = %(me)s AND t.project_id = %(project)s AND c.expires_at > %(now)s
  AND t.state = 'drafted' AND t.review_state = ANY(%(to_read)s)
  AND NOT c.task_id = ANY(%(passed)s::bigint[])
ORDER BY c.created_at LIMIT 1
"""
# Under the row lock, with a fresh snapshot: the readers counted again (a claim committed
# after the candidates' snapshot is seen here), expired claims of others taken over, and
# the claim written; no row when the task has its readers by now. The claim is audited in
# the same statement (no round trip added to the review path).
_TAKE = """
WITH gone AS (
  DELETE FROM annotations_claim
  WHERE task_id = %(task)s AND reviewer_id <> %(me)s AND expires_at <= %(now)s
  RETURNING task_id, reviewer_id, expires_at
), took AS (
INSERT INTO annotations_claim (task_id, reviewer_id, expires_at, created_at)
SELECT %(task)s, %(me)s, %(expiry)s, %(now)s
WHERE NOT EXISTS (
    SELECT 1 FROM annotations_label WHERE task_id = %(task)s AND reviewer_id = %(me)s)
  AND (SELECT count(*) FROM annotations_label WHERE task_id = %(task)s)
    + (SELECT count(*) FROM annotations_claim
       WHERE task_id = %(task)s AND reviewer_id <> %(me)s AND expires_at > %(now)s)
    < %(wanted)s
ON CONFLICT (task_id, reviewer_id)
DO UPDATE SET expires_at = EXCLUDED.expires_at, created_at = EXCLUDED.created_at
RETURNING task_id, expires_at
), logged AS (
INSERT INTO annotations_auditevent
  (at, actor_id, action, project_id, task_id, before, after, reason)
SELECT %(now)s, %(me)s, 'claim.take_over', %(project)s, task_id,
  jsonb_build_object('reviewer', reviewer_id, 'expires_at', expires_at), NULL, '' FROM gone
UNION ALL
SELECT %(now)s, %(me)s, 'claim.take', %(project)s, task_id, NULL,
  jsonb_build_object('expires_at', expires_at), '' FROM took
)
SELECT task_id FROM took
"""


def claim_for(
    *,
    project: Project,
    reviewer: AbstractBaseUser,
    skipped: Sequence[int] = (),
    exclude: Sequence[int] = (),
) -> Claimed | None:
    with transaction.atomic():
        return _claim(project=project, reviewer=reviewer, skipped=skipped, exclude=exclude)


def _claim(
    *,
    project: Project,
    reviewer: AbstractBaseUser,
    skipped: Sequence[int] = (),
    exclude: Sequence[int] = (),
) -> Claimed | None:
    """Claim the next task of `project` that `reviewer` has not read and that fewer than the
    project's readings per task readers hold or have read, oldest first; None when nothing
    is left for them.

    With one reading per task, a drafted task nobody holds; with double reading, one still
    in review, handed to up to `readings_per_task` different readers. The reviewer's own
    live claim in the project comes first (a second tab, Start again). Tasks locked by
    another claim are skipped, not waited for (SKIP LOCKED), and the readers are counted
    again under the lock; an expired claim is taken over. `skipped`: task ids the reviewer
    skipped, in order, which come last (the most recently skipped last of all). `exclude`:
    task ids not to give, held or not (the task on screen, when the next one is claimed
    ahead while the reviewer reads it).

    Two statements as a rule: the candidates (with the held claim and the task after), and
    the claim.
    """
    now = timezone.now()
    args: dict[str, Any] = {
        "project": project.pk,
        "me": reviewer.pk,
        "now": now,
        "expiry": now + timedelta(seconds=settings.MEDANNOT_CLAIM_SECONDS),
        "wanted": project.readings_per_task,
        "to_read": list(TO_READ),
        "skipped": list(skipped) or [0],
        "passed": [0, *exclude],
    }
    readers = _ONE_READER if project.readings_per_task == 1 else _READERS
    locked = "FOR UPDATE OF t SKIP LOCKED"
    not_skipped = "NOT t.id = ANY(%(skipped)s::bigint[]) AND NOT t.id = ANY(%(passed)s::bigint[])"
    fresh = _CANDIDATES.format(where=not_skipped, readers=readers, order="t.id", lock=locked)
    again = _CANDIDATES.format(
        where="t.id = ANY(%(skipped)s::bigint[]) AND NOT t.id = ANY(%(passed)s::bigint[])",
        readers=readers,
        order="array_position(%(skipped)s::bigint[], t.id)",
        lock=locked,
    )
    # The task after the fresh one, for the page to prefetch: not locked, so that other
    # readers can claim it meanwhile.
    after = _CANDIDATES.format(
        where=not_skipped + " AND t.id > COALESCE((SELECT max(id) FROM fresh), 0)",
        readers=readers,
        order="t.id",
        lock="",
    )
    # The held claim first, then fresh tasks in id order, then skipped ones in skip order;
    # the task after last, never claimed here.
    query = (
        f"WITH held AS ({_HELD}), fresh AS MATERIALIZED ({fresh}), after AS ({after})"
        + (f", again AS MATERIALIZED ({again})" if skipped else "")
        + " SELECT x.id, x.rank, i.id, i.file, i.kind, i.sha256 FROM ("
        " SELECT id, image_id, 0 AS rank FROM held"
        " UNION ALL SELECT id, image_id, 1 FROM fresh"
        + (" UNION ALL SELECT id, image_id, 2 FROM again" if skipped else "")
        + " UNION ALL SELECT id, image_id, 3 FROM after"
        + ") x JOIN annotations_image i ON i.id = x.image_id ORDER BY x.rank"
    )
    with connection.cursor() as cursor:
        while True:
            cursor.execute(query, args)
            rows = cursor.fetchall()
            if not any(rank < 3 for _, rank, *_ in rows):
                return None  # nothing left, or all of it held by others right now
            for k, (task_id, rank, *_) in enumerate(rows):
                if rank == 3:
                    break  # every candidate was read meanwhile: look again
                if rank == 0:  # the reviewer's own live claim
                    cursor.execute(
                        "UPDATE annotations_claim SET expires_at = %(expiry)s "
                        "WHERE task_id = %(task)s AND reviewer_id = %(me)s",
                        args | {"task": task_id},
                    )
                    return _claimed(rows, k)
                cursor.execute(_TAKE, args | {"task": task_id})
                if cursor.fetchone() is not None:
                    return _claimed(rows, k)
                args["passed"].append(task_id)  # its readers came meanwhile


def _claimed(rows: list[tuple], k: int) -> Claimed:
    task_id = rows[k][0]
    after = next((row for row in rows[k + 1 :] if row[0] != task_id), None)
    if after is None:
        return Claimed(task_id)
    _, _, image_id, file, kind, sha256 = after
    return Claimed(task_id, after[0], Image(pk=image_id, file=file, kind=kind, sha256=sha256))


def claim_renew(*, task_id: int, reviewer: AbstractBaseUser) -> bool:
    """Extend `reviewer`'s claim on a task (the open review page calls this every minute).
    False if they no longer hold it: released, or expired and taken by someone else."""
    held = Claim.objects.filter(task_id=task_id, reviewer=reviewer)
    return held.update(expires_at=_claim_expiry()) == 1


def claim_release(*, task_id: int, reviewer: AbstractBaseUser) -> None:
    """Give up `reviewer`'s claim on a task (a decision, a skip); others' claims stay.
    Audited in the same statement, when there was a claim to give up."""
    with connection.cursor() as cursor:
        cursor.execute(_RELEASE, {"task": task_id, "me": reviewer.pk, "now": timezone.now()})


_RELEASE = """
WITH gone AS (
  DELETE FROM annotations_claim WHERE task_id = %(task)s AND reviewer_id = %(me)s
  RETURNING task_id
)
INSERT INTO annotations_auditevent
  (at, actor_id, action, project_id, task_id, before, after, reason)
SELECT %(now)s, %(me)s, 'claim.release', t.project_id, t.id, NULL, NULL, ''
FROM gone JOIN annotations_task t ON t.id = gone.task_id
"""


# Drafts (called by the inference worker) -------------------------------------------------


def task_claim(*, task_id: int) -> Task | None:
    """Claim one queued task for drafting. None if another delivery already took it."""
    claimed = tasks_claim(limit=1, task_ids=[task_id])
    return claimed[0] if claimed else None


def tasks_claim(
    *, limit: int, project_id: int | None = None, task_ids: Iterable[int] | None = None
) -> list[Task]:
    """Claim up to `limit` queued tasks, oldest first, for one drafting batch.

    Rows locked by another worker's claim are skipped, not waited for, so several GPU
    workers share the queue without blocking each other. Each claim bumps the task's
    attempt: a draft is stored only for the attempt that claimed it. A task put back after
    a lost attempt is claimed alone, so that a task that kills its worker cannot take its
    batch-mates down with it again.
    """
    with transaction.atomic():
        queued = Task.objects.select_for_update(skip_locked=True).filter(state=S.QUEUED)
        if project_id is not None:
            queued = queued.filter(project_id=project_id)
        if task_ids is not None:
            queued = queued.filter(pk__in=list(task_ids))
        rows = list(queued.order_by("id").values_list("id", "lost_attempts")[:limit])
        if not rows:
            return []
        if rows[0][1] > 0:
            ids = [rows[0][0]]  # put back before: a batch of one
        else:
            ids = [task_id for task_id, lost in rows if lost == 0]
        now = timezone.now()
        Task.objects.filter(pk__in=ids).update(
            state=S.DRAFTING, attempt=F("attempt") + 1, drafting_started_at=now, updated_at=now
        )
        tasks = list(
            Task.objects.select_related("project", "image").filter(pk__in=ids).order_by("id")
        )
        for project_id, n in Counter(t.project_id for t in tasks).items():
            counters.counters_add(project_id, {S.QUEUED: -n, S.DRAFTING: n})
        AuditEvent.objects.bulk_create(
            AuditEvent(
                action="task.state",
                project_id=t.project_id,
                task=t,
                before={"state": S.QUEUED},
                after={"state": S.DRAFTING, "attempt": t.attempt},
            )
            for t in tasks
        )
        return tasks


MAX_LOST_ATTEMPTS = 3


def _put_back(task: Task, *, reason: str) -> None:
    """Queue a claimed task again after an attempt without an outcome, or fail it for good
    after MAX_LOST_ATTEMPTS of them. Call inside a transaction, with the row locked."""
    task.lost_attempts += 1
    task.save(update_fields=["lost_attempts"])
    if task.lost_attempts >= MAX_LOST_ATTEMPTS:
        error = (
            f"gave up after {task.lost_attempts} attempts: the worker was lost or timed out "
            f"each time (last: {reason})"
        )
        task_transition(task_id=task.pk, to=S.FAILED, error=error, reason=reason)
        return
    task_transition(task_id=task.pk, to=S.QUEUED, reason=reason)
    _send_on_commit(task.pk)


def tasks_sweep_stuck(*, lease_seconds: int) -> list[int]:
    """Put back tasks whose drafting worker died: drafting for longer than the lease; and
    send the messages that the broker did not take (it was down).

    A late result of a put-back task, if the worker was only slow, is dropped by the attempt
    check, so a task still ends with exactly one draft. A task lost MAX_LOST_ATTEMPTS times
    fails, with the reason shown. Returns the ids put back or failed.
    """
    cutoff = timezone.now() - timedelta(seconds=lease_seconds)
    stuck = list(
        Task.objects.filter(state=S.DRAFTING, drafting_started_at__lt=cutoff).values_list(
            "id", flat=True
        )
    )
    swept = []
    for task_id in stuck:
        with transaction.atomic():
            task = Task.objects.select_for_update().get(pk=task_id)
            if task.state != S.DRAFTING or task.drafting_started_at >= cutoff:
                continue  # finished or claimed again meanwhile
            _put_back(task, reason=f"no draft after {lease_seconds} s: the worker was lost")
        swept.append(task_id)
    # The outbox: queued, but the broker never took the message (it was down). And queued
    # long ago and never claimed: the message was lost. A duplicate finds nothing to do.
    waiting = (
        Task.objects.filter(state=S.QUEUED)
        .filter(Q(message_pending=True) | Q(updated_at__lt=cutoff))
        .order_by("id")
        .values_list("id", flat=True)
    )
    for task_id in waiting[:1000]:
        if not draft_send(task_id):
            break  # the broker is still down: the next sweep tries again
    return swept


def uploads_sweep_tmp(*, older_than_s: float) -> int:
    """Delete temporary files of interrupted uploads (ours and Django's) older than
    `older_than_s` from MEDIA_ROOT/tmp; returns how many."""
    removed = imaging.sweep_tmp(Path(settings.MEDIA_ROOT), older_than_s=older_than_s)
    if removed:
        log.info("removed %s temporary upload file(s) older than %s s", removed, older_than_s)
    return removed


def draft_record(*, task_id: int, attempt: int, fields: dict[str, Any]) -> Draft | None:
    """Store a draft for the claimed attempt; None if the claim was lost meanwhile."""
    with transaction.atomic():
        task = Task.objects.select_for_update().get(pk=task_id)
        if task.state != S.DRAFTING or task.attempt != attempt:
            log.warning("task %s: attempt %s lost its claim; draft dropped", task_id, attempt)
            return None
        reference = (task.metadata or {}).get("reference")
        if reference and str(reference).strip():
            fields = {**fields, "rouge_reference": rouge_l(fields["text"], str(reference))}
        draft = Draft.objects.create(task=task, attempt=attempt, **fields)
        task_transition(task_id=task_id, to=S.DRAFTED)
        # The task list's columns of the newest draft.
        version = draft.prompt_template.version if draft.prompt_template_id else 0
        Task.objects.filter(pk=task_id).update(
            prompt_version=version, draft_truncated=draft.truncated
        )
        insights.draft_day_add(
            task.project_id,
            draft.created_at,
            seconds=draft.seconds_total,
            truncated=draft.truncated,
        )
        insights.draft_arm_add(
            task.project_id,
            draft.created_at,
            draft_arm(draft),
            rouge_reference=draft.rouge_reference,
        )
        return draft


def draft_arm(draft: Draft) -> insights.Arm:
    """A draft's arm of the prompt and model comparison: its prompt version (0 for the
    modality's built-in prompt) and model revision."""
    version = draft.prompt_template.version if draft.prompt_template_id else 0
    return version, draft.model_revision


def draft_release(*, task_id: int, attempt: int, lost: str = "") -> None:
    """Give back a claimed task that will not be drafted now (its worker is stopping).

    `lost`: why the attempt was cut short while the task was being drafted (an error, the
    soft time limit); it then counts as a lost attempt, and the task fails after a few.
    """
    with transaction.atomic():
        task = Task.objects.select_for_update().get(pk=task_id)
        if task.state != S.DRAFTING or task.attempt != attempt:
            return
        if lost:
            _put_back(task, reason=f"drafting stopped: {lost}")
            return
        task_transition(task_id=task_id, to=S.QUEUED, reason="released by a stopping worker")
        _send_on_commit(task_id)


def draft_fail(*, task_id: int, attempt: int, error: str) -> None:
    with transaction.atomic():
        task = Task.objects.select_for_update().get(pk=task_id)
        if task.state != S.DRAFTING or task.attempt != attempt:
            return
        task_transition(task_id=task_id, to=S.FAILED, error=error[:5000])


# Review claims: the sweep ----------------------------------------------------------------

CLAIM_SWEEP_BATCH = 5000


def claims_sweep_expired(*, grace_s: float = 0) -> int:
    """Delete review claims that expired more than `grace_s` seconds ago: claim_next takes an
    expired claim over only when someone claims its task, so abandoned ones would stay.
    Returns how many were deleted.

    Deletes CLAIM_SWEEP_BATCH rows per statement, so a backlog never holds many row locks at
    once. The expiry is checked again on each row deleted: a claim renewed meanwhile stays.
    """
    if grace_s < 0:
        raise ValueError("grace_s must not be negative: live claims would be deleted")
    cutoff = timezone.now() - timedelta(seconds=grace_s)
    expired = Claim.objects.filter(expires_at__lt=cutoff)
    removed = 0
    while True:
        batch = expired.order_by().values("pk")[:CLAIM_SWEEP_BATCH]
        deleted, _ = expired.filter(pk__in=batch).delete()
        removed += deleted
        if deleted < CLAIM_SWEEP_BATCH:
            break
    if removed:
        log.info("deleted %s review claim(s) expired more than %s s ago", removed, grace_s)
    return removed
