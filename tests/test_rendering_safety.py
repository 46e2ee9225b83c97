"""Hostile text typed or uploaded anywhere comes back escaped on every page, and nothing
uploaded is ever served as HTML.

The payloads go into what users and manifests control: project names, draft and edited text,
reasons, file names, manifest values (Task.metadata), sentinel notes, upload reports, export
errors. Each page is parsed: no element, attribute or script may come from a payload.
"""

import json
from html.parser import HTMLParser

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from annotations import exportjobs, exports, notice, services
from annotations.models import (
    ExportState,
    Modality,
    Project,
    Role,
    Sentinel,
    Task,
    UploadBatch,
)
from inference.tasks import export_task
from tests.factories import SETTINGS_FORM, make_drafted_task, make_image, make_task, record_draft

SCRIPT = "<script>alert(1)</script>"
ATTRIBUTE = '" onmouseover="alert(1)'
PAYLOAD = f"{SCRIPT}{ATTRIBUTE}"
# A file name loses everything up to its last "/" (</script>) on the way in.
IMG = "<img src=x onerror=alert(1)>"
FILE_PAYLOAD = f"{IMG}{ATTRIBUTE}"


class _Inline(HTMLParser):
    """What a browser would run from a page (handlers, javascript: URLs, inline scripts), and
    style attributes, which the policy refuses as well."""

    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attrs):
        names = {name for name, _ in attrs}
        for name, value in attrs:
            if name.startswith("on") or name == "style":
                self.found.append(f"<{tag} {name}=...>")
            if name in {"href", "src", "action", "formaction"} and (
                value or ""
            ).strip().lower().startswith("javascript:"):
                self.found.append(f"<{tag} {name}={value}>")
        if tag == "script" and "src" not in names:
            kind = dict(attrs).get("type") or ""
            if kind != "application/json":
                self.found.append("<script> without src")


def page_inline_code(html: str) -> list[str]:
    parser = _Inline()
    parser.feed(html)
    return parser.found


def assert_safe(response) -> str:
    """The page renders, escapes the payloads and runs nothing of them."""
    assert response.status_code == 200, response.status_code
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert SCRIPT not in html and "<script>alert" not in html and IMG not in html
    assert 'onmouseover="alert' not in html
    assert page_inline_code(html) == []
    return html


def test_the_parser_finds_what_a_browser_would_run():
    assert page_inline_code(f"<p>{PAYLOAD}</p>")
    assert page_inline_code(f'<input value="{ATTRIBUTE}">')
    assert page_inline_code('<a href=" javascript:alert(1)">x</a>')
    assert page_inline_code('<p style="color: red">x</p>')
    assert not page_inline_code('<input value="&quot; onmouseover=&quot;alert(1)">')
    assert not page_inline_code('<script type="application/json">{"a": "<\\/script>"}</script>')


@pytest.fixture
def hostile(people):
    """`project`, renamed and filled with payloads wherever a user or a manifest writes."""
    p = people
    Project.objects.filter(pk=p.project.pk).update(name=f"Biopsies {PAYLOAD}")
    p.project.refresh_from_db()
    image = make_image(original_name=f"{PAYLOAD}.jpg")
    p.drafted = record_draft(make_task(p.project, image=image), text=f"Draft {PAYLOAD}")
    Task.objects.filter(pk=p.drafted.pk).update(
        metadata={"organ": PAYLOAD, PAYLOAD: "value", "case_id": PAYLOAD, "reference": PAYLOAD}
    )
    p.edited = make_drafted_task(p.project, text=f"Draft {PAYLOAD}")
    services.label_record(
        task_id=p.edited.pk,
        reviewer=p.pathologist,
        decision="edited",
        draft_id=p.edited.latest_draft().pk,
        text=f"Edited {PAYLOAD}",
    )
    p.rejected = make_drafted_task(p.project)
    services.label_record(
        task_id=p.rejected.pk,
        reviewer=p.pathologist,
        decision="rejected",
        draft_id=p.rejected.latest_draft().pk,
        reason=f"Reason {PAYLOAD}",
        category=p.project.correction_categories[0],
    )
    Sentinel.objects.create(
        project=p.project,
        task=p.edited,
        text=f"Sentinel {PAYLOAD}",
        expected="reject",
        note=f"Note {PAYLOAD}",
        created_by=p.admin,
    )
    p.batch = UploadBatch.objects.create(
        project=p.project,
        user=p.researcher,
        finished_at=timezone.now(),
        report={
            "files": [
                {"name": f"{PAYLOAD}.svs", "status": "rejected", "message": PAYLOAD},
                {"name": f"{PAYLOAD}.jpg", "status": "imported", "message": ""},
            ],
            "warnings": [PAYLOAD],
        },
    )
    p.job = exportjobs.export_job_start(
        project=p.project, requested_by=p.admin, options=exports.ExportOptions.from_query({})
    )
    p.job.__class__.objects.filter(pk=p.job.pk).update(state=ExportState.FAILED, error=PAYLOAD)
    return p


