"""/sweeps: start a sweep (many runs as one experiment), list sweeps, read one's studies,
runs and report table, cancel one. Starting and cancelling need the token (when one is
set); reads never do. A sweep's runs are ordinary runs: GET /runs lists them."""

from __future__ import annotations

import math
import os
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from server.api.dependencies import SettingsDep, SweepsDep, require_token
from server.api.models import Problem, SweepDetail, SweepInfo, SweepList
from server.api.routers.runs import parse_body
from server.api.submission import SubmissionError
from server.api.sweep_submission import submit_sweep
from server.runs.sweep_results import sweep_results

TOKEN_CHECKED = [Depends(require_token)]
SWEEP_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {
        "type": "object", "required": ["sweep"], "additionalProperties": False,
        "properties": {"sweep": {"type": "object", "description": "The sweep file as a "
                                 "mapping (scenarios.sweep_spec.SweepSpec)."}}}},
    "application/yaml": {"schema": {"type": "string"}}}}}
NO_SWEEP: dict[int | str, dict[str, Any]] = {404: {"model": Problem,
                                                   "description": "No such sweep."}}

router = APIRouter(prefix="/sweeps")


@router.get("", response_model=SweepList)
def list_sweeps(sweeps: SweepsDep) -> SweepList:
    """Every sweep of the store, newest first (started here or by `orthofed sweep`)."""
    sweeps.reap()
    return SweepList(sweeps=[SweepInfo(**row) for row in sweeps.store.list_sweeps()])


@router.post("", status_code=202, response_model=SweepInfo, dependencies=TOKEN_CHECKED,
             openapi_extra=SWEEP_BODY,
             responses={401: {"model": Problem}, 409: {"model": Problem, "description":
                                                      "A sweep of that name is running."},
                        413: {"model": Problem}, 415: {"model": Problem},
                        422: {"model": Problem, "description": "Every problem of the sweep "
                              "and of the scenarios it expands into, each named by its cell, "
                              "method, setting and path."}})
async def start_sweep(request: Request, response: Response, settings: SettingsDep,
                      sweeps: SweepsDep) -> SweepInfo:
    """Start a sweep: `{"sweep": <the sweep file as a mapping>}` (JSON, or YAML with
    Content-Type application/yaml). Its base is an inline scenario or a path; relative
    paths resolve against the scenarios folder, and every scenario it expands into may
    read only the scenarios and data folders and must keep within this server's caps.
    Posting a sweep again resumes it: completed runs are not run again."""
    body = await request.body()
    if len(body) > settings.max_body_bytes:
        raise HTTPException(413, f"body: {len(body)} bytes, at most "
                            f"{settings.max_body_bytes} allowed")
    document = parse_body(body, request.headers.get("content-type"))
    try:
        submission = await run_in_threadpool(submit_sweep, settings, document)
        await run_in_threadpool(sweeps.start, submission)
    except SubmissionError as exc:
        raise HTTPException(exc.status, exc.errors) from None
    response.headers["Location"] = f"/sweeps/{submission.name}"
    return SweepInfo(**sweeps.store.get_sweep(submission.name))


@router.get("/{sweep_id}", response_model=SweepDetail, responses=NO_SWEEP)
def sweep_detail(sweep_id: str, settings: SettingsDep, sweeps: SweepsDep) -> dict[str, Any]:
    """The sweep's status, spec, studies (tuned settings, chosen setting, runs with
    their ids) and report table, over what has finished so far."""
    sweeps.reap()
    results = sweep_results(sweeps.store, sweep_id)
    if results is None:
        raise HTTPException(404, f"no sweep {sweep_id!r}")
    file = results["file"]
    if file is not None:  # never the server's absolute paths
        runs_dir = str(settings.runs_dir.resolve())
        file = (os.path.relpath(file, runs_dir) if file.startswith(runs_dir + os.sep)
                else os.path.basename(file))
    return finite({**results, "file": file})


@router.post("/{sweep_id}/cancel", status_code=202, response_model=SweepInfo,
             dependencies=TOKEN_CHECKED,
             responses={**NO_SWEEP, 401: {"model": Problem},
                        409: {"model": Problem, "description": "It is not running."}})
def cancel_sweep(sweep_id: str, sweeps: SweepsDep) -> SweepInfo:
    """Stop a running sweep: it cancels its runs (what they recorded stays), then
    records 'cancelled'; posting it again resumes it."""
    if sweeps.store.get_sweep(sweep_id) is None:
        raise HTTPException(404, f"no sweep {sweep_id!r}")
    refusal = sweeps.cancel(sweep_id)
    if refusal is not None:
        raise HTTPException(409, f"sweep {sweep_id!r} cannot be cancelled: {refusal}")
    return SweepInfo(**sweeps.store.get_sweep(sweep_id))


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float (a diverged run's loss) as None: JSON
    has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
