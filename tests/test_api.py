"""The REST API and its tokens, tested as a script on the outside would use them."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from annotations import api_tokens, exportjobs, exports, services
from annotations.models import (
    ApiToken,
    AuditEvent,
    Modality,
    Project,
    ReviewState,
    Task,
    TaskState,
)
from annotations.notice import AI_NOTICE
from tests.factories import make_drafted_task, make_task, record_draft
from tests.test_tus import TUS, b64, patch

PAYLOAD = '<script>alert(1)</script>" onmouseover="alert(2)'


@pytest.fixture(autouse=True)
def _fresh_rate_windows():
    cache.clear()  # each test counts its own requests


def token_for(user) -> str:
    return api_tokens.token_create(user=user, name="script").secret


def api_client(user) -> Client:
    """A client as a script: no session, no CSRF token, the user's API token."""
    client = Client(enforce_csrf_checks=True)
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(user)}"
    return client


# Tokens ---------------------------------------------------------------------------------


def test_the_page_shows_a_new_token_once_and_keeps_only_its_hash(people, client_for):
    client = client_for(people.pathologist)
    response = client.post(reverse("account-tokens"), {"name": "My laptop"})
    assert response.status_code == 201
    secret = response.context["new"].secret
    assert secret.encode() in response.content
    token = ApiToken.objects.get(user=people.pathologist)
    assert token.name == "My laptop" and secret.startswith(f"ma_{token.prefix}_")
    stored = hashlib.sha256(secret.split("_", 2)[2].encode()).hexdigest()
    assert token.secret_sha256 == stored and secret not in str(vars(token))
    again = client.get(reverse("account-tokens"))
    assert secret.encode() not in again.content and b"My laptop" in again.content
    assert AuditEvent.objects.filter(action="api_token.create", actor=people.pathologist).exists()


def test_a_token_made_to_expire_stops_working_then(people, client_for):
    page = client_for(people.pathologist)
    response = page.post(reverse("account-tokens"), {"name": "CI", "expires": "30"})
    secret = response.context["new"].secret
    token = ApiToken.objects.get(user=people.pathologist)
    in_30_days = timezone.now() + timedelta(days=30)
    assert abs((token.expires_at - in_30_days).total_seconds()) < 60
    client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert client.get("/api/projects").status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now())
    assert client.get("/api/projects").status_code == 401
    page.post(reverse("account-tokens"), {"name": "forever", "expires": ""})
    assert ApiToken.objects.get(name="forever").expires_at is None


def test_the_page_escapes_a_token_name(people, client_for):
    client = client_for(people.pathologist)
    client.post(reverse("account-tokens"), {"name": PAYLOAD})
    body = client.get(reverse("account-tokens")).content
    assert b"<script>alert(1)" not in body and b"&lt;script&gt;" in body


def test_a_nameless_token_is_refused_with_a_reason(people, client_for):
    response = client_for(people.pathologist).post(reverse("account-tokens"), {"name": ""})
    assert response.status_code == 422 and b"This field is required" in response.content
    assert not ApiToken.objects.exists()


def test_a_revoked_token_gets_401(people, client_for):
    client = api_client(people.pathologist)
    assert client.get("/api/projects").status_code == 200
    token = ApiToken.objects.get(user=people.pathologist)
    page = client_for(people.pathologist)
    response = page.post(reverse("account-token-revoke", args=[token.pk]))
    assert response.status_code == 302
    response = client.get("/api/projects")
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")
    assert AuditEvent.objects.filter(action="api_token.revoke", actor=people.pathologist).exists()


def test_no_one_revokes_another_users_token(people, client_for):
    token = api_tokens.token_create(user=people.pathologist, name="paul's").token
    response = client_for(people.project_admin).post(
        reverse("account-token-revoke", args=[token.pk])
    )
    assert response.status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


def test_a_superuser_revokes_anyones_token_in_the_admin(people, client_for):
    new = api_tokens.token_create(user=people.pathologist, name="paul's")
    response = client_for(people.superuser).post(
        reverse("admin:annotations_apitoken_changelist"),
        {"action": "revoke", "_selected_action": [new.token.pk]},
    )
    assert response.status_code == 302
    client = Client(HTTP_AUTHORIZATION=f"Bearer {new.secret}")
    assert client.get("/api/projects").status_code == 401
    event = AuditEvent.objects.get(action="api_token.revoke")
    assert event.actor == people.superuser and event.before["user"] == "paul"


