"""A batch of resumable uploads, ingested together once the page says every file is in.

All the batch's files go through `services.images_ingest` in one call, so a DICOM series
sent as files or a MIRAX folder dropped as a folder stays one image, and zips are unpacked
by the same code as the plain form. Kept apart from the views so it can move to Celery.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from django.db import transaction
from django.utils import timezone

from annotations import manifests, services, tus
from annotations.models import (
    ImageKind,
    Modality,
    Upload,
    UploadBatch,
    UploadState,
)

MANIFEST_SUFFIXES = (".csv", ".jsonl")
# Whole-slide files by name, for a duplicate or a result whose image is not at hand.
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".dcm")


def batch_create(*, project, user) -> UploadBatch:
    """A new, open batch for the upload page to send its files into."""
    return UploadBatch.objects.create(project=project, user=user)


def batch_ingest(*, batch: UploadBatch) -> dict:
    """Ingest the batch's complete files, apply its manifest, store and return the report.

    Idempotent: the batch is claimed by a conditional update, so a second finish (a double
    click, a retry) returns the stored report and ingests nothing twice.
    """
    now = timezone.now()
    claimed = UploadBatch.objects.filter(pk=batch.pk, finished_at=None).update(finished_at=now)
    if not claimed:
        batch.refresh_from_db(fields=["finished_at", "report"])
        return batch.report
    batch.finished_at = now
    uploads = list(batch.uploads.order_by("pk"))
    done = [u for u in uploads if u.state == UploadState.COMPLETE]
    tables = [u for u in done if u.filename.lower().endswith(MANIFEST_SUFFIXES)]
    manifest_upload = _manifest_of(tables)
    images = [u for u in done if u not in tables]
    names = {tus.staging_path(u): _name(u) for u in images}
    report = {"files": [], "warnings": []}
    report["warnings"] += [
        f"{_name(u)} was not used: only one manifest is read per upload "
        f"({manifest_upload.filename})."
        for u in tables
        if u is not manifest_upload
    ]
    manifest = _manifest_load(manifest_upload, report)  # None: there is none, or unreadable
    results = services.images_ingest(
        project=batch.project,
        files=[(name, path) for path, name in names.items()],
        uploaded_by=batch.user,
        metadata_for=None if manifest is None else _fields_by_name(manifest, names),
    )
    for result in results:
        report["files"].append(
            {"name": result.name, "status": result.status, "message": result.message}
        )
        warning = _modality_warning(batch.project, result)
        if warning:
            report["warnings"].append(warning)
    if manifest is not None:
        report["warnings"] += _manifest_warnings(manifest, results, names)
    for upload in uploads:
        if upload.state != UploadState.COMPLETE:
            report["files"].append(
                {
                    "name": _name(upload),
                    "status": "rejected",
                    "message": "did not finish arriving; please upload it again",
                }
            )
    _staging_clear(uploads)
    with transaction.atomic():
        UploadBatch.objects.filter(pk=batch.pk).update(report=report)
        Upload.objects.filter(batch=batch).update(state=UploadState.INGESTED)
    batch.report = report
    return report


def _fields_by_name(manifest: manifests.Manifest, names: dict[Path, str]):
    """The manifest looks files up by the names the user gave, not by their staging paths."""
    return lambda path: manifest.fields_for(Path(names.get(path, path)))


def _name(upload: Upload) -> str:
    return upload.relative_path or upload.filename


def _manifest_of(tables: list[Upload]) -> Upload | None:
    """The batch's manifest among its .csv/.jsonl files: one named manifest first."""
    named = [u for u in tables if PurePosixPath(u.filename.lower()).stem == "manifest"]
    return (named or tables or [None])[0]


def _manifest_load(upload: Upload | None, report: dict) -> manifests.Manifest | None:
    if upload is None:
        return None
    try:
        manifest = manifests.manifest_read(tus.staging_path(upload))
    except manifests.ManifestError as exc:
        # The staging path means nothing to the user: name the file as they sent it.
        why = str(exc).split(": ", 1)[-1]
        report["warnings"].append(f"The manifest {upload.filename} was not used: {why}")
        return None
    report["warnings"] += [f"{upload.filename}: {problem}" for problem in manifest.problems]
    return manifest


def _manifest_warnings(manifest: manifests.Manifest, results, names: dict) -> list[str]:
    warnings = [
        f"The manifest names {name}, but no uploaded file has that name."
        for name in manifest.unmatched(names.values())
    ]
    for result in results:
        name = names.get(result.source) if result.source else None
        if result.ok and name and manifest.fields_for(Path(name)) is None:
            warnings.append(f"{name} is not in the manifest: it has no details such as organ.")
    return warnings


def _modality_warning(project, result) -> str | None:
    """A slide in a photo project, or a photo in a pathology one: imported, but flagged."""
    if not result.ok:
        return None
    image = result.task.image if result.task is not None else None
    if image is not None:
        slide = image.kind == ImageKind.SLIDE
    else:
        slide = result.name.lower().endswith(SLIDE_SUFFIXES)
    if slide and project.modality == Modality.DERMATOLOGY:
        return (
            f"{result.name} is a whole-slide image, but this is a dermatology project of "
            "photos: check it belongs here."
        )
    if not slide and project.modality == Modality.PATHOLOGY:
        return (
            f"{result.name} is a photo, not a whole-slide image, but this is a pathology "
            "project: check it belongs here."
        )
    return None


def _staging_clear(uploads: list[Upload]) -> None:
    for upload in uploads:
        tus.staging_path(upload).unlink(missing_ok=True)
