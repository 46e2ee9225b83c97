"""The review outcome apart from the drafting state, and decide-and-next as one transaction."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.urls import reverse

from annotations import backfills, counters, services
from annotations.models import Claim, Label, ReviewState, Role, Task, TaskState
from tests.factories import make_drafted_task, record_draft

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "decision"}


def accept(task, reviewer):
    return services.label_record(
        task_id=task.pk,
        reviewer=reviewer,
        decision="accepted",
        draft_id=task.latest_draft().pk,
    )


def test_a_decision_leaves_the_drafting_state_and_sets_the_outcome(people):
    task = make_drafted_task(people.project)
    accept(task, people.pathologist)
    task.refresh_from_db()
    assert (task.state, task.review_state, task.outcome) == ("drafted", "final", "accepted")
    counts = counters.counts_for(people.project.pk)
    assert (counts["drafted"], counts["to_read"], counts["accepted"], counts["decided"]) == (
        1,
        0,
        1,
        1,
    )


def test_a_decided_task_drafted_again_keeps_its_outcome_and_leaves_the_queue(people):
    task = make_drafted_task(people.project)
    accept(task, people.pathologist)
    services.task_redraft(task_id=task.pk, actor=people.project_admin)
    task.refresh_from_db()
    assert (task.state, task.outcome) == (TaskState.QUEUED, "accepted")
    record_draft(task, text="A second opinion.")
    task.refresh_from_db()
    assert (task.state, task.review_state, task.outcome) == ("drafted", "final", "accepted")
    assert services.claim_next(project=people.project, reviewer=people.project_admin) is None
    counts = counters.counts_for(people.project.pk)
    assert (counts["drafted"], counts["to_read"], counts["accepted"]) == (1, 0, 1)


def test_the_project_page_filters_by_review(people, client_for):
    read, unread = make_drafted_task(people.project), make_drafted_task(people.project)
    accept(read, people.pathologist)
    client = client_for(people.pathologist)
    url = reverse("project-detail", args=[people.project.pk])
    accepted = client.get(url, {"state": "accepted"}).text
    assert f'id="task-{read.pk}"' in accepted and f'id="task-{unread.pk}"' not in accepted
    to_read = client.get(url, {"state": "to_read"}).text
    assert f'id="task-{unread.pk}"' in to_read and f'id="task-{read.pk}"' not in to_read
    assert "To read (1)" in to_read and "Accepted (1)" in to_read
    assert client.get(url, {"state": "nonsense"}).status_code == 200  # all tasks


def test_decide_and_next_is_one_transaction(people, client_for, monkeypatch):
    """A failure in claiming the next task leaves no decision behind either."""
    first, _ = make_drafted_task(people.project), make_drafted_task(people.project)
    client = client_for(people.pathologist)
    client.post(reverse("review-start", args=[people.project.pk]))

    def broken(**kwargs):
        raise RuntimeError("the claim failed")

    monkeypatch.setattr(services, "_claim", broken)
    client.raise_request_exception = False
    data = {"decision": "accepted", "draft_id": first.latest_draft().pk, "queue": "1"}
    response = client.post(reverse("task-decide", args=[first.pk]), data, **HTMX)
    assert response.status_code == 500
    assert not Label.objects.filter(task=first).exists()
    first.refresh_from_db()
    assert (first.review_state, first.outcome) == (ReviewState.OPEN, "")
    assert Claim.objects.filter(task=first, reviewer=people.pathologist).exists()  # still held
    assert counters.counts_for(people.project.pk)["labels"] == 0


def test_a_decision_in_the_queue_writes_no_session(people, client_for):
    first, second = make_drafted_task(people.project), make_drafted_task(people.project)
    client = client_for(people.pathologist)
    client.post(reverse("review-start", args=[people.project.pk]))
    before = client.session.items()
    data = {"decision": "accepted", "draft_id": first.latest_draft().pk, "queue": "1"}
    response = client.post(reverse("task-decide", args=[first.pk]), data, **HTMX)
    assert f"Review task {second.pk}" in response.text
    assert client.session.items() == before
    assert 'name="undo" value="' in response.text  # Undo rides on the page instead


def test_a_forged_or_foreign_undo_token_undoes_nothing(people, client_for, django_user_model):
    task = make_drafted_task(people.project)
    client = client_for(people.pathologist)
    client.post(reverse("review-start", args=[people.project.pk]))
    data = {"decision": "accepted", "draft_id": task.latest_draft().pk, "queue": "1"}
    page = client.post(reverse("task-decide", args=[task.pk]), data)  # no JS: the address
    token = page["Location"].split("undo=")[1]
    other = client_for(people.project_admin)
    url = reverse("review-undo", args=[people.project.pk])
    assert other.post(url, {"undo": token}).status_code == 409  # signed for someone else
    assert client.post(url, {"undo": token[:-3] + "abc"}).status_code == 409  # forged
    assert Label.objects.filter(task=task).exists()


@pytest.mark.django_db
def test_the_outcome_backfill_moves_decisions_out_of_the_state(people):
    """Migration 0012 on rows as 0011 left them: the decision in the task state."""
    task = make_drafted_task(people.project)
    accept(task, people.pathologist)
    with connection.cursor() as cursor:  # rolled back with the test
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the inserts' checks, done now
        cursor.execute("ALTER TABLE annotations_task DROP CONSTRAINT task_state_valid")
        cursor.execute("ALTER TABLE annotations_task DROP CONSTRAINT task_outcome_only_when_final")
        cursor.execute(
            "UPDATE annotations_task SET state = 'accepted', outcome = '' WHERE id = %s",
            [task.pk],
        )
    backfills.outcomes_backfill(connection)
    task = Task.objects.get(pk=task.pk)
    assert (task.state, task.review_state, task.outcome) == ("drafted", "final", "accepted")


# The next task rendered ahead ----------------------------------------------------------


def ahead(client, project, task):
    url = reverse("review-ahead", args=[project.pk])
    return client.post(url, {"after": str(task.pk)}, HTTP_HX_REQUEST="true")


def decide_in_queue(client, task):
    data = {"decision": "accepted", "draft_id": task.latest_draft().pk, "queue": "1"}
    return client.post(reverse("task-decide", args=[task.pk]), data, **HTMX)


def test_the_next_task_claimed_ahead_is_sent_with_the_decision(people, client_for):
    from django.test.utils import CaptureQueriesContext

    first, second = make_drafted_task(people.project), make_drafted_task(people.project)
    client = client_for(people.pathologist)
    client.post(reverse("review-start", args=[people.project.pk]))
    page = client.get(reverse("task-detail", args=[first.pk])).text
    assert 'hx-trigger="load delay:300ms"' in page and f'"after": "{first.pk}"' in page
    assert ahead(client, people.project, first).status_code == 204
    held = Claim.objects.filter(reviewer=people.pathologist).values_list("task_id", flat=True)
    assert sorted(held) == [first.pk, second.pk]  # the next one is held while they read
    data = {"decision": "accepted", "draft_id": first.latest_draft().pk, "queue": "1"}
    with CaptureQueriesContext(connection) as queries:
        response = client.post(reverse("task-decide", args=[first.pk]), data, **HTMX)
    assert response.status_code == 200 and f"Review task {second.pk}" in response.text
    assert response["HX-Retarget"] == "#review-area"
    assert response["HX-Push-Url"] == reverse("task-detail", args=[second.pk])
    assert "rendered-at-when-sent" not in response.text
    assert "Task 2 of 2" in response.text and 'name="undo" value="' in response.text
    # Savepoints included: nothing claimed and no page query, the next task was ready.
    assert len(queries) <= 8
    # The form's time on task counts from when it was sent.
    rendered_at = re.search(r'name="rendered_at" value="([^"]+)"', response.text).group(1)
    data = {"decision": "accepted", "draft_id": second.latest_draft().pk, "queue": "1"}
    client.post(reverse("task-decide", args=[second.pk]), data | {"rendered_at": rendered_at})
    assert 0 <= Label.objects.get(task=second).time_on_task_ms < 60_000


@pytest.fixture
def second_pathologist(people):
    user = get_user_model().objects.create_user("petra", password="password")
    services.membership_set(project=people.project, user=user, role=Role.PATHOLOGIST)
    return user


def test_a_next_task_lost_meanwhile_is_claimed_again_at_the_decision(
    people, client_for, second_pathologist
):
    first, second, third = (make_drafted_task(people.project) for _ in range(3))
    client = client_for(people.pathologist)
    client.post(reverse("review-start", args=[people.project.pk]))
    ahead(client, people.project, first)
    services.claim_release(task_id=second.pk, reviewer=people.pathologist)  # lost
    assert services.claim_next(project=people.project, reviewer=second_pathologist) == second
    response = decide_in_queue(client, first)
    assert f"Review task {third.pk}" in response.text  # not the one taken by another


def test_nothing_is_claimed_ahead_without_htmx_or_with_check_drafts(people, client_for):
    first, _ = make_drafted_task(people.project), make_drafted_task(people.project)
    client = client_for(people.pathologist)
    client.post(reverse("review-start", args=[people.project.pk]))
    url = reverse("review-ahead", args=[people.project.pk])
    assert client.post(url, {"after": str(first.pk)}).status_code == 204  # no htmx
    assert client.post(url, {"after": "x"}, HTTP_HX_REQUEST="true").status_code == 204
    assert Claim.objects.filter(reviewer=people.pathologist).count() == 1
    people.project.sentinel_share = 0.2
    people.project.save(update_fields=["sentinel_share"])
    assert ahead(client, people.project, first).status_code == 204
    assert Claim.objects.filter(reviewer=people.pathologist).count() == 1


def test_the_end_of_the_queue_claims_nothing_ahead(people, client_for):
    only = make_drafted_task(people.project)
    client = client_for(people.pathologist)
    client.post(reverse("review-start", args=[people.project.pk]))
    assert ahead(client, people.project, only).status_code == 204
    response = decide_in_queue(client, only)
    assert response["HX-Redirect"].startswith(reverse("review-done", args=[people.project.pk]))
