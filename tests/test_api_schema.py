"""schemathesis against /api/openapi.json: no server error and no answer outside the schema.

Requests go through the Django WSGI app in this process, in the test's transaction, with a
superuser's token (who reaches every endpoint), on real rows and on generated ids alike.
"""

from __future__ import annotations

import contextlib

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import Client
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from annotations import api_tokens, exportjobs, exports, services
from tests.factories import make_drafted_task

CHECKS = [not_a_server_error, response_schema_conformance]
EXAMPLES = 8


@contextlib.contextmanager
def _in_this_transaction():
    """As Django's test client does: a request must not close the test's connection."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def rows(people):
    """A drafted and read task, and a finished export: ids that lead to real answers."""
    task = make_drafted_task(people.project, text='<script>alert(1)</script>" onmouseover="x')
    services.label_record(
        task_id=task.pk,
        draft_id=task.latest_draft().pk,
        decision="accepted",
        reviewer=people.pathologist,
    )
    job = exportjobs.export_job_start(
        project=people.project, requested_by=None, options=exports.ExportOptions()
    )
    exportjobs.export_job_run(job_id=job.pk)
    return {"project_id": people.project.pk, "task_id": task.pk, "job_id": job.pk}


def _schema():
    schema_json = Client().get("/api/openapi.json")
    assert schema_json.status_code == 200
    schema = schemathesis.openapi.from_dict(schema_json.json())
    schema.app = WSGIHandler()
    return schema


def test_the_schema_is_served_without_a_token_and_names_bearer_auth(db):
    body = Client().get("/api/openapi.json").json()
    assert body["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
    assert "/api/tasks/{task_id}" in body["paths"]
    assert Client().get("/api/docs").status_code == 404  # no page that needs a CDN


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_finds_no_server_error_or_schema_violation(people, rows, mode, settings):
    settings.MEDANNOT_API_RATE_PER_MINUTE = 10**6
    token = api_tokens.token_create(user=people.superuser, name="schemathesis").secret
    headers = {"Authorization": f"Bearer {token}"}
    operations = [result.ok() for result in _schema().get_all_operations()]
    assert len(operations) >= 8
    with _in_this_transaction():
        for operation in operations:
            real = {k: v for k, v in rows.items() if f"{{{k}}}" in operation.path}
            for path_parameters in [real, None] if real else [None]:
                _fuzz(operation, mode, path_parameters, headers)


def _fuzz(operation, mode, path_parameters, headers) -> None:
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case) -> None:
        response = case.call(headers=headers)
        case.validate_response(response, checks=CHECKS)

    run()
