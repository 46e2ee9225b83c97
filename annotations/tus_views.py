"""HTTP for resumable uploads: the tus endpoints, and a batch's start, finish and report.

The protocol itself lives in annotations.tus; these views load the objects for the user
(another user's upload, or another project's, is a 404) and turn TusError into answers
that carry Tus-Resumable like every other.
"""

from __future__ import annotations

import functools

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import http_date
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotations import tus, uploadbatches
from annotations.access import Can, project_for_user
from annotations.api_tokens import token_or_session
from annotations.models import Upload, UploadBatch


def _tus_answer(status: int, message: str = "") -> HttpResponse:
    return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")


def tus_endpoint(view):
    """Every answer says Tus-Resumable; a client of another version gets 412; refusals,
    404 and 403 included, are short plain-text answers the page can show."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        version = request.headers.get("Tus-Resumable")
        refused = _csrf_refusal(request)
        if refused is not None:
            response = refused
        elif request.method != "OPTIONS" and version != tus.VERSION:
            response = _tus_answer(412, f"Only tus {tus.VERSION} is supported.")
            response["Tus-Version"] = tus.VERSION
        else:
            try:
                response = view(request, *args, **kwargs)
            except tus.TusError as exc:
                response = _tus_answer(exc.status, exc.message)
            except Http404:
                response = _tus_answer(404, "No such upload.")
            except PermissionDenied as exc:
                response = _tus_answer(403, str(exc))
        response["Tus-Resumable"] = tus.VERSION
        response["Cache-Control"] = "no-store"
        return response

    # Not exempt from CSRF: the same check runs inside, so that its refusal says Tus-Resumable.
    return csrf_exempt(wrapper)


def _csrf_refusal(request: HttpRequest) -> HttpResponse | None:
    """Django's own CSRF check (the X-CSRFToken header), as the middleware would run it."""
    return CsrfViewMiddleware(lambda r: HttpResponse()).process_view(request, None, (), {})


def _upload_for_user(request: HttpRequest, project_id: int, upload_id: int) -> Upload:
    """The user's own upload in a project where they may upload; anything else is a 404."""
    project = project_for_user(request.user, project_id, Can.UPLOAD)
    upload = Upload.objects.filter(pk=upload_id, project=project, user=request.user).first()
    if upload is None or tus.expired(upload):
        raise Http404("No such upload")
    return upload


def _options() -> HttpResponse:
    response = HttpResponse(status=204)
    response["Tus-Version"] = tus.VERSION
    response["Tus-Extension"] = tus.EXTENSIONS
    response["Tus-Max-Size"] = str(tus.max_size())
    response["Tus-Checksum-Algorithm"] = ",".join(tus.CHECKSUM_ALGORITHMS)
    return response


def _header_int(request: HttpRequest, name: str) -> int | None:
    value = request.headers.get(name, "")
    return int(value) if value.isdigit() else None


@token_or_session(check_csrf=False)  # tus_endpoint checks CSRF for a session
@require_http_methods(["OPTIONS", "POST"])
@login_required
@tus_endpoint
def tus_create(request: HttpRequest, project_id: int) -> HttpResponse:
    """OPTIONS: what this server supports. POST: a new upload (creation)."""
    project = project_for_user(request.user, project_id, Can.UPLOAD)
    if request.method == "OPTIONS":
        return _options()
    upload = tus.upload_create(
        project=project,
        user=request.user,
        length=_header_int(request, "Upload-Length"),
        metadata=tus.metadata_parse(request.headers.get("Upload-Metadata", "")),
    )
    response = HttpResponse(status=201)
    response["Location"] = request.build_absolute_uri(
        reverse("tus-upload", args=[project.pk, upload.pk])
    )
    response["Upload-Expires"] = http_date(upload.expires_at.timestamp())
    return response


@token_or_session(check_csrf=False)
@require_http_methods(["OPTIONS", "HEAD", "PATCH", "DELETE"])
@login_required
@tus_endpoint
def tus_upload(request: HttpRequest, project_id: int, upload_id: int) -> HttpResponse:
    """HEAD: how much arrived. PATCH: the next piece. DELETE: give up (termination)."""
    if request.method == "OPTIONS":
        return _options()
    upload = _upload_for_user(request, project_id, upload_id)
    if request.method == "DELETE":
        tus.upload_terminate(upload=upload)
        return HttpResponse(status=204)
    if request.method == "PATCH":
        if request.content_type != tus.OFFSET_CONTENT_TYPE:
            raise tus.TusError(415, f"A piece must be sent as {tus.OFFSET_CONTENT_TYPE}.")
        upload = tus.chunk_append(
            upload_id=upload.pk,
            offset=_header_int(request, "Upload-Offset"),
            stream=request,
            checksum=request.headers.get("Upload-Checksum"),
        )
        response = HttpResponse(status=204)
    else:
        response = HttpResponse(status=200)
        response["Upload-Length"] = str(upload.length)
    response["Upload-Offset"] = str(upload.offset)
    response["Upload-Expires"] = http_date(upload.expires_at.timestamp())
    return response


def _batch_for_user(request: HttpRequest, project_id: int, batch_id: int) -> UploadBatch:
    """A batch of a project where the user may upload; another project's is a 404."""
    project = project_for_user(request.user, project_id, Can.UPLOAD)
    batch = UploadBatch.objects.filter(pk=batch_id, project=project).first()
    if batch is None:
        raise Http404("No such upload batch")
    batch.project = project
    return batch


@token_or_session
@require_POST
@login_required
def upload_batch_create(request: HttpRequest, project_id: int) -> JsonResponse:
    """A new batch for the upload page: its id goes in each file's Upload-Metadata."""
    project = project_for_user(request.user, project_id, Can.UPLOAD)
    batch = uploadbatches.batch_create(project=project, user=request.user)
    return JsonResponse(
        {
            "batch": batch.pk,
            "finish": reverse("upload-batch-finish", args=[project.pk, batch.pk]),
        },
        status=201,
    )


@token_or_session
@require_POST
@login_required
def upload_batch_finish(request: HttpRequest, project_id: int, batch_id: int) -> HttpResponse:
    """Every file is in: ingest the batch together and answer with its report."""
    batch = _batch_for_user(request, project_id, batch_id)
    if batch.user_id != request.user.pk:
        raise Http404("No such upload batch")  # only its sender finishes a batch
    uploadbatches.batch_ingest(batch=batch)
    return _batch_render(request, batch)


@token_or_session
@require_GET
@login_required
@never_cache
def upload_batch(request: HttpRequest, project_id: int, batch_id: int) -> HttpResponse:
    """The report of one batch, kept for the project page's "Recent uploads"."""
    return _batch_render(request, _batch_for_user(request, project_id, batch_id))


def _batch_render(request: HttpRequest, batch: UploadBatch) -> HttpResponse:
    files = batch.report.get("files", [])
    template = "annotations/upload_batch.html"
    if getattr(request, "htmx", False):
        template += "#report"
    return render(
        request,
        template,
        {
            "project": batch.project,
            "batch": batch,
            "files": files,
            "warnings": batch.report.get("warnings", []),
            "n_ok": sum(f["status"] != "rejected" for f in files),
            "n_rejected": sum(f["status"] == "rejected" for f in files),
        },
    )
