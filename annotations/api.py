"""The REST API (django-ninja), mounted at /api/ with its schema at /api/openapi.json.

Thin on purpose: every endpoint loads its objects through the same access helpers as the
pages (`project_for_user`, `task_for_user`, `export_job_for_user`) and changes them through
the same services, so a token can do exactly what its user can do on the pages. There is
no docs page: ninja's would load Swagger UI from a CDN, and hospitals are offline.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.urls import reverse
from ninja import Field, File, NinjaAPI, Path, Query, Schema, Status
from ninja.errors import AuthenticationError
from ninja.files import UploadedFile
from ninja.security import HttpBearer

from annotations import exportjobs, exports, selectors, services
from annotations.access import (
    Can,
    export_job_for_user,
    is_site_admin,
    project_for_user,
    projects_for_user,
    task_for_user,
)
from annotations.api_tokens import (
    RateLimited,
    TokenRefused,
    refusal_response,
    request_authenticate,
)
from annotations.models import (
    Decision,
    ExportOrigin,
    ExportState,
    Modality,
    ReviewState,
    Task,
    TaskState,
    UploadBatch,
)
from annotations.notice import AI_NOTICE

MAX_ID = 2**63 - 1
MAX_PAGE = 200
# Text that PostgreSQL can store: no NUL character; a name has more than spaces.
NO_NUL = r"^[^\x00]*$"
A_NAME = r"^[^\x00]*[^\x00\s][^\x00]*$"


class BearerToken(HttpBearer):
    """`Authorization: Bearer <token>`: the request then acts as the token's user."""

    def authenticate(self, request: HttpRequest, token: str):
        try:
            return request_authenticate(request, token)
        except TokenRefused:
            return None  # ninja answers 401


api = NinjaAPI(
    title="MedAnnot API",
    version="1",
    description=(
        "Projects, uploads, tasks with their AI drafts and readings, and exports. "
        f"Every draft is marked: {AI_NOTICE}"
    ),
    auth=BearerToken(),
    docs_url=None,
    urls_namespace="api",
)


@api.exception_handler(RateLimited)
def _rate_limited(request: HttpRequest, exc: RateLimited) -> HttpResponse:
    return refusal_response(exc)


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: Exception) -> HttpResponse:
    return refusal_response(TokenRefused())


@api.exception_handler(PermissionDenied)
def _forbidden(request: HttpRequest, exc: PermissionDenied) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc) or "Not allowed."}, status=403)


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc) or "Not found."}, status=404)


# Schemas --------------------------------------------------------------------------------


class Message(Schema):
    detail: str


class Invalid(Schema):
    detail: list[dict] = Field(description="What in the request was invalid, field by field")


ERRORS = {401: Message, 403: Message, 404: Message, 422: Invalid, 429: Message}


class ProjectIn(Schema):
    name: str = Field(min_length=1, max_length=200, pattern=A_NAME)
    modality: Modality
    prompt: str = Field("", max_length=20000, pattern=NO_NUL)


class ProjectOut(Schema):
    id: int
    name: str
    modality: str
    upload: str = Field(description="Multipart upload of small files (field `files`)")
    tus: str = Field(description="Resumable (tus 1.0.0) uploads, for large files")
    upload_batches: str = Field(description="Start a batch; manifests travel in a batch")


class IngestOut(Schema):
    name: str
    status: str = Field(description="imported, duplicate or rejected")
    message: str
    task: int | None


class DraftOut(Schema):
    id: int
    attempt: int
    text: str
    model_id: str
    truncated: bool
    created_at: datetime
    notice: str = Field(description="Every draft is AI output: shown with it, always")


class ReadingOut(Schema):
    reviewer: str
    decision: str
    text: str
    reason: str
    category: str
    revision: int
    draft: int
    created_at: datetime
    updated_at: datetime


class FinalOut(Schema):
    decision: str
    text: str
    by: str = Field(description="reading (the readers agreed) or adjudication")


class TaskSummary(Schema):
    id: int
    project: int
    image_name: str
    state: str
    review_state: str
    outcome: str
    error: str
    created_at: datetime
    updated_at: datetime


class TaskPage(Schema):
    items: list[TaskSummary]
    next_after: int | None = Field(description="Pass as `after` for the next page")


class TaskOut(TaskSummary):
    metadata: dict[str, str]
    notice: str
    drafts: list[DraftOut]
    readings: list[ReadingOut]
    final: FinalOut | None


class ExportIn(Schema):
    format: Literal[exports.FORMATS] = "jsonl"  # type: ignore[valid-type]
    readings: bool = False
    history: bool = False
    decision: Decision | None = None
    review_state: ReviewState | None = None
    reviewer_names: bool = False


