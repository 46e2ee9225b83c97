"""The permission matrix: every URL of the project, every persona.

The rows are checked against Django's URL resolver, so a new URL without a row fails.
A role is one project's: site-wide power is `is_superuser` and nothing else.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.http import Http404
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from annotations import (
    api_tokens,
    comparisons,
    exportjobs,
    exports,
    services,
    tiles,
    tus,
    uploadbatches,
)
from annotations.access import (
    Can,
    capabilities,
    image_for_user,
    is_site_admin,
    projects_for_user,
)
from annotations.models import Membership, PromptTemplate, Role, Task, TaskState
from imaging.patches import PatchSettings, plan_patches
from tests.factories import draft_fields, make_drafted_task, make_task

PERSONAS = [
    "superuser",  # is_superuser: every project
    "project_admin",  # admin of `project`
    "other_admin",  # admin of `other_project` only
    "pathologist",  # pathologist of `project`
    "other_pathologist",  # pathologist of `other_project` only
    "researcher",  # researcher of `project`
    "outsider",  # logged in, member of nothing
    "anonymous",  # not logged in
]

# Who gets what, in PERSONAS order: 200 or 302 (allowed; POST actions redirect), 403 (a
# member whose role lacks it), 404 (not a member: the object is not revealed), and 302 to
# the login page for anonymous.
# fmt: off
MATRIX = {
    #                        super proj  other path  opath resr  outs  anon
    "project-list":         (200,  200,  200,  200,  200,  200,  200,  302),
    "project-detail":       (200,  200,  404,  200,  404,  200,  404,  302),
    "project-status":       (200,  200,  404,  200,  404,  200,  404,  302),
    # the searchable task list (test_task_list): whoever sees the project page
    "project-tasks":        (200,  200,  404,  200,  404,  200,  404,  302),
    "project-upload":       (200,  200,  404,  403,  404,  200,  404,  302),
    # resumable uploads (test_tus, test_upload_batches): an upload, and finishing a batch,
    # are their sender's (the researcher's) alone; its report is for the project's uploaders
    "tus-create":           (204,  204,  404,  403,  404,  204,  404,  302),
    "tus-upload":           (404,  404,  404,  403,  404,  200,  404,  302),
    "upload-batch-create":  (201,  201,  404,  403,  404,  201,  404,  302),
    "upload-batch":         (200,  200,  404,  403,  404,  200,  404,  302),
    "upload-batch-finish":  (404,  404,  404,  403,  404,  200,  404,  302),
    "project-export":       (200,  200,  404,  403,  404,  403,  404,  302),
    "project-settings":     (200,  200,  404,  403,  404,  403,  404,  302),
    # export jobs (test_export_jobs): started by POST (a redirect to the job), then the
    # job's page and its finished file
    "export-start":         (302,  302,  404,  403,  404,  403,  404,  302),
    "export-job":           (200,  200,  404,  403,  404,  403,  404,  302),
    "export-download":      (200,  200,  404,  403,  404,  403,  404,  302),
    "project-retry-failed": (302,  302,  404,  403,  404,  403,  404,  302),
    "project-sentinels":    (200,  200,  404,  403,  404,  403,  404,  302),
    # members (test_members): the page, and a role changed or a member removed (redirects)
    "project-members":      (200,  200,  404,  403,  404,  403,  404,  302),
    "member-role":          (302,  302,  404,  403,  404,  403,  404,  302),
    "member-remove":        (302,  302,  404,  403,  404,  403,  404,  302),
    # the insights dashboard and its CSVs (test_insights): admins and researchers
    "project-insights":     (200,  200,  404,  403,  404,  200,  404,  302),
    "project-insights-csv": (200,  200,  404,  403,  404,  200,  404,  302),
    # blind comparisons (test_comparisons): the project's admins start (here a form with
    # no prompt version to pick: refused, 422) and close one (a redirect)
    "project-comparison-start": (422, 422, 404, 403,  404,  403,  404,  302),
    "comparison-close":     (302,  302,  404,  403,  404,  403,  404,  302),
    "task-detail":          (200,  200,  404,  200,  404,  200,  404,  302),
    # project admins and the task's readers (test_history); nobody has read it here
    "task-history":         (200,  200,  404,  404,  404,  404,  404,  302),
    "review-start":         (302,  302,  404,  302,  404,  403,  404,  302),
    "review-done":          (200,  200,  404,  200,  404,  403,  404,  302),
    # the next task claimed and rendered ahead (or nothing to do): 204 either way
    "review-ahead":         (204,  204,  404,  204,  404,  403,  404,  302),
    # nothing decided in this sitting: 409 (refused, with a message)
    "review-undo":          (409,  409,  404,  409,  404,  403,  404,  302),
    "task-skip":            (302,  302,  404,  302,  404,  403,  404,  302),
    # the reviewer's claim renewed: 204 (those who may review claim the task first)
    "claim-renew":          (204,  204,  404,  204,  404,  403,  404,  302),
    "task-decide":          (302,  302,  404,  302,  404,  403,  404,  302),
    # adjudicators may too (test_double_reading: an adjudicator of `project`)
    "task-adjudicate":      (200,  200,  404,  403,  404,  403,  404,  302),
    "project-adjudication": (200,  200,  404,  403,  404,  403,  404,  302),
    "task-autosave":        (200,  200,  404,  200,  404,  403,  404,  302),
    "task-retry":           (302,  302,  404,  403,  404,  403,  404,  302),
    "task-redraft":         (302,  302,  404,  403,  404,  403,  404,  302),
    "task-preview":         (200,  200,  404,  200,  404,  200,  404,  302),
    "draft-region":         (200,  200,  404,  200,  404,  200,  404,  302),
    "slide-dzi":            (200,  200,  404,  200,  404,  200,  404,  302),
    # tiles need no login but a token that only those who may see the image can get
    "slide-tile":           (200,  200,  403,  200,  403,  200,  403,  403),
    # API tokens (test_api): each user's own page; revoking one's own token redirects to it
    "account-tokens":       (200,  200,  200,  200,  200,  200,  200,  302),
    "account-token-revoke": (302,  302,  302,  302,  302,  302,  302,  302),
    # the REST API (test_api), with the persona's token; none at all: 401. The same access
    # helpers as the pages: the same 404s and 403s
    "project_create":       (201,  403,  403,  403,  403,  403,  403,  401),
    "project_list":         (200,  200,  200,  200,  200,  200,  200,  401),
    "project_upload":       (200,  200,  404,  403,  404,  200,  404,  401),
    "upload_batch":         (200,  200,  404,  403,  404,  200,  404,  401),
    "task_list":            (200,  200,  404,  200,  404,  200,  404,  401),
    "task_read":            (200,  200,  404,  200,  404,  200,  404,  401),
    "export_start":         (202,  202,  404,  403,  404,  403,  404,  401),
    "export_job":           (200,  200,  404,  403,  404,  403,  404,  401),
    "export_download":      (200,  200,  404,  403,  404,  403,  404,  401),
}
# fmt: on

# Not in the matrix: open to everyone, tested below. The Django admin has its own checks.
# The API's schema is public (test_api_schema); its root is a 404 (no docs page).
# An invitation's link carries its own one-time token (test_members).
PUBLIC = {"login", "logout", "healthz", "openapi-json", "api-root", "invite-accept"}
SKIPPED_NAMESPACES = {"admin"}

JPEG_VIEWS = {"task-preview", "draft-region", "slide-tile"}


def _named_patterns(resolver: URLResolver | None = None) -> list[tuple[str, str | None]]:
    """(route, name) of every pattern, recursively, leaving out the skipped namespaces."""
    resolver = resolver or get_resolver("medannot.urls")
    found = []
    for pattern in resolver.url_patterns:
        if isinstance(pattern, URLResolver):
            if pattern.namespace in SKIPPED_NAMESPACES:
                continue
            found += [(str(pattern.pattern) + r, n) for r, n in _named_patterns(pattern)]
        elif isinstance(pattern, URLPattern):
            found.append((str(pattern.pattern), pattern.name))
    return found


def test_every_url_is_named():
    unnamed = [route for route, name in _named_patterns() if not name]
    assert not unnamed, f"URLs without a name escape the permission matrix: {unnamed}"


def test_every_url_has_a_row_in_the_matrix():
    names = {name for _, name in _named_patterns()}
    assert names - PUBLIC - set(MATRIX) == set(), "URLs without a row in MATRIX"
    assert set(MATRIX) | PUBLIC <= names, "rows in MATRIX for URLs that no longer exist"


@dataclass
class Scene:
    """A slide of `project`, drafted from two patches, and a failed task beside it."""

    task: Task
    failed: Task

    @property
    def draft(self):
        return self.task.latest_draft()


@pytest.fixture
def scene(people, sample_files) -> Scene:
    result = services.image_ingest(
        project=people.project,
        source=sample_files["slide"],
        original_name="biopsy-1.tiff",
        enqueue=False,
    )
    assert result.status == "imported", result.message
    task = result.task
    if task.state == TaskState.NEW:
        services.task_transition(task_id=task.pk, to=TaskState.QUEUED)
    claimed = services.task_claim(task_id=task.pk)
    plan = plan_patches(
        Path(settings.MEDIA_ROOT) / task.image.file, PatchSettings(patch_size=224, max_patches=2)
    )
    regions = [r.as_dict() for r in plan.regions]
    assert regions, "the sample slide gave no patches"
    services.draft_record(
        task_id=task.pk, attempt=claimed.attempt, fields=draft_fields(regions=regions)
    )
    task.refresh_from_db()
    return Scene(task=task, failed=make_task(people.project, state=TaskState.FAILED))


def _api_request(name: str, scene: Scene, user):
    """A request to the REST API with `user`'s token (anonymous: no token)."""
    task, project_id = scene.task, scene.task.project_id
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.defaults["HTTP_AUTHORIZATION"] = (
            "Bearer " + api_tokens.token_create(user=user, name="matrix").secret
        )
    match name:
        case "project_create":
            data = {"name": f"Lung CT {user}", "modality": "pathology"}
            return client.post("/api/projects", data, content_type="application/json")
        case "project_list":
            return client.get("/api/projects")
        case "project_upload":
            note = SimpleUploadedFile("notes.txt", b"not an image")
            return client.post(f"/api/projects/{project_id}/upload", {"files": [note]})
        case "upload_batch":
            batch = _researchers_upload(scene).batch
            return client.get(f"/api/projects/{project_id}/uploads/{batch.pk}")
        case "task_list":
            return client.get(f"/api/tasks?project={project_id}")
        case "task_read":
            return client.get(f"/api/tasks/{task.pk}")
        case "export_start":
            return client.post(f"/api/projects/{project_id}/exports", {}, "application/json")
        case "export_job" | "export_download":
            job = _finished_export(scene)
            suffix = "/download" if name == "export_download" else ""
            return client.get(f"/api/exports/{job.pk}{suffix}")
    return None


