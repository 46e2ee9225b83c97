"""Blind redraft comparisons: a candidate prompt version redrafts a random sample of drafted
tasks; readers judge its drafts in their queue without being told which version made them.

A candidate draft never becomes the task's draft; a decision on it is a ComparisonReading,
never a label, and never exported.
"""

from __future__ import annotations

from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from annotations import comparisons, insights, services
from annotations.models import (
    AuditEvent,
    Comparison,
    ComparisonDraft,
    ComparisonReading,
    Label,
    Project,
    PromptTemplate,
    Role,
    Task,
    TaskState,
)
from annotations.queues import COMPARISON_DRAFT_TASK, GPU_QUEUE
from tests.factories import make_drafted_task, make_task
from tests.test_conflicts import form_of

DRAFT = "Invasive ductal carcinoma, grade 2."
CANDIDATE = "Lobular carcinoma in situ, florid type, with calcifications."


@pytest.fixture
def prompt(people):
    return PromptTemplate.objects.create(
        project=people.project, version=7, instruction="Describe the slide, briefly."
    )


def _start(people, prompt, *, size=3, seed=11, **extra):
    """Start a comparison; its messages, sent on commit, go nowhere (a test's transaction
    never commits unless it says so)."""
    with mock.patch.object(comparisons.messages, "send_many", return_value=size) as sent:
        comparison = comparisons.comparison_start(
            project=people.project,
            prompt_template=prompt,
            model_revision="sha256:cand",
            sample_size=size,
            actor=people.admin,
            seed=seed,
            **extra,
        )
    return comparison, sent


def _drafted(comparison, text=CANDIDATE):
    for draft in comparison.drafts.all():
        comparisons.comparison_draft_record(
            draft_id=draft.pk,
            fields={"text": text, "model_revision": "sha256:cand", "backend": "test"},
        )


# Starting one ---------------------------------------------------------------------------


def test_the_sample_is_random_reproducible_and_within_the_project(
    people, prompt, django_capture_on_commit_callbacks
):
    mine = [make_drafted_task(people.project, text=DRAFT) for _ in range(8)]
    make_task(people.project, state=TaskState.QUEUED)  # not drafted: never sampled
    theirs = [make_drafted_task(people.other_project) for _ in range(3)]
    send = mock.patch.object(comparisons.messages, "send_many", return_value=4)
    with send as sent, django_capture_on_commit_callbacks(execute=True):
        first, _ = _start(people, prompt, size=4, seed=5)
    sampled = sorted(first.drafts.values_list("task_id", flat=True))
    assert len(sampled) == 4 and set(sampled) <= {t.pk for t in mine}
    assert not set(sampled) & {t.pk for t in theirs}
    # The recorded seed replays the sample; another seed draws another.
    again = comparisons.comparison_sample([t.pk for t in mine], size=4, seed=first.seed)
    assert again == sampled
    assert comparisons.comparison_sample([t.pk for t in mine], size=4, seed=6) != sampled
    # Each candidate draft is queued by name on the drafting queue, after commit.
    ids = sorted(d.pk for d in first.drafts.all())
    sent.assert_called_once_with(COMPARISON_DRAFT_TASK, args=[[i] for i in ids], queue=GPU_QUEUE)
    audit = AuditEvent.objects.get(action="comparison.start")
    assert audit.actor == people.admin and audit.project_id == people.project.pk
    assert audit.after["seed"] == 5 and audit.after["tasks"] == sampled
    assert Project.objects.get(pk=people.project.pk).comparison_open


def test_a_sample_larger_than_the_drafted_tasks_takes_them_all(people, prompt):
    tasks = [make_drafted_task(people.project) for _ in range(2)]
    comparison, _ = _start(people, prompt, size=10)
    assert sorted(comparison.drafts.values_list("task_id", flat=True)) == [t.pk for t in tasks]
    assert comparison.sample_size == 10


def test_it_refuses_another_projects_prompt_and_an_empty_project(people, prompt):
    theirs = PromptTemplate.objects.create(project=people.other_project, version=1, instruction="x")
    make_drafted_task(people.project)
    with pytest.raises(ValueError, match="not one of this project"):
        _start(people, theirs)
    Task.objects.filter(project=people.project).update(state=TaskState.QUEUED)
    with pytest.raises(ValueError, match="nothing to compare"):
        _start(people, prompt)
    assert not Comparison.objects.exists()