ADMIN_PAGES = [
    ("project-list", lambda p: []),
    ("project-detail", lambda p: [p.project.pk]),
    ("project-settings", lambda p: [p.project.pk]),
    ("project-sentinels", lambda p: [p.project.pk]),
    ("project-upload", lambda p: [p.project.pk]),
    ("upload-batch", lambda p: [p.project.pk, p.batch.pk]),
    ("export-job", lambda p: [p.job.pk]),
]


@pytest.mark.parametrize(("name", "args"), ADMIN_PAGES, ids=[n for n, _ in ADMIN_PAGES])
def test_the_admins_pages_escape_the_payloads(hostile, client_for, name, args):
    client = client_for(hostile.superuser if name == "upload-batch" else hostile.admin)
    html = assert_safe(client.get(reverse(name, args=args(hostile))))
    if name != "export-job":
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown, as text


def test_the_sentinel_form_filled_from_a_task_escapes_it(hostile, client_for):
    url = reverse("project-sentinels", args=[hostile.project.pk])
    assert_safe(client_for(hostile.admin).get(url, {"task": hostile.edited.pk}))


@pytest.mark.parametrize("task", ["drafted", "edited", "rejected"])
def test_the_review_page_escapes_draft_edit_reason_file_name_and_manifest(
    hostile, client_for, task
):
    url = reverse("task-detail", args=[getattr(hostile, task).pk])
    html = assert_safe(client_for(hostile.pathologist).get(url))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_review_queue_and_its_end_escape_the_payloads(hostile, client_for):
    client = client_for(hostile.pathologist)
    response = client.post(reverse("review-start", args=[hostile.project.pk]), follow=True)
    assert response.redirect_chain  # to the claimed task
    assert_safe(response)
    assert_safe(client.get(reverse("review-done", args=[hostile.project.pk])))


def test_a_settings_post_with_payloads_comes_back_escaped(hostile, client_for):
    form = SETTINGS_FORM | {
        "system": PAYLOAD,
        "instruction": f"Describe the {{organ}} specimen. {PAYLOAD}",
        "correction_categories": f"{PAYLOAD}\nother",
    }
    url = reverse("project-settings", args=[hostile.project.pk])
    client = client_for(hostile.admin)
    client.post(url, form)
    assert_safe(client.get(url))
    assert_safe(client.get(reverse("task-detail", args=[hostile.drafted.pk])))


def test_an_uploaded_file_name_is_escaped_in_the_results(people, client_for, sample_files):
    data = sample_files["photo"].read_bytes()
    files = [
        SimpleUploadedFile(f"{FILE_PAYLOAD}.jpg", data, content_type="text/html"),
        SimpleUploadedFile(f"{FILE_PAYLOAD}.html", b"<html>" + SCRIPT.encode(), "text/html"),
    ]
    url = reverse("project-upload", args=[people.project.pk])
    html = assert_safe(client_for(people.researcher).post(url, {"files": files}))
    assert html.count("&lt;img src=x onerror=alert(1)&gt;&quot; onmouseover=&quot;") == 2


# ---------------------------------------------------------------------------- adjudication


