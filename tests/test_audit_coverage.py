"""Every kind of change lands in the audit trail: claims, decisions, edits, undo, settings,
prompts, members and roles (in the app and through the Django admin), logins, failed logins
and logouts."""

import json
from datetime import timedelta

from django.urls import reverse
from django.utils import timezone

from annotations import services
from annotations.models import AuditEvent, Claim, Membership, Role
from tests.conftest import CsrfClient
from tests.factories import make_drafted_task


def _rows(action: str, **filters):
    return list(AuditEvent.objects.filter(action=action, **filters).order_by("id"))


def _only(action: str, **filters) -> AuditEvent:
    rows = _rows(action, **filters)
    assert len(rows) == 1, [(r.action, r.after) for r in AuditEvent.objects.all()]
    return rows[0]


# Claims ------------------------------------------------------------------------------------


def test_a_claim_taken_and_released_is_audited(people):
    task = make_drafted_task(people.project)
    claimed = services.claim_for(project=people.project, reviewer=people.pathologist)
    assert claimed.task_id == task.pk
    taken = _only("claim.take", task=task)
    assert taken.actor == people.pathologist and taken.project == people.project
    assert "expires_at" in taken.after
    services.claim_release(task_id=task.pk, reviewer=people.pathologist)
    released = _only("claim.release", task=task)
    assert released.actor == people.pathologist and released.project == people.project


def test_an_expired_claim_taken_over_is_audited(people):
    task = make_drafted_task(people.project)
    lapsed = timezone.now() - timedelta(minutes=1)
    Claim.objects.create(task=task, reviewer=people.project_admin, expires_at=lapsed)
    claimed = services.claim_for(project=people.project, reviewer=people.pathologist)
    assert claimed.task_id == task.pk
    row = _only("claim.take_over", task=task)
    assert row.actor == people.pathologist
    assert row.before["reviewer"] == people.project_admin.pk
    assert _only("claim.take", task=task).actor == people.pathologist


def test_releasing_a_claim_one_does_not_hold_writes_nothing(people):
    task = make_drafted_task(people.project)
    services.claim_release(task_id=task.pk, reviewer=people.pathologist)
    assert _rows("claim.release") == []


# Decisions, edits, undo, settings, prompts, members (the app's own paths) -----------------


def test_a_decision_an_edit_and_an_undo_are_audited(people):
    task = make_drafted_task(people.project)
    draft = task.latest_draft().pk
    services.label_record(
        task_id=task.pk, reviewer=people.pathologist, decision="accepted", draft_id=draft
    )
    services.label_record(
        task_id=task.pk,
        reviewer=people.pathologist,
        decision="edited",
        draft_id=draft,
        text="<script>alert(1)</script> fibroadenoma",
        label_revision=1,
    )
    recorded = _rows("label.record", task=task)
    assert [r.after["decision"] for r in recorded] == ["accepted", "edited"]
    services.label_undo(task_id=task.pk, reviewer=people.pathologist)
    assert _only("label.undo", task=task).actor == people.pathologist


def test_settings_prompts_and_members_set_in_the_app_are_audited(people):
    services.project_slide_settings_set(
        project=people.project, values={"patch_size": 512}, actor=people.admin
    )
    services.prompt_template_save(
        project=people.project, instruction="Describe the lesion.", actor=people.admin
    )
    services.membership_set(
        project=people.project, user=people.outsider, role=Role.PATHOLOGIST, actor=people.admin
    )
    for action in ("project.slide_settings", "prompt.save", "membership.set"):
        assert _rows(action, project=people.project)[-1].actor == people.admin


# The Django admin --------------------------------------------------------------------------


def _admin_form(project, memberships, **changes) -> dict:
    """The project's change form as the admin page posts it, with its member inlines."""
    data = {
        "name": project.name,
        "modality": project.modality,
        "description": project.description,
        "slide_settings": json.dumps(project.slide_settings),
        "memberships-TOTAL_FORMS": str(len(memberships)),
        "memberships-INITIAL_FORMS": str(sum(1 for m in memberships if m.get("id"))),
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
        "_save": "Save",
    }
    for k, m in enumerate(memberships):
        data |= {
            f"memberships-{k}-id": m.get("id", ""),
            f"memberships-{k}-project": str(project.pk),
            f"memberships-{k}-user": str(m["user"]),
            f"memberships-{k}-role": m["role"],
        }
        if m.get("delete"):
            data[f"memberships-{k}-DELETE"] = "on"
    return data | changes


def _members(project) -> list[dict]:
    return [
        {"id": str(m.pk), "user": m.user_id, "role": m.role}
        for m in Membership.objects.filter(project=project).order_by("pk")
    ]


def _post_admin(client, project, memberships, **changes):
    url = reverse("admin:annotations_project_change", args=[project.pk])
    response = client.post(url, _admin_form(project, memberships, **changes))
    assert response.status_code == 302, response.content.decode()[:2000]


