"""The insights page: how good the drafts are and how the review goes, for a project's
admins and researchers. It reads the rollups (`annotations.insights`) and the counters,
never the tasks or labels, so it costs the same at 10,000 tasks as at 1,000,000."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from annotations import comparisons, counters, insights, selectors
from annotations.access import Can, capabilities_of, project_for_user, role_in
from annotations.forms import ComparisonForm
from annotations.models import Comparison, Project, Role
from annotations.sentinels import sentinel_catch_rates

# The newest comparisons shown with their results (each reads its own sample only).
SHOWN_COMPARISONS = 5
# Who runs studies: the project's admins and researchers (and superusers, as admins).
INSIGHT_ROLES = frozenset({Role.ADMIN, Role.RESEARCHER})
POLL_SECONDS = 60


def _project_for_insights(request: HttpRequest, project_id: int) -> Project:
    """The project, if the user may see its insights: 404 for a project they are not in,
    403 for a member whose role is not admin or researcher."""
    project = project_for_user(request.user, project_id)
    project.viewer_role = role_in(request.user, project)  # read once: the page asks again
    if project.viewer_role not in INSIGHT_ROLES:
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


def _comparison_for_user(request: HttpRequest, comparison_id: int) -> Comparison:
    """A comparison of a project the user manages: 404 for another project's (or none),
    403 for a member who is not its admin."""
    comparison = Comparison.objects.filter(pk=comparison_id).first()
    if comparison is None:
        raise Http404("No such comparison")
    project_for_user(request.user, comparison.project_id, Can.MANAGE)
    return comparison


def _comparisons(project: Project, *, manages: bool, form: ComparisonForm | None = None) -> dict:
    """The blind comparisons part: the newest with their results, and the form to start
    one (for those who manage the project)."""
    shown = list(comparisons.project_comparisons(project)[:SHOWN_COMPARISONS])
    versions = []
    if manages:
        versions = list(
            project.prompt_templates.order_by("-version").values_list("version", flat=True)
        )
        form = form or ComparisonForm(versions=versions)
    return {
        "comparisons": [(c, comparisons.comparison_results(c)) for c in shown],
        "comparison_form": form if manages else None,
        "comparison_columns": comparisons.RESULT_COLUMNS,
        "prompt_versions": versions,
    }


@require_GET
@login_required
def project_insights(request: HttpRequest, project_id: int) -> HttpResponse:
    """The dashboard; an htmx poll gets its figures part alone."""
    project = _project_for_insights(request, project_id)
    context = {"project": project, "poll_seconds": POLL_SECONDS, **_dashboard(project)}
    template = "annotations/insights.html"
    if request.htmx:
        template += "#figures"
    else:
        manages = Can.MANAGE in capabilities_of(request.user, project.viewer_role)
        context |= _comparisons(project, manages=manages)
    return render(request, template, context)


@require_POST
@login_required
def project_comparison_start(request: HttpRequest, project_id: int) -> HttpResponse:
    """Start a blind comparison (the project's admins): a random sample of drafted tasks
    redrafted with a candidate prompt version. A refused form comes back with the page."""
    project = project_for_user(request.user, project_id, Can.MANAGE)
    versions = list(project.prompt_templates.values_list("version", flat=True))
    form = ComparisonForm(request.POST, versions=versions)
    if form.is_valid():
        data = form.cleaned_data
        try:
            comparison = comparisons.comparison_start(
                project=project,
                prompt_template=project.prompt_templates.get(version=data["prompt_version"]),
                model_revision=data["model_revision"],
                sample_size=data["sample_size"],
                actor=request.user,
            )
        except ValueError as exc:
            form.add_error(None, str(exc))
        else:
            n = comparison.drafts.count()
            messages.success(request, f"Comparison started: {n} task(s) are being redrafted.")
            return redirect("project-insights", project_id=project.pk)
    context = {"project": project, "poll_seconds": POLL_SECONDS, **_dashboard(project)}
    context |= _comparisons(project, manages=True, form=form)
    return render(request, "annotations/insights.html", context, status=422)


@require_POST
@login_required
def comparison_close(request: HttpRequest, comparison_id: int) -> HttpResponse:
    """Stop serving a comparison's drafts (its admins); its results stay."""
    comparison = _comparison_for_user(request, comparison_id)
    comparisons.comparison_close(comparison=comparison, actor=request.user)
    messages.success(request, "Comparison closed: its drafts are no longer served.")
    return redirect("project-insights", project_id=comparison.project_id)


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
