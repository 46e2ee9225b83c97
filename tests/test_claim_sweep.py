"""Review claims abandoned by their page are deleted on a schedule, live ones never."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from annotations import services
from annotations.models import Claim
from annotations.queues import CLAIM_SWEEP_TASK, DEFAULT_QUEUE
from inference.tasks import sweep_claims_task
from medannot.celery import app
from tests.factories import make_drafted_task

pytestmark = pytest.mark.django_db


def claim(task, reviewer, *, expires_in_s: float) -> Claim:
    expires_at = timezone.now() + timedelta(seconds=expires_in_s)
    return Claim.objects.create(task=task, reviewer=reviewer, expires_at=expires_at)


def test_the_scheduled_sweep_deletes_claims_abandoned_past_the_grace_and_keeps_the_rest(
    people, settings
):
    settings.MEDANNOT_CLAIM_SWEEP_GRACE_SECONDS = 600
    tasks = [make_drafted_task(people.project) for _ in range(4)]
    live = claim(tasks[0], people.pathologist, expires_in_s=300)
    lapsed = claim(tasks[1], people.pathologist, expires_in_s=-60)  # within the grace
    abandoned = claim(tasks[2], people.pathologist, expires_in_s=-3600)
    other = claim(tasks[3], people.admin, expires_in_s=-601)  # another reader's, abandoned
    sweep_claims_task()  # what beat runs
    assert set(Claim.objects.values_list("pk", flat=True)) == {live.pk, lapsed.pk}
    assert not Claim.objects.filter(pk__in=[abandoned.pk, other.pk]).exists()


def test_without_a_grace_every_expired_claim_goes_and_live_ones_stay(people):
    expired = claim(make_drafted_task(people.project), people.pathologist, expires_in_s=-1)
    live = claim(make_drafted_task(people.project), people.pathologist, expires_in_s=1)
    assert services.claims_sweep_expired() == 1
    assert list(Claim.objects.values_list("pk", flat=True)) == [live.pk]
    assert not Claim.objects.filter(pk=expired.pk).exists()
    assert services.claims_sweep_expired() == 0  # idempotent


def test_a_swept_claim_is_renewed_no_more_and_its_task_returns_to_the_pool(people):
    task = make_drafted_task(people.project)
    assert services.claim_next(project=people.project, reviewer=people.pathologist) == task
    Claim.objects.update(expires_at=timezone.now() - timedelta(hours=2))
    assert services.claims_sweep_expired(grace_s=3600) == 1
    assert not services.claim_renew(task_id=task.pk, reviewer=people.pathologist)  # lost
    assert services.claim_next(project=people.project, reviewer=people.pathologist) == task


def test_it_deletes_in_bounded_batches(people, monkeypatch):
    monkeypatch.setattr(services, "CLAIM_SWEEP_BATCH", 2)
    for _ in range(5):
        claim(make_drafted_task(people.project), people.pathologist, expires_in_s=-10)
    live = claim(make_drafted_task(people.project), people.pathologist, expires_in_s=60)
    with CaptureQueriesContext(connection) as queries:
        assert services.claims_sweep_expired() == 5
    deletes = [q["sql"] for q in queries if q["sql"].startswith("DELETE")]
    assert len(deletes) == 3  # 2 + 2 + 1: a short batch ends the loop
    assert all("LIMIT 2" in sql for sql in deletes), deletes
    assert list(Claim.objects.values_list("pk", flat=True)) == [live.pk]


def test_it_refuses_a_negative_grace_that_would_delete_live_claims(people):
    live = claim(make_drafted_task(people.project), people.pathologist, expires_in_s=60)
    with pytest.raises(ValueError):
        services.claims_sweep_expired(grace_s=-120)
    assert Claim.objects.filter(pk=live.pk).exists()


def test_the_sweep_is_a_celery_task_scheduled_on_the_celery_queue():
    entries = [e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == CLAIM_SWEEP_TASK]
    assert entries
    assert settings.CELERY_TASK_ROUTES[CLAIM_SWEEP_TASK]["queue"] == DEFAULT_QUEUE
    assert app.tasks[CLAIM_SWEEP_TASK].name == sweep_claims_task.name == CLAIM_SWEEP_TASK
