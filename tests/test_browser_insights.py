"""The insights page in a real browser (Chromium): every plot drawn by Chart.js under the
strict CSP, a plot's CSV downloaded, and the page passing axe's WCAG 2.1 AA rules."""

from unittest import mock

import pytest
from django.urls import reverse

from annotations import comparisons, services
from annotations.models import Decision, Modality, PromptTemplate, Role
from tests.factories import make_drafted_task
from tests.test_browser import CHROMIUM, _log_in, run_axe
from tests.test_browser import browser as browser  # the module's Chromium, a fixture

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]

# How many pixels of each canvas are painted (alpha above 0): 0 for a blank canvas.
PAINTED = """(canvas) => {
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 3; i < data.length; i += 4) { if (data[i] > 0) { n++; } }
  return {painted: n, width: canvas.width, height: canvas.height,
          chart: !!(window.Chart && window.Chart.getChart(canvas))};
}"""


def study_project(user_model):
    """Rita (password secret-pw-1), the researcher of a project with a few readings."""
    rita = user_model.objects.create_user("rita", password="secret-pw-1")
    paul = user_model.objects.create_user("paul", password="secret-pw-2")
    project = services.project_create(
        name="Study",
        modality=Modality.DERMATOLOGY,
        members=[(rita, Role.RESEARCHER), (paul, Role.PATHOLOGIST)],
    )
    for i, decision in enumerate([Decision.ACCEPTED, Decision.EDITED, Decision.REJECTED] * 2):
        task = make_drafted_task(project)
        services.label_record(
            task_id=task.pk,
            reviewer=paul,
            decision=decision,
            text="Compound naevus." if decision == Decision.EDITED else "",
            reason="Wrong site." if decision == Decision.REJECTED else "",
            category=project.correction_categories[i % 2] if decision != "accepted" else "",
            draft_id=task.latest_draft().pk,
            time_on_task_ms=4000 + 9000 * i,
        )
    return project


def test_the_dashboard_draws_every_plot_downloads_a_csv_and_passes_axe(
    browser, live_server, django_user_model
):
    project = study_project(django_user_model)
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("response", lambda r: problems.append(r.url) if r.status >= 400 else None)
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    _log_in(page, live_server.url, "rita", "secret-pw-1")
    page.goto(live_server.url + reverse("project-insights", args=[project.pk]))
    page.wait_for_function("() => window.Chart && document.querySelectorAll('canvas').length")
    canvases = page.locator("canvas[data-plot]")
    assert canvases.count() == 8
    for i in range(canvases.count()):
        canvas = canvases.nth(i)
        canvas.scroll_into_view_if_needed()
        drawn = canvas.evaluate(PAINTED)
        key = canvas.get_attribute("data-plot")
        assert drawn["chart"] and drawn["width"] > 0 and drawn["height"] > 0, key
        assert drawn["painted"] > 100, key
    with page.expect_download() as download:
        page.locator("#plot-decisions figcaption a").click()
    path = download.value.path()
    text = open(path, encoding="utf-8").read()
    assert text.splitlines()[0] == "Day,Accepted,Edited,Rejected"
    assert download.value.suggested_filename == f"project-{project.pk}-decisions.csv"
    page.locator("#plot-decisions summary").click()  # the data table, opened
    assert run_axe(page) == []
    # The poll's swap (asked now rather than in 60 s): new figures, drawn again, no reload.
    page.evaluate("() => { window.notReloaded = true; }")
    paul = django_user_model.objects.get(username="paul")
    task = make_drafted_task(project)
    services.label_record(
        task_id=task.pk, reviewer=paul, decision="accepted", draft_id=task.latest_draft().pk
    )
    page.evaluate(
        """(url) => htmx.ajax('GET', url, {target: '#insights-figures', swap: 'outerHTML'})""",
        reverse("project-insights", args=[project.pk]),
    )
    page.wait_for_function(
        "() => document.querySelector('#plot-decisions canvas').getAttribute('aria-label')"
        ".includes('7 readings')"
    )
    drawn = page.locator("canvas[data-plot='decisions']").evaluate(PAINTED)
    assert drawn["chart"] and drawn["painted"] > 100
    assert page.evaluate("() => window.notReloaded") is True
    assert problems == []


def test_the_comparisons_and_their_form_pass_axe_and_the_table_downloads(
    browser, live_server, django_user_model
):
    project = study_project(django_user_model)
    ada = django_user_model.objects.create_user("ada", password="secret-pw-3")
    services.membership_set(project=project, user=ada, role=Role.ADMIN)
    prompt = PromptTemplate.objects.create(project=project, version=2, instruction="Describe.")
    with mock.patch.object(comparisons.messages, "send_many", return_value=2):
        comparison = comparisons.comparison_start(
            project=project, prompt_template=prompt, model_revision="", sample_size=2
        )
    for draft in comparison.drafts.all():
        comparisons.comparison_draft_record(draft_id=draft.pk, fields={"text": "Naevus."})
        comparisons.comparison_reading_record(draft=draft, reviewer=ada, decision="accepted")
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    _log_in(page, live_server.url, "ada", "secret-pw-3")
    page.goto(live_server.url + reverse("project-insights", args=[project.pk]))
    assert page.locator("#comparison-form select option").all_inner_texts() == ["v2"]
    assert page.locator("#blind-comparisons tbody td").count() == 10  # two arms, 5 figures
    with page.expect_download() as download:
        page.locator("#prompt-comparison caption a").click()
    lines = open(download.value.path(), encoding="utf-8").read().splitlines()
    assert lines[0].startswith("Prompt,Model revision,Drafts")
    assert len(lines) == 2  # one arm: the built-in prompt of the factory's drafts
    page.locator("#id_sample_size").focus()
    assert run_axe(page) == []
    assert problems == []