class ExportOut(Schema):
    id: int
    project: int
    origin: str = Field(
        description="web (the page or the API: a file to download once done), command "
        "(made with the export_labels command: its file is not here, never downloadable) or "
        "download (streamed to the browser by the page's Download now: not kept here)"
    )
    state: str
    format: str
    rows_done: int
    rows_expected: int
    error: str
    download: str | None
    expires_at: datetime | None


class BatchOut(Schema):
    id: int
    project: int
    finished: bool
    report: dict


# Projects and uploads -------------------------------------------------------------------


def _project_out(project) -> ProjectOut:
    return ProjectOut(
        id=project.pk,
        name=project.name,
        modality=project.modality,
        upload=reverse("api:project_upload", args=[project.pk]),
        tus=reverse("tus-create", args=[project.pk]),
        upload_batches=reverse("upload-batch-create", args=[project.pk]),
    )


@api.post("/projects", response={201: ProjectOut, 409: Message, **ERRORS})
def project_create(request: HttpRequest, data: ProjectIn):
    """Create a project. Only superusers create projects, as in the Django admin."""
    if not is_site_admin(request.user):
        raise PermissionDenied("Only a site administrator can create projects.")
    try:
        with transaction.atomic():
            project = services.project_create(
                name=data.name.strip(),
                modality=data.modality,
                prompt=data.prompt,
                actor=request.user,
            )
    except IntegrityError:
        return Status(409, {"detail": "A project of this name exists already."})
    except ValueError as exc:  # a prompt template that does not parse, as the settings form
        problem = {"loc": ["body", "data", "prompt"], "msg": str(exc), "type": "value_error"}
        return Status(422, {"detail": [problem]})
    return Status(201, _project_out(project))


@api.get("/projects", response={200: list[ProjectOut], **ERRORS})
def project_list(
    request: HttpRequest,
    offset: int = Query(0, ge=0, le=10**9),
    limit: int = Query(50, ge=1, le=MAX_PAGE),
):
    """The projects this token's user is a member of (a superuser: all), by name."""
    projects = projects_for_user(request.user).order_by("name", "pk")[offset : offset + limit]
    return [_project_out(p) for p in projects]


@api.post("/projects/{project_id}/upload", response={200: list[IngestOut], **ERRORS})
def project_upload(
    request: HttpRequest,
    project_id: int = Path(..., ge=1, le=MAX_ID),
    files: list[UploadedFile] = File(...),  # noqa: B008 - ninja's way to declare a part
):
    """Small files in one multipart request (field `files`), as the upload page sends
    them. For large slides, and to send a manifest, use the tus endpoint and a batch."""
    project = project_for_user(request.user, project_id, Can.UPLOAD)
    results = services.images_ingest(
        project=project, files=[(f.name or "upload", f) for f in files], uploaded_by=request.user
    )
    return [
        IngestOut(
            name=r.name, status=r.status, message=r.message, task=r.task.pk if r.task else None
        )
        for r in results
    ]


@api.get("/projects/{project_id}/uploads/{batch_id}", response={200: BatchOut, **ERRORS})
def upload_batch(
    request: HttpRequest,
    project_id: int = Path(..., ge=1, le=MAX_ID),
    batch_id: int = Path(..., ge=1, le=MAX_ID),
):
    """The report of a finished upload batch, as JSON."""
    project = project_for_user(request.user, project_id, Can.UPLOAD)
    batch = UploadBatch.objects.filter(pk=batch_id, project=project).first()
    if batch is None:
        raise Http404("No such upload batch.")
    return BatchOut(
        id=batch.pk, project=project.pk, finished=batch.finished_at is not None, report=batch.report
    )


# Tasks ----------------------------------------------------------------------------------


def _summary(task: Task) -> dict:
    return {
        "id": task.pk,
        "project": task.project_id,
        "image_name": task.image.original_name,
        "state": task.state,
        "review_state": task.review_state,
        "outcome": task.outcome,
        "error": task.error,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
    }


@api.get("/tasks", response={200: TaskPage, **ERRORS})
def task_list(
    request: HttpRequest,
    project: int | None = Query(None, ge=1, le=MAX_ID),
    state: TaskState | None = None,
    review_state: ReviewState | None = None,
    outcome: Decision | None = None,
    modality: Modality | None = None,
    after: int = Query(0, ge=0, le=MAX_ID, description="The last task id of the page before"),
    limit: int = Query(50, ge=1, le=MAX_PAGE),
):
    """Tasks in id order, a page after the task `after`: one project's (`project`), or those
    of every project of the token's user."""
    if project is not None:
        tasks = Task.objects.filter(project=project_for_user(request.user, project))
    else:
        tasks = Task.objects.filter(project__in=projects_for_user(request.user))
    filters = {"state": state, "review_state": review_state, "outcome": outcome}
    tasks = tasks.filter(**{k: v for k, v in filters.items() if v is not None}, id__gt=after)
    if modality is not None:
        tasks = tasks.filter(project__modality=modality)
    page = list(tasks.select_related("image").order_by("id")[: limit + 1])
    more = len(page) > limit
    return {
        "items": [_summary(t) for t in page[:limit]],
        "next_after": page[limit - 1].pk if more else None,
    }


