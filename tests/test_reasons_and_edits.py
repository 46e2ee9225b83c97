"""Reasons as data (correction categories), edits as data (distances, a word diff, autosave)
and time on task (a signed render time, fast accepts flagged)."""

from __future__ import annotations

import json

import pytest
from django.core import signing
from django.urls import reverse

from annotations import reviewtime, services, textdiff
from annotations.models import (
    CORRECTION_CATEGORIES,
    AuditEvent,
    EditAutosave,
    Label,
    Modality,
    Role,
)
from tests.factories import SETTINGS_FORM, make_drafted_task
from tests.test_conflicts import form_of

try:  # the browser test below uses test_browser's Chromium fixture
    from tests.test_browser import CHROMIUM, browser, drafted  # noqa: F401
except pytest.skip.Exception:  # no Playwright here
    CHROMIUM = None

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "decision"}
DRAFT = "Invasive ductal carcinoma, grade 2."


@pytest.fixture
def task(people):
    return make_drafted_task(people.project, text=DRAFT)


@pytest.fixture
def client(people, client_for):
    return client_for(people.pathologist)


def page(client, task) -> dict[str, str]:
    return form_of(client.get(reverse("task-detail", args=[task.pk])))


def decide(client, task, decision, form=None, **fields):
    data = (form if form is not None else page(client, task)) | {"decision": decision} | fields
    return client.post(reverse("task-decide", args=[task.pk]), data, **HTMX)


def export_lines(client) -> list[dict]:
    response = client.get(reverse("project-export", args=[client.project_id]))
    assert response.status_code == 200
    return [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]


# Reasons as data ------------------------------------------------------------------------


def test_a_reject_needs_a_category(client, task):
    response = decide(client, task, "rejected", reason="Wrong organ.")
    assert response.status_code == 422
    assert "Choose what was wrong with the draft." in response.content.decode()
    assert not Label.objects.exists()


def test_a_category_not_in_the_projects_list_is_refused(client, task):
    response = decide(client, task, "rejected", reason="Wrong organ.", category="bad vibes")
    assert response.status_code == 422
    assert not Label.objects.exists()


def test_a_reject_stores_its_category_and_reason(client, task):
    response = decide(
        client, task, "rejected", reason="Left, not right.", category="wrong site or laterality"
    )
    assert response.status_code == 200, response.content.decode()
    label = Label.objects.get(task=task)
    assert (label.category, label.reason) == ("wrong site or laterality", "Left, not right.")
    assert (label.edit_chars, label.edit_words) == (None, None)
    assert "wrong site or laterality" in response.content.decode()


def test_an_edit_offers_wording_only_and_an_accept_keeps_no_category(client, people, task):
    form = page(client, task)
    body = client.get(reverse("task-detail", args=[task.pk])).content.decode()
    assert '<option value="wording only" selected>' in body
    assert (
        decide(
            client,
            task,
            "edited",
            form,
            text="Invasive ductal carcinoma, grade 3.",
            edit_category="wrong diagnosis or grade",
        ).status_code
        == 200
    )
    assert Label.objects.get(task=task).category == "wrong diagnosis or grade"
    other = make_drafted_task(people.project, text="Benign.")
    assert decide(client, other, "accepted", category="missed finding").status_code == 200
    assert Label.objects.get(task=other).category == ""


def test_the_admin_edits_the_category_list(people, client_for):
    client = client_for(people.admin)
    url = reverse("project-settings", args=[people.project.pk])
    body = client.get(url).content.decode()
    assert "hallucinated finding\nwrong site or laterality" in body
    response = client.post(
        url,
        SETTINGS_FORM
        | {
            "correction_categories": "missed mitoses\n\n  wrong margin  \nother",
            "fast_accept_seconds": "8",
        },
    )
    assert response.status_code == 302
    people.project.refresh_from_db()
    assert people.project.correction_categories == ["missed mitoses", "wrong margin", "other"]
    assert people.project.fast_accept_seconds == 8
    event = AuditEvent.objects.get(action="project.review_settings")
    assert event.after["correction_categories"] == ["missed mitoses", "wrong margin", "other"]


