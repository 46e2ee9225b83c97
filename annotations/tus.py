"""The tus 1.0.0 resumable upload protocol: files arrive in pieces into the staging folder.

A slide of several GiB over a hospital network drops its connection; tus lets the browser
ask how much arrived (HEAD) and send the rest (PATCH). Extensions: creation, checksum
(per piece, sha1 or sha256), termination, expiration. Partial files live in
MEDIA_ROOT/uploads/, never in the image store; a whole file is ingested with its batch
(annotations.uploadbatches). The views (annotations.tus_views) only translate HTTP.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import os
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Count, Sum
from django.utils import timezone

from annotations.models import Project, Upload, UploadBatch, UploadState
from annotations.uploads import human_bytes, short_name
from imaging.storage import safe_suffix

VERSION = "1.0.0"
EXTENSIONS = "creation,checksum,termination,expiration"
CHECKSUM_ALGORITHMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
STAGING_DIR = "uploads"
_READ_SIZE = 1024 * 1024


class TusError(Exception):
    """A refused request: the HTTP status and a message a clinician can act on."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def max_size() -> int:
    """The largest file accepted: the same per-file limit as the plain upload form."""
    return settings.MEDANNOT_MAX_FILE_BYTES


def staging_path(upload: Upload) -> Path:
    """Where the bytes of `upload` gather; the suffix kept so that manifests and zips are
    recognised by name."""
    root = Path(settings.MEDIA_ROOT) / STAGING_DIR
    return root / f"{upload.pk}{safe_suffix(upload.filename)}"


def metadata_parse(header: str) -> dict[str, str]:
    """Upload-Metadata: comma-separated `key base64(value)` pairs (a value may be absent)."""
    found: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in header.split(","))):
        key, _, encoded = pair.partition(" ")
        try:
            found[key] = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise TusError(400, f"The upload's details ({key}) could not be read.") from None
    return found


def clean_relative_path(value: str) -> str:
    """A folder drop's relative path without `..`, leading slashes or backslashes."""
    parts = [p for p in PurePosixPath(value.replace("\\", "/")).parts if p not in ("/", ".", "..")]
    return "/".join(parts)[:1000]


def upload_create(
    *, project: Project, user: AbstractBaseUser, length: int | None, metadata: dict[str, str]
) -> Upload:
    """A new upload of `length` bytes in one of the user's batches of this project."""
    if length is None or length < 0:
        raise TusError(400, "The upload did not say how large the file is (Upload-Length).")
    if length > max_size():
        raise TusError(413, f"File too large: the limit is {human_bytes(max_size())}.")
    with transaction.atomic():
        # The batch row locked: files created at once cannot together pass its limits.
        batch = (
            UploadBatch.objects.select_for_update()
            .filter(
                pk=_int_or_none(metadata.get("batch")), project=project, user=user, finished_at=None
            )
            .first()
        )
        if batch is None:
            raise TusError(400, "This upload belongs to no open batch: reload the upload page.")
        _batch_room_check(batch, length)
        return _upload_create(project, user, batch, length, metadata)


def _batch_room_check(batch: UploadBatch, length: int) -> None:
    """The plain form's limits, for a batch: the number of files and their total size."""
    sent = batch.uploads.aggregate(files=Count("pk"), size=Sum("length"))
    if sent["files"] >= settings.MEDANNOT_MAX_UPLOAD_FILES:
        raise TusError(
            413,
            f"Not uploaded: at most {settings.MEDANNOT_MAX_UPLOAD_FILES} files per upload; "
            "upload the rest separately.",
        )
    if (sent["size"] or 0) + length > settings.MEDANNOT_MAX_UPLOAD_BYTES:
        raise TusError(
            413,
            f"Not uploaded: at most {human_bytes(settings.MEDANNOT_MAX_UPLOAD_BYTES)} per "
            "upload in total size; upload the rest separately.",
        )


