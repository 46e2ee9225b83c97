"""Signed validation: where a project asks for it, each decision carries its reader's
signature (21 CFR Part 11 §11.50), confirmed with their password once per sitting."""

from __future__ import annotations

import csv
import io
import json
import time

import pytest
from django.urls import reverse

from annotations import exports, services, signatures
from annotations.models import AuditEvent, Label, Project
from tests.factories import SETTINGS_FORM, make_drafted_task

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "decision"}
PASSWORD = "password"  # the personas' (tests/conftest.py)


@pytest.fixture
def signing(people):
    """`project` asks for a signature on each decision, with 30-minute sittings; Paul, its
    pathologist, has a full name."""
    signatures.project_signature_settings_set(
        project=people.project, required=True, sitting_minutes=30, actor=people.admin
    )
    people.pathologist.first_name, people.pathologist.last_name = "Paul", "Brun"
    people.pathologist.save()
    return people.project


def decide(client, task, decision="accepted", *, htmx=True, **fields):
    data = {"decision": decision, "draft_id": task.latest_draft().pk, "queue": "1", **fields}
    return client.post(reverse("task-decide", args=[task.pk]), data, **(HTMX if htmx else {}))


def reviewing(client, project):
    """The reviewer starts the queue: they hold its first task."""
    client.post(reverse("review-start", args=[project.pk]))
    return client


def test_without_the_setting_nothing_changes(people, client_for):
    task = make_drafted_task(people.project)
    client = reviewing(client_for(people.pathologist), people.project)
    page = client.get(reverse("task-detail", args=[task.pk])).content.decode()
    assert 'name="password"' not in page
    assert decide(client, task).status_code == 200
    label = Label.objects.get(task=task)
    assert (label.signed_by_name, label.signed_at, label.signature_meaning) == ("", None, "")


def test_the_page_says_what_signing_means_and_asks_for_the_password(signing, people, client_for):
    task = make_drafted_task(signing)
    page = client_for(people.pathologist).get(reverse("task-detail", args=[task.pk]))
    html = page.content.decode()
    assert 'type="password" name="password"' in html
    assert signatures.MEANING in html and "§11.50" in html


def test_the_first_decision_without_the_password_is_asked_for_it(signing, people, client_for):
    task = make_drafted_task(signing)
    client = reviewing(client_for(people.pathologist), signing)
    response = decide(client, task, "edited", text="My edited text.")
    assert response.status_code == 428
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="decision"')
    assert "My edited text." in html  # what was typed is kept
    assert 'id="sign"' in html and 'value="edited"' in html and "autofocus" in html
    assert not Label.objects.filter(task=task).exists()
    assert not AuditEvent.objects.filter(action="signature.refused").exists()


def test_the_right_password_signs_and_starts_the_sitting(signing, people, client_for):
    task, _next = make_drafted_task(signing), make_drafted_task(signing)
    client = reviewing(client_for(people.pathologist), signing)
    before = time.time()
    response = decide(client, task, password=PASSWORD)
    assert response.status_code == 200
    label = Label.objects.get(task=task)
    assert label.signed_by_name == "Paul Brun"
    assert label.signature_meaning == "reviewed and approved as accurate"
    assert label.signed_at is not None and label.signed_at.timestamp() >= before - 1
    until = client.session[f"signature-sitting-{signing.pk}"]
    assert 29 * 60 < until - before <= 30 * 60 + 5
    # The audit row of the decision carries the signature; never the password.
    event = AuditEvent.objects.get(action="label.record", task=task)
    assert event.after["signed_by_name"] == "Paul Brun"
    assert PASSWORD not in json.dumps([event.after, event.before, event.reason])
    # The next task's form asks for no password: the sitting runs.
    assert 'name="password"' not in response.content.decode()
    assert 'id="signature-note"' in response.content.decode()


def test_decisions_within_the_sitting_need_no_password_and_take_the_fast_path(
    signing, people, client_for, monkeypatch
):
    tasks = [make_drafted_task(signing) for _ in range(3)]
    client = reviewing(client_for(people.pathologist), signing)
    assert decide(client, tasks[0], password=PASSWORD).status_code == 200
    fast = []
    original = services.decide_locked
    monkeypatch.setattr(
        services, "decide_locked", lambda **kw: fast.append(kw["task"].pk) or original(**kw)
    )
    checked = []
    monkeypatch.setattr(
        type(people.pathologist), "check_password", lambda self, raw: checked.append(raw)
    )
    for task in tasks[1:]:
        assert decide(client, task).status_code == 200
        label = Label.objects.get(task=task)
        assert label.signed_by_name == "Paul Brun" and label.signed_at is not None
    assert fast == [t.pk for t in tasks[1:]] and checked == []


