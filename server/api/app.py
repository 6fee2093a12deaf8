"""The REST API: start runs, read their rounds, clients and task matrix, follow them live.

HTTP lives only here. Everything is read from the metrics store (the same one
`orthofed run` writes), and runs started over HTTP go through the same command, queued
by server.api.queue. Paths (DESIGN.md, Interfaces): GET /healthz, GET /runs, POST /runs,
GET /runs/{id}, GET /runs/{id}/rounds, GET /runs/{id}/clients, GET /runs/{id}/tasks,
GET /runs/{id}/events (server-sent events), POST /runs/{id}/cancel,
POST /runs/{id}/resume; the dashboard at /.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import yaml
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from scenarios.loader import parse_yaml
from server.api.models import (
    Client,
    ClientList,
    Health,
    Problem,
    Round,
    RoundList,
    RunDetail,
    RunInfo,
    RunList,
    Status,
    Tasks,
)
from server.api.queue import RunQueue
from server.api.settings import ServeSettings
from server.api.submission import SubmissionError, submit_scenario
from server.runs.status import ACTIVE, TERMINAL
from server.runs.store import MetricsStore

RUN_ID = r"^[A-Za-z0-9._-]{1,200}$"
EVENT_POLL_S = 0.5
DASHBOARD = Path(__file__).with_name("dashboard.html")
BEARER = HTTPBearer(auto_error=False)
SQL_INT_MAX = 2**63 - 1  # SQLite integers are 64-bit: a bigger offset is a 422, not a 500


def create_app(settings: ServeSettings) -> FastAPI:
    """The API over `settings.runs_dir`; its queue starts and stops with the app."""
    runs_dir = settings.runs_dir.resolve()
    store = MetricsStore.in_dir(runs_dir)
    queue = RunQueue(store, runs_dir, settings.concurrency)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        queue.start()
        yield
        queue.stop()

    app = FastAPI(title="orthofed", lifespan=lifespan,
                  description="Start federated and continual learning runs; read their "
                  "round metrics, clients (epsilon spent) and task-accuracy matrix.")
    def require_token(
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

    def get_run(run_id: str) -> dict[str, Any]:
        run = store.get_run(run_id)
        if run is None:
            raise HTTPException(404, f"no run {run_id!r}")
        return run

    not_found = {404: {"model": Problem, "description": "No such run."}}

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        return Health(runs_dir=str(runs_dir), executing=store.count_runs(ACTIVE))

    @app.get("/runs", response_model=RunList)
    def list_runs(limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                  offset: Annotated[int, Query(ge=0, le=SQL_INT_MAX)] = 0,
                  status: Status | None = None) -> RunList:
        """Runs, newest first, a page at a time."""
        statuses = (status,) if status else None
        rows = store.list_runs(limit, offset, statuses)
        return RunList(runs=[RunInfo(**r) for r in rows], total=store.count_runs(statuses),
                       limit=limit, offset=offset)

    @app.post("/runs", status_code=202, response_model=RunInfo,
              dependencies=[Depends(require_token)],
              responses={401: {"model": Problem}, 404: {"model": Problem},
                         413: {"model": Problem}, 415: {"model": Problem},
                         422: {"model": Problem, "description": "Every problem of the "
                               "scenario, each named by its path in it."}},
              openapi_extra={"requestBody": {"required": False, "content": {
                  "application/json": {"schema": {"type": "object"}},
                  "application/yaml": {"schema": {"type": "string"}}}}})
    async def start_run(request: Request,
                        shipped: Annotated[str | None, Query(pattern=RUN_ID)] = None,
                        ) -> RunInfo:
        """Queue a run: the scenario as the body (JSON, or YAML with Content-Type
        application/yaml), or `?shipped=NAME` for scenarios/NAME.yaml. Relative data paths
        resolve against the scenarios folder; a scenario may read only the scenarios and
        data folders of this server."""
        body = await request.body()
        if len(body) > settings.max_body_bytes:
            raise HTTPException(413, f"body: {len(body)} bytes, at most "
                                f"{settings.max_body_bytes} allowed")
        document = None if shipped else parse_body(body, request.headers.get("content-type"))
        try:
            run_id = await run_in_threadpool(submit_scenario, settings, store, document, shipped)
        except SubmissionError as exc:
            raise HTTPException(exc.status, exc.errors) from None
        await run_in_threadpool(queue.tick)  # start it now if there is room
        return RunInfo(**store.get_run(run_id))

    @app.get("/runs/{run_id}", response_model=RunDetail, responses=not_found)
    def run_detail(run_id: str) -> RunDetail:
        run = get_run(run_id)
        return RunDetail(**run, rounds=len(store.rounds(run_id)))

    @app.get("/runs/{run_id}/rounds", response_model=RoundList, responses=not_found)
    def rounds(run_id: str, after: Annotated[int, Query(ge=-1, le=SQL_INT_MAX)] = -1,
               limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000) -> RoundList:
        """Rounds numbered above `after`, in order, at most `limit`."""
        get_run(run_id)
        return RoundList(run_id=run_id, rounds=[Round(**r) for r in
                                                store.rounds(run_id, after, limit)])

    @app.get("/runs/{run_id}/clients", response_model=ClientList, responses=not_found)
    def clients(run_id: str) -> ClientList:
        """Per client: rounds joined, failures, refusals, epsilon spent, last metrics."""
        from server.runs.summary import client_summaries

        get_run(run_id)
        return ClientList(run_id=run_id, clients=[
            Client(partition_id=pid, **c) for pid, c in client_summaries(store, run_id).items()])

    @app.get("/runs/{run_id}/tasks", response_model=Tasks, responses=not_found)
    def tasks(run_id: str) -> Tasks:
        """The accuracy matrix of a task stream and AA / BWT / FWT (empty otherwise)."""
        from server.runs.continual import task_summary

        get_run(run_id)
        return Tasks(run_id=run_id, **task_summary(store.task_evals(run_id)))

    def existing_run(run_id: str) -> dict[str, Any]:
        return get_run(run_id)  # a dependency: a 404 before the event stream starts

    json_not_found = {404: {"description": "No such run.", "content": {
        "application/json": {"schema": Problem.model_json_schema()}}}}

    @app.get("/runs/{run_id}/events", response_class=EventSourceResponse,
             responses=json_not_found,
             dependencies=[Depends(existing_run)])
    async def events(run_id: str, after: Annotated[int, Query(ge=-1, le=SQL_INT_MAX)] = -1,
                     last_event_id: Annotated[str | None, Header()] = None,
                     ) -> AsyncIterator[ServerSentEvent]:
        """`round` events (id = the round) as rounds are recorded, `status` events as the
        run moves on; the stream ends after the run's final status. Reconnecting with
        Last-Event-ID resumes after that round."""
        if last_event_id is not None and last_event_id.lstrip("-").isdigit():
            after = max(after, min(int(last_event_id), SQL_INT_MAX))
        status = None
        while True:
            run = await run_in_threadpool(store.get_run, run_id)
            ended = run["status"] in TERMINAL
            new = await run_in_threadpool(store.rounds, run_id, after)
            for i, r in enumerate(new):
                # A round is written in two steps (train, then the server's eval): send it
                # once it is whole, or once a later round or the end shows it will stay so.
                if not (r["eval"] or i + 1 < len(new) or ended):
                    break
                after = r["round"]
                yield ServerSentEvent(event="round", id=str(r["round"]), data=r)
            if run["status"] != status:
                status = run["status"]
                yield ServerSentEvent(event="status", data=RunInfo(**run).model_dump())
            if ended:
                return
            await asyncio.sleep(EVENT_POLL_S)

    @app.post("/runs/{run_id}/cancel", status_code=202, response_model=RunInfo,
              dependencies=[Depends(require_token)],
              responses={**not_found, 401: {"model": Problem},
                         409: {"model": Problem, "description": "The run has already ended."}})
    def cancel(run_id: str) -> RunInfo:
        """Stop a pending or running run; what it recorded stays."""
        run = get_run(run_id)
        if not queue.cancel(run_id):
            raise HTTPException(409, f"run {run_id!r} has already ended ({run['status']})")
        return RunInfo(**store.get_run(run_id))

    @app.post("/runs/{run_id}/resume", status_code=202, response_model=RunInfo,
              dependencies=[Depends(require_token)],
              responses={**not_found, 401: {"model": Problem},
                         409: {"model": Problem, "description": "The run completed, is "
                               "waiting to run, or is still running."}})
    def resume(run_id: str) -> RunInfo:
        """Queue a failed, cancelled or abandoned run to continue from its newest
        checkpoint: recorded rounds stay, later ones are redone, epsilon carries on."""
        get_run(run_id)
        refusal = queue.resume(run_id)
        if refusal is not None:
            raise HTTPException(409, f"run {run_id!r} cannot be resumed: {refusal}")
        return RunInfo(**store.get_run(run_id))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> HTMLResponse:
        return HTMLResponse(DASHBOARD.read_text())

    app.state.queue, app.state.store = queue, store
    return app


def parse_body(body: bytes, content_type: str | None) -> Any:
    """A scenario body: JSON, or YAML with a YAML content type."""
    kind = (content_type or "application/json").split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
        if kind in ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"):
            return parse_yaml(text)
        if kind == "application/json":
            return json.loads(text) if text.strip() else None
    except (ValueError, yaml.YAMLError) as exc:  # ValueError: bad JSON or UTF-8, huge ints
        raise HTTPException(422, [f"body: not a readable scenario: {exc}"]) from None
    except RecursionError:  # both parsers recurse per level of nesting
        raise HTTPException(422, ["body: nested too deeply to be a scenario (a scenario is a "
                                  "few levels of sections)"]) from None
    raise HTTPException(415, f"Content-Type {kind!r}: send application/json or application/yaml")
