"""Decisions made on stale state: a second tab, the Back button, a duplicate submission.

Every decision names the draft and the label revision it was made on; a decision on stale
state is refused with 409 and the current state, a repost of the same form is one decision.
"""

from __future__ import annotations

import uuid
from html.parser import HTMLParser

import pytest
from django.urls import reverse

from annotations import services
from annotations.models import AuditEvent, Label, TaskState
from tests.factories import make_drafted_task, record_draft

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "decision"}
ELSEWHERE = "You decided this task again elsewhere"


class _DecisionForm(HTMLParser):
    """The fields of #decision-form as a browser would post them (less the buttons)."""

    def __init__(self):
        super().__init__()
        self.fields: dict[str, str] = {}
        self._inside = self._textarea = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and attrs.get("id") == "decision-form":
            self._inside = True
        elif self._inside and tag == "input" and attrs.get("name"):
            self.fields[attrs["name"]] = attrs.get("value") or ""
        elif self._inside and tag == "textarea":
            self._textarea = attrs["name"]
            self.fields[self._textarea] = ""

    def handle_data(self, data):
        if self._textarea:
            self.fields[self._textarea] += data

    def handle_endtag(self, tag):
        if tag == "form":
            self._inside = False
        elif tag == "textarea":
            self._textarea = False


def form_of(response) -> dict[str, str]:
    parser = _DecisionForm()
    parser.feed(response.content.decode())
    assert parser.fields, "no decision form in the response"
    parser.fields.pop("csrfmiddlewaretoken", None)
    # A textarea's first newline is not part of its value.
    parser.fields["text"] = parser.fields.get("text", "").removeprefix("\n")
    return parser.fields


def page(client, task) -> dict[str, str]:
    return form_of(client.get(reverse("task-detail", args=[task.pk])))


def decide(client, task, form, decision, extra=None, **fields):
    data = form | {"decision": decision} | fields
    return client.post(reverse("task-decide", args=[task.pk]), data, **(extra or {}))


def records(task) -> int:
    return AuditEvent.objects.filter(task=task, action="label.record").count()


@pytest.fixture
def task(people):
    return make_drafted_task(people.project, text="Invasive ductal carcinoma, grade 2.")


@pytest.fixture
def client(people, client_for):
    return client_for(people.pathologist)


def test_the_form_carries_the_label_revision_and_a_fresh_client_id(client, task):
    first, second = page(client, task), page(client, task)
    assert first["label_revision"] == "0" and first["draft_id"] == str(task.latest_draft().pk)
    assert uuid.UUID(first["client_id"]) != uuid.UUID(second["client_id"])


def test_a_second_tab_cannot_overwrite_the_first_tabs_decision(client, task):
    tab1, tab2 = page(client, task), page(client, task)
    assert decide(client, task, tab1, "accepted").status_code == 302
    response = decide(client, task, tab2, "edited", text="Fibroadenoma, seen in tab two.")
    assert response.status_code == 409
    body = response.content.decode()
    assert ELSEWHERE in body
    assert "Saved now: <strong>Accepted</strong>" in body
    assert form_of(response)["text"] == "Fibroadenoma, seen in tab two."  # kept to reuse
    label = Label.objects.get(task=task)
    assert (label.decision, label.text) == ("accepted", "Invasive ductal carcinoma, grade 2.")
    assert records(task) == 1


def test_the_back_button_cannot_replace_a_saved_edit_silently(client, task):
    old = page(client, task)
    assert decide(client, task, old, "edited", text="Fibroadenoma.").status_code == 302
    # Back: the old page, still showing the task as undecided, and its form posts accept.
    response = decide(client, task, old, "accepted")
    assert response.status_code == 409
    assert ELSEWHERE in response.content.decode()
    assert "Saved now: <strong>Edited</strong>: “Fibroadenoma.”" in response.content.decode()
    label = Label.objects.get(task=task)
    assert (label.decision, label.text, label.revision) == ("edited", "Fibroadenoma.", 1)
    # Having read what is saved, the reviewer accepts deliberately: the fresh form works.
    fresh = form_of(response)
    assert fresh["label_revision"] == "1" and fresh["client_id"] != old["client_id"]
    assert fresh["text"] == "Fibroadenoma."  # what is saved, not the stale page's draft text
    assert decide(client, task, fresh, "accepted").status_code == 302
    label.refresh_from_db()
    assert (label.decision, label.revision) == ("accepted", 2)
    assert records(task) == 2


def test_a_post_without_a_revision_cannot_overwrite_a_decision(client, task):
    draft_id = task.latest_draft().pk
    url = reverse("task-decide", args=[task.pk])
    assert client.post(url, {"decision": "accepted", "draft_id": draft_id}).status_code == 302
    data = {"decision": "edited", "draft_id": draft_id, "text": "Other."}
    assert client.post(url, data).status_code == 409
    assert Label.objects.get(task=task).decision == "accepted"


@pytest.mark.parametrize("extra", [{}, HTMX], ids=["plain", "htmx"])
def test_a_duplicate_submission_is_one_decision(client, task, extra):
    form = page(client, task)
    first = decide(client, task, form, "edited", text="Fibroadenoma.", extra=extra)
    again = decide(client, task, form, "edited", text="Fibroadenoma.", extra=extra)
    assert first.status_code == again.status_code == (200 if extra else 302)
    assert first.get("Location") == again.get("Location")
    if extra:
        assert "Saved: <strong>Edited</strong>" in again.content.decode()
    label = Label.objects.get(task=task)
    assert (label.decision, label.revision) == ("edited", 1)
    assert records(task) == 1


