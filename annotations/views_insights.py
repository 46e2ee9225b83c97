"""The insights page: how good the drafts are and how the review goes, for a project's
admins and researchers. It reads the rollups (`annotations.insights`) and the counters,
never the tasks or labels, so it costs the same at 10,000 tasks as at 1,000,000."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from annotations import counters, insights, selectors
from annotations.access import project_for_user, role_in
from annotations.models import Project, Role
from annotations.sentinels import sentinel_catch_rates

# Who runs studies: the project's admins and researchers (and superusers, as admins).
INSIGHT_ROLES = frozenset({Role.ADMIN, Role.RESEARCHER})
POLL_SECONDS = 60


def _project_for_insights(request: HttpRequest, project_id: int) -> Project:
    """The project, if the user may see its insights: 404 for a project they are not in,
    403 for a member whose role is not admin or researcher."""
    project = project_for_user(request.user, project_id)
    if role_in(request.user, project) not in INSIGHT_ROLES:
        raise PermissionDenied("Only the project's admins and researchers see its insights.")
    return project


def _dashboard(project: Project) -> dict:
    return insights.dashboard(
        project,
        counts=counters.counts_for(project.pk),
        agreement=selectors.project_agreement(project),
        catch_rates=sentinel_catch_rates(project),
        today=timezone.now().date(),
    )


@require_GET
@login_required
def project_insights(request: HttpRequest, project_id: int) -> HttpResponse:
    """The dashboard; an htmx poll gets its figures part alone."""
    project = _project_for_insights(request, project_id)
    context = {"project": project, "poll_seconds": POLL_SECONDS, **_dashboard(project)}
    template = "annotations/insights.html"
    if request.htmx:
        template += "#figures"
    return render(request, template, context)


@require_GET
@login_required
def project_insights_csv(request: HttpRequest, project_id: int, plot: str) -> HttpResponse:
    """One plot's data, the study summary (`summary`) or the prompt and model comparison
    (`comparison`), as CSV."""
    project = _project_for_insights(request, project_id)
    figures = _dashboard(project)
    if plot == "summary":
        columns, rows = insights.SUMMARY_COLUMNS, [r.cells() for r in figures["summary"]]
    elif plot == "comparison":
        columns, rows = insights.COMPARISON_COLUMNS, [a.cells() for a in figures["arms"]]
    else:
        found = next((p for p in figures["plots"] if p.key == plot), None)
        if found is None:
            raise Http404("No such plot")
        columns, rows = found.columns, found.rows
    response = HttpResponse(insights.as_csv(columns, rows), content_type="text/csv; charset=utf-8")
    name = f"project-{project.pk}-{plot}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["X-Content-Type-Options"] = "nosniff"
    return response
