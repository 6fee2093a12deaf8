"""A sweep over HTTP for real: `orthofed serve` under uvicorn, a tiny sweep POSTed (inline
base, one method, one learning rate, one tuning and one report seed), GET /sweeps/{id}
polled until it completed; its report table has the method's row with a test metric,
and GET /runs lists its runs, completed. The server is stopped afterwards, and with it
any sweep still running (tests/server/api/test_sweeps.py covers the rest in-process)."""

from __future__ import annotations

import time

import httpx
import psutil
import pytest

from tests.integration.helpers import ONE_CLIENT_PROCESS, processes_mentioning, serving, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.long]
TOKEN = {"Authorization": "Bearer it-token"}

SWEEP = {
    "name": "api-toy",
    "base": {
        "name": "api-toy", "seed": 0,
        "model": {"name": "tiny-bert", "max_length": 16, "lora": {"rank": 2, "alpha": 4}},
        "data": {"source": {"kind": "generated", "num_labels": 3, "train_size": 120,
                            "test_size": 30}, "validation_fraction": 0.2},
        "federation": {"num_clients": 2, "clients_per_round": 2, "rounds": 1,
                       "local_steps": 3, "batch_size": 8,
                       "optimizer": {"name": "sgd", "lr": 0.1}},
        "strategy": {"name": "fedavg-lora"},
        "resources": ONE_CLIENT_PROCESS,
    },
    "methods": {"fedavg": {"strategy.name": "fedavg-lora"}},
    "tune": {"federation.optimizer.lr": {"values": [0.1]}},
    "seeds": {"tune": [0], "report": [100]},
    "selection": {"metric": "val-acc", "last_rounds": 1},
    "report": {"metrics": ["eval-acc"], "last_rounds": 1},
}


def ended(base: str) -> dict | None:
    """GET /sweeps/api-toy once it is no longer running."""
    detail = httpx.get(f"{base}/sweeps/api-toy", timeout=60).json()
    return detail if detail["status"] != "running" else None


def sweep_processes(runs_dir) -> list:
    """The live `orthofed sweep` processes of `runs_dir` (after its status says it
    completed, it still writes its report files)."""
    found = []
    for process in processes_mentioning(str(runs_dir)):
        try:
            if "sweep" in process.cmdline() and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:  # it ended meanwhile
            continue
    return found


def test_a_posted_sweep_runs_to_its_report(tmp_path, runs_dir) -> None:
    runs_dir.mkdir(parents=True)
    try:
        with serving(runs_dir, env={"FLWR_HOME": str(tmp_path / "flwr-home")}) as base:
            posted = httpx.post(f"{base}/sweeps", json={"sweep": SWEEP}, headers=TOKEN,
                                timeout=120)
            assert posted.status_code == 202, posted.text
            assert posted.headers["location"] == "/sweeps/api-toy"
            detail = wait_for(lambda: ended(base), timeout=900, what="the sweep to end",
                              poll=2)
            log = runs_dir / "sweeps" / "api-toy" / "sweep.log"
            assert detail["status"] == "completed", log.read_text()[-3000:]
            rows = detail["table"]["rows"]
            assert [(r["cell"], r["method"]) for r in rows] == [("all", "fedavg")]
            accuracy = rows[0]["values"]["eval-acc"]
            assert list(accuracy) == ["100"] and 0.0 <= accuracy["100"] <= 1.0
            assert rows[0]["setting"] == {"federation.optimizer.lr": 0.1}
            runs = detail["studies"][0]["runs"]
            assert sorted((r["phase"], r["seed"]) for r in runs) == [("report", 100),
                                                                   ("tune", 0)]
            listed = httpx.get(f"{base}/runs", timeout=60).json()["runs"]
            statuses = {r["id"]: r["status"] for r in listed}
            assert {r["run_id"]: "completed" for r in runs} == {
                r["run_id"]: statuses.get(r["run_id"]) for r in runs}
            # Each ran once, by the sweep's `orthofed run`: the API's queue (its worker
            # logs to orthofed.log) left them alone while they were pending.
            assert not any((runs_dir / r["run_id"] / "orthofed.log").exists() for r in runs)
            sweeps = httpx.get(f"{base}/sweeps", timeout=60).json()["sweeps"]
            assert [(s["id"], s["status"]) for s in sweeps] == [("api-toy", "completed")]
            wait_for(lambda: not sweep_processes(runs_dir), timeout=300, what="the sweep "
                     "process to write its report and exit")
            assert (runs_dir / "sweeps" / "api-toy" / "report.md").is_file()
    finally:  # a sweep the stopped server was still stopping gets time to stop its runs
        deadline = time.monotonic() + 60
        while processes_mentioning(str(runs_dir)) and time.monotonic() < deadline:
            time.sleep(1)
