"""A task that keeps losing its worker (killed, timed out) stops after a few attempts, and
is drafted alone meanwhile, so that its batch-mates are drafted without it."""

from __future__ import annotations

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from annotations import services
from annotations.models import Task, TaskState
from inference.services import DraftingLoop
from tests.factories import make_task, record_draft

S = TaskState


def claim_and_lose(limit: int = 8) -> list[int]:
    """A worker claims a batch, then dies: the sweep finds the batch past its lease."""
    claimed = [t.pk for t in services.tasks_claim(limit=limit)]
    services.tasks_sweep_stuck(lease_seconds=0)
    return claimed


def test_the_sweep_counts_lost_attempts_and_fails_the_task_at_the_third(people):
    task = make_task(people.project, state=S.QUEUED)
    for expected in (1, 2):
        assert claim_and_lose() == [task.pk]
        task.refresh_from_db()
        assert (task.state, task.lost_attempts) == (S.QUEUED, expected)
    assert claim_and_lose() == [task.pk]
    task.refresh_from_db()
    assert task.state == S.FAILED and task.lost_attempts == services.MAX_LOST_ATTEMPTS
    assert task.error.startswith("gave up after 3 attempts: the worker was lost or timed out")


def test_a_put_back_task_is_claimed_alone_and_fresh_ones_are_batched(people):
    lost = make_task(people.project, state=S.QUEUED)
    assert claim_and_lose() == [lost.pk]
    fresh = [make_task(people.project, state=S.QUEUED).pk for _ in range(3)]
    assert [t.pk for t in services.tasks_claim(limit=8)] == [lost.pk]
    assert [t.pk for t in services.tasks_claim(limit=8)] == fresh


def test_batch_mates_of_a_poison_task_are_drafted_without_it(people):
    poison, *mates = [make_task(people.project, state=S.QUEUED) for _ in range(3)]
    # The batch of three dies once; then each is claimed alone. The poison task kills its
    # worker every time; its mates draft fine.
    assert claim_and_lose() == [poison.pk, *(m.pk for m in mates)]
    for _ in range(2):
        assert claim_and_lose() == [poison.pk]
    for mate in mates:
        record_draft(mate, text="Benign naevus.")
    poison.refresh_from_db()
    assert poison.state == S.FAILED and "gave up after 3 attempts" in poison.error
    assert all(Task.objects.get(pk=m.pk).state == S.DRAFTED for m in mates)


@pytest.mark.parametrize("action", ["retry", "redraft"])
def test_a_manual_retry_or_redraft_resets_the_count(people, action):
    task = make_task(people.project, state=S.QUEUED)
    for _ in range(3):
        claim_and_lose()
    task.refresh_from_db()
    assert task.state == S.FAILED
    if action == "redraft":
        services.task_retry(task_id=task.pk, actor=people.admin)
        record_draft(task, text="Benign.")
        services.task_redraft(task_id=task.pk, actor=people.admin)
    else:
        services.task_retry(task_id=task.pk, actor=people.admin)
    task.refresh_from_db()
    assert task.state == S.QUEUED and task.lost_attempts == 0 and task.message_pending


def test_a_release_by_a_stopping_loop_counts_only_when_the_draft_broke(people):
    broke, untouched = (make_task(people.project, state=S.QUEUED) for _ in range(2))
    claimed = {t.pk: t for t in services.tasks_claim(limit=8)}
    services.draft_release(
        task_id=broke.pk, attempt=claimed[broke.pk].attempt, lost="SoftTimeLimitExceeded: "
    )
    services.draft_release(task_id=untouched.pk, attempt=claimed[untouched.pk].attempt)
    broke.refresh_from_db()
    untouched.refresh_from_db()
    assert (broke.state, broke.lost_attempts) == (S.QUEUED, 1)
    assert (untouched.state, untouched.lost_attempts) == (S.QUEUED, 0)


class TimesOut:
    """A backend whose drafting always runs into the soft time limit."""

    def prepare(self, requests):
        return list(requests)

    def generate(self, prepared):
        raise SoftTimeLimitExceeded()

    def draft_many(self, requests):
        raise SoftTimeLimitExceeded()


@pytest.mark.django_db(transaction=True)
def test_a_loop_that_times_out_three_times_fails_the_task(tmp_path, settings):
    from annotations.models import Modality
    from imaging import samples

    settings.MEDIA_ROOT = tmp_path / "media"
    project = services.project_create(name="Timeouts", modality=Modality.DERMATOLOGY)
    photo = samples.write_derm_photo(tmp_path / "lesion.jpg", seed=5)
    task = services.image_ingest(
        project=project, source=photo, original_name=photo.name, enqueue=False
    ).task
    services.task_transition(task_id=task.pk, to=S.QUEUED)
    for attempt in range(1, 4):
        with pytest.raises(SoftTimeLimitExceeded):
            DraftingLoop(backend=TimesOut(), batch_size=4).run()
        task.refresh_from_db()
        assert task.lost_attempts == attempt
    assert task.state == S.FAILED
    assert "gave up after 3 attempts" in task.error and "SoftTimeLimitExceeded" in task.error