@pytest.mark.parametrize(
    ("categories", "message"),
    [
        ("", "This field is required."),
        ("other\nOther", "is listed twice"),
        ("x" * 81, "longer than 80 characters"),
        ("\n".join(f"c{i}" for i in range(31)), "between 1 and 30"),
    ],
)
def test_a_bad_category_list_is_refused(people, client_for, categories, message):
    client = client_for(people.admin)
    url = reverse("project-settings", args=[people.project.pk])
    response = client.post(url, SETTINGS_FORM | {"correction_categories": categories})
    assert response.status_code == 200
    assert message in response.content.decode()
    people.project.refresh_from_db()
    assert people.project.correction_categories == list(CORRECTION_CATEGORIES)


def test_the_service_refuses_a_bad_list_too(people):
    with pytest.raises(ValueError, match="cannot be empty"):
        services.project_review_settings_set(
            project=people.project, correction_categories=["a", " "], fast_accept_seconds=5
        )


def test_a_removed_category_stays_on_old_labels(client, people, task):
    decide(client, task, "rejected", reason="Not there.", category="hallucinated finding")
    services.project_review_settings_set(
        project=people.project, correction_categories=["other"], fast_accept_seconds=5
    )
    assert Label.objects.get(task=task).category == "hallucinated finding"
    body = client.get(reverse("task-detail", args=[task.pk])).content.decode()
    assert "hallucinated finding" in body  # shown on the saved label
    assert '<option value="hallucinated finding"' not in body  # no longer offered


# Edits as data --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "chars", "words"),
    [
        ("kitten", "sitting", 3, 1),
        ("", "abc", 3, 1),
        ("same text", "same text", 0, 0),
        ("the cat sat", "the dog sat down", 8, 2),
        ("Invasive ductal carcinoma, grade 2.", "Invasive lobular carcinoma, grade 2.", 6, 1),
    ],
)
def test_edit_distances_of_known_examples(a, b, chars, words):
    assert textdiff.char_distance(a, b) == chars
    assert textdiff.word_distance(a, b) == words


def _slow_levenshtein(a, b) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def test_the_fast_distance_agrees_with_the_textbook_one():
    import random

    rng = random.Random(7)
    for _ in range(300):
        a = "".join(rng.choice("abcd ") for _ in range(rng.randint(0, 90)))
        b = "".join(rng.choice("abcd ") for _ in range(rng.randint(0, 90)))
        assert textdiff.levenshtein(a, b) == _slow_levenshtein(a, b), (a, b)


def test_very_long_texts_get_an_estimate_not_a_hang():
    words = [f"w{i}" for i in range(8000)]
    a = " ".join(words)
    b = " ".join(w if i % 100 else "changed" for i, w in enumerate(words))
    assert len(a) > textdiff.EXACT_LIMIT
    estimate = textdiff.char_distance(a, b)
    assert 0 < estimate <= sum(max(len(w), 7) for i, w in enumerate(words) if i % 100 == 0)


def test_an_edit_stores_its_distances_and_shows_the_diff(client, task):
    response = decide(client, task, "edited", text="Invasive lobular carcinoma, grade 2.")
    assert response.status_code == 200
    label = Label.objects.get(task=task)
    assert (label.edit_chars, label.edit_words) == (6, 1)
    assert label.draft.text == DRAFT  # the untouched draft stays
    for body in (
        response.content.decode(),
        client.get(reverse("task-detail", args=[task.pk])).content.decode(),
    ):
        assert '<del><span class="visually-hidden">removed: </span>ductal</del>' in body
        assert '<ins><span class="visually-hidden">added: </span>lobular</ins>' in body
        assert "1 word and 6 characters changed." in body


def test_an_accept_has_distance_zero(client, task):
    assert decide(client, task, "accepted").status_code == 200
    label = Label.objects.get(task=task)
    assert (label.edit_chars, label.edit_words, label.category) == (0, 0, "")


