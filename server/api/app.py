"""The REST API: start runs, read their rounds, clients and task matrix, follow them live.

HTTP lives only in server.api. Everything is read from the metrics store (the same one
`orthofed run` writes); runs started over HTTP are queued by server.api.queue, which
executes each with server.api.worker. Paths (DESIGN.md, Interfaces), one router per
resource under server/api/routers/: GET /healthz (health); GET /runs, POST /runs,
GET /runs/{id}, GET /runs/{id}/rounds, GET /runs/{id}/clients, GET /runs/{id}/tasks,
POST /runs/{id}/cancel, POST /runs/{id}/resume (runs); GET /runs/{id}/events,
server-sent events (events); GET /sweeps, POST /sweeps, GET /sweeps/{id},
POST /sweeps/{id}/cancel (sweeps: each an `orthofed sweep` process of
server.api.sweep_processes); the dashboard at / (dashboard). The routes get the
settings, the store, the queue, the sweep processes and the token check from
server.api.dependencies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.api.queue import RunQueue
from server.api.routers import dashboard, events, health, runs, sweeps
from server.api.settings import ServeSettings
from server.api.sweep_processes import SweepProcesses
from server.runs.store import MetricsStore
from server.runs.sweep_store import SweepStore

DESCRIPTION = ("Start federated and continual learning runs; read their round metrics, "
               "clients (epsilon spent) and task-accuracy matrix.")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The queue runs while the app serves: it adopts runs left by a previous API
    process before the first request, and stops watching (runs keep going) at exit.
    Sweeps started here are stopped at exit (posted again, they resume)."""
    app.state.queue.start()
    yield
    app.state.queue.stop()
    app.state.sweeps.stop()


def create_app(settings: ServeSettings) -> FastAPI:
    """The API over `settings.runs_dir` (resolved once, here); its queue starts and
    stops with the app."""
    settings = settings.model_copy(update={"runs_dir": settings.runs_dir.resolve()})
    store = MetricsStore.in_dir(settings.runs_dir)
    app = FastAPI(title="orthofed", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings, app.state.store = settings, store
    app.state.queue = RunQueue(store, settings.runs_dir, settings.concurrency,
                               superlink=settings.superlink)
    app.state.sweeps = SweepProcesses(SweepStore(settings.runs_dir), settings.runs_dir,
                                      settings.sweep_workers, settings.superlink)
    for router in (health.router, runs.router, events.router, sweeps.router,
                   dashboard.router):
        app.include_router(router)
    return app
