from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core import signing
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.text import slugify
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect, push_url, reswap, retarget

import imaging
from annotations import (
    comparisons,
    counters,
    exportjobs,
    exports,
    health,
    history,
    hotsql,
    previews,
    reviewtime,
    selectors,
    sentinels,
    services,
    signatures,
    tasklist,
    textdiff,
    tiles,
    uploads,
)
from annotations.access import (
    Can,
    capabilities,
    capabilities_of,
    draft_for_user,
    export_job_for_user,
    image_for_user,
    is_site_admin,
    project_for_user,
    projects_for_user,
    task_for_user,
)
from annotations.forms import (
    AdjudicationForm,
    AutosaveForm,
    DecisionForm,
    ProjectSettingsForm,
    SentinelForm,
    UploadForm,
)
from annotations.models import WORDING_ONLY, Decision, ExportState, TaskState
from annotations.prompts import DEFAULTS
from imaging.patches import PatchSettings

PENDING = {TaskState.NEW, TaskState.QUEUED, TaskState.DRAFTING}
TASKS_PER_PAGE = 100


PROJECTS_PER_PAGE = 50


def _project_cursor(value: str) -> tuple[str, int] | None:
    """The key `?after=<name>,<id>` of the project list's next page; None (page 1) for
    anything else: the name may hold commas, the id is last."""
    name, _, pk = value.rpartition(",")
    if not (pk.isascii() and pk.isdigit()) or not 0 < int(pk) < 2**63:
        return None
    # Longer than any name (200), or with a NUL, which PostgreSQL refuses in text.
    if not name or len(name) > 200 or "\x00" in name:
        return None
    return name, int(pk)


@require_GET
@login_required
def project_list(request: HttpRequest) -> HttpResponse:
    """The user's projects by name, PROJECTS_PER_PAGE at a time, paged by keyset: a superuser
    may see thousands, and page N costs what page 1 does."""
    after = _project_cursor(request.GET.get("after", ""))
    projects = selectors.projects_page(
        selectors.projects_with_counts(projects_for_user(request.user)),
        after=after,
        limit=PROJECTS_PER_PAGE,
    )
    last = projects[PROJECTS_PER_PAGE - 1] if len(projects) > PROJECTS_PER_PAGE else None
    context = {
        "projects": projects[:PROJECTS_PER_PAGE],
        "after": after,
        "next_query": urlencode({"after": f"{last.name},{last.pk}"}) if last else "",
    }
    return render(request, "annotations/project_list.html", context)