def _request(client, name: str, scene: Scene, user=None):
    task, project_id = scene.task, scene.task.project_id
    if (response := _api_request(name, scene, user)) is not None:
        return response
    match name:
        case "account-tokens":
            return client.get(reverse(name))
        case "account-token-revoke":
            owner = user or scene.task.project.memberships.get(role=Role.PATHOLOGIST).user
            token = api_tokens.token_create(user=owner, name="matrix").token
            return client.post(reverse(name, args=[token.pk]))
        case "project-list":
            return client.get(reverse(name))
        case (
            "project-detail"
            | "project-status"
            | "project-tasks"
            | "project-upload"
            | "project-export"
            | "project-settings"
            | "project-sentinels"
            | "project-members"
        ):
            return client.get(reverse(name, args=[project_id]))
        case "project-insights":
            return client.get(reverse(name, args=[project_id]))
        case "project-insights-csv":
            return client.get(reverse(name, args=[project_id, "decisions"]))
        case "project-comparison-start":
            data = {"prompt_version": "1", "sample_size": "1"}
            return client.post(reverse(name, args=[project_id]), data)
        case "comparison-close":
            return client.post(reverse(name, args=[_comparison(scene).pk]))
        case "project-retry-failed" | "review-start" | "review-undo":
            return client.post(reverse(name, args=[project_id]))
        case "member-role" | "member-remove":
            pathologist = scene.task.project.memberships.get(role=Role.PATHOLOGIST).user_id
            data = {"user": pathologist, "role": Role.RESEARCHER}
            return client.post(reverse(name, args=[project_id]), data)
        case "review-done" | "project-adjudication":
            return client.get(reverse(name, args=[project_id]))
        case "review-ahead":
            data = {"after": str(task.pk)}
            return client.post(reverse(name, args=[project_id]), data, HTTP_HX_REQUEST="true")
        case "export-start":
            return client.post(reverse(name, args=[project_id]), {"history": "1"})
        case "tus-create":
            return client.options(reverse(name, args=[project_id]))
        case "tus-upload":
            upload = _researchers_upload(scene)
            return client.head(
                reverse(name, args=[project_id, upload.pk]), HTTP_TUS_RESUMABLE="1.0.0"
            )
        case "upload-batch-create":
            return client.post(reverse(name, args=[project_id]))
        case "upload-batch" | "upload-batch-finish":
            batch = _researchers_upload(scene).batch
            url = reverse(name, args=[project_id, batch.pk])
            return client.post(url) if name == "upload-batch-finish" else client.get(url)
        case "export-job" | "export-download":
            return client.get(reverse(name, args=[_finished_export(scene).pk]))
        case "task-adjudicate":
            return client.get(reverse(name, args=[task.pk]))
        case "task-skip":
            return client.post(reverse(name, args=[task.pk]))
        case "claim-renew":
            if user is not None and Can.REVIEW in capabilities(user, task.project):
                assert services.claim_next(project=task.project, reviewer=user) == task
            return client.post(reverse(name, args=[task.pk]))
        case "task-detail" | "task-preview" | "task-history":
            return client.get(reverse(name, args=[task.pk]))
        case "task-decide":
            data = {"decision": "accepted", "draft_id": scene.draft.pk}
            return client.post(reverse(name, args=[task.pk]), data)
        case "task-autosave":
            return client.post(reverse(name, args=[task.pk]), {"text": "Typed so far."})
        case "task-retry":
            return client.post(reverse(name, args=[scene.failed.pk]))
        case "task-redraft":
            return client.post(reverse(name, args=[task.pk]))
        case "draft-region":
            return client.get(reverse(name, args=[scene.draft.pk, 0]))
        case "slide-dzi":
            return client.get(reverse(name, args=[task.image_id]))
        case "slide-tile":
            # the page mints a token for those who may see the image; others have none to send
            url = reverse(name, args=[task.image_id, 0, 0, 0])
            try:
                image = image_for_user(user, task.image_id) if user else None
            except Http404:
                image = None
            return client.get(f"{url}?t={tiles.mint_token(image, user)}" if image else url)
    raise AssertionError(f"no request for {name!r}: add one beside its MATRIX row")


