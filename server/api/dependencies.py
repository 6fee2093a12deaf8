"""What the routes are given (FastAPI dependencies): the settings, the store, the queue
and the sweep processes that create_app put on `app.state`, the token check, and the
run a path names.

Shared query parameters and error responses live here too, so every router declares
them the same way and the OpenAPI schema says the same thing for each.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server.api.models import Problem
from server.api.queue import RunQueue
from server.api.settings import ServeSettings
from server.api.sweep_processes import SweepProcesses
from server.runs.store import MetricsStore

RUN_ID = r"^[A-Za-z0-9._-]{1,200}$"
SQL_INT_MAX = 2**63 - 1  # SQLite integers are 64-bit: a bigger offset is a 422, not a 500
BEARER = HTTPBearer(auto_error=False)

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such run."}}
# The event stream answers text/event-stream; its 404 is still JSON.
JSON_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such run.", "content": {
        "application/json": {"schema": Problem.model_json_schema()}}}}

# `after`: rounds numbered above it (-1: from the start).
After = Annotated[int, Query(ge=-1, le=SQL_INT_MAX)]


def get_settings(request: Request) -> ServeSettings:
    return request.app.state.settings


def get_store(request: Request) -> MetricsStore:
    return request.app.state.store


def get_queue(request: Request) -> RunQueue:
    return request.app.state.queue


def get_sweeps(request: Request) -> SweepProcesses:
    return request.app.state.sweeps


SettingsDep = Annotated[ServeSettings, Depends(get_settings)]
StoreDep = Annotated[MetricsStore, Depends(get_store)]
QueueDep = Annotated[RunQueue, Depends(get_queue)]
SweepsDep = Annotated[SweepProcesses, Depends(get_sweeps)]


def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> None:
    """With a token configured, changes need it; reads never do."""
    if settings.token is None:
        return
    expected = settings.token.get_secret_value()
    if credentials is None or not secrets.compare_digest(credentials.credentials, expected):
        raise HTTPException(401, "this server needs 'Authorization: Bearer <token>' for "
                            "requests that change something",
                            headers={"WWW-Authenticate": "Bearer"})


def get_run(store: MetricsStore, run_id: str) -> dict[str, Any]:
    """The store's row of `run_id`, or a 404. Called in a route's body (after its query
    parameters are validated, so a bad query is a 422 whether or not the run exists)."""
    run = store.get_run(run_id)
    if run is None:
        raise HTTPException(404, f"no run {run_id!r}")
    return run


def existing_run(run_id: str, store: StoreDep) -> dict[str, Any]:
    """get_run as a dependency: a 404 before a streaming response starts."""
    return get_run(store, run_id)