@require_GET
@login_required
def project_detail(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_for_user(request.user, project_id)
    state = request.GET.get("state") or None  # a facet: a drafting state, or the review's
    if state not in dict(selectors.FACETS):
        state = None
    counts = selectors.project_task_counts(project)
    # Paged, counted by the project's counters: a project of a million tasks renders as
    # fast as one of 100.
    paginator = Paginator(selectors.project_tasks(project, facet=state), TASKS_PER_PAGE)
    paginator.count = counts[state] if state else counts["total"]
    page = paginator.get_page(request.GET.get("page"))
    may = _may(request.user, project)
    context = {
        **_project_status(project, counts),
        "may": may,
        "tasks": page,
        "page_query": urlencode({"state": state} if state else {}),
        "next_task": selectors.next_task_to_review(project) if may["review"] else None,
        "state": state,
        "agreement": selectors.project_agreement(project),
        "export_jobs": exportjobs.export_jobs_recent(project) if may["export"] else [],
        "export_days": settings.MEDANNOT_EXPORT_DAYS,
    }
    template = "annotations/project_detail.html"
    if request.htmx and request.htmx.target == "tasks":
        template += "#tasks"
    return render(request, template, context)


def _project_status(project, counts: dict[str, int]) -> dict:
    """The project page's status: counts by state, and while tasks wait for drafting whether
    the broker and a worker are there."""
    polling = any(counts[s] for s in PENDING)
    # Redis first, with a fast ping: with it down, asking Celery for workers would hang.
    broker_up = health.redis_ok() if polling else True
    return {
        "project": project,
        "counts": counts,
        "state_counts": [(value, label, counts[value]) for value, label in TaskState.choices],
        "facet_counts": [(value, label, counts[value]) for value, label in selectors.FACETS],
        "polling": polling,
        "gpu_workers": health.gpu_workers() if polling and broker_up else None,
        "broker_down": not broker_up,
        "waiting_for_broker": selectors.project_tasks_waiting_for_broker(project) if polling else 0,
    }


@require_GET
@login_required
def project_status(request: HttpRequest, project_id: int) -> HttpResponse:
    """The small part of the project page that polls while tasks are drafting: counts and
    warnings. The task table is reloaded only when asked."""
    project = project_for_user(request.user, project_id)
    context = _project_status(project, selectors.project_task_counts(project))
    context["drafting_ended"] = not context["polling"]  # polled until now: reload the table
    return render(request, "annotations/project_detail.html#project-status", context)


@require_http_methods(["GET", "POST"])
@login_required
def project_upload(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_for_user(request.user, project_id, Can.UPLOAD)
    # Files the upload handler refused while streaming (too large, too many): listed with the rest.
    refused = [
        services.IngestResult(r.name, "rejected", r.message)
        for r in uploads.upload_rejections(request)
    ]
    results = []
    form = UploadForm(request.POST or None, request.FILES or None)
    if refused and not request.FILES:
        form = UploadForm()  # every file was refused: the list says why, not "choose a file"
    elif request.method == "POST" and form.is_valid():
        # All files of the request together: a DICOM series' files become one image.
        results = services.images_ingest(
            project=project,
            files=[(upload.name, upload) for upload in form.cleaned_data["files"]],
            uploaded_by=request.user,
        )
    results += refused
    # 422 only when nothing of the upload could be kept.
    status = 422 if results and not any(r.ok for r in results) else 200
    return render(
        request,
        "annotations/upload.html",
        {
            "project": project,
            "form": form,
            "results": results,
            "n_ok": sum(r.ok for r in results),
            "n_rejected": sum(not r.ok for r in results),
            "waiting_for_broker": selectors.project_tasks_waiting_for_broker(project)
            if results
            else 0,
            # For upload.js: where resumable (tus) uploads and their batches go.
            "tus_config": {
                "endpoint": reverse("tus-create", args=[project.pk]),
                "batches": reverse("upload-batch-create", args=[project.pk]),
                "chunkSize": settings.MEDANNOT_UPLOAD_CHUNK_BYTES,
                # How much of a file the browser hashes at a time (memory, not speed).
                "hashSliceBytes": settings.MEDANNOT_UPLOAD_HASH_SLICE_BYTES,
            },
        },
        status=status,
    )


@require_GET
@login_required
def project_export(request: HttpRequest, project_id: int) -> HttpResponse:
    """The project's labels as JSONL, or CSV with `?format=csv`; training sets with
    `?format=chat|dpo|kto|geojson` (JSON Lines). `?readings=all`: every
    reading of a double-read task; `?history=1`: every label's earlier versions; filters,
    a train/validation/test split and reviewer names (ExportOptions.from_query). Other
    values: the default export. Recorded as an export job of the page (`exportjobs`).
    """
    project = project_for_user(request.user, project_id, Can.EXPORT)
    options = exports.ExportOptions.from_query(request.GET)
    filename = f"{slugify(project.name) or 'project'}-{options.file_name}"
    # Recorded as an export (audited now; the tasks it included once the last byte went).
    job = exportjobs.export_download_start(
        project=project, requested_by=request.user, options=options, name=filename
    )
    chunks = exports.export_options_chunks(project, options)
    response = StreamingHttpResponse(
        exportjobs.export_download_chunks(job, options, chunks),
        content_type=exports.CONTENT_TYPES[options.file_format],
    )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@require_POST
@login_required
def export_start(request: HttpRequest, project_id: int) -> HttpResponse:
    """Start an export job with the export form's options (as `project_export` reads them):
    a worker writes the file; the job's fragment polls until it can be downloaded."""
    project = project_for_user(request.user, project_id, Can.EXPORT)
    options = exports.ExportOptions.from_query(request.POST)
    job = exportjobs.export_job_start(project=project, requested_by=request.user, options=options)
    if request.htmx:
        return render(request, "annotations/export_job.html#job", {"job": job})
    return redirect("export-job", job.pk)


@require_GET
@login_required
def export_job(request: HttpRequest, job_id: int) -> HttpResponse:
    """An export job: its state and progress (polled every 2 s while it runs), then its
    download link."""
    job = export_job_for_user(request.user, job_id)
    template = "annotations/export_job.html"
    if request.htmx:
        template += "#job"
    return render(request, template, {"job": job, "project": job.project})


@require_GET
@login_required
def export_download(request: HttpRequest, job_id: int) -> HttpResponse:
    """The finished file of an export job, as an attachment; 404 until it is done, 410 once
    it has expired."""
    job = export_job_for_user(request.user, job_id)
    if job.state == ExportState.EXPIRED:
        return HttpResponse("This export has expired: start it again.", status=410)
    if job.state != ExportState.DONE:
        raise Http404("This export is not ready")
    return exportjobs.export_job_download(job)


@require_POST
@login_required
def task_retry(request: HttpRequest, task_id: int) -> HttpResponse:
    task = task_for_user(request.user, task_id, Can.MANAGE)
    if task.state == TaskState.FAILED:
        services.task_retry(task_id=task.pk, actor=request.user)
        messages.success(request, f"Task {task.pk} queued again.")
    url = reverse("project-detail", args=[task.project_id])
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@require_http_methods(["GET", "POST"])
@login_required
def project_settings(request: HttpRequest, project_id: int) -> HttpResponse:
    """An admin edits the prompt (a new version each time) and the slide patch settings."""

    project = project_for_user(request.user, project_id, Can.MANAGE)
    current = project.current_prompt()
    system, instruction = (
        (current.system, current.instruction)
        if current
        else DEFAULTS.get(project.modality, DEFAULTS["other"])
    )
    patches = PatchSettings.from_dict(project.slide_settings).as_dict()
    initial = {
        "system": system,
        "instruction": instruction,
        **{k: patches[k] for k in ("target_mpp", "patch_size", "max_patches")},
        "correction_categories": "\n".join(project.correction_categories),
        "fast_accept_seconds": project.fast_accept_seconds,
        "readings_per_task": project.readings_per_task,
        "disagreement_words": project.disagreement_words,
        "sentinel_share": project.sentinel_share,
        "signature_required": project.signature_required,
        "signature_sitting_minutes": project.signature_sitting_minutes,
    }
    form = ProjectSettingsForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        if (data["system"].strip(), data["instruction"].strip()) != (
            system.strip(),
            instruction.strip(),
        ):
            template = services.prompt_template_save(
                project=project,
                instruction=data["instruction"],
                system=data["system"],
                actor=request.user,
            )
            messages.success(request, f"Prompt saved as version {template.version}.")
        slide = {k: data[k] for k in ("target_mpp", "patch_size", "max_patches")}
        services.project_slide_settings_set(project=project, values=slide, actor=request.user)
        services.project_review_settings_set(
            project=project,
            correction_categories=data["correction_categories"],
            fast_accept_seconds=data["fast_accept_seconds"],
            actor=request.user,
        )
        readings, words = data.get("readings_per_task"), data.get("disagreement_words")
        services.project_reading_settings_set(
            project=project,
            readings_per_task=project.readings_per_task if readings is None else readings,
            disagreement_words=project.disagreement_words if words is None else words,
            actor=request.user,
        )
        if data.get("sentinel_share") is not None:
            sentinels.project_sentinel_share_set(
                project=project, share=data["sentinel_share"], actor=request.user
            )
        if data.get("signature_sitting_minutes") is not None:
            signatures.project_signature_settings_set(
                project=project,
                required=data["signature_required"],
                sitting_minutes=data["signature_sitting_minutes"],
                actor=request.user,
            )
        return redirect("project-settings", project_id=project.pk)
    versions = selectors.prompt_versions(project)
    return render(
        request,
        "annotations/project_settings.html",
        {"project": project, "form": form, "current": current, "versions": versions},
    )


@require_POST
@login_required
def project_retry_failed(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_for_user(request.user, project_id, Can.MANAGE)
    count = services.tasks_retry_failed(project=project, actor=request.user)
    messages.success(request, f"{count} failed task{'s' if count != 1 else ''} queued again.")
    url = reverse("project-detail", args=[project.pk])
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@require_POST
@login_required
def task_redraft(request: HttpRequest, task_id: int) -> HttpResponse:
    task = task_for_user(request.user, task_id, Can.MANAGE)
    try:
        services.task_redraft(task_id=task.pk, actor=request.user)
        messages.success(request, f"Task {task.pk} queued for a new draft; earlier drafts stay.")
    except services.InvalidTransition as exc:
        messages.error(request, str(exc))
    url = reverse("task-detail", args=[task.pk])
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@require_GET
@never_cache  # Back must never show a decided task as undecided
@login_required
def task_detail(request: HttpRequest, task_id: int) -> HttpResponse:
    task = task_for_user(request.user, task_id)
    return render(request, "annotations/task_detail.html", _review_context(request, task))


@require_GET
@login_required
def task_history(request: HttpRequest, task_id: int) -> HttpResponse:
    """Everything that happened to a task, oldest first: for project admins and its readers."""
    task = history.task_history_for_user(request.user, task_id)
    context = {"task": task, "project": task.project, "timeline": history.task_timeline(task)}
    template = "annotations/task_history.html"
    if request.htmx:
        template += "#timeline"
    return render(request, template, context)


@require_POST
@never_cache
@login_required
def task_decide(request: HttpRequest, task_id: int) -> HttpResponse:
    """A decision. From the queue (or without JavaScript) the next task comes with the
    answer: the hot path first (`_decide_in_queue`), else this general one, which also
    answers check drafts, refused forms (422) and conflicts (409)."""
    queue = not request.htmx or request.POST.get("queue") == "1"
    if queue and (response := _decide_in_queue(request, task_id)) is not None:
        return response
    task = task_for_user(request.user, task_id, Can.REVIEW)
    if (sentinel := _sentinel_shown(request, task)) is not None or _sentinel_form(request, task):
        return _sentinel_decide(request, task, sentinel)
    if (candidate := _comparison_shown(request, task)) is not None or _comparison_form(
        request, task
    ):
        return _comparison_decide(request, task, candidate)
    form = DecisionForm(
        request.POST,
        image_size=(task.image.width, task.image.height),
        categories=task.project.correction_categories,
    )
    status = 200
    conflict, kept = "", None
    if form.is_valid():
        data = form.cleaned_data
        decision = _decision_of(request, task, data)
        decision["signature"], asked = _signature_of(request, task, data)
        if asked:
            return _signature_asked(request, task, data, asked)
        try:
            if queue:
                return _decide_and_next(request, task, decision)
            services.label_record(**decision)  # it released the claim with the decision
        except (services.ReviewConflict, services.InvalidTransition) as exc:
            # Show what is saved now, with a fresh form on it that keeps what was typed.
            conflict, kept, form = str(exc), data, None
            status = 409
        else:
            request.session[_last_decided_key(task.project_id)] = task.pk  # for Undo
            task.refresh_from_db()
            form = None
    else:
        status = 422
    context = _review_context(request, task, form=form, kept=kept)
    context["conflict"] = conflict
    template = "annotations/task_detail.html"
    if request.htmx:
        template += "#decision"
    return render(request, template, context, status=status)


def _signature_of(
    request: HttpRequest, task, data: dict, meaning: str = signatures.MEANING
) -> tuple:
    """The decision's signature (None where the project asks for none), and what to ask
    the reader instead ("" when nothing): their password, where this decision starts a
    sitting. A wrong password is refused (audited) and starts nothing. `meaning`: what
    signing means (a reading's, or an adjudication's)."""
    project = task.project
    if signatures.signature_due(request.session, project):
        if not data["password"]:
            return None, signatures.ASKED
        if not signatures.password_confirm(user=request.user, password=data["password"], task=task):
            return None, signatures.REFUSED
        signatures.sitting_start(request.session, project)
    return signatures.signature_for(request.user, project, meaning=meaning), ""


def _signature_asked(request: HttpRequest, task, data: dict, asked: str) -> HttpResponse:
    """428: the decision waits for the reader's password; what they typed is kept, and the
    decision they chose is the form's default button (Enter in the password signs it)."""
    context = _review_context(request, task, kept=data)
    context |= {"signature_message": asked, "signature_decision": data["decision"]}
    template = "annotations/task_detail.html"
    if request.htmx:
        template += "#decision"
    return render(request, template, context, status=428)


def _review_context(
    request: HttpRequest, task, form: DecisionForm | None = None, kept: dict | None = None
) -> dict:
    """The review page's context. Without `form`, a fresh decision form on the current draft
    and label; `kept`: what the reviewer typed in a refused decision, to fill it with."""
    review = selectors.task_review(task, request.user)
    sentinel = _sentinel_shown(request, task) if review["draft"] else None
    if sentinel is None and review["draft"]:
        # A comparison's candidate draft stands in the same way, blind to its version.
        sentinel = _comparison_shown(request, task)
    if sentinel is not None:  # the check draft stands in for the draft, and nothing tells
        review |= {"draft": _as_draft(review["draft"], sentinel), "label": None}
        review |= {"other_labels": [], "n_drafts": 1}
    draft, label = review["draft"], review["label"]
    may = _may(request.user, task.project)
    categories = task.project.correction_categories
    restored = None
    if form is None and draft is not None:
        text = label.text if label and label.text else draft.text
        regions = label.regions if label else []
        reason = ""
        category = label.category if label and label.decision == Decision.REJECTED else ""
        edit_category = label.category if label and label.decision == Decision.EDITED else ""
        if not edit_category and WORDING_ONLY in categories:
            edit_category = WORDING_ONLY
        # Time on task counts from the first render of a decision form on this task.
        rendered_at = reviewtime.rendered_at_sign(task_id=task.pk, user_id=request.user.pk)
        if kept:
            reason, regions = kept["reason"], kept["regions"]
            if kept["decision"] == Decision.REJECTED:
                category = kept["category"] or category
            rendered_at = kept.get("rendered_at") or rendered_at
            if kept["decision"] == Decision.EDITED:  # else the text area held no decision
                text = kept["text"]
                edit_category = kept["category"] or edit_category
        elif sentinel is None and (autosave := selectors.edit_autosave_for(task, request.user)):
            if autosave.text != text:  # an edit that a closed tab or a lost connection left
                text, restored = autosave.text, autosave
        form = _decision_form(
            request,
            task,
            draft,
            text=text,
            label=label,
            reason=reason,
            regions=regions,
            category=category,
            edit_category=edit_category,
            rendered_at=rendered_at,
            autosave=sentinel is None,
        )
    elif form is not None and sentinel is None:
        _autosaving(form, task)
    return {
        **review,
        "task": task,
        "project": task.project,
        "image": task.image,
        "image_properties": imaging.inspect.reviewer_properties(task.image),
        "image_present": previews.image_file_present(task.image),
        "dzi_url": tiles.dzi_url(task.image, request.user),
        "form": form,
        "restored": restored,
        # The saved edit, word by word against the draft it was made on.
        "label_diff": (
            textdiff.word_diff(label.draft.text, label.text)
            if label and label.decision == Decision.EDITED
            else None
        ),
        "may": may,
        # Readers judge both drafts of a task in an open comparison blind to which version
        # made each: no prompt version, revision or draft number on either page.
        "blind_provenance": task.project.comparison_open
        and comparisons.task_in_open_comparison(task),
        "signature_due": signatures.signature_due(request.session, task.project),
        "SIGNATURE_MEANING": signatures.MEANING,
        "next_task": selectors.next_task_to_review(task.project, after_id=task.pk),
        **_queue_context(request, task, may),
    }


def _decision_form(
    request: HttpRequest,
    task,
    draft,
    *,
    text: str,
    label=None,
    reason: str = "",
    regions=(),
    category: str = "",
    edit_category: str | None = None,
    rendered_at: str = "",
    autosave: bool = True,
) -> DecisionForm:
    """A fresh decision form on `draft` (and the reviewer's `label`, if any)."""
    categories = task.project.correction_categories
    if edit_category is None:
        edit_category = WORDING_ONLY if WORDING_ONLY in categories else ""
    form = DecisionForm(
        categories=categories,
        initial={
            "draft_id": draft.pk,
            "label_revision": label.revision if label else 0,
            "client_id": uuid.uuid4(),  # one per form shown: a repost of it is a duplicate
            "text": text,
            "reason": reason,
            "regions": json.dumps(regions) if regions else "",
            "category": category,
            "edit_category": edit_category,
            # Time on task counts from the first render of a decision form on this task.
            "rendered_at": rendered_at
            or reviewtime.rendered_at_sign(task_id=task.pk, user_id=request.user.pk),
        },
    )
    if autosave:
        _autosaving(form, task)
    return form


def _autosaving(form: DecisionForm, task) -> None:
    """The edit is kept on the server as typed."""
    form.fields["text"].widget.attrs |= {
        "hx-post": reverse("task-autosave", args=[task.pk]),
        "hx-trigger": "keyup changed delay:1s",
        "hx-target": "#autosave-status",
        "hx-swap": "innerHTML",
    }


def _queue_context(request: HttpRequest, task, may: dict[str, bool]) -> dict:
    """The review queue on the review page: whether the reviewer holds this task (then the
    page renews the claim and offers Skip), "k of N", and the task to prefetch."""
    if not may["review"]:
        return {}
    upcoming = selectors.next_claimable(task.project, request.user, after=task)
    # After a decision without JavaScript, the redirect's address carries it.
    undo = _undo_target(request, task.project_id, request.GET.get("undo", ""))
    return {
        "undo_task": undo,
        "undo_token": _undo_token(request, task.project_id, undo) if undo else "",
        "in_queue": selectors.claim_held(task, request.user),
        "progress": selectors.review_progress(task.project, request.user),
        "upcoming": upcoming,
        "upcoming_dzi": tiles.dzi_url(upcoming.image, request.user) if upcoming else "",
    }


def _skipped_key(project) -> str:
    return f"review-skipped-{project.pk}"


def _last_decided_key(project_id: int) -> str:
    """The session's last decided task in a project: what Undo reverts, in this sitting."""
    return f"review-last-{project_id}"


def _queue_next(request: HttpRequest, project, *, decided: int | None = None) -> HttpResponse:
    """Claim the reviewer's next task: with htmx its review area replaces the current one
    (and the address follows); without, a redirect. At the end, the queue's summary.
    `decided`: the task whose decision Undo reverts, if the page said."""
    if (sentinel := _sentinel_next(request, project)) is not None:
        return _show_next(request, sentinel.task)
    if (candidate := _comparison_next(request, project)) is not None:
        return _show_next(request, candidate.task)
    skipped = request.session.get(_skipped_key(project), [])
    claimed = services.claim_for(project=project, reviewer=request.user, skipped=skipped)
    if claimed is None and (left := _comparison_next(request, project, always=True)):
        return _show_next(request, left.task)  # their queue is done: what they have not read
    return _claimed_next(request, project, claimed, decided=decided)


class _GeneralPath(Exception):
    """Not for the queue's fast path: the general one answers (and renders what it must)."""


def _decide_in_queue(request: HttpRequest, task_id: int) -> HttpResponse | None:
    """Decide and next, the hot path: the task locked with all a decision needs in one
    statement, the writes, and the next task (rendered ahead, or claimed now) in one
    transaction. None when the general path must answer: check drafts in play, a form
    to send back (422), a conflict (409), a signature's password to check (428)."""
    if any(key.startswith(_DRAWN_KEYS) for key in request.session.keys()):
        return None
    user = request.user
    read: list[DecisionForm] = []
    try:
        with hotsql.decision():
            # The form is read while the database locks and reads the task.
            task = services.task_for_decision(
                task_id, user, meanwhile=lambda: read.append(DecisionForm(request.POST))
            )
            if task is None or (task.role is None and not is_site_admin(user)):
                raise Http404("No such task")
            if Can.REVIEW not in capabilities_of(user, task.role):
                raise PermissionDenied(f"Your role in this project cannot {Can.REVIEW.value}.")
            project = task.project
            if _draws_items(project):
                raise _GeneralPath
            form = read[0]
            form.judged_on(
                image_size=(task.image.width, task.image.height),
                categories=project.correction_categories,
            )
            if not form.is_valid():
                raise _GeneralPath
            if signatures.signature_due(request.session, project):
                raise _GeneralPath  # the password is checked there
            ahead = task.ahead if request.htmx else None
            # The answer if the task claimed ahead is still theirs, made while the database
            # writes and commits the decision.
            sent: list[HttpResponse] = []
            _, claimed = services.decide_locked(
                task=task,
                skipped=request.session.get(_skipped_key(project), []),
                prefetched=ahead and ahead.task_id,
                signature=signatures.signature_for(user, project),
                meanwhile=ahead and (lambda: sent.append(_ahead_sent(request, ahead))),
                **_decision_of(request, task, form.cleaned_data),
            )
    except (_GeneralPath, services.ReviewConflict, services.InvalidTransition):
        return None  # rolled back; the general path finds the same and says so
    if claimed is not None and claimed.prefetched:
        return sent[0] if sent else _ahead_sent(request, ahead)
    return _claimed_next(request, project, claimed, decided=task.pk)


def _decision_of(request: HttpRequest, task, data: dict) -> dict:
    """The decision form's data as `services.label_record` takes it."""
    return dict(
        task_id=task.pk,
        reviewer=request.user,
        decision=data["decision"],
        draft_id=data["draft_id"],
        text=data["text"],
        reason=data["reason"],
        regions=data["regions"],
        label_revision=data["label_revision"],
        client_id=data["client_id"],
        category=data["category"],
        time_on_task_ms=reviewtime.time_on_task_ms(
            data["rendered_at"], task_id=task.pk, user_id=request.user.pk
        ),
    )


def _ahead_sent(request: HttpRequest, ahead: services.Ahead) -> HttpResponse:
    """The next task's review area rendered ahead, sent as it is, with the form's time on
    task counting from now."""
    rendered_at = reviewtime.rendered_at_sign(task_id=ahead.task_id, user_id=request.user.pk)
    html = ahead.page.replace(RENDERED_AT_LATER, rendered_at)
    return _in_review_area(HttpResponse(html), reverse("task-detail", args=[ahead.task_id]))


def _decide_and_next(request: HttpRequest, task, decision: dict) -> HttpResponse:
    """Record the decision and claim the next task in one transaction, then show it. A
    sentinel due next is served after the decision, as `_queue_next` would."""
    project = task.project
    skipped = request.session.get(_skipped_key(project), [])
    if _draws_items(project):
        services.label_record(**decision)
        request.session[_last_decided_key(project.pk)] = task.pk
        return _queue_next(request, project, decided=task.pk)
    ahead = services.ahead_of(task.pk, request.user) if request.htmx else None
    _, claimed = services.decide_and_claim(
        project=project, skipped=skipped, prefetched=ahead and ahead.task_id, **decision
    )
    if claimed is not None and claimed.prefetched:
        return _ahead_sent(request, ahead)
    return _claimed_next(request, project, claimed, decided=task.pk)


# The review area of the reviewer's next task is rendered while they read the current one
# (`review_ahead`), and kept with their claim on it for the decision to send: deciding
# then renders nothing. The form's render time is filled in when it is sent.
RENDERED_AT_LATER = "rendered-at-when-sent"


@require_POST
@never_cache
@login_required
def review_ahead(request: HttpRequest, project_id: int) -> HttpResponse:
    """Claim and render the reviewer's next task while they read `after` (htmx, on load):
    the decision on `after` then answers at once with it. 204 either way; nothing when
    there is no next task, without htmx, or with check drafts in the queue (they are drawn
    at the decision)."""
    project = project_for_user(request.user, project_id, Can.REVIEW)
    after = request.POST.get("after", "")
    if not request.htmx or not after.isdigit() or _draws_items(project):
        return HttpResponse(status=204)
    skipped = request.session.get(_skipped_key(project), [])
    claimed = services.claim_for(
        project=project, reviewer=request.user, skipped=skipped, exclude=[int(after)]
    )
    if claimed is None:
        return HttpResponse(status=204)
    context = _claimed_context(request, claimed, decided=int(after), ahead=True)
    if context is not None:
        html = render_to_string("annotations/task_detail.html#next-task", context, request)
        services.claim_page_keep(
            task_id=claimed.task_id, reviewer=request.user, after=int(after), page=html
        )
    return HttpResponse(status=204)


def _claimed_next(request: HttpRequest, project, claimed, *, decided: int | None = None):
    # What Undo reverts rides along in the address, signed: a decision writes no session.
    undo = f"?{urlencode({'undo': _undo_token(request, project.pk, decided)})}" if decided else ""
    if claimed is None:
        url = reverse("review-done", args=[project.pk]) + undo
        return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    url = reverse("task-detail", args=[claimed.task_id])
    if not request.htmx:
        return redirect(url + undo)
    context = _claimed_context(request, claimed, decided=decided)
    if context is None:  # no draft any more, or read meanwhile: the full review context
        return _show_next(request, task_for_user(request.user, claimed.task_id, Can.REVIEW))
    return _in_review_area(render(request, "annotations/task_detail.html#next-task", context), url)


def _claimed_context(
    request: HttpRequest, claimed, *, decided: int | None, ahead: bool = False
) -> dict | None:
    """The review context of a task the reviewer has just claimed, from one query
    (`selectors.review_bundle`): unread by them, in their queue, with its newest draft.
    `ahead`: rendered before the decision on `decided`, to be shown after it (the progress
    counts that decision, and the form's render time is filled in when it is sent)."""
    draft = selectors.review_bundle(claimed.task_id, request.user)
    if draft is None or draft.has_label:
        return None
    task = draft.task
    project, image = task.project, task.image
    may = _may_as(request.user, draft.role)
    row = getattr(project, "counters", None)  # None: not counted yet
    counts = (
        counters.with_totals({name: getattr(row, name) for name in counters.FIELDS})
        if row is not None
        else counters.counts_for(project.pk)
    )
    restored = None
    text = draft.text
    if draft.autosave_text is not None and draft.autosave_text != draft.text:
        text = draft.autosave_text  # an edit that a closed tab or a lost connection left
        restored = {"updated_at": draft.autosave_at}
    upcoming = claimed.upcoming_image
    undo = decided or request.session.get(_last_decided_key(project.pk))
    progress = selectors.progress_of(counts, draft.mine)
    if ahead:  # one reading a task: the decision makes it final
        final = 1 if project.readings_per_task == 1 else 0
        progress = selectors.progress_of(
            counts | {"decided": counts["decided"] + final}, draft.mine + 1
        )
    form = _decision_form(
        request, task, draft, text=text, rendered_at=RENDERED_AT_LATER if ahead else ""
    )
    return {
        "draft": draft,
        "n_drafts": draft.n_drafts,
        "label": None,
        "other_labels": [],
        "task": task,
        "project": project,
        "image": image,
        "image_properties": imaging.inspect.reviewer_properties(image),
        "image_present": previews.image_file_present(image),
        "dzi_url": tiles.dzi_url(image, request.user),
        "form": form,
        "restored": restored,
        "label_diff": None,
        "may": may,
        # Rendered ahead, it follows a decision that signed (or was refused, then no page).
        "signature_due": not ahead and signatures.signature_due(request.session, project),
        "SIGNATURE_MEANING": signatures.MEANING,
        "next_task": None,
        "undo_task": undo,
        "undo_token": _undo_token(request, project.pk, undo) if undo else "",
        "in_queue": True,
        "progress": progress,
        "upcoming": {"pk": claimed.upcoming_id} if upcoming else None,
        "upcoming_dzi": tiles.dzi_url(upcoming, request.user) if upcoming else "",
    }


def _show_next(request: HttpRequest, task) -> HttpResponse:
    return _show_in_review_area(request, task)


def _show_in_review_area(request: HttpRequest, task) -> HttpResponse:
    """With htmx, `task` replaces the review area (and the address follows); without, a
    redirect to it."""
    url = reverse("task-detail", args=[task.pk])
    if not request.htmx:
        return redirect(url)
    context = _review_context(request, task)
    return _in_review_area(render(request, "annotations/task_detail.html#next-task", context), url)


def _in_review_area(response: HttpResponse, url: str) -> HttpResponse:
    retarget(response, "#review-area")
    reswap(response, "outerHTML")
    push_url(response, url)
    return response


_UNDO_SALT = "medannot.review.undo"


def _undo_token(request: HttpRequest, project_id: int, task_id: int) -> str:
    """The Undo button's say of which decision it reverts: signed for this reviewer and
    project, so that the page, not the session, carries it (no session write a decision)."""
    return signing.dumps([request.user.pk, project_id, task_id], salt=_UNDO_SALT, compress=False)


def _undo_target(request: HttpRequest, project_id: int, token: str) -> int | None:
    """The task whose decision Undo reverts: `token`, the page's (signed; the sitting is
    the page's, for up to 12 hours), else the session's (a decision outside the queue)."""
    if token:
        try:
            user_id, signed_project, task_id = signing.loads(
                token, salt=_UNDO_SALT, max_age=12 * 3600
            )
        except (signing.BadSignature, TypeError, ValueError):
            return None
        if (user_id, signed_project) == (request.user.pk, project_id) and isinstance(task_id, int):
            return task_id
        return None
    return request.session.get(_last_decided_key(project_id))


@require_POST
@never_cache
@login_required
def review_undo(request: HttpRequest, project_id: int) -> HttpResponse:
    """Undo the reviewer's last decision in the project, in this sitting (the session): the
    label gets back its earlier state, the task comes back claimed, and is shown. 409 once
    the task has been adjudicated, or when there is nothing to undo."""
    project = project_for_user(request.user, project_id, Can.REVIEW)
    key = _last_decided_key(project.pk)
    task_id = _undo_target(request, project.pk, request.POST.get("undo", ""))
    try:
        if task_id is None:
            raise services.UndoRefused("There is no decision of yours to undo in this sitting.")
        task = services.label_undo(task_id=task_id, reviewer=request.user)
    except services.UndoRefused as exc:
        context = {"project": project, "undo_refused": str(exc)}
        if not request.htmx:
            return render(request, "annotations/undo_refused.html", context, status=409)
        response = render(request, "annotations/undo_refused.html#refused", context, status=409)
        retarget(response, "#undo-status")
        reswap(response, "innerHTML")
        return response
    request.session.pop(key, None)
    # The task shown when Undo was pressed goes back to the pool.
    shown = request.POST.get("current", "")
    if shown.isdigit() and int(shown) != task.pk:
        services.claim_release(task_id=int(shown), reviewer=request.user)
    return _show_in_review_area(request, task)


# Sentinels: check drafts in the queue ----------------------------------------------------
# The sentinel a reader is being shown is kept in their session, never in the page: nothing
# in the HTML tells a check draft from a draft.


# Session keys of items drawn into the queue (sentinels, comparison drafts) being shown.
_DRAWN_KEYS = ("review-sentinel-", "review-comparison-")


def _draws_items(project) -> bool:
    """Whether the project's queue draws check drafts or comparison drafts: then decisions
    take the general path, which draws them."""
    return project.sentinel_share > 0 or project.comparison_open


def _sentinel_key(project_id: int) -> str:
    return f"review-sentinel-{project_id}"


def _sentinel_next(request: HttpRequest, project):
    """The sentinel to serve as the reader's next queue item, if one is due (and the one
    already being shown stays until it is decided)."""
    key = _sentinel_key(project.pk)
    shown = sentinels.sentinel_pending(
        project_id=project.pk, sentinel_id=request.session.get(key), reviewer=request.user
    )
    sentinel = shown or sentinels.sentinel_for(project=project, reviewer=request.user)
    if sentinel is None:
        request.session.pop(key, None)
    else:
        request.session[key] = sentinel.pk
    return sentinel


def _sentinel_shown(request: HttpRequest, task):
    """The sentinel standing in for `task`'s draft for this reader, if any."""
    return sentinels.sentinel_pending(
        project_id=task.project_id,
        sentinel_id=request.session.get(_sentinel_key(task.project_id)),
        task=task,
        reviewer=request.user,
    )


def _sentinel_form(request: HttpRequest, task):
    """The reading a sentinel's decision form already recorded (the form posted again)."""
    client_id = _posted_client_id(request)
    if client_id is None:
        return None
    return sentinels.sentinel_reading_of_form(task=task, reviewer=request.user, client_id=client_id)


def _posted_client_id(request: HttpRequest) -> uuid.UUID | None:
    """The posted decision form's own id (None: none, or not one)."""
    try:
        return uuid.UUID(request.POST.get("client_id", ""))
    except ValueError:
        return None


def _as_draft(draft, sentinel):
    """The task's draft as the reader sees it while a sentinel stands in for it."""
    shown = copy.copy(draft)
    shown.text, shown.thinking = sentinel.text, ""
    return shown


def _sentinel_decide(request: HttpRequest, task, sentinel) -> HttpResponse:
    """A decision on a check draft: a SentinelReading (never a label; the task stays as it
    is), then the answer revealed, with a button that goes on with the queue."""
    reading = _sentinel_form(request, task)
    if reading is None:
        form = DecisionForm(
            request.POST,
            image_size=(task.image.width, task.image.height),
            categories=task.project.correction_categories,
        )
        if not form.is_valid():
            context = _review_context(request, task, form=form)
            template = "annotations/task_detail.html" + ("#decision" if request.htmx else "")
            return render(request, template, context, status=422)
        data = form.cleaned_data
        reading = sentinels.sentinel_reading_record(
            sentinel=sentinel,
            reviewer=request.user,
            decision=data["decision"],
            text=data["text"],
            client_id=data["client_id"],
        )
        request.session.pop(_sentinel_key(task.project_id), None)
    context = _review_context(request, task) | {"sentinel_reveal": reading}
    template = "annotations/task_detail.html" + ("#decision" if request.htmx else "")
    return render(request, template, context)


# Blind comparisons: candidate drafts in the queue ------------------------------------------
# As with sentinels, the candidate draft shown is kept in the session, never in the page.


def _comparison_key(project_id: int) -> str:
    return f"review-comparison-{project_id}"


def _comparison_next(request: HttpRequest, project, *, always: bool = False):
    """The candidate draft to serve as the reader's next queue item, if one is due (the one
    already being shown stays until it is decided)."""
    key = _comparison_key(project.pk)
    shown = comparisons.comparison_pending(
        project_id=project.pk, draft_id=request.session.get(key), reviewer=request.user
    )
    candidate = shown or comparisons.comparison_for(
        project=project, reviewer=request.user, always=always
    )
    if candidate is None:
        request.session.pop(key, None)
    else:
        request.session[key] = candidate.pk
    return candidate


def _comparison_shown(request: HttpRequest, task):
    """The candidate draft standing in for `task`'s draft for this reader, if any."""
    return comparisons.comparison_pending(
        project_id=task.project_id,
        draft_id=request.session.get(_comparison_key(task.project_id)),
        task=task,
        reviewer=request.user,
    )


def _comparison_form(request: HttpRequest, task):
    """The reading a candidate draft's decision form already recorded (posted again)."""
    client_id = _posted_client_id(request)
    if client_id is None:
        return None
    return comparisons.comparison_reading_of_form(
        task=task, reviewer=request.user, client_id=client_id
    )


def _comparison_decide(request: HttpRequest, task, candidate) -> HttpResponse:
    """A decision on a candidate draft: a ComparisonReading (never a label; the task stays
    as it is), then the reader's next queue item, with nothing revealed."""
    if candidate is not None:
        form = DecisionForm(
            request.POST,
            image_size=(task.image.width, task.image.height),
            categories=task.project.correction_categories,
        )
        if not form.is_valid():
            context = _review_context(request, task, form=form)
            template = "annotations/task_detail.html" + ("#decision" if request.htmx else "")
            return render(request, template, context, status=422)
        data = form.cleaned_data
        comparisons.comparison_reading_record(
            draft=candidate,
            reviewer=request.user,
            decision=data["decision"],
            text=data["text"],
            category=data["category"],
            client_id=data["client_id"],
        )
        request.session.pop(_comparison_key(task.project_id), None)
    return _queue_next(request, task.project)


@require_http_methods(["GET", "POST"])
@login_required
def project_sentinels(request: HttpRequest, project_id: int) -> HttpResponse:
    """An admin's check drafts: the list, each reader's catch rate, and a new one from a
    task (`?task=ID` fills the form in with the task's validated label or draft)."""
    project = project_for_user(request.user, project_id, Can.MANAGE)
    initial = {}
    if (task_id := request.GET.get("task", "")).isdigit():
        task = project.tasks.filter(pk=task_id).first()
        if task is not None and (draft := task.latest_draft()) is not None:
            label = task.labels.exclude(text="").order_by("-updated_at").first()
            initial = {"task": task.pk, "text": label.text if label else draft.text}
    form = SentinelForm(request.POST or None, initial=initial)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            task = project.tasks.filter(pk=data["task"]).first()
            if task is None:
                form.add_error("task", "No such task in this project.")
            else:
                try:
                    sentinels.sentinel_create(
                        project=project,
                        task=task,
                        text=data["text"],
                        expected=data["expected"],
                        note=data["note"],
                        actor=request.user,
                    )
                except ValueError as exc:
                    form.add_error(None, str(exc))
                else:
                    messages.success(request, f"Check draft saved for task {task.pk}.")
                    return redirect("project-sentinels", project_id=project.pk)
        status = 422
    context = {
        "project": project,
        "form": form,
        "sentinels": sentinels.project_sentinels(project),
        "rates": sentinels.sentinel_catch_rates(project),
    }
    return render(request, "annotations/sentinels.html", context, status=status)


@require_POST
@login_required
def review_start(request: HttpRequest, project_id: int) -> HttpResponse:
    """Start reviewing: claim the reviewer's next task and go there."""
    project = project_for_user(request.user, project_id, Can.REVIEW)
    return _queue_next(request, project)


@require_GET
@login_required
def review_done(request: HttpRequest, project_id: int) -> HttpResponse:
    """The end of the queue: what the reviewer decided in the project."""
    project = project_for_user(request.user, project_id, Can.REVIEW)
    token = request.GET.get("undo", "")
    context = {
        "project": project,
        "summary": selectors.review_summary(project, request.user),
        "waiting": selectors.next_claimable(project, request.user) is not None,
        # The last decision of the queue can still be undone from here.
        "undo_token": token if _undo_target(request, project.pk, token) else "",
    }
    return render(request, "annotations/review_done.html", context)


@require_POST
@never_cache
@login_required
def task_skip(request: HttpRequest, task_id: int) -> HttpResponse:
    """Skip a task for now: the claim is released, the task comes back last for this
    reviewer (remembered in the session), and the next one is claimed."""
    task = task_for_user(request.user, task_id, Can.REVIEW)
    services.claim_release(task_id=task.pk, reviewer=request.user)
    key = _skipped_key(task.project)
    skipped = [pk for pk in request.session.get(key, []) if pk != task.pk]
    request.session[key] = [*skipped, task.pk][-500:]
    undo = _undo_target(request, task.project_id, request.POST.get("undo", ""))
    return _queue_next(request, task.project, decided=undo)


@require_POST
@login_required
def claim_renew(request: HttpRequest, task_id: int) -> HttpResponse:
    """The open review page's heartbeat: the reviewer keeps their claim on the task."""
    task = task_for_user(request.user, task_id, Can.REVIEW)
    if services.claim_renew(task_id=task.pk, reviewer=request.user):
        return HttpResponse(status=204)
    return render(request, "annotations/claim_lost.html", {"task": task}, status=409)


@require_POST
@never_cache
@login_required
def task_autosave(request: HttpRequest, task_id: int) -> HttpResponse:
    """Keep the text a reviewer is editing (htmx, as they type): a closed tab loses nothing."""
    task = task_for_user(request.user, task_id, Can.REVIEW)
    form = AutosaveForm(request.POST)
    if not form.is_valid():
        return render(
            request, "annotations/task_detail.html#autosave", {"autosave_error": True}, status=422
        )
    autosave = services.edit_autosave(
        task=task,
        reviewer=request.user,
        text=form.cleaned_data["text"],
        label_revision=form.cleaned_data["label_revision"] or 0,
    )
    if autosave is None:  # decided since this page was shown: that decision stands
        context, status = {"autosave_stale": True}, 409
    else:
        context, status = {"autosaved": autosave}, 200
    return render(request, "annotations/task_detail.html#autosave", context, status=status)


ADJUDICATIONS_PER_PAGE = 50


@require_GET
@login_required
def project_adjudication(request: HttpRequest, project_id: int) -> HttpResponse:
    """The adjudication queue: tasks whose readers disagree, oldest first, a keyset page
    after `?after=<task id>`."""
    project = project_for_user(request.user, project_id, Can.ADJUDICATE)
    try:
        after = max(int(request.GET.get("after", 0)), 0)
    except ValueError:
        after = 0
    tasks = selectors.adjudication_queue(project, after_id=after, limit=ADJUDICATIONS_PER_PAGE)
    more = len(tasks) > ADJUDICATIONS_PER_PAGE
    tasks = tasks[:ADJUDICATIONS_PER_PAGE]
    context = {
        "project": project,
        "tasks": tasks,
        "after": after,
        "next_after": tasks[-1].pk if more else None,
    }
    return render(request, "annotations/adjudication_queue.html", context)


@require_http_methods(["GET", "POST"])
@never_cache
@login_required
def task_adjudicate(request: HttpRequest, task_id: int) -> HttpResponse:
    """All readings of a task side by side, with word diffs; a POST records the final label
    and goes on to the next task in disagreement. Where the project asks for signatures,
    the adjudicator signs with their password once per sitting (the review page's: one
    started on either counts); without it, or with a wrong one, nothing is saved (428) and
    the form comes back with what they typed."""
    task = task_for_user(request.user, task_id, Can.ADJUDICATE)
    categories = task.project.correction_categories
    form = AdjudicationForm(request.POST or None, categories=categories)
    status, conflict, asked = 200, "", ""
    if request.method == "POST" and not form.is_valid():
        status = 422
    elif request.method == "POST":
        data = form.cleaned_data
        signature, asked = _signature_of(
            request, task, data, meaning=signatures.ADJUDICATION_MEANING
        )
        if asked:
            status = 428
        else:
            try:
                services.adjudication_record(
                    task_id=task.pk,
                    adjudicator=request.user,
                    decision=data["decision"],
                    text=data["text"],
                    reason=data["reason"],
                    category=data["category"],
                    signature=signature,
                )
            except (services.InvalidTransition, ValueError) as exc:
                conflict, status = str(exc), 409
            else:
                messages.success(request, f"Task {task.pk}: final label recorded.")
                upcoming = selectors.adjudication_queue(task.project, limit=1)
                url = (
                    reverse("task-adjudicate", args=[upcoming[0].pk])
                    if upcoming
                    else reverse("project-adjudication", args=[task.project_id])
                )
                return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    task.refresh_from_db(fields=["review_state"])
    context = {
        **selectors.task_readings(task),
        "task": task,
        "project": task.project,
        "form": form,
        "conflict": conflict,
        "signature_due": signatures.signature_due(request.session, task.project),
        "signature_message": asked,
        "SIGNATURE_MEANING": signatures.ADJUDICATION_MEANING,
    }
    return render(request, "annotations/task_adjudicate.html", context, status=status)


def _may(user, project) -> dict[str, bool]:
    """What the user may do in this project, for templates: may.review, may.upload..."""
    granted = capabilities(user, project)
    return {can.value: can in granted for can in Can}


def _may_as(user, role: str | None) -> dict[str, bool]:
    """`_may` from the user's role, read with the page's own query."""
    granted = capabilities_of(user, role)
    return {can.value: can in granted for can in Can}


@require_GET
@login_required
def task_preview(request: HttpRequest, task_id: int) -> HttpResponse:
    """A scaled JPEG of the task's image, rendered once and cached beside the media."""
    task = task_for_user(request.user, task_id)
    try:
        path = previews.preview_file(task.image)
    except imaging.ImageRejected:
        return HttpResponse("Preview unavailable", status=422, content_type="text/plain")
    return _private_jpeg(path)


@require_GET
@login_required
def draft_region(request: HttpRequest, draft_id: int, index: int) -> HttpResponse:
    """One of the slide patches a draft was made from, as the model saw it (scaled)."""
    draft = draft_for_user(request.user, draft_id)
    if not 0 <= index < len(draft.regions):
        raise Http404("No such region")
    try:
        path = previews.region_file(draft, index)
    except (imaging.ImageRejected, ValueError):
        return HttpResponse("Region unavailable", status=422, content_type="text/plain")
    return _private_jpeg(path)


def _private_jpeg(path: Path) -> FileResponse:
    response = FileResponse(path.open("rb"), content_type="image/jpeg")
    response["Cache-Control"] = "private, max-age=86400"
    return response


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    state = health.status()
    return JsonResponse(state, status=200 if state["database"] == "ok" else 503)


# Slides: Deep Zoom for the viewer ------------------------------------------------------


@require_GET
@login_required
def slide_dzi(request: HttpRequest, image_id: int) -> HttpResponse:
    """The .dzi descriptor of an image the user may see. The page gives OpenSeadragon this
    URL with a tile token (`tiles.dzi_url`), which OpenSeadragon repeats on every tile URL."""
    image = image_for_user(request.user, image_id)
    try:
        xml = tiles.dzi_xml(image)
    except tiles.SlideUnreadable as exc:
        return _plain(f"slide unreadable: {exc}", 422)
    response = HttpResponse(xml, content_type="application/xml; charset=utf-8")
    response["Cache-Control"] = "private, max-age=3600"
    return response


@require_GET
def slide_tile(request: HttpRequest, image_id: int, level: int, col: int, row: int) -> HttpResponse:
    """One Deep Zoom tile. No login and no database: the signed token in the query string
    says who may read which file (see annotations.tiles). Answers are plain text, never a
    rendered error page (whose template would look up the user)."""
    try:
        grant = tiles.grant_for(request.GET.get(tiles.TOKEN_PARAM, ""), image_id)
    except tiles.TokenRefused as exc:
        return _plain(str(exc), 403)
    except tiles.WrongImage:
        return _plain("no such image", 404)
    quality = tiles.quality()
    etag = grant.etag(level, col, row, quality)
    if etag in request.headers.get("If-None-Match", ""):
        response = HttpResponse(status=304)
    else:
        try:
            data = tiles.tile_jpeg(grant, level, col, row)
        except tiles.NoSuchTile:
            return _plain("no such tile", 404)
        except tiles.SlideUnreadable as exc:
            return _plain(f"slide unreadable: {exc}", 422)
        response = HttpResponse(data, content_type="image/jpeg")
    response["ETag"] = etag
    response["Cache-Control"] = "private, max-age=86400"
    return response


def _plain(text: str, status: int) -> HttpResponse:
    return HttpResponse(text, status=status, content_type="text/plain; charset=utf-8")


@require_GET
@login_required
def task_list(request: HttpRequest, project_id: int) -> HttpResponse:
    """The project's tasks, searched, filtered and sorted from the URL, a keyset page at a
    time: a shared link shows the same view, and page 1,000 costs what page 1 does."""
    project = project_for_user(request.user, project_id)
    granted = capabilities(request.user, project)
    blind = tasklist.reads_blind(granted)
    f = tasklist.filter_from(request.GET, categories=project.correction_categories)
    tasks = tasklist.tasks_matching(project, f, user=request.user, blind=blind)
    page = tasklist.task_page(
        tasks, f, after=request.GET.get("after", ""), before=request.GET.get("before", "")
    )
    context = {
        "project": project,
        "f": f,
        "page": page,
        "query": urlencode(f.params(), doseq=True),
        "sort_links": _sort_links(f),
        "next_query": urlencode(f.params(after=page.next_cursor), doseq=True),
        "previous_query": urlencode(f.params(before=page.previous_cursor), doseq=True),
        "reviewers": tasklist.reviewer_choices(project, request.user, blind=blind),
        "blind": blind,
        "state_choices": TaskState.choices,
        "review_choices": tasklist.REVIEW_CHOICES,
        "flag_choices": tasklist.FLAGS,
        "date_of_choices": tasklist.DATE_OF,
    }
    template = "annotations/task_list.html"
    if request.htmx and request.htmx.target == "task-table":
        template += "#table"
    return render(request, template, context)


def _sort_links(f) -> dict[str, dict]:
    """Each column's sort link (the same column again turns the order round) and its
    aria-sort value."""
    links = {}
    for column in tasklist.SORTS:
        current = f.sort == column
        query = f.params(sort=column, dir="" if current and f.desc else "desc" if current else "")
        order = ("descending" if f.desc else "ascending") if current else "none"
        links[column] = {"query": urlencode(query, doseq=True), "aria": order}
    return links
