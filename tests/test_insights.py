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
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from annotations import insights, services
from annotations.models import (
    ArmDay,
    Decision,
    Draft,
    DraftDay,
    Label,
    Project,
    PromptTemplate,
    ReviewDay,
    TaskState,
)
from annotations.rouge import rouge_l
from tests.factories import draft_fields, make_drafted_task, make_task

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


def _arm(draft: Draft) -> tuple:
    return (draft.prompt_template.version if draft.prompt_template else 0), draft.model_revision


def direct_arms(project) -> dict:
    """Each arm's day, counted straight from the drafts and labels, ROUGE-L computed anew."""
    days: dict = defaultdict(lambda: defaultdict(float))
    for d in Draft.objects.filter(task__project=project).select_related("prompt_template", "task"):
        row = days[(_arm(d), d.created_at.astimezone(UTC).date())]
        row["drafts"] += 1
        reference = d.task.metadata.get("reference")
        if reference:
            score = rouge_l(d.text, reference)
            row["ref_n"] += 1
            row["ref_sum"] += score
            row["ref_sq"] += score**2
    labels = Label.objects.filter(task__project=project).select_related("draft__prompt_template")
    for label in labels:
        row = days[(_arm(label.draft), label.created_at.astimezone(UTC).date())]
        row["readings"] += 1
        row[label.decision] += 1
        if label.decision != Decision.REJECTED:
            score = rouge_l(label.draft.text, label.text)
            row["rouge_n"] += 1
            row["rouge_sum"] += score
            row["rouge_sq"] += score**2
            key = insights.bucket_of(label.edit_words, insights.EDIT_BUCKETS)
            row.setdefault("edit_hist", Counter())[key] += 1
        if label.category:
            row.setdefault("categories", Counter())[label.category] += 1
    return {
        key: {n: row.get(n, 0) for n in insights.ARM_NUMBER_FIELDS}
        | {j: dict(row.get(j, {})) for j in insights.ARM_JSON_FIELDS}
        for key, row in days.items()
    }