def test_another_decision_from_the_same_old_form_is_a_conflict(client, task):
    # Not a repeat: the form was shown before the label it would replace.
    form = page(client, task)
    assert decide(client, task, form, "accepted", extra=HTMX).status_code == 200
    response = decide(
        client, task, form, "rejected", reason="Wrong organ.", category="other", extra=HTMX
    )
    assert response.status_code == 409
    assert form_of(response)["reason"] == "Wrong organ."  # kept to reuse
    assert Label.objects.get(task=task).decision == "accepted"
    assert records(task) == 1


def test_a_repeated_decision_with_pointers_is_one_decision(client, task):
    regions = (
        '[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": '
        "[[[1, 1], [11, 1], [11, 11], [1, 11], [1, 1]]]}, "
        '"properties": {"note": " a note ", "kind": "rectangle"}}]'
    )
    form = page(client, task) | {"regions": regions}
    assert decide(client, task, form, "accepted", extra=HTMX).status_code == 200
    assert decide(client, task, form, "accepted", extra=HTMX).status_code == 200
    assert Label.objects.get(task=task).revision == 1 and records(task) == 1


def test_review_pages_are_never_cached(client, task):
    form = page(client, task)
    responses = [
        client.get(reverse("task-detail", args=[task.pk])),
        decide(client, task, form, "accepted", extra=HTMX),  # 200
        decide(client, task, form | {"client_id": str(uuid.uuid4())}, "accepted"),  # 409
        decide(client, task, form, "rejected", extra=HTMX),  # 422: no reason
    ]
    assert [r.status_code for r in responses] == [200, 200, 409, 422]
    for response in responses:
        assert "no-store" in response["Cache-Control"]


def test_a_decision_on_a_redrafted_task_is_a_conflict(client, task):
    old = page(client, task)
    services.task_transition(task_id=task.pk, to=TaskState.QUEUED, reason="redraft")
    record_draft(task, text="Fibroadenoma, second draft.")
    response = decide(client, task, old, "accepted", extra=HTMX)
    assert response.status_code == 409
    body = response.content.decode()
    assert "newer draft" in body and "Fibroadenoma, second draft." in body
    assert not Label.objects.exists()
    # The panel's fresh form judges the current draft.
    fresh = form_of(response)
    assert fresh["draft_id"] == str(task.latest_draft().pk)
    assert decide(client, task, fresh, "accepted", extra=HTMX).status_code == 200
    assert Label.objects.get(task=task).text == "Fibroadenoma, second draft."


def test_an_htmx_conflict_answers_with_the_decision_partial(client, task):
    tab1, tab2 = page(client, task), page(client, task)
    decide(client, task, tab1, "rejected", reason="Wrong organ.", category="other", extra=HTMX)
    response = decide(client, task, tab2, "edited", text="Typed in tab two.", extra=HTMX)
    assert response.status_code == 409
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="decision"')
    assert ELSEWHERE in body and "Saved: <strong>Rejected</strong>" in body
    fresh = form_of(response)
    assert (fresh["text"], fresh["label_revision"]) == ("Typed in tab two.", "1")
    assert decide(client, task, fresh, "edited", extra=HTMX).status_code == 200
    label = Label.objects.get(task=task)
    assert (label.decision, label.text, label.revision) == ("edited", "Typed in tab two.", 2)


def test_the_revision_bumps_on_each_change(people, task):
    draft_id = task.latest_draft().pk
    record = dict(task_id=task.pk, reviewer=people.pathologist, draft_id=draft_id)
    revisions = []
    for n, decision in enumerate(["accepted", "edited", "accepted"]):
        label = services.label_record(
            **record, decision=decision, text="Better.", label_revision=n, client_id=uuid.uuid4()
        )
        revisions.append(label.revision)
    assert revisions == [1, 2, 3]
    events = AuditEvent.objects.filter(task=task, action="label.record").order_by("id")
    assert [e.after["revision"] for e in events] == [1, 2, 3]


def test_the_service_refuses_a_stale_revision(people, task):
    record = dict(task_id=task.pk, reviewer=people.pathologist, draft_id=task.latest_draft().pk)
    with pytest.raises(services.ReviewConflict):
        services.label_record(**record, decision="accepted", label_revision=1)  # no label yet
    services.label_record(**record, decision="accepted")
    with pytest.raises(services.ReviewConflict, match=ELSEWHERE):
        services.label_record(**record, decision="edited", text="X.", label_revision=0)
    with pytest.raises(services.ReviewConflict):
        services.label_record(**record, decision="edited", text="X.", label_revision=2)
    assert Label.objects.get(task=task).decision == "accepted"


def test_the_same_client_id_returns_the_label_unchanged(people, task):
    record = dict(task_id=task.pk, reviewer=people.pathologist, draft_id=task.latest_draft().pk)
    client_id = uuid.uuid4()
    first = services.label_record(**record, decision="accepted", client_id=client_id)
    again = services.label_record(**record, decision="accepted", client_id=client_id)
    assert again.pk == first.pk and again.revision == 1 and again.client_id == client_id
    assert records(task) == 1


def test_another_reviewers_label_is_no_conflict(people, client_for, task):
    services.label_record(
        task_id=task.pk, reviewer=people.admin, decision="accepted", draft_id=task.latest_draft().pk
    )
    client = client_for(people.pathologist)
    assert decide(client, task, page(client, task), "edited", text="Mine.").status_code == 302
    assert Label.objects.get(task=task, reviewer=people.pathologist).revision == 1