def test_slide_settings_changed_in_the_admin_are_audited(people, client_for):
    before = dict(people.project.slide_settings)
    settings = {"patch_size": 256}
    _post_admin(
        client_for(people.superuser),
        people.project,
        _members(people.project),
        slide_settings=json.dumps(settings),
    )
    row = _only("admin.project.change", project=people.project)
    assert row.actor == people.superuser
    assert row.before["slide_settings"] == before
    assert row.after["slide_settings"] == settings
    assert "name" not in row.after  # unchanged fields are not repeated


def test_a_member_added_in_the_admin_is_audited(people, client_for):
    members = _members(people.project) + [{"user": people.outsider.pk, "role": Role.PATHOLOGIST}]
    _post_admin(client_for(people.superuser), people.project, members)
    row = _only("admin.membership.add", project=people.project)
    assert row.actor == people.superuser and row.before is None
    assert row.after["user"] == people.outsider.pk and row.after["role"] == Role.PATHOLOGIST
    assert [r.after for r in _rows("admin.project.change")] == []  # the project did not change


def test_a_role_changed_in_the_admin_is_audited(people, client_for):
    members = _members(people.project)
    paul = next(m for m in members if m["user"] == people.pathologist.pk)
    paul["role"] = Role.ADMIN
    _post_admin(client_for(people.superuser), people.project, members)
    row = _only("admin.membership.change", project=people.project)
    assert row.before == {
        "id": int(paul["id"]),
        "user": paul["user"],
        "project": people.project.pk,
        "role": Role.PATHOLOGIST,
    }
    assert row.after["role"] == Role.ADMIN


def test_a_member_removed_in_the_admin_is_audited(people, client_for):
    members = _members(people.project)
    rita = next(m for m in members if m["user"] == people.researcher.pk)
    rita["delete"] = True
    _post_admin(client_for(people.superuser), people.project, members)
    row = _only("admin.membership.delete", project=people.project)
    assert row.before["user"] == people.researcher.pk and row.after is None
    assert not Membership.objects.filter(project=people.project, user=people.researcher).exists()


def test_a_project_added_in_the_admin_is_audited(people, client_for):
    client = client_for(people.superuser)
    data = _admin_form(people.project, [], name='<img src=x onerror="alert(1)">')
    response = client.post(reverse("admin:annotations_project_add"), data)
    assert response.status_code == 302
    row = _only("admin.project.add")
    assert row.after["name"] == '<img src=x onerror="alert(1)">'
    assert row.project_id == row.after["id"]


def test_a_non_superuser_cannot_change_anything_in_the_admin(people, client_for):
    client = client_for(people.admin)  # a project admin is no site admin
    url = reverse("admin:annotations_project_change", args=[people.project.pk])
    response = client.post(url, _admin_form(people.project, _members(people.project)))
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert not AuditEvent.objects.filter(action__startswith="admin.").exists()


def test_site_wide_power_given_in_the_admin_is_audited(people, client_for):
    oscar = people.outsider
    url = reverse("admin:auth_user_change", args=[oscar.pk])
    data = {
        "username": oscar.username,
        "first_name": "",
        "last_name": "",
        "email": "",
        "is_active": "on",
        "is_staff": "on",
        "is_superuser": "on",
        "date_joined_0": oscar.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": oscar.date_joined.strftime("%H:%M:%S"),
        "initial-date_joined_0": oscar.date_joined.strftime("%Y-%m-%d"),
        "initial-date_joined_1": oscar.date_joined.strftime("%H:%M:%S"),
        "_save": "Save",
    }
    response = client_for(people.superuser).post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    row = _only("admin.user.change")
    assert row.actor == people.superuser and row.project is None
    assert row.before == {"id": oscar.pk, "is_staff": False, "is_superuser": False}
    assert row.after == {"id": oscar.pk, "is_staff": True, "is_superuser": True}
    assert "password" not in json.dumps([row.before, row.after])


# Logins ------------------------------------------------------------------------------------


def test_a_login_and_a_logout_are_audited(people):
    client = CsrfClient()
    response = client.post(reverse("login"), {"username": "paul", "password": "password"})
    assert response.status_code == 302
    login = _only("auth.login")
    assert login.actor == people.pathologist and login.after == {"address": "127.0.0.1"}
    client.csrf_token = client.cookies["csrftoken"].value  # rotated at login
    client.post(reverse("logout"))
    assert _only("auth.logout").actor == people.pathologist


def test_a_failed_login_records_the_username_and_address_never_the_password(people):
    client = CsrfClient()
    tried = '<script>alert("x")</script>'
    response = client.post(reverse("login"), {"username": tried, "password": "hunter2-secret"})
    assert response.status_code == 200
    row = _only("auth.login_failed")
    assert row.actor is None
    assert row.after == {"username": tried, "address": "127.0.0.1"}
    everything = json.dumps([row.before, row.after, row.reason])
    assert "hunter2" not in everything