def test_an_expired_or_unknown_or_missing_token_gets_401(people):
    new = api_tokens.token_create(
        user=people.pathologist, name="old", expires_at=timezone.now() - timedelta(seconds=1)
    )
    for header in (f"Bearer {new.secret}", "Bearer ma_000000000000_guess", "Bearer x", ""):
        response = Client(HTTP_AUTHORIZATION=header).get("/api/projects")
        assert response.status_code == 401, header


def test_a_token_of_a_deactivated_user_gets_401(people):
    client = api_client(people.pathologist)
    people.pathologist.is_active = False
    people.pathologist.save()
    assert client.get("/api/projects").status_code == 401


def test_a_session_alone_does_not_open_the_api(people, client_for):
    assert client_for(people.superuser).get("/api/projects").status_code == 401


def test_use_is_recorded_as_last_used(people):
    client = api_client(people.pathologist)
    client.get("/api/projects")
    assert ApiToken.objects.get(user=people.pathologist).last_used_at is not None


@pytest.fixture
def clock(monkeypatch):
    """The rate limiter's clock, set by the test: 10 s into a minute to begin with."""
    now = [1_800_000_010.0]
    monkeypatch.setattr(api_tokens, "_clock", lambda: now[0])
    return now


def test_too_many_requests_get_429_with_retry_after(people, settings, clock):
    settings.MEDANNOT_API_RATE_PER_MINUTE = 3
    client = api_client(people.pathologist)
    assert [client.get("/api/projects").status_code for _ in range(3)] == [200] * 3
    response = client.get("/api/projects")
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 120
    # another token of the same user counts apart
    assert api_client(people.pathologist).get("/api/projects").status_code == 200


def test_a_burst_across_the_turn_of_a_minute_is_still_limited(people, settings, clock):
    """A fixed window per calendar minute let twice the limit through: the limit at the end
    of one minute, the limit again at the start of the next."""
    settings.MEDANNOT_API_RATE_PER_MINUTE = 3
    client = api_client(people.pathologist)
    clock[0] = 1_800_000_059.5  # the last half second of a minute
    assert [client.get("/api/projects").status_code for _ in range(3)] == [200] * 3
    clock[0] = 1_800_000_060.5  # one second later, in the next minute
    assert client.get("/api/projects").status_code == 429


def test_retry_after_says_when_the_next_request_goes_through(people, settings, clock):
    settings.MEDANNOT_API_RATE_PER_MINUTE = 3
    client = api_client(people.pathologist)
    for _ in range(3):
        assert client.get("/api/projects").status_code == 200
        clock[0] += 10
    refused = client.get("/api/projects")  # 40 s into the minute
    assert refused.status_code == 429
    wait = int(refused["Retry-After"])
    clock[0] += wait - 1
    assert client.get("/api/projects").status_code == 429  # a second early: still refused
    clock[0] += 1
    # Refused requests were not counted: a client that kept trying is not kept out longer.
    assert client.get("/api/projects").status_code == 200


def test_a_steady_client_under_the_limit_is_never_refused(people, settings, clock):
    settings.MEDANNOT_API_RATE_PER_MINUTE = 10
    client = api_client(people.pathologist)
    for _ in range(30):  # six a minute for five minutes
        assert client.get("/api/projects").status_code == 200
        clock[0] += 10


def test_with_redis_down_the_api_still_answers(people, settings):
    client = api_client(people.pathologist)
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }
    assert client.get("/api/projects").status_code == 200


# Permissions: the pages' ------------------------------------------------------------------


def test_only_a_superuser_creates_a_project(people):
    data = {"name": "Lung CT", "modality": Modality.PATHOLOGY}
    for user in (people.project_admin, people.pathologist, people.outsider):
        response = api_client(user).post("/api/projects", data, content_type="application/json")
        assert response.status_code == 403
    response = api_client(people.superuser).post(
        "/api/projects", data, content_type="application/json"
    )
    assert response.status_code == 201
    again = api_client(people.superuser).post(
        "/api/projects", data, content_type="application/json"
    )
    assert again.status_code == 409


