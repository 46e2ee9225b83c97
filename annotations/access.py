"""One access helper per object kind; every view loads objects through these.

A user who is not a member of a project gets 404 (its existence is not revealed);
a member whose role lacks the capability gets 403.
"""

from __future__ import annotations

from enum import Enum

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, QuerySet
from django.http import Http404

from annotations.models import Draft, Image, Membership, Project, Role, Task


class Can(Enum):
    VIEW = "view"
    REVIEW = "review"
    UPLOAD = "upload"
    EXPORT = "export"
    MANAGE = "manage"
    ADJUDICATE = "adjudicate"


CAPABILITIES: dict[str, frozenset[Can]] = {
    Role.ADMIN: frozenset(Can),
    Role.PATHOLOGIST: frozenset({Can.VIEW, Can.REVIEW}),
    Role.ADJUDICATOR: frozenset({Can.VIEW, Can.ADJUDICATE}),
    Role.RESEARCHER: frozenset({Can.VIEW, Can.UPLOAD}),
}


def is_site_admin(user: AbstractBaseUser) -> bool:
    """Only superusers act in every project; a role, admin included, is one project's."""
    return bool(user.is_active and user.is_superuser)


def role_in(user: AbstractBaseUser, project: Project) -> str | None:
    if not user.is_authenticated:
        return None
    if is_site_admin(user):
        return Role.ADMIN
    # One query: a model instance from the related manager would load its project id again.
    roles = Membership.objects.filter(project=project, user=user).values_list("role", flat=True)
    return roles.first()


def capabilities(user: AbstractBaseUser, project: Project) -> frozenset[Can]:
    role = role_in(user, project)
    return CAPABILITIES[role] if role else frozenset()


def projects_for_user(user: AbstractBaseUser) -> QuerySet[Project]:
    if not user.is_authenticated:
        return Project.objects.none()
    if is_site_admin(user):
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user)


def project_for_user(user: AbstractBaseUser, project_id: int, need: Can = Can.VIEW) -> Project:
    project = projects_for_user(user).filter(pk=project_id).first()
    if project is None:
        raise Http404("No such project")
    if need not in capabilities(user, project):
        raise PermissionDenied(f"Your role in this project cannot {need.value}.")
    return project


def task_for_user(user: AbstractBaseUser, task_id: int, need: Can = Can.VIEW) -> Task:
    task = (
        Task.objects.select_related("project", "image")
        .filter(pk=task_id, project__in=projects_for_user(user))
        .first()
    )
    if task is None:
        raise Http404("No such task")
    if need not in capabilities(user, task.project):
        raise PermissionDenied(f"Your role in this project cannot {need.value}.")
    return task


def draft_for_user(user: AbstractBaseUser, draft_id: int, need: Can = Can.VIEW) -> Draft:
    """A draft, through its task: the same rules as `task_for_user`."""
    draft = Draft.objects.select_related("task__image").filter(pk=draft_id).first()
    if draft is None:
        raise Http404("No such draft")
    draft.task = task_for_user(user, draft.task_id, need)
    return draft


def image_for_user(user: AbstractBaseUser, image_id: int) -> Image:
    """An image that one of its tasks lets the user see (any project of theirs); else 404."""
    visible = Task.objects.filter(image=OuterRef("pk"), project__in=projects_for_user(user))
    image = Image.objects.filter(Exists(visible), pk=image_id).first()
    if image is None:
        raise Http404("No such image")
    return image