def _comparison(scene: Scene):
    """A blind comparison of `project` (its drafting messages go nowhere)."""
    project = scene.task.project
    prompt = PromptTemplate.objects.create(project=project, version=1, instruction="Describe.")
    with mock.patch.object(comparisons.messages, "send_many", return_value=1):
        return comparisons.comparison_start(
            project=project, prompt_template=prompt, model_revision="", sample_size=1
        )


def _researchers_upload(scene: Scene):
    """An upload under way, with its batch, sent by the researcher of `project`."""
    project = scene.task.project
    researcher = project.memberships.get(role=Role.RESEARCHER).user
    batch = uploadbatches.batch_create(project=project, user=researcher)
    return tus.upload_create(
        project=project, user=researcher, length=4, metadata={"batch": str(batch.pk)}
    )


def _finished_export(scene: Scene):
    """An export job of `project`, written (by the worker's service, here in-process)."""
    job = exportjobs.export_job_start(
        project=scene.task.project, requested_by=None, options=exports.ExportOptions()
    )
    return exportjobs.export_job_run(job_id=job.pk)


def _user(people, persona):
    return None if persona == "anonymous" else getattr(people, persona)


@pytest.mark.parametrize("name", list(MATRIX))
@pytest.mark.parametrize("persona", PERSONAS)
def test_the_permission_matrix(people, scene, client_for, name, persona):
    expected = MATRIX[name][PERSONAS.index(persona)]
    user = _user(people, persona)
    response = _request(client_for(user), name, scene, user)
    assert response.status_code < 500
    assert response.status_code == expected, (name, persona, response.status_code)
    if response.status_code == 302:
        to_login = response["Location"].startswith(reverse("login"))
        assert to_login == (persona == "anonymous"), response["Location"]
    if expected == 200 and name in JPEG_VIEWS:
        assert response["Content-Type"] == "image/jpeg"
        body = b"".join(response.streaming_content) if response.streaming else response.content
        assert body.startswith(b"\xff\xd8")