def test_after_the_sitting_the_password_is_asked_again(signing, people, client_for, monkeypatch):
    first, second = make_drafted_task(signing), make_drafted_task(signing)
    client = reviewing(client_for(people.pathologist), signing)
    assert decide(client, first, password=PASSWORD).status_code == 200
    later = time.time() + 30 * 60 + 1
    monkeypatch.setattr(signatures, "_clock", lambda: later)
    response = decide(client, second)
    assert response.status_code == 428
    assert not Label.objects.filter(task=second).exists()
    assert decide(client, second, password=PASSWORD).status_code == 200
    assert Label.objects.get(task=second).signed_at is not None


def test_a_wrong_password_is_refused_audited_and_starts_nothing(signing, people, client_for):
    task = make_drafted_task(signing)
    client = reviewing(client_for(people.pathologist), signing)
    response = decide(client, task, "rejected", reason="Wrong site.", category="other",
                      password="not-my-password")  # fmt: skip
    assert response.status_code == 428
    html = response.content.decode()
    assert "That password is not right" in html and "Wrong site." in html
    assert "not-my-password" not in html
    assert not Label.objects.filter(task=task).exists()
    refused = AuditEvent.objects.get(action="signature.refused")
    assert (refused.actor, refused.task_id, refused.project_id) == (
        people.pathologist,
        task.pk,
        signing.pk,
    )
    stored = json.dumps([refused.before, refused.after, refused.reason])
    assert "not-my-password" not in stored
    assert f"signature-sitting-{signing.pk}" not in client.session
    # Still no sitting: the next try without a password is asked again.
    assert decide(client, task).status_code == 428


def test_logging_out_ends_the_sitting(signing, people, client_for):
    first, second = make_drafted_task(signing), make_drafted_task(signing)
    client = reviewing(client_for(people.pathologist), signing)
    assert decide(client, first, password=PASSWORD).status_code == 200
    client.post(reverse("logout"))
    client.force_login(people.pathologist)
    assert decide(client, second).status_code == 428


def test_the_sitting_is_one_projects(signing, people, client_for):
    other = services.project_create(
        name="Second signed", modality="pathology", members=[(people.pathologist, "pathologist")]
    )
    signatures.project_signature_settings_set(
        project=other, required=True, sitting_minutes=30, actor=people.admin
    )
    here, there = make_drafted_task(signing), make_drafted_task(other)
    client = client_for(people.pathologist)
    assert decide(client, here, password=PASSWORD, htmx=False).status_code == 302
    assert decide(client, there, htmx=False).status_code == 428


def test_without_javascript_the_plain_form_signs(signing, people, client_for):
    task = make_drafted_task(signing)
    client = client_for(people.pathologist)
    response = decide(client, task, htmx=False)
    assert response.status_code == 428
    html = response.content.decode()
    assert "<html" in html and 'type="password" name="password"' in html
    response = decide(client, task, htmx=False, password=PASSWORD)
    assert response.status_code == 302
    assert Label.objects.get(task=task).signed_by_name == "Paul Brun"


def test_a_user_without_a_full_name_signs_with_their_username(signing, people, client_for):
    people.pathologist.first_name = people.pathologist.last_name = ""
    people.pathologist.save()
    task = make_drafted_task(signing)
    assert decide(client_for(people.pathologist), task, htmx=False, password=PASSWORD)
    assert Label.objects.get(task=task).signed_by_name == "paul"


def test_a_revision_once_signatures_are_off_is_unsigned(signing, people, client_for):
    task = make_drafted_task(signing)
    client = client_for(people.pathologist)
    decide(client, task, htmx=False, password=PASSWORD)
    signatures.project_signature_settings_set(
        project=signing, required=False, sitting_minutes=30, actor=people.admin
    )
    decide(client, task, "edited", htmx=False, text="Changed.", label_revision=1)
    label = Label.objects.get(task=task)
    assert label.decision == "edited" and label.signed_at is None and label.signed_by_name == ""


