"""Where runs keep their files: the one place the names inside a runs folder are spelled.

    RUNS_DIR/
      orthofed.sqlite                    the metrics store (server.runs.store)
      <run-id>/
        scenario.yaml                    the scenario as validated (write_snapshot only)
        flower.log, superlink.log        Flower's logs (the ServerApp's and ClientApps')
        supernode-<i>.log, runner.log    deployment SuperNodes; launch problems
        orthofed.log                     a run the API's queue started: its command's output
        flwr-home/                       the run's Flower home (its SuperLink's state is in memory)
        checkpoints/                     round-<R>-task-<t>.pt, task-<t>.pt (serverapp)
        global-initial.pt, global-final.pt, global-after-task-<t>.pt, osft-task-<t>.json
        rounds.png, epsilon.png, tasks.png   `orthofed report`
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# The repository: the Flower app (pyproject.toml) and the shipped scenarios.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def new_run_id(name: str) -> str:
    """<scenario name>-<local time>-<4 hex digits>: sortable, readable, unique enough."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class RunFolder:
    """RUNS_DIR/<run-id>/ and the files in it."""

    path: Path

    @classmethod
    def of(cls, runs_dir: Path, run_id: str) -> RunFolder:
        return cls(Path(runs_dir) / run_id)

    snapshot = property(lambda self: self.path / "scenario.yaml")
    flower_log = property(lambda self: self.path / "flower.log")
    superlink_log = property(lambda self: self.path / "superlink.log")
    flwr_home = property(lambda self: self.path / "flwr-home")
    runner_log = property(lambda self: self.path / "runner.log")
    queue_log = property(lambda self: self.path / "orthofed.log")
    checkpoints = property(lambda self: self.path / "checkpoints")
    global_initial = property(lambda self: self.path / "global-initial.pt")
    global_final = property(lambda self: self.path / "global-final.pt")

    def supernode_log(self, partition: int) -> Path:
        return self.path / f"supernode-{partition}.log"

    def after_task(self, task: int) -> Path:
        return self.path / f"global-after-task-{task}.pt"

    def osft_plan(self, task: int) -> Path:
        return self.path / f"osft-task-{task}.json"

    def plot(self, name: str) -> Path:
        return self.path / f"{name}.png"

    def write_snapshot(self, scenario: dict[str, Any]) -> Path:
        """The validated scenario (as JSON data) as scenario.yaml: what the ServerApp and
        the clients of this run read, whatever the original file says by then."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.snapshot.write_text(yaml.safe_dump(scenario, sort_keys=False))
        return self.snapshot