def test_the_public_urls_need_no_login(people, client_for):
    anonymous = client_for(None)
    assert anonymous.get(reverse("api:openapi-json")).status_code == 200
    assert anonymous.get(reverse("api:api-root")).status_code == 404
    assert anonymous.get(reverse("login")).status_code == 200
    assert anonymous.get(reverse("healthz")).status_code in (200, 503)
    response = client_for(people.pathologist).post(reverse("logout"))
    assert response.status_code == 302 and response["Location"] == reverse("login")


def test_the_project_list_shows_only_my_projects(people, client_for):
    response = client_for(people.other_pathologist).get(reverse("project-list"))
    assert b"Melanoma photos" in response.content
    assert b"Breast biopsies" not in response.content


def test_a_superuser_sees_every_project(people, client_for):
    response = client_for(people.superuser).get(reverse("project-list"))
    assert b"Melanoma photos" in response.content and b"Breast biopsies" in response.content


def test_a_project_admin_sees_only_their_project(people, client_for):
    body = client_for(people.project_admin).get(reverse("project-list")).content
    assert b"Breast biopsies" in body and b"Melanoma photos" not in body


def test_the_admin_of_another_project_cannot_reach_this_one(people, client_for, sample_files):
    client = client_for(people.other_admin)
    project_id = people.project.pk
    assert b"Breast biopsies" not in client.get(reverse("project-list")).content
    for name in ("project-detail", "project-export", "project-settings", "project-upload"):
        assert client.get(reverse(name, args=[project_id])).status_code == 404, name
    with sample_files["photo"].open("rb") as photo:
        response = client.post(reverse("project-upload", args=[project_id]), {"files": [photo]})
    assert response.status_code == 404
    response = client.post(
        reverse("project-settings", args=[project_id]),
        {"instruction": "Say {organ}.", "target_mpp": "0.5", "patch_size": "512"},
    )
    assert response.status_code == 404
    assert not Task.objects.filter(project=people.project).exists()
    assert not is_site_admin(people.other_admin)


