"""The project page: tasks, states, htmx polling, the no-worker warning."""

from django.core.cache import cache
from django.urls import reverse

from annotations import counters, health
from annotations.models import Task, TaskState
from tests.factories import make_drafted_task, make_task


def test_it_lists_tasks_with_their_states(people, client_for):
    make_drafted_task(people.project)
    make_task(people.project, state=TaskState.FAILED).__class__.objects.filter(
        state=TaskState.FAILED
    ).update(error="CUDA out of memory")
    body = (
        client_for(people.pathologist)
        .get(reverse("project-detail", args=[people.project.pk]))
        .content.decode()
    )
    assert "Drafted" in body and "Failed" in body and "CUDA out of memory" in body


def test_it_polls_while_tasks_are_drafting(people, client_for):
    make_task(people.project, state=TaskState.QUEUED)
    cache.set(health._WORKERS_KEY, ["gpu@host"])
    body = (
        client_for(people.pathologist)
        .get(reverse("project-detail", args=[people.project.pk]))
        .content.decode()
    )
    assert 'hx-trigger="every 2s"' in body
    assert "No drafting worker" not in body


def test_it_stops_polling_when_nothing_is_pending(people, client_for):
    make_drafted_task(people.project)
    body = (
        client_for(people.pathologist)
        .get(reverse("project-detail", args=[people.project.pk]))
        .content.decode()
    )
    assert "hx-trigger" not in body


def test_it_warns_when_no_worker_consumes_the_gpu_queue(people, client_for):
    make_task(people.project, state=TaskState.QUEUED)
    cache.set(health._WORKERS_KEY, [])
    body = (
        client_for(people.pathologist)
        .get(reverse("project-detail", args=[people.project.pk]))
        .content.decode()
    )
    assert "No drafting worker is running" in body


def test_the_htmx_poll_returns_only_the_tasks_partial(people, client_for):
    make_task(people.project, state=TaskState.QUEUED)
    cache.set(health._WORKERS_KEY, ["gpu@host"])
    response = client_for(people.pathologist).get(
        reverse("project-detail", args=[people.project.pk]),
        HTTP_HX_REQUEST="true",
        HTTP_HX_TARGET="tasks",
    )
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="tasks"') and "<html" not in body


def test_an_admin_can_retry_a_failed_task(people, client_for, django_capture_on_commit_callbacks):
    task = make_task(people.project, state=TaskState.FAILED)
    with django_capture_on_commit_callbacks(execute=False):
        response = client_for(people.admin).post(reverse("task-retry", args=[task.pk]))
    assert response.status_code == 302
    task.refresh_from_db()
    assert task.state == TaskState.QUEUED


def test_an_admin_can_retry_every_failed_task(
    people, client_for, django_capture_on_commit_callbacks
):
    failed = [make_task(people.project, state=TaskState.FAILED) for _ in range(3)]
    make_drafted_task(people.project)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client_for(people.admin).post(
            reverse("project-retry-failed", args=[people.project.pk]), follow=True
        )
    assert "3 failed tasks queued again." in response.content.decode()
    assert {t.state for t in Task.objects.filter(pk__in=[t.pk for t in failed])} == {"queued"}
    assert len(callbacks) == 3


def test_the_retry_all_button_is_for_admins_only(people, client_for):
    make_task(people.project, state=TaskState.FAILED)
    url = reverse("project-detail", args=[people.project.pk])
    assert "Retry all 1 failed" in client_for(people.admin).get(url).content.decode()
    assert "Retry all" not in client_for(people.pathologist).get(url).content.decode()


def test_a_large_project_is_paged(people, client_for):
    from tests.factories import make_image

    Task.objects.bulk_create(
        Task(project=people.project, image=make_image(), state=TaskState.DRAFTED)
        for _ in range(250)
    )
    counters.recount([people.project.pk])  # rows made behind the services' back
    url = reverse("project-detail", args=[people.project.pk])
    client = client_for(people.pathologist)
    first = client.get(url).content.decode()
    assert first.count('<tr id="task-') == 100 and "Page 1 of 3" in first
    last = client.get(url + "?page=3").content.decode()
    assert last.count('<tr id="task-') == 50
    assert "Review drafts (250)" in first