def test_the_worker_writes_once_and_a_failure_is_kept(people, prompt):
    make_drafted_task(people.project)
    make_drafted_task(people.project)
    comparison, _ = _start(people, prompt, size=2)
    first, second = comparison.drafts.order_by("id")
    fields = {"text": " " + CANDIDATE + " ", "model_revision": "sha256:cand"}
    assert comparisons.comparison_draft_record(draft_id=first.pk, fields=fields)
    assert not comparisons.comparison_draft_record(draft_id=first.pk, fields={"text": "Other."})
    first.refresh_from_db()
    assert (first.state, first.text) == ("drafted", CANDIDATE)
    assert comparisons.comparison_draft_fail(draft_id=second.pk, error="CUDA out of memory")
    assert ComparisonDraft.objects.get(pk=second.pk).state == "failed"


def test_a_candidate_draft_is_scored_against_the_reference(people, prompt):
    task = make_drafted_task(people.project)
    Task.objects.filter(pk=task.pk).update(metadata={"reference": "a b c d"})
    comparison, _ = _start(people, prompt, size=1)
    _drafted(comparison, text="a b")
    assert ComparisonDraft.objects.get().rouge_reference == pytest.approx(2 / 3)


def test_candidate_drafts_change_nothing_of_the_task(people, prompt, client_for):
    task = make_drafted_task(people.project, text=DRAFT)
    services.label_record(
        task_id=task.pk,
        reviewer=people.pathologist,
        decision="accepted",
        draft_id=task.latest_draft().pk,
    )
    before = Task.objects.values().get(pk=task.pk)
    draft_before = task.latest_draft()
    comparison, _ = _start(people, prompt, size=1)
    _drafted(comparison)
    comparisons.comparison_reading_record(
        draft=comparison.drafts.get(), reviewer=people.admin, decision="accepted"
    )
    task.refresh_from_db()
    assert task.latest_draft() == draft_before and task.drafts.count() == 1
    after = Task.objects.values().get(pk=task.pk)
    assert {k: v for k, v in after.items() if k != "updated_at"} == {
        k: v for k, v in before.items() if k != "updated_at"
    }
    assert list(Label.objects.values_list("text", flat=True)) == [DRAFT]
    response = client_for(people.admin).get(reverse("project-export", args=[people.project.pk]))
    body = b"".join(response.streaming_content).decode()
    assert DRAFT in body and CANDIDATE not in body


# Permissions ------------------------------------------------------------------------------


def start_url(project) -> str:
    return reverse("project-comparison-start", args=[project.pk])


FORM = {"prompt_version": "7", "model_revision": "sha256:cand", "sample_size": "2"}


def test_an_admin_starts_one_from_the_insights_page(people, prompt, client_for):
    make_drafted_task(people.project)
    client = client_for(people.admin)
    page = client.get(reverse("project-insights", args=[people.project.pk])).content.decode()
    assert 'id="comparison-form"' in page and start_url(people.project) in page
    with mock.patch.object(comparisons.messages, "send_many", return_value=1):
        response = client.post(start_url(people.project), FORM)
    assert response.status_code == 302
    comparison = Comparison.objects.get()
    assert (comparison.prompt_template, comparison.sample_size) == (prompt, 2)
    assert comparison.drafts.count() == 1


@pytest.mark.parametrize(
    ("persona", "status"),
    [("pathologist", 403), ("researcher", 403), ("other_admin", 404), ("outsider", 404)],
)
def test_only_the_projects_admins_start_one(people, prompt, client_for, persona, status):
    make_drafted_task(people.project)
    client = client_for(getattr(people, persona))
    assert client.post(start_url(people.project), FORM).status_code == status
    assert not Comparison.objects.exists()


def test_a_researcher_sees_results_but_no_form(people, prompt, client_for):
    make_drafted_task(people.project)
    _start(people, prompt, size=1)
    page = client_for(people.researcher).get(reverse("project-insights", args=[people.project.pk]))
    body = page.content.decode()
    assert "Prompt v7" in body and 'id="comparison-form"' not in body
    assert reverse("comparison-close", args=[Comparison.objects.get().pk]) not in body


def test_a_bad_form_is_refused_with_the_page(people, prompt, client_for):
    make_drafted_task(people.project)
    client = client_for(people.admin)
    response = client.post(start_url(people.project), FORM | {"sample_size": "0"})
    assert response.status_code == 422 and 'id="comparison-form"' in response.content.decode()
    response = client.post(start_url(people.project), FORM | {"prompt_version": "99"})
    assert response.status_code == 422
    assert not Comparison.objects.exists()


@pytest.mark.parametrize(("persona", "status"), [("pathologist", 403), ("other_admin", 404)])
def test_only_the_projects_admins_close_one(people, prompt, client_for, persona, status):
    make_drafted_task(people.project)
    comparison, _ = _start(people, prompt, size=1)
    url = reverse("comparison-close", args=[comparison.pk])
    assert client_for(getattr(people, persona)).post(url).status_code == status
    assert Comparison.objects.get().open
    assert client_for(people.admin).post(url).status_code == 302
    assert not Comparison.objects.get().open
    assert not Project.objects.get(pk=people.project.pk).comparison_open
    assert AuditEvent.objects.filter(action="comparison.close").count() == 1


