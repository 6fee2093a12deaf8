"""The API under FastAPI's TestClient, its queue paused (concurrency 0: no run starts
here; tests/integration/test_api_server.py runs them for real through uvicorn)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.api.settings import ServeSettings
from server.runs.store import MetricsStore
from tests.conftest import SHARED_DATA


@pytest.fixture
def settings(tmp_path) -> ServeSettings:
    return ServeSettings(runs_dir=tmp_path / "runs", concurrency=0, token="s3cret",
                         data_dirs=(SHARED_DATA,))


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def store(settings) -> MetricsStore:
    return MetricsStore.in_dir(settings.runs_dir)