def test_the_diff_escapes_html(client, people):
    task = make_drafted_task(people.project, text="Benign <b>tissue</b>.")
    decide(client, task, "edited", text="Benign <script>x</script> tissue.")
    body = client.get(reverse("task-detail", args=[task.pk])).content.decode()
    assert "<script>x</script>" not in body and "&lt;script&gt;" in body


# Autosave -------------------------------------------------------------------------------


def autosave(client, task, text, **fields):
    url = reverse("task-autosave", args=[task.pk])
    return client.post(url, {"text": text} | fields, HTTP_HX_REQUEST="true")


def test_autosave_stores_and_the_page_restores_it(client, people, task):
    response = autosave(client, task, "Invasive ductal carcinoma, grade 3, half typed")
    assert response.status_code == 200 and "Edit kept as you type" in response.content.decode()
    autosave(client, task, "Invasive ductal carcinoma, grade 3.")
    saved = EditAutosave.objects.get(task=task, reviewer=people.pathologist)
    assert saved.text == "Invasive ductal carcinoma, grade 3."
    response = client.get(reverse("task-detail", args=[task.pk]))
    body = response.content.decode()
    assert form_of(response)["text"] == "Invasive ductal carcinoma, grade 3."
    assert "Restored your unsaved edit from" in body
    assert 'hx-post="' + reverse("task-autosave", args=[task.pk]) + '"' in body


def test_a_decision_removes_the_autosave(client, task):
    autosave(client, task, "Typed, not saved.")
    assert decide(client, task, "edited", text="Typed and saved.").status_code == 200
    assert not EditAutosave.objects.exists()
    body = client.get(reverse("task-detail", args=[task.pk])).content.decode()
    assert "Restored your unsaved edit" not in body


def test_an_autosave_overtaken_by_a_decision_is_not_kept(client, task):
    form = page(client, task)
    assert decide(client, task, "accepted", form).status_code == 200
    response = autosave(client, task, "A late keystroke.", label_revision=form["label_revision"])
    assert response.status_code == 409
    assert not EditAutosave.objects.exists()


def test_autosave_is_per_reviewer(client, people, client_for, task):
    autosave(client, task, "Paul's edit.")
    response = client_for(people.admin).get(reverse("task-detail", args=[task.pk]))
    assert "Paul's edit." not in response.content.decode()


def test_a_researcher_cannot_autosave(people, client_for, task):
    assert autosave(client_for(people.researcher), task, "Nope.").status_code == 403
    assert autosave(client_for(people.other_pathologist), task, "Nope.").status_code == 404
    assert not EditAutosave.objects.exists()


# Time on task ---------------------------------------------------------------------------


def signed(task, user, ms_ago: int) -> str:
    return reviewtime.rendered_at_sign(
        task_id=task.pk, user_id=user.pk, now_ms=reviewtime._now_ms() - ms_ago
    )


def test_the_page_renders_a_signed_render_time(client, people, task):
    token = page(client, task)["rendered_at"]
    task_id, user_id, _ = signing.loads(token, salt=reviewtime._SALT)
    assert (task_id, user_id) == (task.pk, people.pathologist.pk)


def test_time_on_task_is_stored_and_a_slow_accept_is_not_flagged(client, people, task):
    form = page(client, task) | {"rendered_at": signed(task, people.pathologist, 42_000)}
    assert decide(client, task, "accepted", form).status_code == 200
    label = Label.objects.get(task=task)
    assert 42_000 <= label.time_on_task_ms < 60_000
    assert label.fast_accept is False


def test_a_fast_accept_is_flagged(client, task):
    assert decide(client, task, "accepted").status_code == 200  # straight after the render
    label = Label.objects.get(task=task)
    assert label.time_on_task_ms is not None and label.time_on_task_ms < 5000
    assert label.fast_accept is True


def test_the_threshold_is_the_projects(client, people, task):
    services.project_review_settings_set(
        project=people.project,
        correction_categories=list(CORRECTION_CATEGORIES),
        fast_accept_seconds=60,
    )
    form = page(client, task) | {"rendered_at": signed(task, people.pathologist, 42_000)}
    decide(client, task, "accepted", form)
    assert Label.objects.get(task=task).fast_accept is True


