"""Signed adjudication: where a project asks for signatures, the adjudicator's final label
carries their signature (21 CFR Part 11 §11.50), confirmed with their password once per
sitting, the same sitting as the review page's."""

from __future__ import annotations

import csv
import io
import json
import time

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.urls import reverse

from annotations import exports, services, signatures
from annotations.models import Adjudication, AuditEvent, ReviewState, Role, Task
from tests.factories import make_drafted_task

pytestmark = pytest.mark.django_db

PASSWORD = "password"  # the personas' (tests/conftest.py)
EDIT = "Benign fibroadenoma, no atypia at all in any of these fields."


def _reader(project, name: str, role: str = Role.PATHOLOGIST):
    user = get_user_model().objects.create_user(name, password=PASSWORD)
    services.membership_set(project=project, user=user, role=role)
    return user


@pytest.fixture
def double(people):
    """`project` read twice per task (by `pathologist` and `reader2`), adjudicated by Ada
    Lovelace, its adjudicator."""
    services.project_reading_settings_set(
        project=people.project, readings_per_task=2, disagreement_words=5
    )
    people.project.refresh_from_db()
    people.reader2 = _reader(people.project, "rosa")  # pathologist of `project`
    people.adjudicator = _reader(people.project, "ada", Role.ADJUDICATOR)  # adjudicator
    people.adjudicator.first_name, people.adjudicator.last_name = "Ada", "Lovelace"
    people.adjudicator.save()
    return people


@pytest.fixture
def signing(double):
    """`double`, whose project asks for a signature on each decision (30-minute sittings)."""
    signatures.project_signature_settings_set(
        project=double.project, required=True, sitting_minutes=30, actor=double.admin
    )
    return double


def disagreement(project, people) -> Task:
    """A task whose two readers disagree: it waits for adjudication."""
    task = make_drafted_task(project)
    for reviewer, decision, text in (
        (people.pathologist, "accepted", ""),
        (people.reader2, "edited", EDIT),
    ):
        services.label_record(
            task_id=task.pk,
            reviewer=reviewer,
            decision=decision,
            draft_id=task.latest_draft().pk,
            text=text,
        )
    assert Task.objects.get(pk=task.pk).review_state == ReviewState.DISAGREEMENT
    return task


def adjudicate(client, task, decision="edited", **fields):
    data = {"decision": decision, "text": "Benign fibroadenoma.", **fields}
    return client.post(reverse("task-adjudicate", args=[task.pk]), data)


def test_without_the_setting_nothing_changes(double, client_for):
    task = disagreement(double.project, double)
    client = client_for(double.adjudicator)
    page = client.get(reverse("task-adjudicate", args=[task.pk])).content.decode()
    assert 'name="password"' not in page and 'id="signature-note"' not in page
    assert adjudicate(client, task).status_code == 302
    adjudication = Adjudication.objects.get(task=task)
    signed = (adjudication.signed_by_name, adjudication.signed_at, adjudication.signature_meaning)
    assert signed == ("", None, "")
    event = AuditEvent.objects.get(action="adjudication.record", task=task)
    assert "signed_by_name" not in event.after
    assert not AuditEvent.objects.filter(action="signature.refused").exists()


def test_the_page_says_what_signing_means_and_asks_for_the_password(signing, client_for):
    task = disagreement(signing.project, signing)
    page = client_for(signing.adjudicator).get(reverse("task-adjudicate", args=[task.pk]))
    html = page.content.decode()
    assert 'type="password" name="password"' in html and 'for="id_password"' in html
    assert signatures.ADJUDICATION_MEANING in html and "§11.50" in html


def test_an_adjudication_without_the_password_is_refused(signing, client_for):
    task = disagreement(signing.project, signing)
    client = client_for(signing.adjudicator)
    response = adjudicate(client, task, text="My final text, typed with care.")
    assert response.status_code == 428
    html = response.content.decode()
    assert signatures.ASKED in html and 'role="alert"' in html
    assert "My final text, typed with care." in html  # what was typed is kept
    assert not Adjudication.objects.filter(task=task).exists()
    assert Task.objects.get(pk=task.pk).review_state == ReviewState.DISAGREEMENT
    assert f"signature-sitting-{signing.project.pk}" not in client.session


def test_a_wrong_password_is_refused_audited_and_keeps_what_was_typed(signing, client_for):
    task = disagreement(signing.project, signing)
    client = client_for(signing.adjudicator)
    response = adjudicate(
        client, task, "rejected", reason="Wrong site entirely.", category="other",
        password="not-my-password",
    )  # fmt: skip
    assert response.status_code == 428
    html = response.content.decode()
    assert "That password is not right" in html and "Wrong site entirely." in html
    assert '<option value="rejected" selected>' in html  # the decision chosen
    assert "not-my-password" not in html
    assert not Adjudication.objects.filter(task=task).exists()
    refused = AuditEvent.objects.get(action="signature.refused")
    assert (refused.actor, refused.task_id, refused.project_id) == (
        signing.adjudicator,
        task.pk,
        signing.project.pk,
    )
    assert refused.reason == "wrong password"
    assert "not-my-password" not in json.dumps([refused.before, refused.after, refused.reason])
    assert f"signature-sitting-{signing.project.pk}" not in client.session
    assert adjudicate(client, task).status_code == 428  # still no sitting


