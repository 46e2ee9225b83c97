"""Sentinels: check drafts with a deliberate error in the claimed queue (automation bias).

A reader does not know which drafts are sentinels; the answer comes after the decision. A
decision on a sentinel is a SentinelReading, never a label, and leaves the task as it was.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.urls import reverse

from annotations import sentinels, services
from annotations.models import (
    AuditEvent,
    Claim,
    Label,
    Project,
    Role,
    Sentinel,
    SentinelReading,
    Task,
    TaskState,
)
from tests.factories import SETTINGS_FORM, make_drafted_task
from tests.test_conflicts import form_of

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "decision"}
DRAFT = "Invasive ductal carcinoma, grade 2."
ALTERED = "Invasive ductal carcinoma, grade 2. Lymphovascular invasion in the left breast."
NOTE = "a finding the slide does not show was added"
REVEAL = "This was a check draft"


@pytest.fixture
def task(people):
    return make_drafted_task(people.project, text=DRAFT)


@pytest.fixture
def sentinel(people, task):
    return sentinels.sentinel_create(
        project=people.project,
        task=task,
        text=ALTERED,
        expected="reject",
        note=NOTE,
        actor=people.admin,
    )


def _reader(people, name: str, *, due: bool, decided: int = 0):
    """A pathologist of `project` whose first queue item is (or is not) drawn as a sentinel
    at a share of 0.5: the draw is deterministic, so pick a reader it falls on."""
    for n in range(64):
        user = get_user_model().objects.create_user(f"{name}{n}", password="password")
        if (sentinels._draw(people.project.pk, user.pk, decided) < 0.5) == due:
            services.membership_set(project=people.project, user=user, role=Role.PATHOLOGIST)
            return user
        user.delete()
    raise AssertionError("no reader found for the draw")


@pytest.fixture
def reader(people, sentinel):
    Project.objects.filter(pk=people.project.pk).update(sentinel_share=0.5)
    return _reader(people, "reader", due=True)


def start(client, project, **extra):
    return client.post(reverse("review-start", args=[project.pk]), **extra)


def open_page(client, task):
    return client.get(reverse("task-detail", args=[task.pk]))


def decide(client, task, form, decision, extra=None, **fields):
    data = form | {"decision": decision} | fields
    return client.post(reverse("task-decide", args=[task.pk]), data, **(extra or {}))


# The admin page --------------------------------------------------------------------------


def test_an_admin_creates_a_sentinel_from_a_task(people, client_for, task):
    services.label_record(
        task_id=task.pk,
        reviewer=people.pathologist,
        decision="edited",
        draft_id=task.latest_draft().pk,
        text="Fibroadenoma.",
    )
    client = client_for(people.admin)
    url = reverse("project-sentinels", args=[people.project.pk])
    page = client.get(url, {"task": task.pk}).content.decode()
    assert "Fibroadenoma." in page  # the validated label's text, to alter
    data = {"task": task.pk, "text": "Fibroadenoma, malignant.", "expected": "edit", "note": NOTE}
    response = client.post(url, data)
    assert response.status_code == 302
    sentinel = Sentinel.objects.get()
    assert (sentinel.task, sentinel.expected, sentinel.created_by) == (task, "edit", people.admin)
    assert AuditEvent.objects.filter(action="sentinel.create").count() == 1
    assert "Fibroadenoma, malignant." in client.get(url).content.decode()


def test_a_sentinel_must_alter_the_draft(people, client_for, task):
    client = client_for(people.admin)
    url = reverse("project-sentinels", args=[people.project.pk])
    data = {"task": task.pk, "text": DRAFT, "expected": "reject", "note": NOTE}
    response = client.post(url, data)
    assert response.status_code == 422 and "alter it" in response.content.decode()
    other = make_drafted_task(people.other_project)
    response = client.post(url, data | {"task": other.pk, "text": ALTERED})
    assert response.status_code == 422 and "No such task" in response.content.decode()
    assert not Sentinel.objects.exists()


@pytest.mark.parametrize(
    "persona, status",
    [("pathologist", 403), ("researcher", 403), ("other_admin", 404), ("outsider", 404)],
)
def test_only_the_projects_admins_create_sentinels(people, client_for, task, persona, status):
    client = client_for(getattr(people, persona))
    url = reverse("project-sentinels", args=[people.project.pk])
    data = {"task": task.pk, "text": ALTERED, "expected": "reject", "note": NOTE}
    assert client.post(url, data).status_code == status
    assert client.get(url).status_code == status
    assert not Sentinel.objects.exists()


def test_the_share_is_validated_once(people, client_for):
    client = client_for(people.admin)
    url = reverse("project-settings", args=[people.project.pk])
    response = client.post(url, SETTINGS_FORM | {"sentinel_share": "0.6"})
    assert "goes from 0 to 0.5" in response.content.decode()
    assert client.post(url, SETTINGS_FORM | {"sentinel_share": "0.25"}).status_code == 302
    people.project.refresh_from_db()
    assert people.project.sentinel_share == 0.25
    assert AuditEvent.objects.filter(action="project.sentinel_share").count() == 1
    people.project.sentinel_share = 0.9
    with pytest.raises(ValidationError):
        people.project.full_clean()
    with pytest.raises(ValueError):
        sentinels.project_sentinel_share_set(project=people.project, share=-0.1)
    with pytest.raises(IntegrityError), transaction.atomic():
        Project.objects.filter(pk=people.project.pk).update(sentinel_share=0.9)


# The queue -------------------------------------------------------------------------------


def test_a_share_of_zero_never_serves_a_sentinel(people, client_for, sentinel, task):
    assert people.project.sentinel_share == 0
    for reviewer in (people.pathologist, people.admin):
        assert sentinels.sentinel_for(project=people.project, reviewer=reviewer) is None
    response = start(client_for(people.pathologist), people.project)
    assert response["Location"] == reverse("task-detail", args=[task.pk])
    page = open_page(client_for(people.pathologist), task).content.decode()
    assert DRAFT in page and ALTERED not in page


def test_a_forced_share_serves_each_sentinel_once_per_reader(people, sentinel):
    project = people.project
    served = sentinels.sentinel_for(project=project, reviewer=people.pathologist, share=1.0)
    assert served == sentinel
    sentinels.sentinel_reading_record(
        sentinel=sentinel, reviewer=people.pathologist, decision="accepted"
    )
    assert sentinels.sentinel_for(project=project, reviewer=people.pathologist, share=1.0) is None
    assert sentinels.sentinel_for(project=project, reviewer=people.admin, share=1.0) == sentinel


def test_the_draw_is_repeatable_and_near_the_share(people):
    draws = [sentinels._draw(people.project.pk, people.pathologist.pk, n) for n in range(2000)]
    again = [sentinels._draw(people.project.pk, people.pathologist.pk, n) for n in range(2000)]
    assert draws == again and all(0 <= d < 1 for d in draws)
    assert 0.2 < sum(d < 0.25 for d in draws) / len(draws) < 0.3


def test_the_reader_sees_the_sentinel_as_the_draft_and_nothing_tells(
    people, client_for, reader, sentinel, task
):
    client = client_for(reader)
    response = start(client, people.project)
    assert response["Location"] == reverse("task-detail", args=[task.pk])
    assert not Claim.objects.filter(task=task).exists()  # the real task stays in the pool
    page = open_page(client, task).content.decode()
    assert ALTERED in page and DRAFT + "<" not in page
    for tell in ("sentinel", "check draft", NOTE, REVEAL):
        assert tell.lower() not in page.lower(), tell
    # Starting again (a reload, a second tab) shows the same sentinel.
    assert start(client, people.project)["Location"] == reverse("task-detail", args=[task.pk])


def test_the_queue_serves_the_sentinel_through_htmx(people, client_for, reader, task):
    response = start(client_for(reader), people.project, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and response["HX-Retarget"] == "#review-area"
    assert ALTERED in response.content.decode() and REVEAL not in response.content.decode()


@pytest.mark.parametrize(
    "decision, fields, caught",
    [
        ("rejected", {"reason": "Not on the slide.", "category": "hallucinated finding"}, True),
        ("edited", {"text": DRAFT}, True),
        ("accepted", {}, False),
        ("edited", {"text": ALTERED + "  "}, False),  # an edit that changes nothing
    ],
    ids=["reject", "edit", "accept", "unchanged-edit"],
)
@pytest.mark.parametrize("extra", [{}, HTMX], ids=["plain", "htmx"])
def test_the_decision_is_revealed_and_recorded_never_as_a_label(
    people, client_for, reader, sentinel, task, decision, fields, caught, extra
):
    client = client_for(reader)
    start(client, people.project)
    form = form_of(open_page(client, task))
    assert form["text"] == ALTERED
    audited = list(AuditEvent.objects.filter(task=task))
    response = decide(client, task, form, decision, extra=extra, **fields)
    assert response.status_code == 200
    body = response.content.decode()
    assert REVEAL in body and NOTE in body
    assert ("You caught it." in body) == caught and ("You accepted it." in body) != caught
    reading = SentinelReading.objects.get()
    assert (reading.sentinel, reading.reviewer, reading.decision, reading.caught) == (
        sentinel,
        reader,
        decision,
        caught,
    )
    assert not Label.objects.exists()
    assert Task.objects.get(pk=task.pk).state == TaskState.DRAFTED
    assert list(AuditEvent.objects.filter(task=task)) == audited
    # The same form posted again is the same reading, never a label.
    again = decide(client, task, form, "accepted", extra=extra)
    assert again.status_code == 200 and REVEAL in again.content.decode()
    assert SentinelReading.objects.count() == 1 and not Label.objects.exists()
    # Then the queue goes on with the real task and its real draft.
    assert start(client, people.project)["Location"] == reverse("task-detail", args=[task.pk])
    page = open_page(client, task).content.decode()
    assert DRAFT in page and ALTERED not in page


def test_a_sentinel_on_a_task_the_reader_labelled_hides_and_keeps_the_label(
    people, client_for, sentinel, task
):
    Project.objects.filter(pk=people.project.pk).update(sentinel_share=0.5)
    # The draw counts the reader's decisions: this reader's is due after their one label.
    reader = _reader(people, "labeller", due=True, decided=1)
    services.label_record(
        task_id=task.pk, reviewer=reader, decision="accepted", draft_id=task.latest_draft().pk
    )
    client = client_for(reader)
    start(client, people.project)
    page = open_page(client, task)
    assert "Saved:" not in page.content.decode() and form_of(page)["label_revision"] == "0"
    fields = {"reason": "Not on the slide.", "category": "other"}
    assert decide(client, task, form_of(page), "rejected", **fields).status_code == 200
    label = Label.objects.get()
    assert (label.decision, label.revision) == ("accepted", 1)
    assert Task.objects.get(pk=task.pk).outcome == "accepted"


def test_the_catch_rate_of_each_reader_is_shown(people, client_for, sentinel):
    second = sentinels.sentinel_create(
        project=people.project,
        task=make_drafted_task(people.project),
        text="Benign.",
        expected="edit",
        note="the grade was dropped",
    )
    record = sentinels.sentinel_reading_record
    record(sentinel=sentinel, reviewer=people.pathologist, decision="rejected")
    record(sentinel=second, reviewer=people.pathologist, decision="accepted")
    record(sentinel=sentinel, reviewer=people.admin, decision="edited", text="Carcinoma.")
    rates = {
        r.reviewer: (r.read, r.caught, r.percent)
        for r in sentinels.sentinel_catch_rates(people.project)
    }
    assert rates == {"paul": (2, 1, 50), "alice": (1, 1, 100)}
    page = client_for(people.admin).get(reverse("project-sentinels", args=[people.project.pk]))
    rows = [" ".join(r.split()) for r in page.content.decode().split("<tr>")]
    assert any("<td>paul</td><td>2</td><td>1</td><td>50%</td>" in r for r in rows)
    assert any("<td>alice</td><td>1</td><td>1</td><td>100%</td>" in r for r in rows)


def test_exports_never_contain_sentinel_text(people, client_for, reader, sentinel, task):
    client = client_for(reader)
    start(client, people.project)
    decide(client, task, form_of(open_page(client, task)), "accepted")  # the sentinel, missed
    start(client, people.project)
    decide(client, task, form_of(open_page(client, task)), "accepted")  # the real draft
    assert Label.objects.get().text == DRAFT
    response = client_for(people.admin).get(reverse("project-export", args=[people.project.pk]))
    body = b"".join(response.streaming_content).decode()
    assert DRAFT in body
    assert ALTERED not in body and NOTE not in body
