"""Schemathesis against the OpenAPI schema: generated requests to every operation, no
5xx and responses that match the documented schemas. The queue is paused (no run
starts); one finished run gives the run paths something to find."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from server.api.app import create_app
from server.api.settings import ServeSettings
from tests.conftest import SHARED_DATA
from tests.server.runs.stored import finished_run


@pytest.fixture
def api_schema(tmp_path):
    app = create_app(ServeSettings(runs_dir=tmp_path / "runs", concurrency=0,
                                   data_dirs=(SHARED_DATA,)))
    finished_run(app.state.store, "done-1")
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_documented_responses(case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text[:300])
    # What the issue asks (no 5xx) and that every answer is one the schema documents.
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                              content_type_conformance,
                                              response_schema_conformance])