def test_demoting_a_project_admin_takes_their_powers_at_once(people, client_for):
    client = client_for(people.project_admin)
    url = reverse("project-export", args=[people.project.pk])
    assert client.get(url).status_code == 200
    services.membership_set(project=people.project, user=people.project_admin, role="pathologist")
    assert client.get(url).status_code == 403
    assert client.get(reverse("project-settings", args=[people.project.pk])).status_code == 403
    Membership.objects.filter(user=people.project_admin).delete()
    assert client.get(url).status_code == 404
    assert not projects_for_user(people.project_admin).exists()


def test_create_project_with_an_admin_member_gives_no_site_wide_power(people, client_for):
    call_command("create_project", "Lung CT", "--modality", "pathology", "--member", "oscar:admin")
    client = client_for(people.outsider)
    assert not is_site_admin(people.outsider)
    assert client.get(reverse("project-detail", args=[people.project.pk])).status_code == 404
    assert b"Breast biopsies" not in client.get(reverse("project-list")).content


def test_the_django_admin_membership_inline_gives_no_site_wide_power(people, client_for):
    project = people.project
    prefix = "memberships"
    existing = list(project.memberships.order_by("pk"))
    data = {
        "name": project.name,
        "modality": project.modality,
        "description": project.description,
        "slide_settings": "{}",
        f"{prefix}-TOTAL_FORMS": str(len(existing) + 1),
        f"{prefix}-INITIAL_FORMS": str(len(existing)),
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }
    for i, m in enumerate(existing):
        data |= {
            f"{prefix}-{i}-id": str(m.pk),
            f"{prefix}-{i}-project": str(project.pk),
            f"{prefix}-{i}-user": str(m.user_id),
            f"{prefix}-{i}-role": m.role,
        }
    new = len(existing)
    data |= {
        f"{prefix}-{new}-project": str(project.pk),
        f"{prefix}-{new}-user": str(people.other_pathologist.pk),
        f"{prefix}-{new}-role": Role.ADMIN,
    }
    admin_client = client_for(people.superuser)
    url = reverse("admin:annotations_project_change", args=[project.pk])
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert project.memberships.get(user=people.other_pathologist).role == Role.ADMIN

    olga = people.other_pathologist
    olga.refresh_from_db()
    assert not olga.groups.exists() and not is_site_admin(olga)
    # Admin of `project` now, still only a pathologist of `other_project`.
    client = client_for(olga)
    assert client.get(reverse("project-export", args=[project.pk])).status_code == 200
    url = reverse("project-export", args=[people.other_project.pk])
    assert client.get(url).status_code == 403