def test_a_fast_edit_is_not_a_fast_accept(client, task):
    decide(client, task, "edited", text="Quickly fixed.")
    assert Label.objects.get(task=task).fast_accept is False


@pytest.mark.parametrize("how", ["missing", "forged", "another task", "another reviewer"])
def test_a_forged_or_missing_render_time_is_ignored(client, people, task, how):
    other = make_drafted_task(people.project, text="Benign.")
    token = {
        "missing": "",
        "forged": signing.dumps([task.pk, people.pathologist.pk, 0], salt="guessed"),
        "another task": signed(other, people.pathologist, 60_000),
        "another reviewer": signed(task, people.admin, 60_000),
    }[how]
    decide(client, task, "accepted", page(client, task) | {"rendered_at": token})
    label = Label.objects.get(task=task)
    assert (label.time_on_task_ms, label.fast_accept) == (None, False)


# Exports and audit ----------------------------------------------------------------------


def test_exports_and_the_audit_carry_the_fields(client, people, client_for, task):
    decide(
        client,
        task,
        "edited",
        text="Invasive lobular carcinoma, grade 2.",
        edit_category="wrong diagnosis or grade",
    )
    other = make_drafted_task(people.project, text="Benign.")
    decide(client, other, "rejected", reason="Not benign.", category="missed finding")
    admin = client_for(people.admin)
    admin.project_id = people.project.pk
    rows = {row["task_id"]: row for row in export_lines(admin)}
    edited, rejected = rows[task.pk], rows[other.pk]
    assert (edited["category"], edited["edit_chars"], edited["edit_words"]) == (
        "wrong diagnosis or grade",
        6,
        1,
    )
    assert edited["time_on_task_ms"] is not None and edited["fast_accept"] is False
    assert (rejected["category"], rejected["edit_chars"], rejected["edit_words"]) == (
        "missed finding",
        None,
        None,
    )
    after = AuditEvent.objects.filter(task=task, action="label.record").get().after
    assert after["category"] == "wrong diagnosis or grade"
    assert (after["edit_chars"], after["edit_words"], after["fast_accept"]) == (6, 1, False)
    assert after["time_on_task_ms"] is not None


# In a browser ---------------------------------------------------------------------------


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
@pytest.mark.django_db(transaction=True)
def test_in_a_browser_an_edit_survives_a_closed_tab(
    browser,  # noqa: F811
    live_server,
    sample_files,
    django_user_model,
):
    user = django_user_model.objects.create_user("paul", password="secret-pw-1")
    project = services.project_create(
        name="Autosave", modality=Modality.DERMATOLOGY, members=[(user, Role.PATHOLOGIST)]
    )
    task = drafted(project, sample_files["photo"], "Compound naevus.")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(live_server.url + reverse("login"))
    page.fill("#id_username", "paul")
    page.fill("#id_password", "secret-pw-1")
    page.click("button[type=submit]")
    url = live_server.url + reverse("task-detail", args=[task.pk])
    page.goto(url)
    page.fill("#id_text", "")
    page.type("#id_text", "Compound naevus with mild atypia.")
    page.wait_for_selector("text=Edit kept as you type")
    page.close()  # the tab is closed, nothing decided

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(live_server.url + reverse("login"))
    page.fill("#id_username", "paul")
    page.fill("#id_password", "secret-pw-1")
    page.click("button[type=submit]")
    page.goto(url)
    assert page.input_value("#id_text") == "Compound naevus with mild atypia."
    assert "Restored your unsaved edit" in page.inner_text("#decision")
    page.select_option("#id_edit_category", "missed finding")
    page.click("#save-edit")
    page.wait_for_selector("#edit-diff")
    diff = page.inner_text("#edit-diff")
    assert "removed:\nnaevus." in diff and "added:\nnaevus with mild atypia." in diff
    label = Label.objects.get(task=task)
    assert (label.category, label.edit_words, label.edit_chars) == ("missed finding", 4, 17)
    assert not EditAutosave.objects.exists()
    page.close()
