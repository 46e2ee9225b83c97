"""Task state machine, labels, audit trail and database invariants."""

import pytest
from django.db import IntegrityError, transaction
from django.db.utils import DatabaseError

from annotations import services
from annotations.models import AuditEvent, Draft, Label, Task, TaskState
from tests.factories import draft_fields, make_drafted_task, make_task


def test_it_claims_a_queued_task_once(people):
    task = make_task(people.project, state=TaskState.QUEUED)
    first = services.task_claim(task_id=task.pk)
    second = services.task_claim(task_id=task.pk)
    assert first is not None and first.state == TaskState.DRAFTING and first.attempt == 1
    assert second is None


def test_it_refuses_invalid_transitions(people):
    task = make_task(people.project)
    with pytest.raises(services.InvalidTransition):
        services.task_transition(task_id=task.pk, to="accepted")
    with pytest.raises(services.InvalidTransition):
        services.task_transition(task_id=task.pk, to=TaskState.DRAFTED)
    task.refresh_from_db()
    assert task.state == TaskState.NEW


def test_it_drops_a_draft_whose_claim_was_lost(people):
    task = make_task(people.project, state=TaskState.QUEUED)
    claimed = services.task_claim(task_id=task.pk)
    services.draft_fail(task_id=task.pk, attempt=claimed.attempt, error="out of memory")
    draft = services.draft_record(
        task_id=task.pk,
        attempt=claimed.attempt,
        fields=draft_fields(text="x"),
    )
    assert draft is None
    task.refresh_from_db()
    assert task.state == TaskState.FAILED and task.error == "out of memory"


def test_the_database_refuses_two_drafts_for_one_attempt(people):
    task = make_drafted_task(people.project)
    with pytest.raises(IntegrityError), transaction.atomic():
        Draft.objects.create(task=task, attempt=task.attempt, **draft_fields(text="again"))


def test_it_records_accept_edit_and_reject(people):
    accepted = make_drafted_task(people.project, text="Benign breast tissue.")
    edited = make_drafted_task(people.project)
    rejected = make_drafted_task(people.project)
    label = services.label_record(
        task_id=accepted.pk,
        reviewer=people.pathologist,
        decision="accepted",
        draft_id=accepted.latest_draft().pk,
    )
    assert label.text == "Benign breast tissue."
    services.label_record(
        task_id=edited.pk,
        reviewer=people.pathologist,
        decision="edited",
        draft_id=edited.latest_draft().pk,
        text="Fibroadenoma.",
    )
    services.label_record(
        task_id=rejected.pk,
        reviewer=people.pathologist,
        decision="rejected",
        draft_id=rejected.latest_draft().pk,
        reason="Wrong organ.",
    )
    states = dict(
        Task.objects.filter(pk__in=[accepted.pk, edited.pk, rejected.pk]).values_list(
            "pk", "outcome"
        )
    )
    assert states == {accepted.pk: "accepted", edited.pk: "edited", rejected.pk: "rejected"}
    assert Label.objects.get(task=edited).text == "Fibroadenoma."
    assert Label.objects.get(task=rejected).reason == "Wrong organ."


def test_a_revised_decision_updates_the_one_label_and_audits_both(people):
    task = make_drafted_task(people.project)
    draft_id = task.latest_draft().pk
    services.label_record(
        task_id=task.pk, reviewer=people.pathologist, decision="accepted", draft_id=draft_id
    )
    services.label_record(
        task_id=task.pk,
        reviewer=people.pathologist,
        decision="edited",
        draft_id=draft_id,
        text="Better.",
        label_revision=1,  # made on the first decision
    )
    assert Label.objects.filter(task=task).count() == 1
    events = AuditEvent.objects.filter(task=task, action="label.record").order_by("id")
    assert [e.after["decision"] for e in events] == ["accepted", "edited"]
    assert events[1].before["decision"] == "accepted"
    assert events[1].actor == people.pathologist


def test_it_refuses_a_decision_on_a_replaced_draft(people):
    task = make_drafted_task(people.project)
    with pytest.raises(services.ReviewConflict):
        services.label_record(
            task_id=task.pk, reviewer=people.pathologist, decision="accepted", draft_id=-1
        )


def test_it_refuses_a_decision_before_any_draft(people):
    task = make_task(people.project, state=TaskState.QUEUED)
    with pytest.raises(services.InvalidTransition):
        services.label_record(
            task_id=task.pk, reviewer=people.pathologist, decision="accepted", draft_id=1
        )


