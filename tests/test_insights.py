"""The insights page and its rollups: kept by the writes, equal to a direct count of the
labels and drafts, read (never counted) by the page, downloadable as CSV, and shown only to
the project's admins and researchers."""

from __future__ import annotations

import csv
import io
import random
from collections import Counter, defaultdict
from datetime import UTC

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from annotations import insights, services
from annotations.models import Decision, Draft, DraftDay, Label, Project, ReviewDay, TaskState
from tests.factories import make_drafted_task, make_task

NUMBERS = insights.NUMBER_FIELDS


def direct_review(project) -> dict:
    """Each reader's day, counted straight from the labels."""
    days: dict = defaultdict(lambda: defaultdict(int))
    for label in Label.objects.filter(task__project=project):
        row = days[(label.reviewer_id, label.created_at.astimezone(UTC).date())]
        row["readings"] += 1
        row[label.decision] += 1
        row["fast_accepts"] += int(label.fast_accept)
        if label.time_on_task_ms is not None:
            row["timed"] += 1
            row["time_ms"] += label.time_on_task_ms
            row["time_ms_sq"] += label.time_on_task_ms**2
            key = insights.bucket_of(label.time_on_task_ms / 1000, insights.TIME_BUCKETS)
            row.setdefault("time_hist", Counter())[key] += 1
        if label.decision != Decision.REJECTED and label.edit_words is not None:
            row["edit_words"] += label.edit_words
            row["edit_words_sq"] += label.edit_words**2
            key = insights.bucket_of(label.edit_words, insights.EDIT_BUCKETS)
            row.setdefault("edit_hist", Counter())[key] += 1
        if label.category:
            row.setdefault("categories", Counter())[label.category] += 1
    return {
        key: {n: row.get(n, 0) for n in NUMBERS}
        | {j: dict(row.get(j, {})) for j in insights.JSON_FIELDS}
        for key, row in days.items()
    }


def rolled_review(project) -> dict:
    rows = ReviewDay.objects.filter(project=project)
    return {
        (r.reviewer_id, r.day): {n: getattr(r, n) for n in NUMBERS}
        | {j: getattr(r, j) for j in insights.JSON_FIELDS}
        for r in rows
        if r.readings  # a day whose readings were all undone keeps an empty row
    }


def direct_drafts(project) -> dict:
    days: dict = defaultdict(Counter)
    for d in Draft.objects.filter(task__project=project):
        row = days[d.created_at.astimezone(UTC).date()]
        row["drafts"] += 1
        row["truncated"] += int(d.truncated)
        row["seconds"] += d.seconds_total
    return {day: dict(row) for day, row in days.items()}


def rolled_drafts(project) -> dict:
    return {
        r.day: {"drafts": r.drafts, "truncated": r.truncated, "seconds": r.seconds}
        for r in DraftDay.objects.filter(project=project)
        if r.drafts
    }


def close(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        for name, value in a[key].items():
            other = b[key][name]
            if isinstance(value, float) or isinstance(other, float):
                if abs(value - other) > 1e-6 * max(1.0, abs(value)):
                    return False
            elif value != other:
                return False
    return True


def random_review(people, seed: int):
    """Random decisions, changes of decision and undos by three readers, on a project read
    twice per task, with drafts failing and truncated."""
    rng = random.Random(seed)
    project = people.project
    Project.objects.filter(pk=project.pk).update(readings_per_task=2)
    project.refresh_from_db()
    readers = [people.project_admin, people.pathologist, people.superuser]
    categories = project.correction_categories
    tasks = [make_drafted_task(project, text="Benign breast tissue with fibrosis.")]
    for _ in range(11):
        tasks.append(make_drafted_task(project, text=rng.choice(["A b c d.", "One two three."])))
    failing = make_task(project, state=TaskState.QUEUED)
    claimed = services.task_claim(task_id=failing.pk)
    services.draft_fail(task_id=failing.pk, attempt=claimed.attempt, error="CUDA out of memory\nx")
    for _ in range(70):
        task, reader = rng.choice(tasks), rng.choice(readers)
        label = Label.objects.filter(task=task, reviewer=reader).first()
        if label is not None and rng.random() < 0.25:
            try:
                services.label_undo(task_id=task.pk, reviewer=reader)
            except services.UndoRefused:
                pass
            continue
        decision = rng.choice(Decision.values)
        fields = dict(
            task_id=task.pk,
            reviewer=reader,
            decision=decision,
            draft_id=task.latest_draft().pk,
            label_revision=label.revision if label else 0,
            time_on_task_ms=rng.choice([None, rng.randint(500, 900_000)]),
        )
        if decision == Decision.EDITED:
            fields["text"] = " ".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 40)))
            fields["category"] = rng.choice(categories)
        if decision == Decision.REJECTED:
            fields["reason"] = "Wrong organ."
            fields["category"] = rng.choice(categories)
        try:
            services.label_record(**fields)
        except services.InvalidTransition:
            pass  # its two readings are in
    return project


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_rollups_match_a_direct_count_on_random_data(people, seed):
    project = random_review(people, seed)
    assert Label.objects.filter(task__project=project).exists()
    assert close(rolled_review(project), direct_review(project))
    assert close(rolled_drafts(project), direct_drafts(project))
    failures = DraftDay.objects.filter(project=project).values_list("failures", flat=True)
    assert sum(Counter(f)["CUDA out of memory"] for f in failures) == 1


def test_recount_projects_rebuilds_the_rollups(people):
    project = random_review(people, 7)
    expected = rolled_review(project), rolled_drafts(project)
    ReviewDay.objects.all().update(readings=0, accepted=99)
    DraftDay.objects.all().delete()
    call_command("recount_projects", str(project.pk), stdout=io.StringIO())
    assert close(rolled_review(project), expected[0])
    assert close(rolled_drafts(project), expected[1])
    assert sum(DraftDay.objects.filter(project=project).values_list("failed", flat=True)) == 1


def test_wilson_intervals_on_known_data():
    # Wilson (1927) for 8 of 10 at 95%: 0.4902 to 0.9433.
    rate = insights.wilson(8, 10)
    assert rate.value == 0.8
    assert rate.low == pytest.approx(0.4902, abs=1e-4)
    assert rate.high == pytest.approx(0.9433, abs=1e-4)
    none = insights.wilson(0, 20)
    assert none.low == 0.0 and none.high == pytest.approx(0.1611, abs=1e-4)
    assert insights.wilson(0, 0).value is None


def test_mean_intervals_from_sums_and_squares():
    values = [10, 12, 14, 16, 18]
    mean = insights.mean_interval(sum(values), sum(v * v for v in values), len(values))
    # mean 14, sd 3.1623, half-width 1.96 * 3.1623 / sqrt(5) = 2.772
    assert mean.value == 14
    assert mean.low == pytest.approx(11.228, abs=1e-3)
    assert mean.high == pytest.approx(16.772, abs=1e-3)


def test_the_median_is_estimated_from_the_histogram():
    # 10 readings between 10 and 20 s: the median lies in that bucket.
    assert 10 <= insights.histogram_median({"10": 10}, insights.TIME_BUCKETS) <= 20
    assert insights.histogram_median({}, insights.TIME_BUCKETS) is None