def _upload_create(project, user, batch, length: int, metadata: dict[str, str]) -> Upload:
    checksum = metadata.get("sha256", "").lower()
    if checksum and (len(checksum) != 64 or any(c not in "0123456789abcdef" for c in checksum)):
        raise TusError(400, "The file's checksum (sha256) is not a valid one.")
    name = short_name(PurePosixPath(metadata.get("filename", "").replace("\\", "/")).name)
    upload = Upload.objects.create(
        project=project,
        user=user,
        batch=batch,
        filename=name or "unnamed",
        relative_path=clean_relative_path(metadata.get("relativePath", "")),
        length=length,
        checksum=checksum,
        expires_at=timezone.now() + datetime.timedelta(hours=settings.MEDANNOT_UPLOAD_EXPIRY_HOURS),
    )
    path = staging_path(upload)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    if length == 0 and not _complete(upload, path):
        path.unlink()  # the row goes with the refusal's rollback
        raise TusError(460, "The empty file does not match its checksum.")
    return upload


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def checksum_parse(header: str | None):
    """Upload-Checksum `<algorithm> <base64 digest>`: (a fresh hasher, the digest) or None."""
    if not header:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise TusError(400, f"Checksum algorithm {algorithm!r} is not supported.")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise TusError(400, "The piece's checksum could not be read.") from None
    return CHECKSUM_ALGORITHMS[algorithm](), digest


def chunk_append(
    *, upload_id: int, offset: int | None, stream: BinaryIO, checksum: str | None
) -> Upload:
    """Append one piece at `offset`; a piece that does not match its checksum, or runs past
    the declared length, is discarded whole and the upload stays where it was."""
    check = checksum_parse(checksum)
    with transaction.atomic():
        # The row lock keeps two tabs resuming the same file from writing at once.
        upload = Upload.objects.select_for_update().get(pk=upload_id)
        if upload.state != UploadState.RECEIVING:
            raise TusError(409, "This file has already arrived completely.")
        if offset != upload.offset:
            raise TusError(409, f"The upload is at byte {upload.offset}, not {offset}.")
        path = staging_path(upload)
        try:
            received = _write(path, upload, stream, check)
        except BaseException:
            _truncate(path, upload.offset)
            raise
        upload.offset += received
        upload.save(update_fields=["offset"])
        intact = upload.offset < upload.length or _complete(upload, path)
    if not intact:
        raise TusError(
            460,
            "The file arrived different from the one on your computer (checksum mismatch); "
            "it was not kept. Please upload it again.",
        )
    return upload


def _write(path: Path, upload: Upload, stream: BinaryIO, check) -> int:
    room = upload.length - upload.offset
    received = 0
    with path.open("r+b") as out:
        out.seek(upload.offset)
        while block := stream.read(_READ_SIZE):
            received += len(block)
            if received > room:
                raise TusError(
                    413, "More data arrived than the file's declared size; the piece was refused."
                )
            if check is not None:
                check[0].update(block)
            out.write(block)
    if check is not None and check[0].digest() != check[1]:
        raise TusError(460, "A piece of the file arrived damaged; it was discarded, send it again.")
    return received


def _truncate(path: Path, size: int) -> None:
    try:
        os.truncate(path, size)
    except FileNotFoundError:
        pass


def _complete(upload: Upload, path: Path) -> bool:
    """The last byte is in: check the whole file against the browser's sha256. False: it
    differs, and the upload starts over (nothing of a file that arrived different is kept)."""
    if upload.checksum and _sha256(path) != upload.checksum:
        _truncate(path, 0)
        upload.offset = 0
        upload.save(update_fields=["offset"])
        return False
    upload.state = UploadState.COMPLETE
    upload.save(update_fields=["state"])
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_READ_SIZE):
            digest.update(block)
    return digest.hexdigest()


def upload_terminate(*, upload: Upload) -> None:
    """Termination: the row and its partial file go."""
    staging_path(upload).unlink(missing_ok=True)
    upload.delete()


def expired(upload: Upload) -> bool:
    return upload.expires_at <= timezone.now()


def uploads_sweep_expired() -> int:
    """Delete the unfinished uploads past their expiry, with their partial files: a page
    closed mid-upload leaves nothing behind for long. For the hourly sweep; returns how many."""
    stale = list(
        Upload.objects.filter(
            expires_at__lte=timezone.now(),
            state__in=[UploadState.RECEIVING, UploadState.COMPLETE],
            batch__finished_at=None,
        )
    )
    for upload in stale:
        upload_terminate(upload=upload)
    return len(stale)