# Served blind -----------------------------------------------------------------------------


def _reader(people, *, due: bool, decided: int = 0):
    """A pathologist whose first queue item is (or is not) drawn from the comparison."""
    for n in range(64):
        user = get_user_model().objects.create_user(f"reader{n}", password="password")
        drawn = comparisons._draw(people.project.pk, user.pk, decided)
        if (drawn < comparisons.COMPARISON_SHARE) == due:
            services.membership_set(project=people.project, user=user, role=Role.PATHOLOGIST)
            return user
        user.delete()
    raise AssertionError("no reader found for the draw")


def test_readers_are_served_candidate_drafts_blind_and_readings_are_not_labels(
    people, prompt, client_for
):
    task = make_drafted_task(people.project, text=DRAFT)
    comparison, _ = _start(people, prompt, size=1)
    _drafted(comparison)
    reader = _reader(people, due=True)
    client = client_for(reader)
    started = client.post(reverse("review-start", args=[people.project.pk]))
    assert started["Location"] == reverse("task-detail", args=[task.pk])
    page = client.get(reverse("task-detail", args=[task.pk]))
    body = page.content.decode()
    assert CANDIDATE in body and DRAFT + "<" not in body
    for tell in ("comparison", "candidate", "v7", "sha256:cand"):
        assert tell not in body.lower(), tell
    form = form_of(page)
    assert form["text"] == CANDIDATE
    # Starting again (a reload, a second tab) shows the same candidate draft.
    again = client.post(reverse("review-start", args=[people.project.pk]))
    assert again["Location"] == reverse("task-detail", args=[task.pk])
    assert CANDIDATE in client.get(again["Location"]).content.decode()
    audited = list(AuditEvent.objects.filter(task=task))
    edited = "Lobular carcinoma in situ, classic type."
    data = form | {"decision": "edited", "text": edited, "category": "wording only"}
    response = client.post(reverse("task-decide", args=[task.pk]), data)
    assert response.status_code == 302
    reading = ComparisonReading.objects.get()
    assert (reading.reviewer, reading.decision, reading.text) == (reader, "edited", edited)
    assert reading.edit_words == 4 and reading.rouge_l is None  # no validated text yet
    assert not Label.objects.exists()
    assert Task.objects.get(pk=task.pk).review_state == "open"
    # The task's history gains the claim of the queue going on, nothing of the reading.
    added = AuditEvent.objects.filter(task=task).exclude(pk__in=[a.pk for a in audited])
    assert list(added.values_list("action", flat=True)) == ["claim.take"]
    assert AuditEvent.objects.filter(action="comparison.read", task=None).count() == 1
    # The same form again is the same reading, never a label.
    client.post(reverse("task-decide", args=[task.pk]), data)
    assert ComparisonReading.objects.count() == 1 and not Label.objects.exists()
    # Then the queue goes on with the real task and its real draft.
    again = client.post(reverse("review-start", args=[people.project.pk]))
    assert again["Location"] == reverse("task-detail", args=[task.pk])
    body = client.get(reverse("task-detail", args=[task.pk])).content.decode()
    assert DRAFT in body and CANDIDATE not in body
    # Blind both ways: the baseline draft's page names no version or draft either, while
    # the comparison is open; once closed, its provenance shows again.
    baseline = task.latest_draft()
    for tell in (f"Draft {baseline.pk}", "prompt default", "sha256:"):
        assert tell not in body, tell
    comparisons.comparison_close(comparison=comparison)
    body = client.get(reverse("task-detail", args=[task.pk])).content.decode()
    assert f"Draft {baseline.pk}" in body


