"""/runs: list and start runs; a run's detail, rounds, clients and task matrix; cancel
and resume it. Changes need the token (when one is set); reads never do."""

from __future__ import annotations

import json
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from scenarios.loader import parse_yaml
from scenarios.stream import total_rounds_of_document
from server.api.dependencies import (
    NOT_FOUND,
    RUN_ID,
    SQL_INT_MAX,
    After,
    QueueDep,
    SettingsDep,
    StoreDep,
    get_run,
    require_token,
)
from server.api.models import (
    Client,
    ClientList,
    EpsilonPoint,
    Problem,
    Round,
    RoundList,
    RunDetail,
    RunInfo,
    RunList,
    Status,
    Tasks,
)
from server.api.submission import SubmissionError, submit_scenario

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
SCENARIO_BODY = {"requestBody": {"required": False, "content": {
    "application/json": {"schema": {"type": "object"}},
    "application/yaml": {"schema": {"type": "string"}}}}}

TOKEN_CHECKED = [Depends(require_token)]  # on the routes that change something

router = APIRouter(prefix="/runs")


@router.get("", response_model=RunList)
def list_runs(store: StoreDep, limit: Annotated[int, Query(ge=1, le=1000)] = 50,
              offset: Annotated[int, Query(ge=0, le=SQL_INT_MAX)] = 0,
              status: Status | None = None,
              name: Annotated[str | None, Query(min_length=1, max_length=1000)] = None,
              ) -> RunList:
    """Runs, newest first, a page at a time; `status`: only runs in that status, `name`:
    only runs of the scenario of that name (exact match). `total` counts the runs that
    match, over all pages."""
    statuses = (status,) if status else None
    rows = store.list_runs(limit, offset, statuses, name=name)
    return RunList(runs=[RunInfo(**r) for r in rows], total=store.count_runs(statuses, name),
                   limit=limit, offset=offset)


@router.post("", status_code=202, response_model=RunInfo, dependencies=TOKEN_CHECKED,
              openapi_extra=SCENARIO_BODY,
              responses={401: {"model": Problem}, 404: {"model": Problem},
                         413: {"model": Problem}, 415: {"model": Problem},
                         422: {"model": Problem, "description": "Every problem of the "
                               "scenario, each named by its path in it."}})
async def start_run(request: Request, settings: SettingsDep, store: StoreDep,
                    queue: QueueDep,
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


@router.get("/{run_id}", response_model=RunDetail, responses=NOT_FOUND)
def run_detail(run_id: str, store: StoreDep) -> RunDetail:
    run = get_run(store, run_id)
    return RunDetail(**run, rounds=len(store.rounds(run_id)),
                     planned_rounds=total_rounds_of_document(run["scenario"]))


@router.get("/{run_id}/rounds", response_model=RoundList, responses=NOT_FOUND)
def rounds(run_id: str, store: StoreDep, after: After = -1,
           limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000) -> RoundList:
    """Rounds numbered above `after`, in order, at most `limit`."""
    get_run(store, run_id)
    return RoundList(run_id=run_id, rounds=[Round(**r) for r in
                                            store.rounds(run_id, after, limit)])


@router.get("/{run_id}/clients", response_model=ClientList, responses=NOT_FOUND)
def clients(run_id: str, store: StoreDep) -> ClientList:
    """Per client: rounds joined, failures, refusals, epsilon spent, last metrics."""
    from server.runs.summary import client_summaries

    get_run(store, run_id)
    curves = epsilon_curves(store.client_rounds(run_id))
    return ClientList(run_id=run_id, clients=[
        Client(partition_id=pid, epsilon_by_round=curves.get(pid, []), **c)
        for pid, c in client_summaries(store, run_id).items()])


def epsilon_curves(rows: list[dict[str, Any]]) -> dict[str, list[EpsilonPoint]]:
    """Per partition id (as client_summaries keys them): the epsilon of each round it
    reported one in, in round order (the rows come sorted by round)."""
    curves: dict[str, list[EpsilonPoint]] = {}
    for row in rows:
        epsilon = row["metrics"].get("epsilon")
        if isinstance(epsilon, int | float) and not isinstance(epsilon, bool):
            curves.setdefault(str(row["partition_id"]), []).append(
                EpsilonPoint(round=row["round"], epsilon=epsilon))
    return curves


@router.get("/{run_id}/tasks", response_model=Tasks, responses=NOT_FOUND)
def tasks(run_id: str, store: StoreDep) -> Tasks:
    """The accuracy matrix of a task stream and AA / BWT / FWT (empty otherwise)."""
    from server.runs.continual import prompted, task_summary

    run = get_run(store, run_id)
    return Tasks(run_id=run_id,
                 **task_summary(store.task_evals(run_id), prompted(run["scenario"])))


@router.post("/{run_id}/cancel", status_code=202, response_model=RunInfo,
              dependencies=TOKEN_CHECKED,
              responses={**NOT_FOUND, 401: {"model": Problem},
                         409: {"model": Problem, "description": "The run has already ended."}})
def cancel(run_id: str, store: StoreDep, queue: QueueDep) -> RunInfo:
    """Stop a pending or running run; what it recorded stays."""
    run = get_run(store, run_id)
    if not queue.cancel(run_id):
        raise HTTPException(409, f"run {run_id!r} has already ended ({run['status']})")
    return RunInfo(**store.get_run(run_id))


@router.post("/{run_id}/resume", status_code=202, response_model=RunInfo,
              dependencies=TOKEN_CHECKED,
              responses={**NOT_FOUND, 401: {"model": Problem},
                         409: {"model": Problem, "description": "The run completed, is "
                               "waiting to run, or is still running."}})
def resume(run_id: str, store: StoreDep, queue: QueueDep) -> RunInfo:
    """Queue a failed, cancelled or abandoned run to continue from its newest
    checkpoint: recorded rounds stay, later ones are redone, epsilon carries on."""
    get_run(store, run_id)
    refusal = queue.resume(run_id)
    if refusal is not None:
        raise HTTPException(409, f"run {run_id!r} cannot be resumed: {refusal}")
    return RunInfo(**store.get_run(run_id))


def parse_body(body: bytes, content_type: str | None) -> Any:
    """A scenario body: JSON, or YAML with a YAML content type."""
    kind = (content_type or "application/json").split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
        if kind in YAML_TYPES:
            return parse_yaml(text)
        if kind == "application/json":
            return json.loads(text) if text.strip() else None
    except (ValueError, yaml.YAMLError) as exc:  # ValueError: bad JSON or UTF-8, huge ints
        raise HTTPException(422, [f"body: not a readable scenario: {exc}"]) from None
    except RecursionError:  # both parsers recurse per level of nesting
        raise HTTPException(422, ["body: nested too deeply to be a scenario (a scenario is a "
                                  "few levels of sections)"]) from None
    raise HTTPException(415, f"Content-Type {kind!r}: send application/json or application/yaml")