@pytest.fixture
def disagreement(people):
    """A task of a project read twice, whose two readers wrote hostile, different texts."""
    project = services.project_create(
        name=f"Double {PAYLOAD}", modality=Modality.PATHOLOGY, members=[]
    )
    services.project_reading_settings_set(
        project=project, readings_per_task=2, disagreement_words=1
    )
    readers = []
    for name, role in [("rosa", Role.PATHOLOGIST), ("raj", Role.PATHOLOGIST)]:
        user = get_user_model().objects.create_user(name, password="password")
        services.membership_set(project=project, user=user, role=role)
        readers.append(user)
    adjudicator = get_user_model().objects.create_user("ada", password="password")
    services.membership_set(project=project, user=adjudicator, role=Role.ADJUDICATOR)
    task = make_drafted_task(project, text=f"Draft {PAYLOAD}")
    for reader, words in zip(
        readers, ["Benign tissue only", "Malignant cells everywhere"], strict=True
    ):
        services.label_record(
            task_id=task.pk,
            reviewer=reader,
            decision="edited",
            draft_id=task.latest_draft().pk,
            text=f"{words} {PAYLOAD}",
        )
    return task, adjudicator


def test_the_adjudication_pages_escape_the_readings(disagreement, client_for):
    task, adjudicator = disagreement
    client = client_for(adjudicator)
    queue = assert_safe(client.get(reverse("project-adjudication", args=[task.project_id])))
    assert reverse("task-adjudicate", args=[task.pk]) in queue
    html = assert_safe(client.get(reverse("task-adjudicate", args=[task.pk])))
    assert "Malignant" in html and "&lt;script&gt;" in html
    draft = html[html.index("<h2>Draft</h2>") :].split("</section>", 1)[0]
    assert notice.AI_NOTICE in draft  # the draft shown there is marked as AI output


# ---------------------------------------------------------------------------- files


def _is_not_html(response):
    assert response["X-Content-Type-Options"] == "nosniff"
    kind = response["Content-Type"].lower()
    assert "html" not in kind and "xml" not in kind.replace("application/xml", "")


def test_exports_are_attachments_of_a_data_type(hostile, client_for):
    client = client_for(hostile.admin)
    for fmt in ["jsonl", "csv"]:
        url = reverse("project-export", args=[hostile.project.pk])
        response = client.get(url, {"format": fmt})
        assert response.status_code == 200
        _is_not_html(response)
        assert response["Content-Disposition"].startswith("attachment;")
        # The file name comes from the project name: no quote or markup of it survives.
        filename = response["Content-Disposition"].split("filename=", 1)[1]
        assert filename.count('"') == 2 and "<" not in filename


def test_a_finished_export_download_is_an_attachment(hostile, client_for):
    job = exportjobs.export_job_start(
        project=hostile.project,
        requested_by=hostile.admin,
        options=exports.ExportOptions.from_query({"format": "csv"}),
    )
    export_task(job.pk)
    response = client_for(hostile.admin).get(reverse("export-download", args=[job.pk]))
    assert response.status_code == 200
    _is_not_html(response)
    assert response["Content-Disposition"].startswith("attachment;")
    body = b"".join(response.streaming_content).decode()
    assert exports.AI_NOTICE in body  # the notice travels with the rows


