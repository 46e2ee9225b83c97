"""The message broker (Redis) down: uploads, imports and redrafts keep everything, the pages
say why drafting waits, and the sweep sends the waiting messages once Redis is back."""

from datetime import timedelta
from io import StringIO
from unittest import mock

import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

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


def test_a_comparison_started_while_the_broker_is_down_is_drafted_once_it_is_back(
    people, broker_down, gpu_queue, django_capture_on_commit_callbacks
):
    """Its candidate drafts wait in the outbox: the sweep sends them once Redis is back, and
    again only when one sent a lease ago is still queued (its message was lost)."""
    from annotations import comparisons
    from annotations.models import ComparisonDraft, PromptTemplate

    for _ in range(3):
        make_drafted_task(people.project)
    prompt = PromptTemplate.objects.create(project=people.project, version=2, instruction="Say.")
    with django_capture_on_commit_callbacks(execute=True):
        comparison = comparisons.comparison_start(
            project=people.project,
            prompt_template=prompt,
            model_revision="sha256:cand",
            sample_size=3,
            actor=people.admin,
        )
    drafts = ComparisonDraft.objects.filter(comparison=comparison)
    assert [d.message_pending for d in drafts] == [True] * 3  # nothing went
    assert comparisons.comparison_drafts_sweep(lease_seconds=3600) == 0  # still down
    assert drafts.filter(message_pending=True).count() == 3

    broker_down.up()
    assert comparisons.comparison_drafts_sweep(lease_seconds=3600) == 3
    assert gpu_queue.llen(GPU_QUEUE) == 3
    assert not drafts.filter(message_pending=True).exists()
    # Sent a moment ago: not sent again while the lease runs.
    assert comparisons.comparison_drafts_sweep(lease_seconds=3600) == 0
    # Queued long after it was sent: the message was lost, it goes again. A drafted one,
    # or one of a closed comparison, does not.
    first, second, third = drafts
    long_ago = timezone.now() - timedelta(hours=2)
    drafts.update(sent_at=long_ago)
    comparisons.comparison_draft_record(draft_id=first.pk, fields={"text": "Drafted."})
    assert comparisons.comparison_drafts_sweep(lease_seconds=3600) == 2
    assert gpu_queue.llen(GPU_QUEUE) == 5
    drafts.update(sent_at=long_ago)
    comparisons.comparison_close(comparison=comparison, actor=people.admin)
    assert comparisons.comparison_drafts_sweep(lease_seconds=3600) == 0


def test_the_periodic_sweep_sends_comparison_drafts_too(people, monkeypatch):
    from inference import tasks

    swept = []
    monkeypatch.setattr(tasks, "tasks_sweep_stuck", lambda **kw: swept.append("tasks"))
    monkeypatch.setattr(
        tasks, "comparison_drafts_sweep", lambda **kw: swept.append(("comparisons", kw))
    )
    tasks.sweep_task()
    lease = settings.MEDANNOT_DRAFT_LEASE_SECONDS
    assert swept == ["tasks", ("comparisons", {"lease_seconds": lease})]
