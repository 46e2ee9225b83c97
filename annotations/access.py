"""One access helper per object kind; every view loads objects through these.

A user who is not a member of a project gets 404 (its existence is not revealed);
a member whose role lacks the capability gets 403.
"""

from __future__ import annotations

from enum import Enum

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, QuerySet, Subquery
from django.http import Http404

from annotations.models import Draft, ExportJob, Image, Membership, Project, Role, Task


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
    return capabilities_of(user, role_in(user, project))


def capabilities_of(user: AbstractBaseUser, role: str | None) -> frozenset[Can]:
    """What `user` may do with `role` in a project (their membership's, read by the
    caller's own query; a superuser may do everything)."""
    if user.is_authenticated and is_site_admin(user):
        role = Role.ADMIN
    return CAPABILITIES[role] if role and user.is_authenticated else frozenset()


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
    """The task with its project and image, and the user's role there read in the same
    query (`role`: a hot path, decide and next, counts its queries)."""
    if not user.is_authenticated:
        raise Http404("No such task")
    role = Membership.objects.filter(project=OuterRef("project"), user=user).values("role")
    task = (
        Task.objects.select_related("project", "image")
        .annotate(role=Subquery(role[:1]))
        .filter(pk=task_id)
        .first()
    )
    if task is None or (task.role is None and not is_site_admin(user)):
        raise Http404("No such task")
    if need not in capabilities_of(user, task.role):
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


def export_job_for_user(user: AbstractBaseUser, job_id: int, need: Can = Can.EXPORT) -> ExportJob:
    """An export job with its project, through the project: the same rules as
    `project_for_user` (not a member: 404; a role without exports: 403)."""
    job = ExportJob.objects.select_related("project").filter(pk=job_id).first()
    if job is None:
        raise Http404("No such export")
    job.project = project_for_user(user, job.project_id, need)
    return job