def _final(task: Task, readings) -> dict | None:
    """The label of record once the task is final: the adjudication's, else the readers'."""
    if task.review_state != ReviewState.FINAL:
        return None
    adjudication = getattr(task, "adjudication", None)
    if adjudication is not None:
        return {"decision": adjudication.decision, "text": adjudication.text, "by": "adjudication"}
    latest = max(readings, key=lambda r: r.updated_at, default=None)
    if latest is None:
        return None
    # The task's outcome is the decision of record (readers who agree may differ in kind).
    return {"decision": task.outcome or latest.decision, "text": latest.text, "by": "reading"}


@api.get("/tasks/{task_id}", response={200: TaskOut, **ERRORS})
def task_read(request: HttpRequest, task_id: int = Path(..., ge=1, le=MAX_ID)):
    """A task with its drafts (each marked as AI output), its readings and its final label.
    Readers stay blind to each other's readings until the task is final, as on the page."""
    task = task_for_user(request.user, task_id)
    review = selectors.task_review(task, request.user)
    readings = [r for r in [review["label"], *review["other_labels"]] if r is not None]
    drafts = task.drafts.order_by("created_at", "id")
    return _summary(task) | {
        "metadata": {str(k): str(v) for k, v in (task.metadata or {}).items()},
        "notice": AI_NOTICE,
        "drafts": [
            {
                "id": d.pk,
                "attempt": d.attempt,
                "text": d.text,
                "model_id": d.model_id,
                "truncated": d.truncated,
                "created_at": d.created_at,
                "notice": AI_NOTICE,
            }
            for d in drafts
        ],
        "readings": [
            {
                "reviewer": r.reviewer.get_username(),
                "decision": r.decision,
                "text": r.text,
                "reason": r.reason,
                "category": r.category,
                "revision": r.revision,
                "draft": r.draft_id,
                "created_at": r.created_at,
                "updated_at": r.updated_at,
            }
            for r in readings
        ],
        "final": _final(task, readings),
    }


# Exports --------------------------------------------------------------------------------


def _export_out(job) -> ExportOut:
    offered = job.state == ExportState.DONE and job.origin == ExportOrigin.WEB
    return ExportOut(
        id=job.pk,
        project=job.project_id,
        origin=job.origin,
        state=job.state,
        format=job.options.get("format", job.format),
        rows_done=job.rows_done,
        rows_expected=job.rows_expected,
        error=job.error,
        download=reverse("api:export_download", args=[job.pk]) if offered else None,
        expires_at=job.expires_at,
    )


@api.post("/projects/{project_id}/exports", response={202: ExportOut, **ERRORS})
def export_start(
    request: HttpRequest, data: ExportIn, project_id: int = Path(..., ge=1, le=MAX_ID)
):
    """Start an export of the project's labels (its admins only, as on the page); poll
    the job until it is done, then download it."""
    project = project_for_user(request.user, project_id, Can.EXPORT)
    query = {"format": data.format}
    query |= {"readings": "all"} if data.readings else {}
    query |= {"history": "1"} if data.history else {}
    query |= {"reviewer_names": "1"} if data.reviewer_names else {}
    query |= {"decision": data.decision} if data.decision else {}
    query |= {"review_state": data.review_state} if data.review_state else {}
    options = exports.ExportOptions.from_query(query)
    job = exportjobs.export_job_start(project=project, requested_by=request.user, options=options)
    return Status(202, _export_out(job))


@api.get("/exports/{job_id}", response={200: ExportOut, **ERRORS})
def export_job(request: HttpRequest, job_id: int = Path(..., ge=1, le=MAX_ID)):
    """An export job: its state and progress, then its download link."""
    return _export_out(export_job_for_user(request.user, job_id))


@api.get(
    "/exports/{job_id}/download",
    response={200: None, 409: Message, 410: Message, **ERRORS},
    openapi_extra={"responses": {200: {"description": "The export file"}}},
)
def export_download(request: HttpRequest, job_id: int = Path(..., ge=1, le=MAX_ID)):
    """The finished file of an export job: 409 while it runs, 410 once it has expired;
    404 for an export made on the command line (its file is not here)."""
    job = export_job_for_user(request.user, job_id)
    if job.state == ExportState.EXPIRED:
        return Status(410, {"detail": "This export has expired: start it again."})
    if job.state != ExportState.DONE:
        return Status(409, {"detail": f"This export is {job.state}, not ready yet."})
    return exportjobs.export_job_download(job)