def test_the_right_password_signs_and_records_name_time_and_meaning(signing, client_for):
    task = disagreement(signing.project, signing)
    client = client_for(signing.adjudicator)
    before = time.time()
    response = adjudicate(client, task, password=PASSWORD)
    assert response.status_code == 302
    adjudication = Adjudication.objects.get(task=task)
    assert adjudication.signed_by_name == "Ada Lovelace"
    assert adjudication.signature_meaning == signatures.ADJUDICATION_MEANING
    assert adjudication.signed_at is not None
    assert adjudication.signed_at.timestamp() >= before - 1
    assert Task.objects.get(pk=task.pk).review_state == ReviewState.FINAL
    # The adjudication's audit row carries the signature; never the password.
    event = AuditEvent.objects.get(action="adjudication.record", task=task)
    assert event.after["signed_by_name"] == "Ada Lovelace"
    assert event.after["signature_meaning"] == signatures.ADJUDICATION_MEANING
    assert event.after["signed_at"] == adjudication.signed_at.isoformat()
    assert PASSWORD not in json.dumps([event.after, event.before, event.reason])
    # The page shows who signed the final label, and the next one asks no password.
    page = client.get(reverse("task-adjudicate", args=[task.pk])).content.decode()
    assert 'id="adjudication-signature"' in page and "Signed by Ada Lovelace" in page
    assert 'name="password"' not in page and 'id="signature-note"' in page


def test_a_second_adjudication_in_the_sitting_needs_no_password(signing, client_for, monkeypatch):
    first, second = disagreement(signing.project, signing), disagreement(signing.project, signing)
    client = client_for(signing.adjudicator)
    assert adjudicate(client, first, password=PASSWORD).status_code == 302
    checked = []
    monkeypatch.setattr(
        type(signing.adjudicator), "check_password", lambda self, raw: checked.append(raw)
    )
    assert adjudicate(client, second).status_code == 302
    adjudication = Adjudication.objects.get(task=second)
    assert adjudication.signed_by_name == "Ada Lovelace" and adjudication.signed_at is not None
    assert checked == []


def test_after_the_sitting_the_password_is_asked_again(signing, client_for, monkeypatch):
    first, second = disagreement(signing.project, signing), disagreement(signing.project, signing)
    client = client_for(signing.adjudicator)
    assert adjudicate(client, first, password=PASSWORD).status_code == 302
    later = time.time() + 30 * 60 + 1
    monkeypatch.setattr(signatures, "_clock", lambda: later)
    assert adjudicate(client, second).status_code == 428
    assert not Adjudication.objects.filter(task=second).exists()


def test_a_sitting_started_on_the_review_page_signs_adjudications(signing, client_for):
    """The project's admin reviews and adjudicates: one password for both pages."""
    admin = signing.admin
    reviewed = make_drafted_task(signing.project)
    task = disagreement(signing.project, signing)
    client = client_for(admin)
    data = {"decision": "accepted", "draft_id": reviewed.latest_draft().pk, "password": PASSWORD}
    assert client.post(reverse("task-decide", args=[reviewed.pk]), data).status_code == 302
    page = client.get(reverse("task-adjudicate", args=[task.pk])).content.decode()
    assert 'name="password"' not in page
    assert adjudicate(client, task).status_code == 302
    assert Adjudication.objects.get(task=task).signed_by_name == "alice"


def test_a_sitting_started_on_the_adjudication_page_signs_readings(signing, client_for):
    admin = signing.admin
    task = disagreement(signing.project, signing)
    reviewed = make_drafted_task(signing.project)
    client = client_for(admin)
    assert adjudicate(client, task, password=PASSWORD).status_code == 302
    data = {"decision": "accepted", "draft_id": reviewed.latest_draft().pk}
    assert client.post(reverse("task-decide", args=[reviewed.pk]), data).status_code == 302
    assert reviewed.labels.get().signature_meaning == signatures.MEANING


def test_another_projects_sitting_does_not_count(signing, people, client_for):
    """A sitting is one project's: the adjudicator's password typed elsewhere signs nothing
    here."""
    other = services.project_create(
        name="Second signed", modality="pathology", members=[(signing.adjudicator, "adjudicator")]
    )
    signatures.project_signature_settings_set(
        project=other, required=True, sitting_minutes=30, actor=people.admin
    )
    client = client_for(signing.adjudicator)
    session = client.session
    signatures.sitting_start(session, other)
    session.save()
    task = disagreement(signing.project, signing)
    assert adjudicate(client, task).status_code == 428


def test_outsiders_cannot_adjudicate_with_a_password(signing, people, client_for):
    task = disagreement(signing.project, signing)
    for user, status in (
        (people.other_admin, 404),  # the admin of ANOTHER project
        (people.other_pathologist, 404),
        (people.pathologist, 403),  # a reader of this project: not an adjudicator
    ):
        assert adjudicate(client_for(user), task, password=PASSWORD).status_code == status
    assert not Adjudication.objects.exists()
    assert not AuditEvent.objects.filter(action="signature.refused").exists()