@pytest.mark.parametrize(
    ("decision", "text", "reason"), [("edited", "  ", ""), ("rejected", "", " ")]
)
def test_it_refuses_an_empty_edit_or_a_reject_without_reason(people, decision, text, reason):
    task = make_drafted_task(people.project)
    with pytest.raises(ValueError):
        services.label_record(
            task_id=task.pk,
            reviewer=people.pathologist,
            decision=decision,
            draft_id=task.latest_draft().pk,
            text=text,
            reason=reason,
        )
    assert not Label.objects.filter(task=task).exists()


def test_the_database_refuses_a_second_label_by_the_same_reviewer(people):
    task = make_drafted_task(people.project)
    draft = task.latest_draft()
    Label.objects.create(
        task=task, draft=draft, reviewer=people.pathologist, decision="accepted", text="x"
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        Label.objects.create(
            task=task, draft=draft, reviewer=people.pathologist, decision="accepted", text="y"
        )


def test_the_database_refuses_a_reject_without_reason(people):
    task = make_drafted_task(people.project)
    with pytest.raises(IntegrityError), transaction.atomic():
        Label.objects.create(
            task=task, draft=task.latest_draft(), reviewer=people.pathologist, decision="rejected"
        )


def test_the_database_refuses_an_unknown_state(people):
    task = make_task(people.project)
    with pytest.raises(IntegrityError), transaction.atomic():
        Task.objects.filter(pk=task.pk).update(state="lost")


def test_the_audit_trail_is_append_only(people):
    event = services.audit_record(action="test", project=people.project)
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(reason="rewritten")
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()


def test_every_state_change_is_audited(people):
    task = make_drafted_task(people.project)
    changes = AuditEvent.objects.filter(task=task, action="task.state").values_list(
        "after", flat=True
    )
    assert [c["state"] for c in changes] == ["drafting", "drafted"]


def test_a_failed_task_can_be_retried(people, django_capture_on_commit_callbacks):
    task = make_task(people.project, state=TaskState.QUEUED)
    claimed = services.task_claim(task_id=task.pk)
    services.draft_fail(task_id=task.pk, attempt=claimed.attempt, error="boom")
    with django_capture_on_commit_callbacks() as callbacks:
        services.task_retry(task_id=task.pk, actor=people.admin)
    task.refresh_from_db()
    assert task.state == TaskState.QUEUED and task.error == ""
    assert len(callbacks) == 1  # one Celery message, sent after commit


def test_a_membership_writes_no_global_group(people):
    # A group is site-wide; a role belongs to its project alone.
    for user in (people.project_admin, people.pathologist, people.researcher):
        assert not user.groups.exists()


def test_the_sweep_puts_back_tasks_whose_worker_was_lost(
    people, django_capture_on_commit_callbacks
):
    from datetime import timedelta

    from django.utils import timezone

    lost = make_task(people.project, state=TaskState.QUEUED)
    claimed = services.task_claim(task_id=lost.pk)
    fresh = make_task(people.project, state=TaskState.QUEUED)
    services.task_claim(task_id=fresh.pk)
    Task.objects.filter(pk=lost.pk).update(drafting_started_at=timezone.now() - timedelta(hours=1))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        swept = services.tasks_sweep_stuck(lease_seconds=600)
    assert swept == [lost.pk] and len(callbacks) == 1
    lost.refresh_from_db()
    assert lost.state == TaskState.QUEUED
    # The lost worker's late result is dropped: the next claim drafts it once.
    assert (
        services.draft_record(
            task_id=lost.pk,
            attempt=claimed.attempt,
            fields=draft_fields(text="late"),
        )
        is None
    )
    assert not Draft.objects.filter(task=lost).exists()


def test_prompt_templates_are_versioned(people):
    v1 = services.prompt_template_save(project=people.project, instruction="Describe {organ}.")
    v2 = services.prompt_template_save(project=people.project, instruction="List findings.")
    assert (v1.version, v2.version) == (1, 2)
    assert people.project.current_prompt() == v2
    with pytest.raises(ValueError):
        services.prompt_template_save(project=people.project, instruction="  ")
    with pytest.raises(ValueError):
        services.prompt_template_save(project=people.project, instruction="Bad {organ!x}")


def test_the_sweep_resends_the_message_of_a_task_queued_long_ago(people, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    sent = []
    monkeypatch.setattr(services, "draft_send", sent.append)
    old = make_task(people.project, state=TaskState.QUEUED)
    make_task(people.project, state=TaskState.QUEUED)  # queued just now: its message is on its way
    Task.objects.filter(pk=old.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    services.tasks_sweep_stuck(lease_seconds=600)
    assert sent == [old.pk]