def test_a_preview_is_a_jpeg_whatever_the_upload_was_called(people, client_for, sample_files):
    data = sample_files["photo"].read_bytes()
    upload = SimpleUploadedFile(f"{FILE_PAYLOAD}.html", data, content_type="text/html")
    url = reverse("project-upload", args=[people.project.pk])
    client_for(people.researcher).post(url, {"files": [upload]})
    task = Task.objects.get(project=people.project)
    response = client_for(people.pathologist).get(reverse("task-preview", args=[task.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    _is_not_html(response)
    assert b"".join(response.streaming_content)[:3] == b"\xff\xd8\xff"


def test_an_html_file_dressed_as_a_photo_is_refused(people, client_for):
    upload = SimpleUploadedFile("lesion.jpg", b"<!doctype html>" + SCRIPT.encode(), "image/jpeg")
    url = reverse("project-upload", args=[people.project.pk])
    response = client_for(people.researcher).post(url, {"files": [upload]})
    assert response.status_code == 422
    assert not Task.objects.filter(project=people.project).exists()


# ---------------------------------------------------------------------------- the notice


@pytest.mark.parametrize(
    ("model", "name", "url"),
    [
        ("google/medgemma-1.5-4b-it", "google/medgemma-1.5-4b-it", notice.HAI_DEF_TERMS_URL),
        ("/srv/models/medgemma-4b-it/", "medgemma-4b-it", notice.HAI_DEF_TERMS_URL),
        ("/srv/secret/var/demo-model", "demo-model", ""),
    ],
)
def test_the_model_is_named_with_its_terms(model, name, url):
    terms = notice.model_terms(model)
    assert (terms.name, terms.terms_url) == (name, url)


def test_the_project_page_names_the_model_and_its_terms(people, client_for, settings):
    settings.MEDANNOT_MODEL = "google/medgemma-1.5-4b-it"
    url = reverse("project-detail", args=[people.project.pk])
    for user in [people.admin, people.pathologist, people.researcher]:
        html = assert_safe(client_for(user).get(url))
        line = html[html.index('id="model-terms"') :].split("</p>", 1)[0]
        assert "google/medgemma-1.5-4b-it" in line
        assert f'href="{notice.HAI_DEF_TERMS_URL}"' in line
        assert "Health AI Developer Foundations terms of use" in line
        assert notice.AI_NOTICE in line


def test_the_project_page_does_not_show_the_servers_model_path(people, client_for, settings):
    settings.MEDANNOT_MODEL = "/srv/secret/var/demo-model"
    html = client_for(people.admin).get(reverse("project-detail", args=[people.project.pk]))
    assert "/srv/secret" not in html.content.decode()
    assert "demo-model" in html.content.decode()


def test_the_notice_says_research_use_not_a_device_validated_by_a_clinician():
    text = notice.AI_NOTICE.lower()
    assert "ai-generated" in text and "research use" in text
    assert "not a medical device" in text and "validated by a clinician" in text


def test_every_shown_draft_carries_the_notice(hostile, client_for):
    html = client_for(hostile.pathologist).get(reverse("task-detail", args=[hostile.drafted.pk]))
    html = html.content.decode()
    badge = html[html.index('class="ai-badge"') :].split("</p>", 1)[0]
    assert notice.AI_NOTICE in badge


def test_every_exported_row_carries_the_notice(hostile, client_for):
    url = reverse("project-export", args=[hostile.project.pk])
    response = client_for(hostile.admin).get(url, {"format": "jsonl"})
    rows = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert rows and all(row["draft_notice"] == notice.AI_NOTICE for row in rows)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("admin:index", lambda p: []),
        ("admin:annotations_project_changelist", lambda p: []),
        ("admin:annotations_project_change", lambda p: [p.project.pk]),
        ("admin:annotations_image_changelist", lambda p: []),
        ("admin:annotations_draft_changelist", lambda p: []),
        ("admin:annotations_label_changelist", lambda p: []),
        ("admin:annotations_auditevent_changelist", lambda p: []),
    ],
)
def test_the_django_admin_escapes_the_payloads_and_runs_under_the_policy(
    hostile, client_for, name, args
):
    assert_safe(client_for(hostile.superuser).get(reverse(name, args=args(hostile))))


# ---------------------------------------------------------------------------- history, API


def test_the_history_pages_escape_the_payloads(hostile, client_for):
    client = client_for(hostile.admin)
    for task in (hostile.drafted, hostile.edited, hostile.rejected):
        html = assert_safe(client.get(reverse("task-history", args=[task.pk])))
        assert "&lt;script&gt;" in html


def test_the_api_answers_json_that_no_browser_runs_as_html(hostile):
    from django.test import Client

    from annotations import api_tokens

    secret = api_tokens.token_create(user=hostile.admin, name="script").secret
    client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    urls = [
        f"/api/tasks?project={hostile.project.pk}",
        f"/api/projects/{hostile.project.pk}/uploads/{hostile.batch.pk}",
        *(f"/api/tasks/{t.pk}" for t in (hostile.drafted, hostile.edited, hostile.rejected)),
    ]
    seen = ""
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        assert response["Content-Type"].startswith("application/json")
        assert response["X-Content-Type-Options"] == "nosniff"
        seen += json.dumps(response.json())
    # The payloads travel as data (draft, edit, reason, file name, manifest, report), as typed.
    for text in (f"Draft {PAYLOAD}", f"Edited {PAYLOAD}", f"Reason {PAYLOAD}"):
        assert json.dumps(text)[1:-1] in seen