def test_exports_carry_the_signature(signing, people, client_for):
    task = make_drafted_task(signing)
    decide(client_for(people.pathologist), task, htmx=False, password=PASSWORD)
    out = io.StringIO()
    exports.write_export(signing, out, reviewer_names=True)
    row = json.loads(out.getvalue())
    assert row["signed_by_name"] == "Paul Brun"
    assert row["signature_meaning"] == signatures.MEANING and row["signed_at"]
    out = io.StringIO()
    exports.write_export(signing, out, format="csv", history=True)
    (csv_row,) = csv.DictReader(io.StringIO(out.getvalue()))
    assert csv_row["signed_by_name"] == "Paul Brun" and csv_row["signed_at"].startswith("20")


def test_an_admin_sets_it_on_the_settings_page(people, client_for):
    client = client_for(people.admin)
    url = reverse("project-settings", args=[people.project.pk])
    page = client.get(url).content.decode()
    assert "Require a signature on each decision" in page and signatures.MEANING in page
    form = SETTINGS_FORM | {"signature_required": "on", "signature_sitting_minutes": "45"}
    assert client.post(url, form).status_code == 302
    project = Project.objects.get(pk=people.project.pk)
    assert (project.signature_required, project.signature_sitting_minutes) == (True, 45)
    event = AuditEvent.objects.get(action="project.signature_settings")
    assert event.actor == people.admin and event.after["signature_sitting_minutes"] == 45
    # An older page without the fields keeps them.
    assert client.post(url, SETTINGS_FORM).status_code == 302
    assert Project.objects.get(pk=people.project.pk).signature_required


@pytest.mark.parametrize("minutes", ["0", "-5", "100000", "soon"])
def test_a_bad_sitting_length_is_refused(people, client_for, minutes):
    client = client_for(people.admin)
    url = reverse("project-settings", args=[people.project.pk])
    form = SETTINGS_FORM | {"signature_required": "on", "signature_sitting_minutes": minutes}
    assert client.post(url, form).status_code == 200  # the form again, with the error
    assert not Project.objects.get(pk=people.project.pk).signature_required


def test_a_pathologist_cannot_turn_it_off(signing, people, client_for):
    url = reverse("project-settings", args=[signing.pk])
    form = SETTINGS_FORM | {"signature_sitting_minutes": "30"}
    assert client_for(people.pathologist).post(url, form).status_code == 403
    assert client_for(people.other_admin).post(url, form).status_code == 404
    assert Project.objects.get(pk=signing.pk).signature_required


def test_a_signed_reading_shows_its_signature_in_the_history(signing, people, client_for):
    people.pathologist.first_name = "<script>alert(1)</script>"
    people.pathologist.save()
    task = make_drafted_task(signing)
    decide(client_for(people.pathologist), task, htmx=False, password=PASSWORD)
    html = client_for(people.admin).get(reverse("task-history", args=[task.pk])).content
    html = html.decode()
    assert "Signed by &lt;script&gt;alert(1)&lt;/script&gt; Brun" in html
    assert signatures.MEANING in html and "<script>alert(1)" not in html


def test_the_next_task_rendered_ahead_asks_for_no_password_after_signing(
    signing, people, client_for
):
    first, second = make_drafted_task(signing), make_drafted_task(signing)
    client = reviewing(client_for(people.pathologist), signing)
    ahead = client.post(
        reverse("review-ahead", args=[signing.pk]), {"after": str(first.pk)}, **HTMX
    )
    assert ahead.status_code == 204
    response = decide(client, first, password=PASSWORD)
    assert response.status_code == 200
    body = response.content.decode()
    assert f'data-task="{second.pk}"' in body
    assert 'name="password"' not in body and 'id="signature-note"' in body


def test_undo_gives_back_the_earlier_versions_own_signature(signing, people, client_for):
    task = make_drafted_task(signing)
    client = client_for(people.pathologist)
    decide(client, task, htmx=False, password=PASSWORD)
    signed_at = Label.objects.get(task=task).signed_at
    signatures.project_signature_settings_set(
        project=signing, required=False, sitting_minutes=30, actor=people.admin
    )
    decide(client, task, "edited", htmx=False, text="Changed.", label_revision=1)
    assert Label.objects.get(task=task).signed_at is None
    services.label_undo(task_id=task.pk, reviewer=people.pathologist)
    label = Label.objects.get(task=task)
    assert label.decision == "accepted" and label.signed_by_name == "Paul Brun"
    assert label.signed_at == signed_at
