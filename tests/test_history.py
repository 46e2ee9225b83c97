"""A task's history page: its drafts, readings and their revisions, undos, adjudication and
exports as one timeline, oldest first; for the project's admins and the task's readers."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from annotations import exportjobs, exports, history, services
from annotations.models import AuditEvent, ExportedTask, Role, Task, TaskState
from annotations.notice import AI_NOTICE
from tests.factories import make_drafted_task, make_image, make_task, record_draft

pytestmark = pytest.mark.django_db

XSS = '<script>alert(1)</script>" onmouseover="alert(2)'


def _user(username: str, **fields):
    return get_user_model().objects.create_user(username, password="password", **fields)


def _draft_again(task: Task, admin, text: str) -> Task:
    services.task_redraft(task_id=task.pk, actor=admin)
    return record_draft(task, text=text)


def _read(task: Task, reader, decision: str, *, revision: int = 0, text: str = "", **more):
    task.refresh_from_db()
    return services.label_record(
        task_id=task.pk,
        reviewer=reader,
        decision=decision,
        draft_id=task.latest_draft().pk,
        text=text,
        label_revision=revision,
        **more,
    )


@pytest.fixture
def double(people):
    """A double-read task with two drafts, two readers (one revised), an adjudication and
    an export. Pia is a second pathologist; Ada the adjudicator; Nick reads nothing."""
    project = people.project
    services.project_reading_settings_set(
        project=project, readings_per_task=2, disagreement_words=0, actor=people.admin
    )
    pia = _user("pia", first_name="Pia", last_name="Lind")
    ada = _user("ada")
    nick = _user("nick")
    for user, role in ((pia, Role.PATHOLOGIST), (ada, Role.ADJUDICATOR), (nick, Role.PATHOLOGIST)):
        services.membership_set(project=project, user=user, role=role, actor=people.admin)
    task = make_drafted_task(project, text="First draft.")
    task = _draft_again(task, people.admin, "Second draft.")
    _read(task, people.pathologist, "accepted")
    _read(task, people.pathologist, "edited", revision=1, text="Paul's edit.")
    _read(task, pia, "rejected", reason="Wrong organ.", category="other")
    task.refresh_from_db()
    assert task.review_state == "disagreement"
    services.adjudication_record(task_id=task.pk, adjudicator=ada, decision="edited", text="Final.")
    job = exportjobs.export_job_start(
        project=project, requested_by=people.admin, options=exports.ExportOptions()
    )
    exportjobs.export_job_run(job_id=job.pk)
    return task, pia, ada, nick, job


def _kinds(timeline) -> list[str]:
    return [entry.kind for entry in timeline]


def test_the_timeline_holds_everything_oldest_first(people, double):
    task, pia, ada, nick, job = double
    timeline = history.task_timeline(task)
    assert _kinds(timeline) == [
        "draft",
        "draft",
        "reading",
        "reading",
        "reading",
        "adjudication",
        "export",
    ]
    times = [entry.at for entry in timeline]
    assert times == sorted(times)
    first, revised, rejected = timeline[2:5]
    assert (first.details["decision"], first.details["revision"], first.details["was"]) == (
        "accepted",
        1,
        "",
    )
    assert revised.details["decision"] == "edited" and revised.details["was"] == "accepted"
    assert revised.details["text"] == "Paul's edit." and revised.who == "paul"
    assert rejected.who == "Pia Lind (pia)" and rejected.details["reason"] == "Wrong organ."
    assert timeline[5].who == "ada" and timeline[5].details["text"] == "Final."
    assert timeline[6].details["job"] == job and timeline[6].who == "alice"


def test_the_page_shows_the_timeline_in_utc_time_elements(people, double, client_for):
    task, *_ = double
    response = client_for(people.admin).get(reverse("task-history", args=[task.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert html.index("First draft.") < html.index("Second draft.") < html.index("Paul&#x27;s edit")
    assert html.index("Paul&#x27;s edit") < html.index("Final.") < html.index("Exported")
    assert "Reading revised" in html and "(was accepted)" in html
    # Each draft's text is marked as AI output.
    assert html.count(AI_NOTICE) >= 2
    stamps = re.findall(r'<time datetime="([^"]+)">([^<]+)</time>', html)
    assert len(stamps) == 7
    assert all(iso.endswith("+00:00") and shown.endswith("UTC") for iso, shown in stamps)


def test_htmx_gets_the_timeline_alone(people, double, client_for):
    task, *_ = double
    url = reverse("task-history", args=[task.pk])
    response = client_for(people.admin).get(url, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<ol class="timeline"') and "<html" not in html


@pytest.mark.parametrize("who", ["superuser", "project_admin", "pathologist", "pia", "ada"])
def test_admins_readers_and_the_adjudicator_see_it(people, double, client_for, who):
    task, pia, ada, *_ = double
    user = {"pia": pia, "ada": ada}.get(who) or getattr(people, who)
    response = client_for(user).get(reverse("task-history", args=[task.pk]))
    assert response.status_code == 200


@pytest.mark.parametrize(
    "who", ["nick", "researcher", "other_admin", "other_pathologist", "outsider"]
)
def test_a_member_who_did_not_read_it_and_outsiders_get_404(people, double, client_for, who):
    task, *_, nick, _ = double
    user = nick if who == "nick" else getattr(people, who)
    response = client_for(user).get(reverse("task-history", args=[task.pk]))
    assert response.status_code == 404


def test_anonymous_users_are_sent_to_log_in(people, double, client_for):
    task, *_ = double
    response = client_for(None).get(reverse("task-history", args=[task.pk]))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_a_reader_whose_first_reading_was_undone_still_sees_it(people, client_for):
    task = make_drafted_task(people.project)
    _read(task, people.pathologist, "accepted")
    services.label_undo(task_id=task.pk, reviewer=people.pathologist)
    response = client_for(people.pathologist).get(reverse("task-history", args=[task.pk]))
    assert response.status_code == 200
    assert "Reading undone" in response.content.decode()
    assert _kinds(history.task_timeline(task)) == ["draft", "reading", "undo"]


def test_it_rejects_post(people, double, client_for):
    task, *_ = double
    response = client_for(people.admin).post(reverse("task-history", args=[task.pk]))
    assert response.status_code == 405


def test_its_queries_are_bounded(people, client_for, django_assert_num_queries):
    """Three drafts, three readers with two revisions each, two exports: as many queries
    as for one of each."""

    def scene(name: str) -> Task:
        image = make_image(original_name=f"{name}.jpg")
        task = make_task(people.project, state=TaskState.QUEUED, image=image)
        return record_draft(task, text="a")

    small = scene("small")
    _read(small, people.pathologist, "accepted")
    exportjobs.export_job_run(
        job_id=exportjobs.export_job_start(
            project=people.project, requested_by=people.admin, options=exports.ExportOptions()
        ).pk
    )
    big = scene("big")
    big = _draft_again(_draft_again(big, people.admin, "b"), people.admin, "c")
    readers = [people.pathologist, _user("r2"), _user("r3")]
    for reader in readers[1:]:
        services.membership_set(
            project=people.project, user=reader, role=Role.PATHOLOGIST, actor=people.admin
        )
    for reader in readers:
        _read(big, reader, "accepted")
        _read(big, reader, "edited", revision=1, text=f"Edit by {reader.username}.")
    for _ in range(2):
        exportjobs.export_job_run(
            job_id=exportjobs.export_job_start(
                project=people.project,
                requested_by=people.admin,
                options=exports.ExportOptions(),
            ).pk
        )
    client = client_for(people.pathologist)
    client.get(reverse("project-list"))  # the session and user, as on any later page
    counts = []
    # small: its draft, its reading and three exports; big: 3 drafts, 6 readings, 2 exports
    for task, kinds in ((small, 5), (big, 11)):
        url = reverse("task-history", args=[task.pk])
        with django_assert_num_queries(7) as captured:
            response = client.get(url)
        assert response.status_code == 200
        assert len(history.task_timeline(task)) == kinds
        counts.append(len(captured.captured_queries))
    assert counts[0] == counts[1]


def test_texts_reasons_and_file_names_are_escaped(people, client_for):
    image = make_image(original_name=f"{XSS}.jpg")
    task = record_draft(make_task(people.project, state=TaskState.QUEUED, image=image), text=XSS)
    _read(task, people.pathologist, "edited", text=XSS, category="other")
    _read(task, people.pathologist, "rejected", revision=1, reason=XSS, category="other")
    people.pathologist.first_name = XSS
    people.pathologist.save()
    response = client_for(people.admin).get(reverse("task-history", args=[task.pk]))
    html = response.content.decode()
    assert "<script>alert(1)" not in html
    assert '" onmouseover="' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_an_export_records_the_tasks_it_included(people, admin_client_export):
    kept, left_out, job = admin_client_export
    assert set(ExportedTask.objects.filter(job=job).values_list("task_id", flat=True)) == {kept.pk}
    assert _kinds(history.task_timeline(kept))[-1] == "export"
    assert "export" not in _kinds(history.task_timeline(left_out))


@pytest.fixture
def admin_client_export(people):
    """A decision-filtered export: the accepted task is in it, the rejected one is not."""
    kept = make_drafted_task(people.project)
    left_out = make_drafted_task(people.project)
    _read(kept, people.pathologist, "accepted")
    _read(left_out, people.pathologist, "rejected", reason="No.", category="other")
    job = exportjobs.export_job_start(
        project=people.project,
        requested_by=people.admin,
        options=exports.ExportOptions.from_query({"decision": "accepted"}),
    )
    job = exportjobs.export_job_run(job_id=job.pk)
    assert job.state == "done" and job.rows_done == 1
    return kept, left_out, job


def test_a_training_export_records_only_the_rows_it_kept(people):
    kept = make_drafted_task(people.project)
    left_out = make_drafted_task(people.project)
    _read(kept, people.pathologist, "edited", text="Changed.")
    _read(left_out, people.pathologist, "accepted")  # dpo keeps edits only
    job = exportjobs.export_job_start(
        project=people.project,
        requested_by=people.admin,
        options=exports.ExportOptions.from_query({"format": "dpo"}),
    )
    exportjobs.export_job_run(job_id=job.pk)
    recorded = set(ExportedTask.objects.filter(job=job).values_list("task_id", flat=True))
    assert recorded == {kept.pk}


def test_a_failed_export_records_nothing(people, monkeypatch):
    task = make_drafted_task(people.project)
    _read(task, people.pathologist, "accepted")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(exports, "write_export_options", broken)
    job = exportjobs.export_job_start(
        project=people.project, requested_by=people.admin, options=exports.ExportOptions()
    )
    assert exportjobs.export_job_run(job_id=job.pk).state == "failed"
    assert not ExportedTask.objects.filter(job=job).exists()


def test_the_review_page_and_the_task_list_link_to_it(people, client_for):
    task = make_drafted_task(people.project)
    url = reverse("task-history", args=[task.pk])
    admin = client_for(people.admin)
    assert url in admin.get(reverse("task-detail", args=[task.pk])).content.decode()
    assert url in admin.get(reverse("project-detail", args=[people.project.pk])).content.decode()
    reader = client_for(people.pathologist)
    assert url not in reader.get(reverse("task-detail", args=[task.pk])).content.decode()
    _read(task, people.pathologist, "accepted")
    assert url in reader.get(reverse("task-detail", args=[task.pk])).content.decode()


def test_reading_the_history_writes_no_audit_row(people, double, client_for):
    task, *_ = double
    client = client_for(people.admin)  # logging in is audited; reading is not
    before = AuditEvent.objects.count()
    client.get(reverse("task-history", args=[task.pk]))
    assert AuditEvent.objects.count() == before
