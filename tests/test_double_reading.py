"""Double reading: N blind readers per task, agreement, adjudication, and the review state
kept apart from the drafting state."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.urls import reverse

from annotations import agreement, counters, exports, selectors, services
from annotations.backfills import review_states_backfill
from annotations.models import (
    Adjudication,
    Claim,
    Draft,
    Label,
    ReviewState,
    Role,
    Task,
    TaskState,
)
from tests.factories import draft_fields, make_drafted_task, make_image

DRAFT = "Invasive ductal carcinoma, grade 2."


def _reader(project, name: str, role: str = Role.PATHOLOGIST):
    user = get_user_model().objects.create_user(name, password="password")
    services.membership_set(project=project, user=user, role=role)
    return user


@pytest.fixture
def double(people):
    """`project` read twice per task, by `pathologist` and two more readers."""
    services.project_reading_settings_set(
        project=people.project, readings_per_task=2, disagreement_words=5
    )
    people.project.refresh_from_db()
    people.reader2 = _reader(people.project, "rosa")  # pathologist of `project`
    people.reader3 = _reader(people.project, "raj")  # pathologist of `project`
    people.adjudicator = _reader(people.project, "ada", Role.ADJUDICATOR)  # adjudicator
    return people


def read(task, reviewer, decision="accepted", text="", reason=""):
    if decision == "rejected" and not reason:
        reason = "Not this tissue."
    return services.label_record(
        task_id=task.pk,
        reviewer=reviewer,
        decision=decision,
        draft_id=task.latest_draft().pk,
        text=text,
        reason=reason,
    )


def review_state(task) -> str:
    return Task.objects.values_list("review_state", flat=True).get(pk=task.pk)


def test_two_readers_get_the_same_task_and_a_third_does_not(double):
    task = make_drafted_task(double.project)
    for reader in (double.pathologist, double.reader2):
        assert services.claim_next(project=double.project, reviewer=reader) == task
    assert services.claim_next(project=double.project, reviewer=double.reader3) is None
    assert Claim.objects.filter(task=task).count() == 2


def test_a_reading_frees_no_place_for_a_third_reader(double):
    task = make_drafted_task(double.project)
    services.claim_next(project=double.project, reviewer=double.pathologist)
    read(task, double.pathologist)
    assert task.__class__.objects.get(pk=task.pk).outcome == ""  # not final yet
    assert review_state(task) == ReviewState.IN_REVIEW
    assert services.claim_next(project=double.project, reviewer=double.reader2) == task
    assert services.claim_next(project=double.project, reviewer=double.reader3) is None
    read(task, double.reader2)
    assert services.claim_next(project=double.project, reviewer=double.reader3) is None
    with pytest.raises(services.InvalidTransition):
        read(task, double.reader3)


def test_one_reading_per_task_keeps_the_old_queue(people):
    task = make_drafted_task(people.project)
    assert services.claim_next(project=people.project, reviewer=people.pathologist) == task
    assert services.claim_next(project=people.project, reviewer=people.admin) is None
    read(task, people.pathologist)
    assert review_state(task) == ReviewState.FINAL


def test_reader_two_does_not_see_reader_ones_decision(double, client_for):
    task = make_drafted_task(double.project)
    read(task, double.pathologist, "rejected", reason="Wrong organ entirely.")
    body = client_for(double.reader2).get(reverse("task-detail", args=[task.pk])).content
    assert b"Wrong organ" not in body and b"paul" not in body
    assert not selectors.task_review(Task.objects.get(pk=task.pk), double.reader2)["other_labels"]
    # the adjudicator sees both; and everyone once the task is final
    seen = selectors.task_review(Task.objects.get(pk=task.pk), double.adjudicator)
    assert [label.reviewer for label in seen["other_labels"]] == [double.pathologist]
    read(task, double.reader2, "rejected", reason="Blurred.")
    assert review_state(task) == ReviewState.FINAL
    body = client_for(double.reader3).get(reverse("task-detail", args=[task.pk])).content
    assert b"paul" in body


def test_agreeing_readings_make_the_task_final(double):
    task = make_drafted_task(double.project)
    read(task, double.pathologist, "edited", text=DRAFT + " Margins clear.")
    read(task, double.reader2, "edited", text=DRAFT + " Margins are clear.")  # 2 words apart
    assert review_state(task) == ReviewState.FINAL
    assert not selectors.adjudication_queue(double.project)


@pytest.mark.parametrize(
    "second",
    [
        ("rejected", ""),
        ("edited", DRAFT + " Lymphovascular invasion seen in three of twelve nodes."),
    ],
)
def test_disagreeing_readings_go_to_the_adjudication_queue(double, second):
    task = make_drafted_task(double.project)
    read(task, double.pathologist, "accepted")
    read(task, double.reader2, *second)
    assert review_state(task) == ReviewState.DISAGREEMENT
    assert selectors.adjudication_queue(double.project) == [task]


def test_the_adjudicator_records_the_final_label_linked_to_the_readings(double, client_for):
    task = make_drafted_task(double.project)
    one = read(task, double.pathologist, "accepted")
    two = read(task, double.reader2, "edited", text="Benign fibroadenoma, no atypia at all here.")
    client = client_for(double.adjudicator)
    queue = client.get(reverse("project-adjudication", args=[double.project.pk]))
    assert queue.status_code == 200 and f"task-{task.pk}".encode() in queue.content
    page = client.get(reverse("task-adjudicate", args=[task.pk]))
    assert page.status_code == 200
    assert b"Benign fibroadenoma" in page.content and b"<ins>" in page.content  # the diff
    response = client.post(
        reverse("task-adjudicate", args=[task.pk]),
        {"decision": "edited", "text": "Benign fibroadenoma.", "category": "missed finding"},
    )
    assert response.status_code == 302
    adjudication = Adjudication.objects.get(task=task)
    assert adjudication.adjudicator == double.adjudicator and adjudication.decision == "edited"
    assert set(adjudication.readings.all()) == {one, two}
    assert review_state(task) == ReviewState.FINAL
    assert not selectors.adjudication_queue(double.project)
    # the export gives the final label, and the readings it resolves when asked
    rows = list(exports.label_rows(double.project, readings=True, reviewer_names=True))
    assert len(rows) == 1
    assert rows[0]["final_text"] == "Benign fibroadenoma."
    assert rows[0]["final_source"] == "adjudication" and rows[0]["reviewer"] == "ada"
    assert [r["reviewer"] for r in rows[0]["readings"]] == ["paul", "rosa"]
    assert "readings" not in next(exports.label_rows(double.project))


def test_a_task_without_disagreement_cannot_be_adjudicated(double, client_for):
    task = make_drafted_task(double.project)
    read(task, double.pathologist)
    response = client_for(double.adjudicator).post(
        reverse("task-adjudicate", args=[task.pk]), {"decision": "accepted"}
    )
    assert response.status_code == 409
    assert not Adjudication.objects.exists()


def test_adjudicators_may_adjudicate_but_not_review(double, client_for):
    client = client_for(double.adjudicator)
    task = make_drafted_task(double.project)
    assert client.get(reverse("task-adjudicate", args=[task.pk])).status_code == 200
    url = reverse("project-adjudication", args=[double.project.pk])
    assert client.get(url).status_code == 200
    assert client.post(reverse("review-start", args=[double.project.pk])).status_code == 403
    assert client.get(reverse("project-detail", args=[double.project.pk])).status_code == 200


def test_the_settings_page_sets_readings_per_task_once_validated(double, client_for):
    from tests.factories import SETTINGS_FORM

    client = client_for(double.admin)
    url = reverse("project-settings", args=[double.project.pk])
    response = client.post(url, SETTINGS_FORM | {"readings_per_task": "6"})
    assert response.status_code == 200 and b"readings_per_task" in response.content
    client.post(url, SETTINGS_FORM | {"readings_per_task": "3", "disagreement_words": "2"})
    double.project.refresh_from_db()
    assert (double.project.readings_per_task, double.project.disagreement_words) == (3, 2)
    with pytest.raises(ValueError):
        services.project_reading_settings_set(
            project=double.project, readings_per_task=0, disagreement_words=5
        )


def test_the_project_page_shows_agreement(double, client_for):
    for second in ("accepted", "accepted", "rejected"):
        task = make_drafted_task(double.project)
        read(task, double.pathologist, "accepted")
        read(task, double.reader2, second)
    stats = selectors.project_agreement(double.project)
    assert stats["tasks"] == 3
    assert stats["percent"] == pytest.approx(200 / 3)
    assert stats["kappa"] == pytest.approx(0.0)  # reader 1 always accepts: no better than chance
    assert stats["mean_words"] == 0
    body = client_for(double.pathologist).get(reverse("project-detail", args=[double.project.pk]))
    assert b'id="agreement-kappa"' in body.content


def test_cohen_kappa_on_the_textbook_example():
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15 (Wikipedia, Cohen's kappa): 0.4
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert agreement.percent_agreement(pairs) == pytest.approx(0.7)
    assert agreement.cohen_kappa(pairs) == pytest.approx(0.4)


def test_fleiss_kappa_on_the_textbook_example():
    # Fleiss (1971) as on Wikipedia: 10 subjects, 14 raters, 5 categories; kappa 0.210
    table = [
        (0, 0, 0, 0, 14),
        (0, 2, 6, 4, 2),
        (0, 0, 3, 5, 6),
        (0, 3, 9, 2, 0),
        (2, 2, 8, 1, 1),
        (7, 7, 0, 0, 0),
        (3, 2, 6, 3, 0),
        (2, 5, 3, 2, 2),
        (6, 5, 2, 1, 0),
        (0, 2, 2, 3, 7),
    ]
    ratings = [[c for c, k in enumerate(row) for _ in range(k)] for row in table]
    assert agreement.fleiss_kappa(ratings) == pytest.approx(0.2099, abs=1e-3)
    assert agreement.percent_agreement(ratings) == pytest.approx(0.378, abs=1e-3)


def test_the_backfill_gives_labelled_tasks_a_final_review_state(people):
    labelled, fresh = make_drafted_task(people.project), make_drafted_task(people.project)
    read(labelled, people.pathologist)
    Task.objects.update(review_state=ReviewState.OPEN, outcome="")
    assert review_states_backfill(Task, Label) == 1
    assert review_state(labelled) == ReviewState.FINAL and review_state(fresh) == ReviewState.OPEN


def _left_for(project, reader) -> bool:
    """Tasks still open to more readings that `reader` has not read."""
    return (
        Task.objects.filter(
            project=project, review_state__in=[ReviewState.OPEN, ReviewState.IN_REVIEW]
        )
        .exclude(labels__reviewer=reader)
        .exists()
    )


@pytest.mark.django_db(transaction=True)
def test_twenty_readers_in_parallel_read_each_task_twice(people):
    """20 readers, each in a thread with its own connection, read 500 tasks twice."""
    services.project_reading_settings_set(
        project=people.project, readings_per_task=2, disagreement_words=5
    )
    project = type(people.project).objects.get(pk=people.project.pk)
    # Drafted in bulk (the drafting path has its own tests), counters recounted after.
    tasks = Task.objects.bulk_create(
        Task(project=project, image=make_image(), state=TaskState.DRAFTED) for _ in range(500)
    )
    Draft.objects.bulk_create(Draft(task=t, attempt=1, **draft_fields()) for t in tasks)
    counters.recount([project.pk])
    readers = [_reader(project, f"reader{i}") for i in range(20)]
    recorded: list[tuple[int, int, str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(readers))
    lock = threading.Lock()

    def work(reader, seed):
        rng = random.Random(seed)
        try:
            barrier.wait(timeout=60)
            idle = 0
            while True:
                task = services.claim_next(project=project, reviewer=reader)
                if task is None:
                    # SKIP LOCKED passes over rows other readers hold this instant: a reader
                    # polls again while tasks they have not read are still open.
                    if idle >= 500 or not _left_for(project, reader):
                        break
                    idle += 1
                    time.sleep(0.01)
                    continue
                idle = 0
                # Mostly accepts, so that most tasks agree and some disagree.
                decision = rng.choices(["accepted", "edited", "rejected"], [8, 1, 1])[0]
                text = f"{DRAFT} Reader {reader.pk} saw {rng.random()} more words here and there."
                label = read(task, reader, decision, text=text if decision == "edited" else "")
                with lock:
                    recorded.append((label.task_id, reader.pk, label.decision))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()  # each thread has its own connection

    threads = [threading.Thread(target=work, args=(r, i)) for i, r in enumerate(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors[:3]
    # No decision lost: every recorded reading is in the database, and only those.
    saved = set(Label.objects.values_list("task_id", "reviewer_id", "decision"))
    assert saved == set(recorded) and len(recorded) == len(saved)
    # No reader read a task twice, and every task has exactly two readers.
    by_task: dict[int, list[tuple[int, str]]] = {}
    for task_id, reader_id, decision in recorded:
        by_task.setdefault(task_id, []).append((reader_id, decision))
    assert set(by_task) == {t.pk for t in tasks}
    assert all(len({r for r, _ in v}) == len(v) == 2 for v in by_task.values())
    assert not Claim.objects.exists()  # every claim went with its decision
    states = dict(Task.objects.values_list("id", "review_state"))
    texts = {(lb.task_id, lb.reviewer_id): lb for lb in Label.objects.all()}
    disagreements = 0
    for task_id, pair in by_task.items():
        labels = [texts[(task_id, r)] for r, _ in pair]
        disagree = services.readings_disagree(labels, words=5)
        disagreements += disagree
        want = ReviewState.DISAGREEMENT if disagree else ReviewState.FINAL
        assert states[task_id] == want, task_id
    assert 0 < disagreements < len(tasks)
    queue = {t.pk for t in selectors.adjudication_queue(project, limit=len(tasks))}
    assert queue == {t for t, s in states.items() if s == ReviewState.DISAGREEMENT}
    json.dumps(list(exports.label_rows(project)))  # the final labels export


def _agreement_from_labels(project) -> dict | None:
    """The agreement as computed over every label, the way the kept cells must agree with."""
    by_task: dict[int, list] = {}
    for task_id, decision, text in (
        Label.objects.filter(task__project=project)
        .order_by("task_id", "created_at", "id")
        .values_list("task_id", "decision", "text")
    ):
        by_task.setdefault(task_id, []).append((decision, text))
    ratings = [[d for d, _ in rs] for rs in by_task.values() if len(rs) >= 2]
    wanted = project.readings_per_task
    distances = []
    for rs in by_task.values():
        kept = [t for d, t in rs if d != "rejected"] if len(rs) >= 2 else []
        distances += [
            services.word_distance(a, b) for i, a in enumerate(kept) for b in kept[i + 1 :]
        ]
    percent = agreement.percent_agreement(ratings)
    return {
        "tasks": len(ratings),
        "percent": percent * 100 if percent is not None else None,
        "kappa": agreement.cohen_kappa([(d[0], d[1]) for d in ratings])
        if wanted == 2
        else agreement.fleiss_kappa([d for d in ratings if len(d) == wanted]),
        "kappa_name": "Cohen's kappa" if wanted == 2 else "Fleiss' kappa",
        "mean_words": sum(distances) / len(distances) if distances else None,
    }


@pytest.mark.parametrize("wanted", [2, 3])
def test_the_kept_agreement_follows_readings_changes_and_undos(double, wanted):
    """Random readings, changed decisions and undos: the cells the page reads give what
    a count over every label gives, and so does a recount after the setting changes."""
    services.project_reading_settings_set(
        project=double.project, readings_per_task=wanted, disagreement_words=5
    )
    double.project.refresh_from_db()
    rng = random.Random(wanted)
    readers = [double.pathologist, double.reader2, double.reader3]
    tasks = [make_drafted_task(double.project) for _ in range(8)]
    texts = ["Benign.", "Benign naevus, junctional.", "Melanoma in situ, margins clear."]
    for _ in range(80):
        task, reader = rng.choice(tasks), rng.choice(readers)
        mine = Label.objects.filter(task=task, reviewer=reader).first()
        try:
            if rng.random() < 0.2:
                services.label_undo(task_id=task.pk, reviewer=reader)
            else:
                decision = rng.choice(["accepted", "edited", "rejected"])
                services.label_record(
                    task_id=task.pk,
                    reviewer=reader,
                    decision=decision,
                    draft_id=task.latest_draft().pk,
                    text=rng.choice(texts),
                    reason="Blurred.",
                    label_revision=mine.revision if mine else 0,
                )
        except (services.InvalidTransition, services.UndoRefused):
            pass
    expected = _agreement_from_labels(double.project)
    assert expected["tasks"] > 0
    assert selectors.project_agreement(double.project) == pytest.approx(expected)
    services.agreement_recount(double.project)
    assert selectors.project_agreement(double.project) == pytest.approx(expected)


def test_the_page_reads_agreement_in_one_query_whatever_the_labels(
    double, django_assert_num_queries
):
    task = make_drafted_task(double.project)
    read(task, double.pathologist)
    read(task, double.reader2, "edited", text="Benign.")
    with django_assert_num_queries(1):
        stats = selectors.project_agreement(double.project)
    assert stats["tasks"] == 1 and stats["percent"] == 0
