"""`orthofed serve`: settings from flags and environment, then uvicorn."""

from __future__ import annotations

import argparse
import os
import sys

from pydantic import ValidationError

from scenarios.loader import format_error
from server.api.settings import ServeSettings

FLAGS = ("host", "port", "runs_dir", "concurrency", "token", "max_clients", "max_rounds",
         "max_local_steps", "superlink", "superlink_ca", "ssl_certfile", "ssl_keyfile",
         "tensorboard", "mlflow", "mlflow_uri", "sweep_workers")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.api.app import create_app

    given = {k: getattr(args, k) for k in FLAGS if getattr(args, k, None) is not None}
    try:
        settings = ServeSettings(**given)
    except ValidationError as exc:
        for error in exc.errors():
            print(f"serve: {format_error(error)}", file=sys.stderr)
        return 2
    if settings.superlink_ca is not None:  # the run workers this server starts inherit it
        from server.orchestration.launcher import SUPERLINK_CA_ENV

        os.environ[SUPERLINK_CA_ENV] = str(settings.superlink_ca.resolve())
    where = (f"on the SuperLink at {settings.superlink}" if settings.superlink
             else "in local simulations")
    scheme = "https" if settings.ssl_certfile else "http"
    print(f"orthofed serve: {scheme}://{settings.host}:{settings.port} (runs in "
          f"{settings.runs_dir.resolve()}, {settings.concurrency} at once, "
          f"{'token required for changes' if settings.token else 'no token'}{caps(settings)}; "
          f"runs train {where})", file=sys.stderr)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                ssl_certfile=settings.ssl_certfile, ssl_keyfile=settings.ssl_keyfile)
    return 0


def caps(settings: ServeSettings) -> str:
    """", at most 8 clients, 100 rounds per posted run" for the caps that are set."""
    given = [f"{value} {what}" for value, what in ((settings.max_clients, "clients"),
                                                  (settings.max_rounds, "rounds"),
                                                  (settings.max_local_steps, "local steps"))
             if value is not None]
    return f", at most {', '.join(given)} per posted run" if given else ""
