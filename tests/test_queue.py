"""The review queue: claimed tasks, one reviewer per task, with and without htmx."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from annotations import selectors, services
from annotations.models import Claim, Label, Role
from tests.factories import make_drafted_task, record_draft

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "decision"}


@pytest.fixture
def second_pathologist(people):
    """Another pathologist of `project`, reviewing beside `people.pathologist`."""
    user = get_user_model().objects.create_user("petra", password="password")
    services.membership_set(project=people.project, user=user, role=Role.PATHOLOGIST)
    return user


def decide(client, task, decision="accepted", *, htmx=False, queue=True, **fields):
    data = {"decision": decision, "draft_id": task.latest_draft().pk, **fields}
    if queue:
        data["queue"] = "1"
    return client.post(reverse("task-decide", args=[task.pk]), data, **(HTMX if htmx else {}))


def test_it_claims_the_oldest_drafted_task(people):
    first, _second = make_drafted_task(people.project), make_drafted_task(people.project)
    task = services.claim_next(project=people.project, reviewer=people.pathologist)
    assert task == first
    claim = Claim.objects.get(task=first)
    assert claim.reviewer == people.pathologist and claim.expires_at > timezone.now()


def test_a_second_claim_gives_the_same_task_back(people):
    make_drafted_task(people.project), make_drafted_task(people.project)
    one = services.claim_next(project=people.project, reviewer=people.pathologist)
    again = services.claim_next(project=people.project, reviewer=people.pathologist)
    assert one == again and Claim.objects.count() == 1


def test_two_reviewers_never_get_the_same_task(people, second_pathologist):
    first, second = make_drafted_task(people.project), make_drafted_task(people.project)
    a = services.claim_next(project=people.project, reviewer=people.pathologist)
    b = services.claim_next(project=people.project, reviewer=second_pathologist)
    assert {a, b} == {first, second}
    assert services.claim_next(project=people.project, reviewer=people.admin) is None


@pytest.mark.django_db(transaction=True)
def test_claims_in_parallel_connections_are_exclusive(people):
    tasks = [make_drafted_task(people.project) for _ in range(6)]
    reviewers = [people.pathologist, people.project_admin, people.superuser]
    for i in range(5):
        user = get_user_model().objects.create_user(f"reader{i}", password="password")
        services.membership_set(project=people.project, user=user, role=Role.PATHOLOGIST)
        reviewers.append(user)
    barrier = threading.Barrier(len(reviewers))
    got, errors = {}, []

    def claim(user):
        try:
            barrier.wait(timeout=10)
            task = services.claim_next(project=people.project, reviewer=user)
            got[user.pk] = task.pk if task else None
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()  # each thread has its own connection

    threads = [threading.Thread(target=claim, args=(user,)) for user in reviewers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    claimed = [pk for pk in got.values() if pk is not None]
    assert len(claimed) == len(set(claimed)) == len(tasks)  # 8 reviewers, 6 tasks
    assert sorted(claimed) == sorted(t.pk for t in tasks)
    assert list(got.values()).count(None) == 2
    assert Claim.objects.count() == len(tasks)


def test_a_reviewer_never_gets_a_task_they_already_read(people):
    read, unread = make_drafted_task(people.project), make_drafted_task(people.project)
    services.label_record(
        task_id=read.pk,
        reviewer=people.pathologist,
        decision="accepted",
        draft_id=read.latest_draft().pk,
    )
    # A redraft brings it back to drafted: still read by this reviewer.
    services.task_transition(task_id=read.pk, to="queued")
    record_draft(read, text="A second draft.")
    assert services.claim_next(project=people.project, reviewer=people.pathologist) == unread
    services.claim_release(task_id=unread.pk, reviewer=people.pathologist)
    services.label_record(
        task_id=unread.pk,
        reviewer=people.pathologist,
        decision="accepted",
        draft_id=unread.latest_draft().pk,
    )
    assert services.claim_next(project=people.project, reviewer=people.pathologist) is None


def test_an_expired_claim_returns_to_the_pool(people, second_pathologist):
    task = make_drafted_task(people.project)
    assert services.claim_next(project=people.project, reviewer=people.pathologist) == task
    assert services.claim_next(project=people.project, reviewer=second_pathologist) is None
    Claim.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert services.claim_next(project=people.project, reviewer=second_pathologist) == task
    claim = Claim.objects.get()  # taken over, not a second row
    assert claim.reviewer == second_pathologist and claim.expires_at > timezone.now()
    assert not services.claim_renew(task_id=task.pk, reviewer=people.pathologist)


def test_renew_extends_the_claim(people, client_for, settings):
    settings.MEDANNOT_CLAIM_SECONDS = 300
    task = make_drafted_task(people.project)
    services.claim_next(project=people.project, reviewer=people.pathologist)
    Claim.objects.update(expires_at=timezone.now() + timedelta(seconds=5))
    response = client_for(people.pathologist).post(reverse("claim-renew", args=[task.pk]))
    assert response.status_code == 204
    left = Claim.objects.get().expires_at - timezone.now()
    assert timedelta(seconds=290) < left <= timedelta(seconds=300)


def test_renewing_a_lost_claim_says_so(people, client_for, second_pathologist):
    task = make_drafted_task(people.project)
    services.claim_next(project=people.project, reviewer=second_pathologist)
    response = client_for(people.pathologist).post(reverse("claim-renew", args=[task.pk]))
    assert response.status_code == 409
    assert "lapsed" in response.content.decode()
    assert Claim.objects.get().reviewer == second_pathologist


def test_start_reviewing_redirects_to_the_claimed_task(people, client_for):
    task = make_drafted_task(people.project)
    client = client_for(people.pathologist)
    page = client.get(reverse("project-detail", args=[people.project.pk])).content.decode()
    assert reverse("review-start", args=[people.project.pk]) in page and "Start reviewing" in page
    response = client.post(reverse("review-start", args=[people.project.pk]))
    assert response.status_code == 302
    assert response["Location"] == reverse("task-detail", args=[task.pk])
    body = client.get(response["Location"]).content.decode()
    assert 'name="queue" value="1"' in body and 'id="skip"' in body
    assert reverse("claim-renew", args=[task.pk]) in body
    assert "Task 1 of 1" in body


def test_a_researcher_has_no_start_button(people, client_for):
    make_drafted_task(people.project)
    page = client_for(people.researcher).get(reverse("project-detail", args=[people.project.pk]))
    assert "Start reviewing" not in page.content.decode()


def test_an_htmx_decision_swaps_in_the_next_claimed_task(people, client_for):
    first, second = make_drafted_task(people.project), make_drafted_task(people.project)
    client = client_for(people.pathologist)
    client.post(reverse("review-start", args=[people.project.pk]))
    response = decide(client, first, htmx=True)
    assert response.status_code == 200
    assert response["HX-Push-Url"] == reverse("task-detail", args=[second.pk])
    assert response["HX-Retarget"] == "#review-area" and response["HX-Reswap"] == "outerHTML"
    body = response.content.decode()
    assert body.startswith(f"<title>Task {second.pk} ")
    assert f'<div id="review-area" data-task="{second.pk}">' in body
    assert 'id="viewer"' in body and 'id="decision-form"' in body
    assert "Task 2 of 2" in body
    assert Label.objects.get(task=first).decision == "accepted"
    claim = Claim.objects.get()  # the decision released the first
    assert (claim.task, claim.reviewer) == (second, people.pathologist)


def test_the_next_tasks_image_is_prefetched_while_reading(people, client_for):
    first, second = make_drafted_task(people.project), make_drafted_task(people.project)
    client = client_for(people.pathologist)
    client.post(reverse("review-start", args=[people.project.pk]))
    body = client.get(reverse("task-detail", args=[first.pk])).content.decode()
    assert f'<link rel="prefetch" href="{reverse("task-preview", args=[second.pk])}">' in body
    assert f'<link rel="prefetch" href="{reverse("slide-dzi", args=[second.image_id])}?' in body


def test_k_of_n_and_the_progress_bars_move_with_each_decision(people, client_for):
    tasks = [make_drafted_task(people.project) for _ in range(3)]
    client = client_for(people.pathologist)
    client.post(reverse("review-start", args=[people.project.pk]))
    body = decide(client, tasks[0], htmx=True).content.decode()
    assert "Task 2 of 3" in body
    assert 'id="my-progress" max="3" value="1"' in body
    assert 'id="project-progress" max="3" value="1"' in body
    body = decide(client, tasks[1], "rejected", htmx=True, reason="Wrong site.", category="other")
    body = body.content.decode()
    assert "Task 3 of 3" in body and 'id="my-progress" max="3" value="2"' in body
    progress = selectors.review_progress(people.project, people.pathologist)
    assert progress == {"mine": 2, "k": 3, "n": 3, "decided": 2}


def test_the_end_of_the_queue_says_what_was_done(people, client_for):
    tasks = [make_drafted_task(people.project) for _ in range(3)]
    client = client_for(people.pathologist)
    client.post(reverse("review-start", args=[people.project.pk]))
    decide(client, tasks[0], htmx=True)
    decide(client, tasks[1], "edited", htmx=True, text="Benign.")
    response = decide(client, tasks[2], "rejected", htmx=True, reason="Blurred.", category="other")
    done = reverse("review-done", args=[people.project.pk])
    assert response["HX-Redirect"].split("?")[0] == done
    body = client.get(response["HX-Redirect"]).content.decode()
    assert 'id="undo"' in body  # the last decision can still be undone from the end
    assert (
        "Queue finished: you decided 3 tasks (1 accepted, 1 edited, 1 rejected). "
        "Nothing else is waiting for you." in " ".join(body.split())
    )
    assert reverse("project-detail", args=[people.project.pk]) in body
    assert not Claim.objects.exists()


def test_skip_sends_the_task_to_the_back(people, client_for):
    first, second = make_drafted_task(people.project), make_drafted_task(people.project)
    client = client_for(people.pathologist)
    client.post(reverse("review-start", args=[people.project.pk]))
    response = client.post(reverse("task-skip", args=[first.pk]), **HTMX)
    assert response["HX-Push-Url"] == reverse("task-detail", args=[second.pk])
    assert Claim.objects.get().task == second
    decide(client, second, htmx=True)
    # Only the skipped one is left: it comes back.
    assert Claim.objects.get().task == first
    response = client.post(reverse("task-skip", args=[first.pk]))
    assert response.status_code == 302
    assert response["Location"] == reverse("task-detail", args=[first.pk])


def test_skip_releases_the_task_to_other_reviewers(people, client_for, second_pathologist):
    first, second = make_drafted_task(people.project), make_drafted_task(people.project)
    client = client_for(people.pathologist)
    client.post(reverse("review-start", args=[people.project.pk]))
    client.post(reverse("task-skip", args=[first.pk]))
    assert services.claim_next(project=people.project, reviewer=second_pathologist) == first
    assert Claim.objects.get(reviewer=people.pathologist).task == second


def test_without_javascript_the_queue_is_plain_redirects(people, client_for):
    first, second = make_drafted_task(people.project), make_drafted_task(people.project)
    client = client_for(people.pathologist)
    response = client.post(reverse("review-start", args=[people.project.pk]))
    assert response["Location"] == reverse("task-detail", args=[first.pk])
    response = decide(client, first)
    assert response.status_code == 302
    # The next task, with what Undo reverts (signed) in the address: no session write.
    path, _, query = response["Location"].partition("?")
    assert path == reverse("task-detail", args=[second.pk]) and query.startswith("undo=")
    page = client.get(response["Location"])
    assert 'id="undo"' in page.text
    response = decide(client, second, "edited", text="Benign.")
    assert response["Location"].split("?")[0] == reverse("review-done", args=[people.project.pk])
    response = client.post(reverse("review-start", args=[people.project.pk]))
    assert response["Location"] == reverse("review-done", args=[people.project.pk])


def test_outside_the_queue_an_htmx_decision_stays_on_its_task(people, client_for):
    task, _other = make_drafted_task(people.project), make_drafted_task(people.project)
    response = decide(client_for(people.pathologist), task, htmx=True, queue=False)
    assert response.status_code == 200 and "HX-Push-Url" not in response
    assert "Saved: <strong>Accepted</strong>" in response.content.decode()


def test_a_refused_decision_in_the_queue_keeps_the_task(people, client_for):
    task, _other = make_drafted_task(people.project), make_drafted_task(people.project)
    client = client_for(people.pathologist)
    client.post(reverse("review-start", args=[people.project.pk]))
    response = decide(client, task, "rejected", htmx=True)
    assert response.status_code == 422 and "HX-Retarget" not in response
    assert Claim.objects.get().task == task


def test_the_done_page_says_when_more_is_waiting(people, client_for):
    make_drafted_task(people.project)
    body = client_for(people.pathologist).get(reverse("review-done", args=[people.project.pk]))
    assert "More tasks are waiting for you." in body.content.decode()
