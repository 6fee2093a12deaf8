"""The ClientApp's imports, done by each Ray worker as it starts instead of at its first
message.

A simulated client (a Ray actor) imports the ClientApp (torch, Opacus, ...) only when
its first message arrives, and that message comes once the ServerApp has built its
model and data: the two happen one after the other, seconds each. The launcher sets
RAY_RUNTIME_ENV_HOOK (read by ray.init in flwr-simulation, the Ray driver) to
`runtime_env` below, which adds Ray's `worker_process_setup_hook` to the job's runtime
environment: every worker of the run then runs `preload` when it starts, while the
ServerApp is still setting up. On a warm Ray (RAY_ADDRESS) too: the hook travels with
the job. A module that fails to import here is left for the first message to import,
and to report as Flower reports any ClientApp error.
"""

from __future__ import annotations

import importlib
from typing import Any

# What a ClientApp needs for any scenario: its own module and what it builds models
# with. (flwr_datasets is left out: presplit data never needs it.)
MODULES = ("clients.app", "transformers", "peft")


def runtime_env(env: dict[str, Any] | None) -> dict[str, Any]:
    """Ray's runtime-env hook: the driver's runtime environment `env` plus the worker
    setup hook `preload` (a setup hook already there is kept)."""
    env = dict(env or {})
    env.setdefault("worker_process_setup_hook", f"{__name__}.preload")
    return env


def preload() -> None:
    """Import MODULES; never raise (a raising setup hook makes Ray kill the worker)."""
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the first message imports it again and reports
            pass