def test_a_prompt_that_does_not_parse_is_422_and_makes_no_project(people):
    """Found by the schema fuzzing: a prompt template of "}" was a 500."""
    data = {"name": "Lung CT", "modality": Modality.PATHOLOGY, "prompt": "}"}
    response = api_client(people.superuser).post(
        "/api/projects", data, content_type="application/json"
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "prompt"
    assert not Project.objects.filter(name="Lung CT").exists()


def test_a_project_name_is_refused_blank_and_escaped_on_the_pages(people, client_for):
    client = api_client(people.superuser)
    for name in ("", "   ", "a\x00b"):
        data = {"name": name, "modality": "dermatology"}
        assert client.post("/api/projects", data, "application/json").status_code == 422
    data = {"name": PAYLOAD, "modality": "dermatology"}
    project = client.post("/api/projects", data, "application/json").json()
    assert project["name"] == PAYLOAD
    body = client_for(people.superuser).get(reverse("project-detail", args=[project["id"]]))
    assert b"<script>alert(1)" not in body.content and b"&lt;script&gt;" in body.content


def test_another_projects_member_gets_404_as_on_the_pages(people, client_for):
    task = make_drafted_task(people.project)
    for user in (people.other_admin, people.other_pathologist, people.outsider):
        client = api_client(user)
        assert client.get(f"/api/tasks/{task.pk}").status_code == 404
        assert client.get(f"/api/tasks?project={people.project.pk}").status_code == 404
        assert client.get("/api/tasks").json()["items"] == []
        page = client_for(user).get(reverse("task-detail", args=[task.pk]))
        assert page.status_code == 404
        response = client.post(f"/api/projects/{people.project.pk}/exports", {}, "application/json")
        assert response.status_code == 404


def test_a_pathologist_cannot_export_or_upload(people, sample_files):
    client = api_client(people.pathologist)
    response = client.post(f"/api/projects/{people.project.pk}/exports", {}, "application/json")
    assert response.status_code == 403
    job = exportjobs.export_job_start(
        project=people.project, requested_by=None, options=exports.ExportOptions()
    )
    assert client.get(f"/api/exports/{job.pk}").status_code == 403
    with sample_files["photo"].open("rb") as photo:
        response = client.post(f"/api/projects/{people.project.pk}/upload", {"files": [photo]})
    assert response.status_code == 403
    assert not Task.objects.filter(project=people.project).exists()


def test_a_reader_stays_blind_to_anothers_reading(people):
    project = people.project
    services.project_reading_settings_set(
        project=project, readings_per_task=2, disagreement_words=5, actor=None
    )
    task = make_drafted_task(project)
    draft = task.latest_draft()
    services.label_record(
        task_id=task.pk, draft_id=draft.pk, decision="accepted", reviewer=people.project_admin
    )
    body = api_client(people.pathologist).get(f"/api/tasks/{task.pk}").json()
    assert body["readings"] == [] and body["final"] is None
    assert len(api_client(people.project_admin).get(f"/api/tasks/{task.pk}").json()["readings"])


# What it does ---------------------------------------------------------------------------


def test_tasks_are_listed_with_filters_and_a_cursor(people):
    drafted = [make_drafted_task(people.project) for _ in range(3)]
    failed = make_task(people.project, state=TaskState.FAILED)
    make_drafted_task(people.other_project)
    client = api_client(people.pathologist)
    page = client.get(f"/api/tasks?project={people.project.pk}&state=drafted&limit=2").json()
    assert [t["id"] for t in page["items"]] == [t.pk for t in drafted[:2]]
    rest = client.get(f"/api/tasks?state=drafted&limit=2&after={page['next_after']}").json()
    assert [t["id"] for t in rest["items"]] == [drafted[2].pk] and rest["next_after"] is None
    assert [t["id"] for t in client.get("/api/tasks?state=failed").json()["items"]] == [failed.pk]
    assert client.get("/api/tasks?modality=dermatology").json()["items"] == []
    assert client.get("/api/tasks?review_state=final").json()["items"] == []
    assert client.get("/api/tasks?state=nonsense").status_code == 422
    assert client.get("/api/tasks?limit=100000").status_code == 422


def test_a_task_reads_back_with_its_draft_notice_reading_and_final_label(people):
    task = make_drafted_task(people.project, text=PAYLOAD)
    draft = task.latest_draft()
    services.label_record(
        task_id=task.pk,
        draft_id=draft.pk,
        decision="edited",
        text="Benign naevus.",
        reviewer=people.pathologist,
    )
    response = api_client(people.researcher).get(f"/api/tasks/{task.pk}")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/json")
    assert response["X-Content-Type-Options"] == "nosniff"
    body = response.json()
    assert body["notice"] == AI_NOTICE
    assert [(d["id"], d["text"], d["notice"]) for d in body["drafts"]] == [
        (draft.pk, PAYLOAD, AI_NOTICE)
    ]
    assert body["review_state"] == ReviewState.FINAL
    assert body["readings"][0]["reviewer"] == "paul"
    assert body["final"] == {"decision": "edited", "text": "Benign naevus.", "by": "reading"}


def test_an_admin_exports_and_downloads(people):
    client = api_client(people.project_admin)
    task = make_drafted_task(people.project)
    services.label_record(
        task_id=task.pk,
        draft_id=task.latest_draft().pk,
        decision="edited",
        text="Fine.",
        reviewer=people.pathologist,
    )
    response = client.post(
        f"/api/projects/{people.project.pk}/exports", {"format": "csv"}, "application/json"
    )
    assert response.status_code == 202
    job = response.json()
    assert job["state"] == "queued" and job["download"] is None
    assert client.get(f"/api/exports/{job['id']}/download").status_code == 409
    exportjobs.export_job_run(job_id=job["id"])  # what the worker does
    done = client.get(f"/api/exports/{job['id']}").json()
    assert done["state"] == "done" and done["format"] == "csv"
    download = client.get(done["download"])
    assert download.status_code == 200 and download["Content-Type"].startswith("text/csv")
    assert b"Fine." in b"".join(download.streaming_content)


def test_the_readme_flow_create_upload_wait_read(people, sample_files):
    client = api_client(people.superuser)
    response = client.post(
        "/api/projects",
        {"name": "Skin photos", "modality": "dermatology"},
        content_type="application/json",
    )
    project = response.json()
    with sample_files["photo"].open("rb") as photo:
        response = client.post(project["upload"], {"files": [photo]})
    assert response.status_code == 200
    [result] = response.json()
    assert result["status"] == "imported" and result["name"] == "lesion-1.jpg"
    task = Task.objects.get(pk=result["task"])
    record_draft(task, text="Pigmented lesion, regular border.")  # the worker, without a model
    body = client.get(f"/api/tasks/{task.pk}").json()
    assert body["state"] == "drafted"
    assert body["drafts"][-1]["text"] == "Pigmented lesion, regular border."
    assert body["drafts"][-1]["notice"] == AI_NOTICE


def test_an_upload_escapes_nothing_into_html(people, sample_files, tmp_path):
    photo = tmp_path / '<img src=x onerror="alert(1)">.jpg'
    photo.write_bytes(sample_files["photo"].read_bytes())
    with photo.open("rb") as f:
        response = api_client(people.researcher).post(
            f"/api/projects/{people.project.pk}/upload", {"files": [f]}
        )
    assert response["Content-Type"].startswith("application/json")
    assert response.json()[0]["status"] == "imported"


def test_a_token_sends_a_file_and_a_manifest_through_tus_without_csrf(people, sample_files):
    client = api_client(people.researcher)
    response = client.post(reverse("upload-batch-create", args=[people.project.pk]))
    assert response.status_code == 201
    batch = response.json()["batch"]
    files = {
        "lesion-1.jpg": sample_files["photo"].read_bytes(),
        "manifest.csv": b"file,organ\nlesion-1.jpg,skin\n",
    }
    for name, data in files.items():
        meta = f"filename {b64(name)},batch {b64(str(batch))}"
        response = client.post(
            reverse("tus-create", args=[people.project.pk]),
            HTTP_UPLOAD_LENGTH=str(len(data)),
            HTTP_UPLOAD_METADATA=meta,
            **TUS,
        )
        assert response.status_code == 201, response.content
        assert patch(client, response["Location"], data, 0).status_code == 204
    response = client.post(reverse("upload-batch-finish", args=[people.project.pk, batch]))
    assert response.status_code == 200
    report = client.get(f"/api/projects/{people.project.pk}/uploads/{batch}").json()
    assert report["finished"] and report["report"]["files"][0]["status"] == "imported"
    task = Task.objects.get(project=people.project)
    assert task.metadata.get("organ") == "skin"


def test_tus_refuses_a_revoked_token_and_a_session_still_needs_csrf(people, client_for):
    new = api_tokens.token_create(user=people.researcher, name="x")
    api_tokens.token_revoke(token=new.token, actor=people.researcher)
    client = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {new.secret}")
    url = reverse("upload-batch-create", args=[people.project.pk])
    assert client.post(url).status_code == 401
    session = Client(enforce_csrf_checks=True)
    session.force_login(people.researcher)
    assert session.post(url).status_code == 403  # no CSRF token
    assert client_for(people.researcher).post(url).status_code == 201
