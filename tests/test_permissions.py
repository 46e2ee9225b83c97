"""The permission matrix: every view, every persona."""

import pytest
from django.urls import reverse

from tests.factories import make_drafted_task

# Who gets what: 200 (allowed), 403 (member, role lacks it), 404 (not a member), 302 (to login).
PERSONAS = ["admin", "pathologist", "other_pathologist", "researcher", "outsider", "anonymous"]

MATRIX = {
    # view name: expected per persona, in PERSONAS order
    "project-detail": [200, 200, 404, 200, 404, 302],
    "project-upload": [200, 403, 404, 200, 404, 302],
    "project-export": [200, 403, 404, 403, 404, 302],
    "task-detail": [200, 200, 404, 200, 404, 302],
    "task-decide": [200, 200, 404, 403, 404, 302],
    "task-retry": [302, 403, 404, 403, 404, 302],
    "task-preview": [None, None, 404, None, 404, 302],
    "project-retry-failed": [302, 403, 404, 403, 404, 302],
    "project-settings": [200, 403, 404, 403, 404, 302],
    "task-redraft": [302, 403, 404, 403, 404, 302],  # None: allowed (no file here: not 403/404)
}


def _user(people, persona):
    return None if persona == "anonymous" else getattr(people, persona)


def _request(client, name, task):
    if name.startswith("project-"):
        url = reverse(name, args=[task.project_id])
    else:
        url = reverse(name, args=[task.pk])
    if name == "task-decide":
        return client.post(url, {"decision": "accepted", "draft_id": task.latest_draft().pk})
    if name in ("task-retry", "task-redraft", "project-retry-failed"):
        return client.post(url)
    return client.get(url)


@pytest.mark.parametrize("name", list(MATRIX))
@pytest.mark.parametrize("persona", PERSONAS)
def test_the_permission_matrix(people, client_for, name, persona):
    task = make_drafted_task(people.project)
    expected = MATRIX[name][PERSONAS.index(persona)]
    if name == "task-decide" and expected == 200:
        expected = 302  # without htmx the decision redirects to the next task
    response = _request(client_for(_user(people, persona)), name, task)
    if expected is None:
        assert response.status_code not in (302, 403, 404)
    else:
        assert response.status_code == expected
    if expected == 302 and persona == "anonymous":
        assert response["Location"].startswith(reverse("login"))


def test_the_project_list_shows_only_my_projects(people, client_for):
    response = client_for(people.other_pathologist).get(reverse("project-list"))
    assert b"Melanoma photos" in response.content
    assert b"Breast biopsies" not in response.content


def test_an_admin_sees_every_project(people, client_for):
    response = client_for(people.admin).get(reverse("project-list"))
    assert b"Melanoma photos" in response.content and b"Breast biopsies" in response.content


def test_it_hides_other_projects_tasks(people, client_for):
    mine = make_drafted_task(people.other_project)
    response = client_for(people.pathologist).get(reverse("task-detail", args=[mine.pk]))
    assert response.status_code == 404


def test_a_post_without_csrf_token_is_refused(people):
    from django.test import Client

    task = make_drafted_task(people.project)
    client = Client(enforce_csrf_checks=True)
    client.force_login(people.pathologist)
    response = client.post(
        reverse("task-decide", args=[task.pk]),
        {"decision": "accepted", "draft_id": task.latest_draft().pk},
    )
    assert response.status_code == 403


@pytest.mark.parametrize("method", ["get"])
def test_decide_rejects_get(people, client_for, method):
    task = make_drafted_task(people.project)
    response = getattr(client_for(people.pathologist), method)(
        reverse("task-decide", args=[task.pk])
    )
    assert response.status_code == 405