def rolled_arms(project) -> dict:
    return {
        ((r.prompt_version, r.model_revision), r.day): {
            n: getattr(r, n) for n in insights.ARM_NUMBER_FIELDS
        }
        | {j: getattr(r, j) for j in insights.ARM_JSON_FIELDS}
        for r in ArmDay.objects.filter(project=project)
        if r.readings or r.drafts  # a day whose readings were all undone keeps an empty row
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
    # Drafts of other prompt versions and model revisions, some with a reference text.
    prompts = [
        PromptTemplate.objects.create(project=project, version=v, instruction=f"Describe {v}.")
        for v in (1, 2)
    ]

    def redraft(task):
        claimed = services.task_claim(task_id=task.pk)
        prompt = rng.choice([None, *prompts])
        fields = draft_fields(
            text=rng.choice(["A b c d.", "One two three.", "b c e"]),
            prompt_template_id=prompt.pk if prompt else None,
            model_revision=rng.choice(["sha256:0", "sha256:1"]),
        )
        services.draft_record(task_id=task.pk, attempt=claimed.attempt, fields=fields)
        task.refresh_from_db()
        return task

    for _ in range(6):
        task = make_task(project, state=TaskState.QUEUED)
        if rng.random() < 0.6:  # the manifest's reference, which each draft is scored against
            task.metadata = {"reference": rng.choice(["A b c.", "One two three four."])}
            task.save(update_fields=["metadata"])
        tasks.append(redraft(task))
    for _ in range(3):  # truncated drafts, with their seconds
        queued = make_task(project, state=TaskState.QUEUED)
        claimed = services.task_claim(task_id=queued.pk)
        fields = draft_fields(text="Cut", truncated=True, seconds_total=rng.random() * 30)
        services.draft_record(task_id=queued.pk, attempt=claimed.attempt, fields=fields)
        queued.refresh_from_db()
        tasks.append(queued)
    failing = make_task(project, state=TaskState.QUEUED)
    claimed = services.task_claim(task_id=failing.pk)
    services.draft_fail(task_id=failing.pk, attempt=claimed.attempt, error="CUDA out of memory\nx")
    for _ in range(90):
        task, reader = rng.choice(tasks), rng.choice(readers)
        task.refresh_from_db()
        if rng.random() < 0.05 and task.state == TaskState.DRAFTED:
            # Drafted again: a changed decision on the new draft moves to its arm.
            services.task_redraft(task_id=task.pk, actor=people.project_admin)
            redraft(task)
            continue
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
    assert close(rolled_arms(project), direct_arms(project))
    assert len({arm for arm, _ in rolled_arms(project)}) > 2
    assert sum(r["ref_n"] for r in rolled_arms(project).values()) > 0
    assert sum(r["truncated"] for r in rolled_drafts(project).values()) == 3
    failures = DraftDay.objects.filter(project=project).values_list("failures", flat=True)
    assert sum(Counter(f)["CUDA out of memory"] for f in failures) == 1


def test_recount_projects_rebuilds_the_rollups(people):
    project = random_review(people, 7)
    expected = rolled_review(project), rolled_drafts(project), rolled_arms(project)
    ReviewDay.objects.all().update(readings=0, accepted=99)
    DraftDay.objects.all().delete()
    ArmDay.objects.all().update(readings=5, rouge_sum=9)
    call_command("recount_projects", str(project.pk), stdout=io.StringIO())
    assert close(rolled_review(project), expected[0])
    assert close(rolled_drafts(project), expected[1])
    assert close(rolled_arms(project), expected[2])
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


# The page --------------------------------------------------------------------------------


def insights_url(project) -> str:
    return reverse("project-insights", args=[project.pk])


def csv_url(project, plot: str) -> str:
    return reverse("project-insights-csv", args=[project.pk, plot])


def some_readings(people, n: int = 3):
    project = people.project
    for i in range(n):
        task = make_drafted_task(project)
        services.label_record(
            task_id=task.pk,
            reviewer=people.pathologist,
            decision=Decision.ACCEPTED if i % 2 == 0 else Decision.EDITED,
            text="Invasive lobular carcinoma, grade 2.",
            category=project.correction_categories[0] if i % 2 else "",
            draft_id=task.latest_draft().pk,
            time_on_task_ms=1000 * (i + 3),
        )
    return project


@pytest.mark.parametrize(
    ("persona", "status"),
    [
        ("project_admin", 200),
        ("researcher", 200),
        ("superuser", 200),
        ("pathologist", 403),
        ("other_admin", 404),
        ("outsider", 404),
    ],
)
def test_only_admins_and_researchers_see_the_insights(people, client_for, persona, status):
    project = some_readings(people, 1)
    client = client_for(getattr(people, persona))
    assert client.get(insights_url(project)).status_code == status
    assert client.get(csv_url(project, "decisions")).status_code == status


def test_anonymous_users_are_sent_to_log_in(people, client_for):
    response = client_for(None).get(insights_url(people.project))
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_it_rejects_post(people, client_for):
    client = client_for(people.project_admin)
    assert client.post(insights_url(people.project)).status_code == 405


def test_the_page_shows_each_plot_with_its_text_and_csv(people, client_for):
    project = some_readings(people)
    page = client_for(people.researcher).get(insights_url(project)).text
    for key in ("decisions", "edits", "categories", "time", "readers", "sentinels", "queue"):
        assert f'data-plot="{key}"' in page
        assert csv_url(project, key) in page
    assert 'id="insights-data"' in page and "<figcaption>" in page
    assert "3 readings over 1 day(s): 2 accepted" in page
    assert "<script>" not in page.replace('<script id="insights-data"', "")


def test_a_poll_gets_the_figures_alone(people, client_for):
    project = some_readings(people, 1)
    response = client_for(people.project_admin).get(insights_url(project), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert 'id="insights-figures"' in response.text and "<html" not in response.text


def test_a_plots_csv_has_its_data(people, client_for):
    project = some_readings(people)
    response = client_for(people.project_admin).get(csv_url(project, "decisions"))
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["Day", "Accepted", "Edited", "Rejected"]
    assert [int(x) for x in rows[1][1:]] == [2, 1, 0]


def test_the_study_summary_downloads_with_its_intervals(people, client_for):
    project = some_readings(people, 4)
    response = client_for(people.project_admin).get(csv_url(project, "summary"))
    rows = {r[0]: r for r in csv.reader(io.StringIO(response.content.decode()))}
    rate = insights.wilson(2, 4)
    assert rows["Acceptance rate"][1:5] == [
        "50.0 %",
        f"{rate.low * 100:.1f} %",
        f"{rate.high * 100:.1f} %",
        "4",
    ]
    # Accepts score 1; "Invasive lobular carcinoma, grade 2." keeps 4 of the draft's 5 words.
    rouge = insights.mean_interval(3.6, 1 + 0.64 + 1 + 0.64, 4)
    assert rows["ROUGE-L, draft vs validated text"][1:5] == [
        "90.0",
        f"{rouge.low * 100:.1f}",
        f"{rouge.high * 100:.1f}",
        "4",
    ]
    assert rows["ROUGE-L, draft vs reference"][1:5] == ["—", "—", "—", "0"]


def _arm_draft(project, *, text, prompt=None, revision="sha256:0", reference=None):
    task = make_task(project, state=TaskState.QUEUED)
    if reference is not None:
        task.metadata = {"reference": reference}
        task.save(update_fields=["metadata"])
    claimed = services.task_claim(task_id=task.pk)
    fields = draft_fields(
        text=text, prompt_template_id=prompt.pk if prompt else None, model_revision=revision
    )
    return services.draft_record(task_id=task.pk, attempt=claimed.attempt, fields=fields)


def test_the_comparison_shows_each_arm_side_by_side_with_intervals(people, client_for):
    project = people.project
    v1 = PromptTemplate.objects.create(project=project, version=1, instruction="Describe it.")
    reader = people.pathologist
    # Prompt v1 on revision b: 4 drafts, 3 accepted, 1 rejected; references score 1 and 0.5.
    for i in range(4):
        draft = _arm_draft(
            project,
            text="a b c d",
            prompt=v1,
            revision="b",
            reference=["a b c d", "a b"][i] if i < 2 else None,
        )
        decision = {"decision": "accepted"}
        if i == 3:
            decision = {"decision": "rejected", "reason": "No.", "category": "missed finding"}
        services.label_record(task_id=draft.task_id, reviewer=reader, draft_id=draft.pk, **decision)
    # The built-in prompt on revision a: 2 drafts, 1 edited (ROUGE-L 0.8), one unread.
    for i in range(2):
        draft = _arm_draft(project, text="a b c d e")
        if i == 0:
            services.label_record(
                task_id=draft.task_id,
                reviewer=reader,
                draft_id=draft.pk,
                decision="edited",
                text="a b c d x",
                category=project.correction_categories[0],
            )
    response = client_for(people.researcher).get(csv_url(project, "comparison"))
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == insights.COMPARISON_COLUMNS
    builtin, candidate = rows[1], rows[2]
    assert builtin[:4] == ["built-in", "sha256:0", "2", "1"]
    assert builtin[4] == insights.wilson(0, 1).as_percent()
    assert builtin[7] == "80.0 (80.0–80.0)"
    assert candidate[:4] == ["v1", "b", "4", "4"]
    assert candidate[4] == insights.wilson(3, 4).as_percent()
    assert candidate[6] == "missed finding: 1"
    assert candidate[7] == insights.mean_interval(3, 3, 3).as_text(scale=100)
    # Against the reference: 1 and 2/3 (precision 1/2, recall 1).
    assert candidate[8] == insights.mean_interval(1 + 2 / 3, 1 + 4 / 9, 2).as_text(scale=100)
    page = client_for(people.project_admin).get(insights_url(project)).text
    assert csv_url(project, "comparison") in page
    assert "prompt v1, model b: 4 drafts, 4 readings, acceptance 75.0 %" in page


def test_the_comparison_is_only_for_admins_and_researchers(people, client_for):
    _arm_draft(people.project, text="a b")
    url = csv_url(people.project, "comparison")
    assert client_for(people.pathologist).get(url).status_code == 403
    assert client_for(people.other_admin).get(url).status_code == 404


def test_an_unknown_plot_is_not_found(people, client_for):
    client = client_for(people.project_admin)
    assert client.get(csv_url(people.project, "nothing")).status_code == 404


def test_names_with_html_are_escaped_and_csv_cells_cannot_run(people, client_for):
    project = people.project
    sly = get_user_model().objects.create_user("=cmd|'/c calc'!A1<b>x</b>", password="p")
    services.membership_set(project=project, user=sly, role="pathologist")
    task = make_drafted_task(project)
    services.label_record(
        task_id=task.pk, reviewer=sly, decision="accepted", draft_id=task.latest_draft().pk
    )
    page = client_for(people.project_admin).get(insights_url(project)).text
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    body = client_for(people.project_admin).get(csv_url(project, "readers")).content.decode()
    assert "\n'=cmd" in body.replace("\r", "")


def test_the_page_reads_rollups_whatever_the_projects_size(people, client_for):
    project = some_readings(people, 2)
    client = client_for(people.project_admin)
    client.get(insights_url(project))  # sessions, caches

    def queries() -> list[str]:
        with CaptureQueriesContext(connection) as seen:
            assert client.get(insights_url(project)).status_code == 200
        return [q["sql"] for q in seen.captured_queries]

    small = queries()
    some_readings(people, 6)
    for _ in range(20):
        make_task(project)
    big = queries()
    assert len(big) == len(small) <= 12
    for sql in big:
        assert "annotations_label" not in sql and '"annotations_task"' not in sql


def test_a_changed_decision_moves_its_figures_and_an_undo_takes_them_back(people):
    project = people.project
    task = make_drafted_task(project)
    reader = people.pathologist
    draft_id = task.latest_draft().pk

    def day() -> dict:
        row = ReviewDay.objects.get(project=project, reviewer=reader)
        return {n: getattr(row, n) for n in ("readings", "accepted", "rejected")} | {
            "categories": row.categories
        }

    services.label_record(task_id=task.pk, reviewer=reader, decision="accepted", draft_id=draft_id)
    assert day() == {"readings": 1, "accepted": 1, "rejected": 0, "categories": {}}
    services.label_record(
        task_id=task.pk,
        reviewer=reader,
        decision="rejected",
        reason="Wrong organ.",
        category="missed finding",
        draft_id=draft_id,
        label_revision=1,
    )
    rejected = {"readings": 1, "accepted": 0, "rejected": 1, "categories": {"missed finding": 1}}
    assert day() == rejected
    services.label_undo(task_id=task.pk, reviewer=reader)
    assert day() == {"readings": 1, "accepted": 1, "rejected": 0, "categories": {}}
    second = make_drafted_task(project)  # a first decision undone: its reading goes
    services.label_record(
        task_id=second.pk, reviewer=reader, decision="accepted", draft_id=second.latest_draft().pk
    )
    assert day()["readings"] == 2
    services.label_undo(task_id=second.pk, reviewer=reader)
    assert day() == {"readings": 1, "accepted": 1, "rejected": 0, "categories": {}}


def test_the_project_page_links_to_the_insights_for_those_who_may_see_them(people, client_for):
    project = people.project
    url = insights_url(project)
    detail = reverse("project-detail", args=[project.pk])
    assert url in client_for(people.researcher).get(detail).text
    assert url in client_for(people.project_admin).get(detail).text
    assert url not in client_for(people.pathologist).get(detail).text