def test_a_group_named_admin_gives_no_power(people, client_for):
    Group.objects.create(name="admin").user_set.add(people.outsider)
    assert not is_site_admin(people.outsider)
    response = client_for(people.outsider).get(reverse("project-detail", args=[people.project.pk]))
    assert response.status_code == 404


def test_the_migration_drops_the_role_groups(people):
    migration = importlib.import_module("annotations.migrations.0003_roles_belong_to_projects")
    kept = Group.objects.create(name="radiology-leads")
    for name in migration.ROLE_GROUPS:
        Group.objects.create(name=name).user_set.add(people.outsider, people.pathologist)
    # The models as they stood when 0003 runs, as `migrate` would hand them over.
    loader = MigrationExecutor(connection).loader
    state = loader.project_state(("annotations", "0002_audit_append_only_and_groups"))
    migration.drop_role_groups(state.apps, None)
    assert list(Group.objects.all()) == [kept]
    assert not people.outsider.groups.exists()
    assert not is_site_admin(people.outsider)


def test_a_decision_needs_a_csrf_token(people):
    from django.test import Client

    task = make_drafted_task(people.project)
    client = Client(enforce_csrf_checks=True)
    client.force_login(people.pathologist)
    response = client.post(
        reverse("task-decide", args=[task.pk]),
        {"decision": "accepted", "draft_id": task.latest_draft().pk},
    )
    assert response.status_code == 403


def test_decide_rejects_get(people, client_for):
    task = make_drafted_task(people.project)
    response = client_for(people.pathologist).get(reverse("task-decide", args=[task.pk]))
    assert response.status_code == 405
