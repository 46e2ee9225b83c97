"""The review page and decisions over HTTP, with and without htmx."""

from django.urls import reverse

from annotations.models import AuditEvent, Draft, Label, TaskState
from tests.factories import make_drafted_task, make_task

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "decision"}


def test_the_review_page_marks_the_draft_as_ai_generated(people, client_for):
    task = make_drafted_task(people.project, text="Lobular carcinoma in situ.")
    response = client_for(people.pathologist).get(reverse("task-detail", args=[task.pk]))
    assert response.status_code == 200
    body = response.content.decode()
    assert "AI-generated draft" in body and "not a medical device" in body.lower()
    assert "Lobular carcinoma in situ." in body
    assert 'id="decision-form"' in body


def test_a_researcher_sees_the_draft_but_no_decision_form(people, client_for):
    task = make_drafted_task(people.project)
    body = (
        client_for(people.researcher).get(reverse("task-detail", args=[task.pk])).content.decode()
    )
    assert "AI-generated draft" in body and 'id="decision-form"' not in body


def test_an_htmx_accept_returns_the_decision_partial(people, client_for):
    task = make_drafted_task(people.project)
    response = client_for(people.pathologist).post(
        reverse("task-decide", args=[task.pk]),
        {"decision": "accepted", "draft_id": task.latest_draft().pk},
        **HTMX,
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="decision"')
    assert "Saved: <strong>Accepted</strong>" in body
    task.refresh_from_db()
    assert (task.state, task.outcome) == (TaskState.DRAFTED, "accepted")  # review apart


def test_an_edit_stores_the_reviewers_text(people, client_for):
    task = make_drafted_task(people.project)
    client_for(people.pathologist).post(
        reverse("task-decide", args=[task.pk]),
        {
            "decision": "edited",
            "draft_id": task.latest_draft().pk,
            "text": "Usual ductal hyperplasia.",
        },
        **HTMX,
    )
    label = Label.objects.get(task=task)
    assert (label.decision, label.text) == ("edited", "Usual ductal hyperplasia.")


def test_a_reject_without_reason_is_refused_and_nothing_is_saved(people, client_for):
    task = make_drafted_task(people.project)
    response = client_for(people.pathologist).post(
        reverse("task-decide", args=[task.pk]),
        {"decision": "rejected", "draft_id": task.latest_draft().pk},
        **HTMX,
    )
    assert response.status_code == 422
    assert "Say why the draft is rejected." in response.content.decode()
    assert not Label.objects.exists()
    assert not AuditEvent.objects.filter(action="label.record").exists()


def test_a_decision_on_a_stale_draft_is_a_conflict(people, client_for):
    task = make_drafted_task(people.project)
    response = client_for(people.pathologist).post(
        reverse("task-decide", args=[task.pk]), {"decision": "accepted", "draft_id": 999999}, **HTMX
    )
    assert response.status_code == 409
    assert "newer draft" in response.content.decode()


def test_a_decision_before_the_draft_is_a_conflict(people, client_for):
    task = make_task(people.project, state=TaskState.DRAFTING)
    response = client_for(people.pathologist).post(
        reverse("task-decide", args=[task.pk]), {"decision": "accepted", "draft_id": 1}, **HTMX
    )
    assert response.status_code == 409


def test_without_htmx_a_decision_goes_to_the_next_task(people, client_for):
    first, second = make_drafted_task(people.project), make_drafted_task(people.project)
    response = client_for(people.pathologist).post(
        reverse("task-decide", args=[first.pk]),
        {"decision": "accepted", "draft_id": first.latest_draft().pk},
    )
    assert response.status_code == 302
    assert response["Location"].split("?")[0] == reverse("task-detail", args=[second.pk])


def test_html_in_a_draft_is_escaped(people, client_for):
    task = make_drafted_task(people.project, text="<script>alert(1)</script>")
    body = (
        client_for(people.pathologist).get(reverse("task-detail", args=[task.pk])).content.decode()
    )
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;" in body


def test_pages_carry_a_strict_content_security_policy(people, client_for):
    task = make_drafted_task(people.project)
    response = client_for(people.pathologist).get(reverse("task-detail", args=[task.pk]))
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert "<script>" not in response.content.decode()  # no inline scripts


def test_the_review_page_shows_what_the_model_saw_and_its_trace(people, client_for):
    task = make_drafted_task(people.project)
    Draft.objects.filter(task=task).update(
        regions=[{"x": 1792, "y": 896, "width": 1792, "height": 1792, "mpp": 1.0}],
        thinking="thought: look at the nuclei",
        truncated=True,
    )
    body = (
        client_for(people.pathologist).get(reverse("task-detail", args=[task.pk])).content.decode()
    )
    assert "The model saw 1 patch of this slide" in body and "x 1792, y 896" in body
    assert "thought: look at the nuclei" in body and "reasoning trace" in body
    assert "hit the token limit" in body
    assert "prompt default" in body


def test_a_redraft_keeps_the_old_draft_and_its_label(
    people, client_for, django_capture_on_commit_callbacks
):
    from annotations import services

    task = make_drafted_task(people.project)
    first = task.latest_draft()
    services.label_record(
        task_id=task.pk, reviewer=people.pathologist, decision="accepted", draft_id=first.pk
    )
    with django_capture_on_commit_callbacks(execute=False):
        response = client_for(people.admin).post(reverse("task-redraft", args=[task.pk]))
    assert response.status_code == 302
    task.refresh_from_db()
    assert task.state == TaskState.QUEUED
    assert Label.objects.get(task=task).draft == first


def test_the_next_tasks_image_is_prefetched(people, client_for):
    first, second = make_drafted_task(people.project), make_drafted_task(people.project)
    body = (
        client_for(people.pathologist).get(reverse("task-detail", args=[first.pk])).content.decode()
    )
    assert f'<link rel="prefetch" href="{reverse("task-preview", args=[second.pk])}">' in body


def test_the_draft_notice_has_one_source(people, client_for):
    """The page shows the same notice that exports carry (annotations.notice.AI_NOTICE)."""
    from annotations.notice import AI_NOTICE

    task = make_drafted_task(people.project)
    body = client_for(people.pathologist).get(reverse("task-detail", args=[task.pk])).content
    assert body.decode().count(AI_NOTICE) == 2  # beside the draft, and in the footer
