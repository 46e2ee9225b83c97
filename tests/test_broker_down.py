"""The message broker (Redis) down: uploads, imports and redrafts keep everything, the pages
say why drafting waits, and the sweep sends the waiting messages once Redis is back."""

from io import StringIO
from unittest import mock

import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.urls import reverse

from annotations import counters, health, services
from annotations.models import Role, Task, TaskState
from annotations.queues import GPU_QUEUE
from tests.factories import make_drafted_task


@pytest.fixture
def gpu_queue():
    """The real `gpu` queue in this test run's Redis database, emptied before and after."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(GPU_QUEUE)
    yield client
    client.delete(GPU_QUEUE)


def upload_photos(client, project, sample_files):
    files = [sample_files[n].open("rb") for n in ("photo", "photo2", "slide")]
    try:
        return client.post(reverse("project-upload", args=[project.pk]), {"files": files})
    finally:
        for f in files:
            f.close()


def test_an_upload_keeps_every_file_and_queues_it_while_the_broker_is_down(
    people, client_for, sample_files, broker_down, gpu_queue, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = upload_photos(client_for(people.researcher), people.project, sample_files)
    body = response.content.decode()
    assert response.status_code == 200, body
    assert "3 files kept" in body
    assert "wait for the message broker (Redis), which is down" in body
    tasks = Task.objects.filter(project=people.project)
    assert tasks.count() == 3
    assert all(t.state == TaskState.QUEUED and t.message_pending for t in tasks)

    broker_down.up()
    with django_capture_on_commit_callbacks(execute=True):
        services.tasks_sweep_stuck(lease_seconds=3600)  # young tasks: sent because pending
    assert not Task.objects.filter(message_pending=True).exists()
    assert gpu_queue.llen(GPU_QUEUE) == 3


def test_a_sent_message_clears_the_pending_mark(people, gpu_queue):
    task = make_drafted_task(people.project)
    Task.objects.filter(pk=task.pk).update(state=TaskState.QUEUED, message_pending=True)
    assert services.draft_send(task.pk) is True
    task.refresh_from_db()
    assert not task.message_pending
    assert gpu_queue.llen(GPU_QUEUE) == 1


def test_the_sweep_leaves_tasks_pending_while_the_broker_is_still_down(people, broker_down):
    task = make_drafted_task(people.project)
    with mock.patch("annotations.services.transaction.on_commit"):
        services.task_redraft(task_id=task.pk, actor=people.admin)
    services.tasks_sweep_stuck(lease_seconds=3600)  # no exception escapes
    task.refresh_from_db()
    assert task.state == TaskState.QUEUED and task.message_pending


def test_import_images_imports_every_file_while_the_broker_is_down(
    people, sample_files, broker_down, django_capture_on_commit_callbacks
):
    out = StringIO()
    paths = [str(sample_files[n]) for n in ("photo", "photo2", "slide")]
    with django_capture_on_commit_callbacks(execute=True):
        call_command(
            "import_images", *paths, "--project", "Breast biopsies", stdout=out, stderr=StringIO()
        )
    tasks = Task.objects.filter(project=people.project)
    assert tasks.count() == 3
    assert all(t.state == TaskState.QUEUED and t.message_pending for t in tasks)


def test_draft_again_while_the_broker_is_down_is_no_error(
    people, client_for, broker_down, django_capture_on_commit_callbacks, django_user_model
):
    manager = django_user_model.objects.create_user("mia", password="password")
    services.membership_set(project=people.project, user=manager, role=Role.ADMIN)
    task = make_drafted_task(people.project)
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(manager).post(reverse("task-redraft", args=[task.pk]))
    assert response.status_code < 500
    task.refresh_from_db()
    assert task.state == TaskState.QUEUED and task.message_pending


def test_the_project_page_says_the_broker_is_down_without_asking_celery(
    people, client_for, broker_down
):
    make_drafted_task(people.project)
    Task.objects.update(state=TaskState.QUEUED, message_pending=True)
    counters.recount()  # states set behind the services' back
    with mock.patch.object(health.current_app.control, "inspect") as inspect:
        response = client_for(people.pathologist).get(
            reverse("project-detail", args=[people.project.pk])
        )
    body = response.content.decode()
    assert response.status_code == 200
    assert "1 task waits for the message broker (Redis), which is down" in body
    assert "No drafting worker" not in body
    inspect.assert_not_called()


def test_health_never_asks_celery_while_redis_is_down(db, broker_down):
    with mock.patch.object(health.current_app.control, "inspect") as inspect:
        assert health.gpu_workers(fresh=True) == []
        assert health.status()["redis"] == "down"
    inspect.assert_not_called()
