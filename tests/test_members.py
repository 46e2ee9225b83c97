"""The members page: who may open it, what each change writes to the audit trail, the
last-admin guard, invitations by e-mail and the password they set."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import threading

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.db import connection, transaction
from django.urls import reverse

from annotations import members
from annotations.models import AuditEvent, Membership, Role
from tests.test_settings import _production_env, _start

PASSWORD = "a long enough pass-phrase 7"


def _members_url(people):
    return reverse("project-members", args=[people.project.pk])


def _rows(action: str):
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def _role(people, user):
    return (
        Membership.objects.filter(project=people.project, user=user)
        .values_list("role", flat=True)
        .first()
    )


# Who may open it ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("persona", "status"),
    [
        ("superuser", 200),
        ("project_admin", 200),
        ("other_admin", 404),  # an admin of another project: this one is not revealed
        ("pathologist", 403),
        ("researcher", 403),
        ("outsider", 404),
    ],
)
def test_only_the_projects_admins_open_the_members_page(people, client_for, persona, status):
    response = client_for(getattr(people, persona)).get(_members_url(people))
    assert response.status_code == status


def test_an_adjudicator_may_not_manage_members(people, client_for):
    judge = get_user_model().objects.create_user("judy", password="password")
    Membership.objects.create(project=people.project, user=judge, role=Role.ADJUDICATOR)
    assert client_for(judge).get(_members_url(people)).status_code == 403


def test_it_sends_anonymous_visitors_to_log_in(people, client_for):
    response = client_for(None).get(_members_url(people))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_it_lists_members_with_name_email_role_and_since(people, client_for):
    people.pathologist.first_name, people.pathologist.last_name = "Paul", "Pathologist"
    people.pathologist.email = "paul@example.org"
    people.pathologist.save()
    body = client_for(people.project_admin).get(_members_url(people)).content.decode()
    for text in ("alice", "paul", "rita", "Paul Pathologist", "paul@example.org", "Researcher"):
        assert text in body
    assert "adam" not in body and "olga" not in body  # the other project's members


def test_the_project_page_links_to_members_for_admins_only(people, client_for):
    url = reverse("project-detail", args=[people.project.pk])
    assert _members_url(people) in client_for(people.project_admin).get(url).content.decode()
    assert _members_url(people) not in client_for(people.pathologist).get(url).content.decode()


def test_the_admin_of_another_project_cannot_change_this_ones_members(people, client_for):
    client = client_for(people.other_admin)
    pid = people.project.pk
    data = {"user": people.pathologist.pk, "role": Role.ADMIN}
    assert client.post(reverse("member-role", args=[pid]), data).status_code == 404
    assert client.post(reverse("member-remove", args=[pid]), data).status_code == 404
    add = {"who": "oscar", "role": Role.ADMIN}
    assert client.post(_members_url(people), add).status_code == 404
    assert _role(people, people.pathologist) == Role.PATHOLOGIST
    assert _role(people, people.outsider) is None
    assert not _rows("membership.remove")


def test_a_pathologist_cannot_make_themselves_admin(people, client_for):
    client = client_for(people.pathologist)
    data = {"user": people.pathologist.pk, "role": Role.ADMIN}
    assert client.post(reverse("member-role", args=[people.project.pk]), data).status_code == 403
    assert _role(people, people.pathologist) == Role.PATHOLOGIST


def test_a_member_of_another_project_cannot_be_acted_on_here(people, client_for):
    client = client_for(people.project_admin)
    data = {"user": people.other_pathologist.pk, "role": Role.RESEARCHER}
    url = reverse("member-role", args=[people.project.pk])
    assert client.post(url, data).status_code == 404
    assert client.post(reverse("member-remove", args=[people.project.pk]), data).status_code == 404
    assert Membership.objects.get(user=people.other_pathologist).role == Role.PATHOLOGIST


def test_it_rejects_get_on_the_actions(people, client_for):
    client = client_for(people.project_admin)
    assert client.get(reverse("member-role", args=[people.project.pk])).status_code == 405
    assert client.get(reverse("member-remove", args=[people.project.pk])).status_code == 405


def test_bad_input_is_refused_without_a_change(people, client_for):
    client = client_for(people.project_admin)
    url = reverse("member-role", args=[people.project.pk])
    assert client.post(url, {"user": "x", "role": Role.ADMIN}).status_code == 404
    response = client.post(url, {"user": people.pathologist.pk, "role": "owner"})
    assert response.status_code == 404
    response = client.post(url, {"user": people.pathologist.pk, "role": ""})
    assert response.status_code == 409 and b"Choose a role." in response.content
    response = client.post(_members_url(people), {"who": "", "role": Role.ADMIN})
    assert response.status_code == 400 and b'role="alert"' in response.content
    assert _role(people, people.pathologist) == Role.PATHOLOGIST


# Changes, audited ----------------------------------------------------------------------------


def test_adding_a_user_by_name_is_audited(people, client_for):
    response = client_for(people.project_admin).post(
        _members_url(people), {"who": "oscar", "role": Role.PATHOLOGIST}
    )
    assert response.status_code == 302 and response["Location"] == _members_url(people)
    assert _role(people, people.outsider) == Role.PATHOLOGIST
    row = _rows("membership.set")[-1]
    assert row.actor == people.project_admin and row.project == people.project
    assert row.before is None and row.after == {"user": "oscar", "role": "pathologist"}
    assert not mail.outbox  # an existing account is not invited


def test_adding_a_user_by_email_finds_their_account(people, client_for):
    people.outsider.email = "Oscar@Example.org"
    people.outsider.save()
    client_for(people.project_admin).post(
        _members_url(people), {"who": "oscar@example.org", "role": Role.RESEARCHER}
    )
    assert _role(people, people.outsider) == Role.RESEARCHER
    assert not mail.outbox


def test_adding_someone_already_a_member_says_so(people, client_for):
    response = client_for(people.project_admin).post(
        _members_url(people), {"who": "paul", "role": Role.ADMIN}
    )
    assert response.status_code == 400
    assert b"already a member" in response.content
    assert _role(people, people.pathologist) == Role.PATHOLOGIST


def test_an_unknown_user_name_is_refused_in_words(people, client_for):
    response = client_for(people.project_admin).post(
        _members_url(people), {"who": "nobody", "role": Role.ADMIN}
    )
    assert response.status_code == 400
    assert b"Nobody has the user name nobody" in response.content
    assert get_user_model().objects.filter(username="nobody").count() == 0


def test_changing_a_role_is_audited_with_before_and_after(people, client_for):
    url = reverse("member-role", args=[people.project.pk])
    data = {"user": people.pathologist.pk, "role": Role.ADJUDICATOR}
    response = client_for(people.project_admin).post(url, data)
    assert response.status_code == 302
    assert _role(people, people.pathologist) == Role.ADJUDICATOR
    row = _rows("membership.set")[-1]
    assert row.actor == people.project_admin
    assert row.before == {"role": "pathologist"}
    assert row.after == {"user": "paul", "role": "adjudicator"}


def test_removing_a_member_is_audited(people, client_for):
    url = reverse("member-remove", args=[people.project.pk])
    response = client_for(people.project_admin).post(url, {"user": people.researcher.pk})
    assert response.status_code == 302
    assert _role(people, people.researcher) is None
    (row,) = _rows("membership.remove")
    assert row.actor == people.project_admin and row.project == people.project
    assert row.before == {"user": "rita", "role": "researcher"} and row.after is None
    # the person loses the project at once
    detail = reverse("project-detail", args=[people.project.pk])
    assert client_for(people.researcher).get(detail).status_code == 404


# In place, with htmx ---------------------------------------------------------------------------


def test_with_htmx_a_role_change_swaps_the_list_and_says_so(people, client_for):
    url = reverse("member-role", args=[people.project.pk])
    data = {"user": people.pathologist.pk, "role": Role.RESEARCHER}
    response = client_for(people.project_admin).post(url, data, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" not in body and 'id="members"' in body  # the list alone
    assert 'hx-swap-oob="innerHTML:#members-status">paul is now Researcher.' in body
    assert _role(people, people.pathologist) == Role.RESEARCHER
    # nothing left over for the next full page
    page = client_for(people.project_admin).get(_members_url(people)).content.decode()
    assert "is now Researcher" not in page


def test_with_htmx_a_refusal_is_swapped_in_as_an_alert_with_the_focus(people, client_for):
    url = reverse("member-remove", args=[people.project.pk])
    response = client_for(people.project_admin).post(
        url, {"user": people.project_admin.pk}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 409
    body = response.content.decode()
    assert "<html" not in body and 'role="alert"' in body and "autofocus" in body
    assert "only admin" in body


def test_with_htmx_an_admin_who_leaves_is_sent_to_their_projects(people, client_for):
    members.member_role_change(
        project=people.project, user=people.pathologist, role=Role.ADMIN, actor=people.superuser
    )
    url = reverse("member-remove", args=[people.project.pk])
    response = client_for(people.project_admin).post(
        url, {"user": people.project_admin.pk}, HTTP_HX_REQUEST="true"
    )
    assert response["HX-Redirect"] == reverse("project-list")


# The last admin ------------------------------------------------------------------------------


def test_the_last_admin_cannot_be_demoted_or_removed(people, client_for):
    client = client_for(people.project_admin)
    pid = people.project.pk
    data = {"user": people.project_admin.pk, "role": Role.PATHOLOGIST}
    response = client.post(reverse("member-role", args=[pid]), data)
    assert response.status_code == 409
    assert b"only admin" in response.content and b'role="alert"' in response.content
    response = client.post(reverse("member-remove", args=[pid]), data)
    assert response.status_code == 409 and b"only admin" in response.content
    assert _role(people, people.project_admin) == Role.ADMIN
    assert not _rows("membership.remove")


def test_a_superuser_cannot_remove_the_last_admin_either(people, client_for):
    url = reverse("member-remove", args=[people.project.pk])
    response = client_for(people.superuser).post(url, {"user": people.project_admin.pk})
    assert response.status_code == 409
    assert _role(people, people.project_admin) == Role.ADMIN


def test_with_a_second_admin_the_first_may_step_down(people, client_for):
    members.member_role_change(
        project=people.project, user=people.pathologist, role=Role.ADMIN, actor=people.superuser
    )
    client = client_for(people.project_admin)
    url = reverse("member-remove", args=[people.project.pk])
    response = client.post(url, {"user": people.project_admin.pk})
    # the admin who left cannot see the members page any more: back to their projects
    assert response.status_code == 302 and response["Location"] == reverse("project-list")
    assert _role(people, people.project_admin) is None
    with pytest.raises(members.LastAdminError):
        members.member_remove(project=people.project, user=people.pathologist, actor=None)


# Invitations ---------------------------------------------------------------------------------


def _invite(people, client_for, email="new.reader@hospital.example", role=Role.PATHOLOGIST):
    response = client_for(people.project_admin).post(
        _members_url(people), {"who": email, "role": role}, follow=True
    )
    assert response.status_code == 200
    return response


def _link(message) -> str:
    found = re.search(r"https?://[^/\s]+(/projects/\d+/join/[^\s]+/)", message.body)
    assert found, message.body
    return found.group(1)


def test_an_unknown_email_is_invited(people, client_for):
    response = _invite(people, client_for)
    assert b"invited as Pathologist" in response.content
    user = get_user_model().objects.get(email="new.reader@hospital.example")
    assert user.username == "new.reader" and not user.is_active
    assert not user.has_usable_password()
    assert _role(people, user) == Role.PATHOLOGIST
    (message,) = mail.outbox
    assert message.to == ["new.reader@hospital.example"]
    assert "Breast biopsies" in message.subject and "Breast biopsies" in message.body
    assert "alice" in message.body and "new.reader" in message.body
    assert _link(message).startswith(f"/projects/{people.project.pk}/join/")
    (row,) = _rows("membership.invite")
    assert row.actor == people.project_admin and row.project == people.project
    assert row.after == {
        "user": "new.reader",
        "email": "new.reader@hospital.example",
        "role": "pathologist",
    }
    assert _rows("membership.set")[-1].after == {"user": "new.reader", "role": "pathologist"}


def test_an_invited_user_cannot_log_in_before_setting_a_password(people, client_for):
    _invite(people, client_for)
    client = client_for(None)
    response = client.post(reverse("login"), {"username": "new.reader", "password": ""})
    assert "_auth_user_id" not in client.session
    assert response.status_code == 200


def test_the_invitation_sets_a_password_and_opens_the_project(people, client_for):
    _invite(people, client_for)
    link = _link(mail.outbox[0])
    client = client_for(None)
    page = client.get(link)
    assert page.status_code == 200 and b"Join Breast biopsies" in page.content
    weak = client.post(link, {"new_password1": "short", "new_password2": "short"})
    assert weak.status_code == 400 and b'role="alert"' in weak.content  # validators apply
    user = get_user_model().objects.get(username="new.reader")
    assert not user.is_active
    response = client.post(link, {"new_password1": PASSWORD, "new_password2": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == reverse("project-detail", args=[people.project.pk])
    user.refresh_from_db()
    assert user.is_active and user.check_password(PASSWORD)
    assert client.get(response["Location"]).status_code == 200
    (row,) = _rows("membership.invite_accept")
    assert row.actor == user and row.project == people.project
    # the link works once
    again = client_for(None).get(link)
    assert b"no longer works" in again.content
    assert b"Join" not in again.content.split(b"<main", 1)[-1].split(b"</h1>")[0]


def test_someone_removed_before_accepting_lands_on_their_project_list(people, client_for):
    _invite(people, client_for)
    user = get_user_model().objects.get(username="new.reader")
    members.member_remove(project=people.project, user=user, actor=people.project_admin)
    client = client_for(None)
    data = {"new_password1": PASSWORD, "new_password2": PASSWORD}
    response = client.post(_link(mail.outbox[0]), data)
    assert response.status_code == 302 and response["Location"] == reverse("project-list")
    detail = reverse("project-detail", args=[people.project.pk])
    assert client.get(detail).status_code == 404


def test_a_project_name_with_a_line_break_still_sends(people, client_for):
    people.project.name = "Breast\nbiopsies"
    people.project.save()
    _invite(people, client_for)
    assert mail.outbox[0].subject.endswith("Breast biopsies")


def test_another_project_id_in_the_link_reveals_no_project(people, client_for):
    _invite(people, client_for)
    link = _link(mail.outbox[0])
    other = link.replace(f"/projects/{people.project.pk}/", f"/projects/{people.other_project.pk}/")
    page = client_for(None).get(other)
    assert page.status_code == 200 and b"Melanoma photos" not in page.content
    assert b"Join MedAnnot" in page.content


def test_a_forged_or_mangled_link_does_nothing(people, client_for):
    _invite(people, client_for)
    link = _link(mail.outbox[0])
    forged = link.rsplit("/", 2)[0] + "/1-abcdef/"
    response = client_for(None).post(forged, {"new_password1": PASSWORD, "new_password2": PASSWORD})
    assert b"no longer works" in response.content
    junk = reverse("invite-accept", args=[people.project.pk, "!!", "x"])
    assert b"no longer works" in client_for(None).get(junk).content
    assert not get_user_model().objects.get(username="new.reader").is_active


def test_a_derived_user_name_never_takes_an_existing_one(people, client_for):
    _invite(people, client_for, email="paul@elsewhere.example")
    user = get_user_model().objects.get(email="paul@elsewhere.example")
    assert user.username == "paul-2"
    assert people.pathologist.username == "paul"


def test_inviting_again_resends_to_someone_who_has_not_joined(people, client_for):
    _invite(people, client_for)
    user = get_user_model().objects.get(username="new.reader")
    members.member_remove(project=people.project, user=user, actor=people.project_admin)
    _invite(people, client_for, role=Role.RESEARCHER)
    assert len(mail.outbox) == 2 and _role(people, user) == Role.RESEARCHER
    assert get_user_model().objects.filter(email="new.reader@hospital.example").count() == 1
    assert len(_rows("membership.invite")) == 2


def test_a_bad_email_is_refused(people, client_for):
    response = client_for(people.project_admin).post(
        _members_url(people), {"who": "someone@", "role": Role.PATHOLOGIST}
    )
    assert response.status_code == 400 and b"not a valid e-mail" in response.content
    assert not mail.outbox


# HTML in names -------------------------------------------------------------------------------


def test_html_in_user_names_and_emails_is_escaped(people, client_for):
    evil = get_user_model().objects.create_user(
        "<b>x</b>", email='"<script>alert(1)</script>"@evil.example', password="password"
    )
    evil.first_name = "<img src=x onerror=alert(1)>"
    evil.save()
    Membership.objects.create(project=people.project, user=evil, role=Role.PATHOLOGIST)
    body = client_for(people.project_admin).get(_members_url(people)).content
    assert b"<script>alert(1)" not in body and b"<img src=x" not in body and b"<b>x</b>" not in body
    assert b"&lt;b&gt;x&lt;/b&gt;" in body and b"&lt;script&gt;" in body
    response = client_for(people.project_admin).post(
        _members_url(people), {"who": "<i>nobody</i>", "role": Role.ADMIN}
    )
    assert b"<i>nobody</i>" not in response.content
    assert b"&lt;i&gt;nobody&lt;/i&gt;" in response.content


def test_html_in_an_email_given_is_escaped_in_the_refusal(people, client_for):
    response = client_for(people.project_admin).post(
        _members_url(people), {"who": "<tag>@hospital.example", "role": Role.ADMIN}
    )
    assert response.status_code == 400
    assert b"<tag>" not in response.content and b"&lt;tag&gt;@hospital" in response.content
    assert not mail.outbox


# E-mail settings ---------------------------------------------------------------------------

SHOW_BACKEND = (
    "import django; django.setup(); from django.conf import settings; print(settings.EMAIL_BACKEND)"
)


def test_invitations_print_to_the_console_when_debugging():
    out = subprocess.run(
        [sys.executable, "-c", SHOW_BACKEND],
        env=os.environ | {"DJANGO_SETTINGS_MODULE": "medannot.settings", "DEBUG": "true"},
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "django.core.mail.backends.console.EmailBackend", out.stderr


def test_production_sends_by_smtp_and_a_bad_setting_fails_loudly():
    env = _production_env(SECRET_KEY=secrets.token_urlsafe(50))
    out = subprocess.run(
        [sys.executable, "-c", SHOW_BACKEND], env=env, capture_output=True, text=True
    )
    assert out.stdout.strip() == "django.core.mail.backends.smtp.EmailBackend", out.stderr
    both = _start(EMAIL_USE_TLS="true", EMAIL_USE_SSL="true")
    assert both.returncode != 0 and "EMAIL_USE_TLS and EMAIL_USE_SSL" in both.stderr
    assert "EMAIL_PORT" in _start(EMAIL_PORT="smtp").stderr


# Superusers ----------------------------------------------------------------------------------


def test_a_superuser_sees_and_opens_every_project(people, client_for):
    client = client_for(people.superuser)
    listing = client.get(reverse("project-list")).content
    assert b"Breast biopsies" in listing and b"Melanoma photos" in listing
    for project in (people.project, people.other_project):
        assert client.get(reverse("project-detail", args=[project.pk])).status_code == 200
        assert client.get(reverse("project-members", args=[project.pk])).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_two_admins_demoting_each_other_at_once_leave_one_admin(people):
    """The second demotion waits for the first one's lock, then sees it: refused."""
    second_admin = people.pathologist
    members.member_role_change(
        project=people.project, user=second_admin, role=Role.ADMIN, actor=people.superuser
    )
    outcome = {}

    def demote_the_other():
        try:
            members.member_role_change(
                project=people.project,
                user=second_admin,
                role=Role.PATHOLOGIST,
                actor=people.project_admin,
            )
            outcome["result"] = "demoted"
        except members.LastAdminError:
            outcome["result"] = "refused"
        finally:
            connection.close()

    with transaction.atomic():
        members.member_role_change(
            project=people.project,
            user=people.project_admin,
            role=Role.RESEARCHER,
            actor=second_admin,
        )
        other = threading.Thread(target=demote_the_other)
        other.start()
        other.join(timeout=1)
        assert other.is_alive(), "the second demotion did not wait for the first"
    other.join(timeout=10)
    assert outcome == {"result": "refused"}
    admins = Membership.objects.filter(project=people.project, role=Role.ADMIN)
    assert list(admins.values_list("user__username", flat=True)) == ["paul"]
