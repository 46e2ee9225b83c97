"""Members of a project, managed in the app: list, add, change a role, remove, invite.

Every change goes through `services.membership_set` or the removal here, so each one is
audited with its before and after. A project always keeps at least one admin: otherwise
nobody but a superuser could manage it again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from annotations.models import Membership, Project, Role
from annotations.services import audit_record, membership_set

USERNAME_MAX = 150


class MemberError(ValueError):
    """A member change refused, with a message for the admin who asked."""


class LastAdminError(MemberError):
    pass


@dataclass(frozen=True)
class AddResult:
    membership: Membership
    invited: bool  # a new account was made (or an unanswered invitation sent again)


def members_of(project: Project) -> list[Membership]:
    """The project's memberships with their users, admins first, then by user name."""
    order = {Role.ADMIN: 0, Role.PATHOLOGIST: 1, Role.ADJUDICATOR: 2, Role.RESEARCHER: 3}
    rows = Membership.objects.filter(project=project).select_related("user")
    return sorted(rows, key=lambda m: (order.get(m.role, 9), m.user.get_username().lower()))


def user_find(identifier: str) -> AbstractBaseUser | None:
    """The user with this user name, else the one with this e-mail; None if nobody has it.
    Several accounts sharing an e-mail are refused: the admin must say which one."""
    users = get_user_model().objects
    identifier = identifier.strip()
    found = users.filter(username=identifier).first()
    if found is not None or "@" not in identifier:
        return found
    matches = list(users.filter(email__iexact=identifier)[:2])
    if len(matches) > 1:
        raise MemberError(
            f"More than one account uses the e-mail {identifier}; give the user name instead."
        )
    return matches[0] if matches else None


def member_add(
    *, project: Project, identifier: str, role: str, actor: AbstractBaseUser, base_url: str
) -> AddResult:
    """Add the user named by `identifier` (a user name or an e-mail) with `role`. An e-mail
    that matches nobody makes an inactive account and e-mails it an invitation."""
    user = user_find(identifier)
    if user is None and "@" not in identifier:
        raise MemberError(
            f"Nobody has the user name {identifier.strip()}. "
            "To invite someone new, give their e-mail address."
        )
    if user is not None and Membership.objects.filter(project=project, user=user).exists():
        role_now = Membership.objects.get(project=project, user=user).get_role_display()
        raise MemberError(
            f"{user.get_username()} is already a member, as {role_now}; "
            "change the role in the list instead."
        )
    if user is None:
        try:
            validate_email(identifier.strip())
        except ValidationError:
            raise MemberError(f"{identifier.strip()} is not a valid e-mail address.") from None
    invited = user is None or _awaits_invitation(user)
    with transaction.atomic():
        if user is None:
            user = _inactive_user_create(identifier.strip())
        membership = membership_set(project=project, user=user, role=role, actor=actor)
        if invited:
            audit_record(
                action="membership.invite",
                actor=actor,
                project=project,
                after={"user": user.get_username(), "email": user.email, "role": role},
            )
    if invited:
        invitation_send(project=project, user=user, actor=actor, base_url=base_url)
    return AddResult(membership=membership, invited=invited)


def member_role_change(
    *, project: Project, user: AbstractBaseUser, role: str, actor: AbstractBaseUser
) -> Membership:
    """Give a member another role; the last admin cannot be demoted."""
    with transaction.atomic():
        membership = _locked_membership(project, user)
        if membership.role == Role.ADMIN and role != Role.ADMIN:
            _refuse_if_last_admin(project, user, "demoted")
        return membership_set(project=project, user=user, role=role, actor=actor)


def member_remove(*, project: Project, user: AbstractBaseUser, actor: AbstractBaseUser) -> None:
    """Take a member out of the project (their past labels stay theirs); audited. The last
    admin cannot be removed."""
    with transaction.atomic():
        membership = _locked_membership(project, user)
        if membership.role == Role.ADMIN:
            _refuse_if_last_admin(project, user, "removed")
        before = {"user": user.get_username(), "role": membership.role}
        membership.delete()
        audit_record(action="membership.remove", actor=actor, project=project, before=before)


def invitation_send(
    *, project: Project, user: AbstractBaseUser, actor: AbstractBaseUser, base_url: str
) -> None:
    """E-mail `user` a one-time link that sets their password and opens the project. The
    link stops working once a password is set (the token covers the password hash)."""
    link = base_url.rstrip("/") + invitation_path(project, user)
    context = {"project": project, "user": user, "actor": actor, "link": link}
    send_mail(
        # a line break in a subject would be refused as a header injection
        subject=f"You are invited to the MedAnnot project {' '.join(project.name.split())}",
        message=render_to_string("registration/invite_email.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        recipient_list=[user.email],
    )


def invitation_path(project: Project, user: AbstractBaseUser) -> str:
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = default_token_generator.make_token(user)
    return reverse("invite-accept", args=[project.pk, uid, token])


def invitation_accept(*, user: AbstractBaseUser, project: Project | None) -> None:
    """The invited user has chosen a password (already set on `user`): activate and save."""
    with transaction.atomic():
        user.is_active = True
        user.save()
        audit_record(
            action="membership.invite_accept",
            actor=user,
            project=project,
            after={"user": user.get_username()},
        )


def _awaits_invitation(user: AbstractBaseUser) -> bool:
    """An account made by an invitation nobody has answered yet: inactive, no password."""
    return not user.is_active and not user.has_usable_password()


def _inactive_user_create(email: str) -> AbstractBaseUser:
    users = get_user_model().objects
    stem = re.sub(r"[^\w.+-]", "", email.split("@")[0])[: USERNAME_MAX - 8] or "member"
    username, n = stem, 1
    while users.filter(username=username).exists():
        n += 1
        username = f"{stem}-{n}"
    user = users.create_user(username=username, email=email, password=None)
    user.is_active = False
    user.save(update_fields=["is_active"])
    return user


def _locked_membership(project: Project, user: AbstractBaseUser) -> Membership:
    membership = Membership.objects.select_for_update().filter(project=project, user=user).first()
    if membership is None:
        raise MemberError(f"{user.get_username()} is not a member of this project.")
    return membership


def _refuse_if_last_admin(project: Project, user: AbstractBaseUser, what: str) -> None:
    # Locking every admin row makes two admins demoting each other at once take turns.
    admins = Membership.objects.select_for_update().filter(project=project, role=Role.ADMIN)
    if not set(admins.values_list("user_id", flat=True)) - {user.pk}:
        raise LastAdminError(
            f"{user.get_username()} is the project's only admin and cannot be {what}. "
            "Make another member admin first."
        )
