"""GET /runs/{run_id}/events: a run followed live, as server-sent events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from server.api.dependencies import JSON_NOT_FOUND, SQL_INT_MAX, After, StoreDep, existing_run
from server.api.models import RunInfo
from server.runs.status import TERMINAL

EVENT_POLL_S = 0.5

router = APIRouter()


@router.get("/runs/{run_id}/events", response_class=EventSourceResponse,
            responses=JSON_NOT_FOUND, dependencies=[Depends(existing_run)])
async def events(run_id: str, store: StoreDep, after: After = -1,
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