def test_the_queue_serves_them_through_htmx_and_when_the_queue_is_done(people, prompt, client_for):
    task = make_drafted_task(people.project, text=DRAFT)
    services.label_record(
        task_id=task.pk,
        reviewer=people.pathologist,
        decision="accepted",
        draft_id=task.latest_draft().pk,
    )
    comparison, _ = _start(people, prompt, size=1)
    _drafted(comparison)
    # Paul's queue is empty (his one task is read): what he has not read of it comes.
    response = client_for(people.pathologist).post(
        reverse("review-start", args=[people.project.pk]), HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200 and response["HX-Retarget"] == "#review-area"
    assert CANDIDATE in response.content.decode()


def test_a_closed_comparison_is_not_served(people, prompt, client_for):
    make_drafted_task(people.project, text=DRAFT)
    comparison, _ = _start(people, prompt, size=1)
    _drafted(comparison)
    comparisons.comparison_close(comparison=comparison, actor=people.admin)
    reader = _reader(people, due=True)
    client = client_for(reader)
    client.post(reverse("review-start", args=[people.project.pk]))
    assert (
        comparisons.comparison_for(
            project=Project.objects.get(pk=people.project.pk), reviewer=reader, always=True
        )
        is None
    )


def test_a_reader_of_another_project_is_never_served_one(people, prompt, client_for):
    make_drafted_task(people.project, text=DRAFT)
    comparison, _ = _start(people, prompt, size=1)
    _drafted(comparison)
    theirs = make_drafted_task(people.other_project, text="Benign naevus.")
    client = client_for(people.other_pathologist)
    response = client.post(reverse("review-start", args=[people.other_project.pk]))
    assert response["Location"] == reverse("task-detail", args=[theirs.pk])
    body = client.get(response["Location"]).content.decode()
    assert CANDIDATE not in body


# Results ----------------------------------------------------------------------------------


def test_the_results_set_both_arms_side_by_side_with_intervals(people, prompt, client_for):
    tasks = [make_drafted_task(people.project, text="a b c d") for _ in range(4)]
    for i, task in enumerate(tasks):  # the baseline: 3 of 4 accepted, 1 edited by 2 words
        decision = {"decision": "accepted"}
        if i == 3:
            decision = {"decision": "edited", "text": "a b x y", "category": "missed finding"}
        services.label_record(
            task_id=task.pk,
            reviewer=people.pathologist,
            draft_id=task.latest_draft().pk,
            **decision,
        )
    comparison, _ = _start(people, prompt, size=4)
    _drafted(comparison, text="a b")
    drafts = list(comparison.drafts.order_by("task_id"))
    # The candidate: 1 of 3 accepted, 2 rejected.
    for draft, decision in zip(drafts, ["accepted", "rejected", "rejected"], strict=False):
        comparisons.comparison_reading_record(
            draft=draft, reviewer=people.admin, decision=decision, category="missed finding"
        )
    base, candidate = comparisons.comparison_results(comparison)
    assert (base.readings, base.accepted) == (4, 3)
    assert base.acceptance == insights.wilson(3, 4)
    assert base.median_edit_words == 0
    assert (candidate.readings, candidate.accepted) == (3, 1)
    assert candidate.acceptance == insights.wilson(1, 3)
    assert candidate.categories == [("missed finding", 2)]
    # Against the validated texts: the baseline drafts score 1, 1, 1 and 0.5 ("a b c d"
    # against "a b x y"); the candidate "a b" scores 2/3 against each.
    assert base.rouge == insights.mean_interval(3.5, 3.25, 4)
    two_thirds = 2 / 3
    assert candidate.rouge.value == pytest.approx(two_thirds)
    assert candidate.rouge.low == pytest.approx(two_thirds)  # no spread: no width
    # The candidate reading kept the candidate's ROUGE-L against the validated text.
    assert ComparisonReading.objects.get(decision="accepted").rouge_l == pytest.approx(two_thirds)
    page = client_for(people.researcher).get(reverse("project-insights", args=[people.project.pk]))
    body = page.content.decode()
    assert f"<td>{insights.wilson(1, 3).as_percent()}</td>" in body
    assert "candidate (prompt v7)" in body


# The worker, end to end, on the tiny model --------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_worker_drafts_candidates_with_the_candidate_prompt(demo_model_dir, tmp_path):
    from inference.backends.transformers import TransformersBackend
    from inference.services import comparison_draft_run, drafts_run
    from tests.test_drafting import photos, queue

    backend = TransformersBackend(str(demo_model_dir), max_new_tokens=12)
    project = services.project_create(name="Comparing", modality="pathology")
    tasks = queue(project, *photos(tmp_path, 2))
    drafts_run(backend=backend, batch_size=2, project_id=project.pk)
    baseline = {t.pk: Task.objects.get(pk=t.pk).latest_draft().pk for t in tasks}
    candidate = PromptTemplate.objects.create(
        project=project, version=2, instruction="Name the main colour of this picture."
    )
    with mock.patch.object(comparisons.messages, "send_many", return_value=2):
        comparison = comparisons.comparison_start(
            project=project, prompt_template=candidate, model_revision="", sample_size=2
        )
    for draft in comparison.drafts.all():
        assert comparison_draft_run(draft.pk, backend=backend)
        assert not comparison_draft_run(draft.pk, backend=backend)  # a redelivery: nothing
    for draft in comparison.drafts.all():
        assert draft.state == "drafted" and draft.text
        assert "Name the main colour of this picture." in draft.prompt
        assert draft.baseline_id == baseline[draft.task_id]
        task = Task.objects.get(pk=draft.task_id)
        assert task.latest_draft().pk == baseline[task.pk] and task.drafts.count() == 1
        assert task.state == TaskState.DRAFTED