def test_a_revision_once_signatures_are_off_is_unsigned(signing, client_for):
    task = disagreement(signing.project, signing)
    client = client_for(signing.adjudicator)
    adjudicate(client, task, password=PASSWORD)
    signatures.project_signature_settings_set(
        project=signing.project, required=False, sitting_minutes=30, actor=signing.admin
    )
    assert adjudicate(client, task, "accepted").status_code == 302
    adjudication = Adjudication.objects.get(task=task)
    assert adjudication.decision == "accepted" and adjudication.signed_at is None
    assert adjudication.signed_by_name == adjudication.signature_meaning == ""


def test_the_database_refuses_half_a_signature(signing, client_for):
    task = disagreement(signing.project, signing)
    adjudicate(client_for(signing.adjudicator), task, password=PASSWORD)
    with pytest.raises(IntegrityError), transaction.atomic():
        Adjudication.objects.filter(task=task).update(signed_by_name="")


def test_exports_carry_the_adjudicators_signature(signing, client_for):
    task = disagreement(signing.project, signing)
    unsigned = disagreement(signing.project, signing)
    client = client_for(signing.adjudicator)
    adjudicate(client, task, password=PASSWORD)
    signed_at = Adjudication.objects.get(task=task).signed_at
    signatures.project_signature_settings_set(
        project=signing.project, required=False, sitting_minutes=30, actor=signing.admin
    )
    adjudicate(client, unsigned)
    out = io.StringIO()
    exports.write_export(signing.project, out, reviewer_names=True, readings=True)
    rows = {row["task_id"]: row for row in map(json.loads, out.getvalue().splitlines())}
    row = rows[task.pk]
    assert row["final_source"] == "adjudication" and row["reviewer"] == "ada"
    assert row["signed_by_name"] == "Ada Lovelace"
    assert row["signature_meaning"] == signatures.ADJUDICATION_MEANING
    assert row["signed_at"] == signed_at.isoformat()
    # Unsigned readings stay unsigned, and an unsigned adjudication carries no signature.
    assert {r["signed_by_name"] for r in row["readings"]} == {""}
    assert rows[unsigned.pk]["signed_by_name"] == "" and rows[unsigned.pk]["signed_at"] is None
    for history in (False, True):
        out = io.StringIO()
        exports.write_export(signing.project, out, format="csv", history=history)
        csv_rows = {int(r["task_id"]): r for r in csv.DictReader(io.StringIO(out.getvalue()))}
        assert csv_rows[task.pk]["signed_by_name"] == "Ada Lovelace"
        assert csv_rows[task.pk]["signed_at"] == signed_at.isoformat()
        assert csv_rows[task.pk]["signature_meaning"] == signatures.ADJUDICATION_MEANING
        assert csv_rows[unsigned.pk]["signed_by_name"] == ""


def test_the_adjudicators_signature_is_not_the_first_readers(signing, client_for):
    """The first reading, signed by its reader, and the adjudication, unsigned: the final
    row carries no signature rather than the reader's."""
    signatures.project_signature_settings_set(
        project=signing.project, required=False, sitting_minutes=30, actor=signing.admin
    )
    task = make_drafted_task(signing.project)
    services.label_record(
        task_id=task.pk,
        reviewer=signing.pathologist,
        decision="accepted",
        draft_id=task.latest_draft().pk,
        signature=services.Signature("Paul Brun", task.created_at, signatures.MEANING),
    )
    services.label_record(
        task_id=task.pk,
        reviewer=signing.reader2,
        decision="edited",
        draft_id=task.latest_draft().pk,
        text=EDIT,
    )
    adjudicate(client_for(signing.adjudicator), task)
    (row,) = exports.label_rows(signing.project)
    assert row["final_source"] == "adjudication"
    assert (row["signed_by_name"], row["signed_at"], row["signature_meaning"]) == ("", None, "")


def test_the_history_shows_who_signed_the_adjudication(signing, people, client_for):
    signing.adjudicator.first_name = "<script>alert(1)</script>"
    signing.adjudicator.save()
    task = disagreement(signing.project, signing)
    adjudicate(client_for(signing.adjudicator), task, password=PASSWORD)
    signed_at = Adjudication.objects.get(task=task).signed_at
    for user in (people.admin, signing.adjudicator, people.pathologist):
        response = client_for(user).get(reverse("task-history", args=[task.pk]))
        html = response.content.decode()
        entry = html[html.index('<li class="timeline-adjudication">') :]
        entry = entry[: entry.index("</li>")]
        assert "Signed by &lt;script&gt;alert(1)&lt;/script&gt; Lovelace" in entry
        assert signatures.ADJUDICATION_MEANING in entry
        assert f'datetime="{signed_at.isoformat()}"' in entry
        assert "<script>alert(1)" not in html
    # Outsiders see no history at all.
    for user in (people.other_admin, people.outsider):
        assert client_for(user).get(reverse("task-history", args=[task.pk])).status_code == 404
