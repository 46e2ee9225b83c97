"""The members page of a project, and the invitation an invited user answers."""

from __future__ import annotations

import smtplib

from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import SetPasswordForm
from django.contrib.auth.tokens import default_token_generator
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.encoding import force_str
from django.utils.http import urlsafe_base64_decode
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from annotations import members
from annotations.access import Can, capabilities, project_for_user
from annotations.forms import MemberAddForm, MemberRoleForm
from annotations.models import Membership, Project, Role

# The invited user logs in through Django's own backend; axes counts failures, not this.
LOGIN_BACKEND = "django.contrib.auth.backends.ModelBackend"


@require_http_methods(["GET", "POST"])
@login_required
def project_members(request: HttpRequest, project_id: int) -> HttpResponse:
    """Who is in the project and in which role; an admin adds someone here."""
    project = project_for_user(request.user, project_id, Can.MANAGE)
    form = MemberAddForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            added = members.member_add(
                project=project,
                identifier=form.cleaned_data["who"],
                role=form.cleaned_data["role"],
                actor=request.user,
                base_url=request.build_absolute_uri("/"),
            )
        except members.MemberError as exc:
            form.add_error("who", str(exc))
        except (smtplib.SMTPException, OSError):
            messages.error(
                request,
                "The member was added, but the invitation e-mail could not be sent. "
                "Add them again later to send it again.",
            )
            return redirect("project-members", project.pk)
        else:
            messages.success(request, _added_message(added))
            return redirect("project-members", project.pk)
    status = 400 if form.errors else 200
    return render(request, "annotations/members.html", _context(project, form), status=status)


@require_POST
@login_required
def member_role(request: HttpRequest, project_id: int) -> HttpResponse:
    """An admin gives a member another role."""
    project = project_for_user(request.user, project_id, Can.MANAGE)
    membership, role = _member_from(request, project)
    if not role:
        return _refused(request, project, "Choose a role.")
    try:
        members.member_role_change(
            project=project, user=membership.user, role=role, actor=request.user
        )
    except members.MemberError as exc:
        return _refused(request, project, str(exc))
    notice = f"{membership.user.get_username()} is now {Role(role).label}."
    return _after_change(request, project, notice)


@require_POST
@login_required
def member_remove(request: HttpRequest, project_id: int) -> HttpResponse:
    """An admin takes a member out of the project."""
    project = project_for_user(request.user, project_id, Can.MANAGE)
    membership, _ = _member_from(request, project)
    try:
        members.member_remove(project=project, user=membership.user, actor=request.user)
    except members.MemberError as exc:
        return _refused(request, project, str(exc))
    notice = f"{membership.user.get_username()} is no longer a member."
    # the removed row's button had the focus: it goes to the list's heading
    return _after_change(request, project, notice, focus_heading=True)


@never_cache
@require_http_methods(["GET", "POST"])
def invite_accept(request: HttpRequest, project_id: int, uidb64: str, token: str) -> HttpResponse:
    """The link of an invitation e-mail: choose a password, then open the project."""
    user = _invited_user(uidb64, token)
    if user is None:
        return render(request, "registration/invite_invalid.html")
    # Only a project the invited user belongs to is named: another id in the link shows none.
    project = Project.objects.filter(pk=project_id, memberships__user=user).first()
    form = SetPasswordForm(user, request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():  # a password set but an account left inactive: locked out
            form.save()
            members.invitation_accept(user=user, project=project)
        login(request, user, backend=LOGIN_BACKEND)
        messages.success(request, f"Welcome, {user.get_username()}. Your password is set.")
        return redirect("project-detail", project.pk) if project else redirect("project-list")
    context = {"form": form, "project": project, "invited": user}
    return render(
        request, "registration/invite_accept.html", context, status=400 if form.errors else 200
    )


def _invited_user(uidb64: str, token: str):
    """The user the link names, if its token still holds (it stops once a password is set)."""
    try:
        pk = int(force_str(urlsafe_base64_decode(uidb64)))
    except (TypeError, ValueError, OverflowError):
        return None
    user = get_user_model().objects.filter(pk=pk).first()
    if user is None or not default_token_generator.check_token(user, token):
        return None
    return user


def _member_from(request: HttpRequest, project: Project) -> tuple[Membership, str]:
    """The membership the form names, in this project only (another project's: 404)."""
    form = MemberRoleForm(request.POST)
    if not form.is_valid():
        raise Http404("No such member")
    membership = (
        Membership.objects.select_related("user")
        .filter(project=project, user_id=form.cleaned_data["user"])
        .first()
    )
    if membership is None:
        raise Http404("No such member")
    return membership, form.cleaned_data["role"]


def _refused(request: HttpRequest, project: Project, message: str) -> HttpResponse:
    context = _context(project, MemberAddForm()) | {"refusal": message}
    return render(request, _template(request), context, status=409)


def _after_change(
    request: HttpRequest, project: Project, notice: str, *, focus_heading: bool = False
) -> HttpResponse:
    """The list again: swapped in place (htmx) or by a redirect to the page; an admin who
    left the project goes to their project list."""
    if Can.MANAGE not in capabilities(request.user, project):
        messages.success(request, notice)
        url = reverse("project-list")
        return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    if request.htmx:
        context = _context(project, MemberAddForm()) | {
            "notice": notice,
            "focus_heading": focus_heading,
        }
        return render(request, _template(request), context)
    messages.success(request, notice)
    return redirect("project-members", project.pk)


def _template(request: HttpRequest) -> str:
    return "annotations/members.html#members" if request.htmx else "annotations/members.html"


def _added_message(added: members.AddResult) -> str:
    user = added.membership.user
    role = added.membership.get_role_display()
    if added.invited:
        return f"{user.email} was invited as {role}; the invitation e-mail is on its way."
    return f"{user.get_username()} was added as {role}."


def _context(project: Project, form: MemberAddForm) -> dict:
    return {
        "project": project,
        "members": members.members_of(project),
        "form": form,
        "roles": Role.choices,
    }
