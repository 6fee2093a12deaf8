"""The API for real: `orthofed serve` under uvicorn on a free loopback port, a run
POSTed over HTTP and followed through its event stream to the end, checked against
the store; a run cancelled over HTTP stops every process it started, and resumed over
HTTP finishes with every round once."""

from __future__ import annotations

import time

import httpx
import pytest

from server.runs.store import MetricsStore
from tests.conftest import ROOT
from tests.integration.helpers import follow, serving, wait_gone

pytestmark = pytest.mark.integration
TOKEN = {"Authorization": "Bearer it-token"}


def test_cancel_then_resume_over_http_loses_and_repeats_no_round(tmp_path, runs_dir) -> None:
    """A run POSTed as YAML, cancelled after its third of 10 rounds: its processes stop,
    its rounds stay. Resumed over HTTP: the queue starts `orthofed resume`, which
    continues from the newest checkpoint to the end; the event stream, followed to the
    end, carries every round once, as the store and GET .../rounds have them, and every
    client trained each round. (Posting a shipped scenario by name is tested in-process,
    tests/server/api/test_runs.py: one end-to-end run here covers the serving path.)"""
    runs_dir.mkdir(parents=True)
    with serving(runs_dir) as base:
        body = (ROOT / "scenarios" / "quick.yaml").read_text().replace("rounds: 3", "rounds: 10")
        posted = httpx.post(f"{base}/runs", content=body,
                            headers={**TOKEN, "Content-Type": "application/yaml"}, timeout=120)
        assert posted.status_code == 202, posted.text
        run_id = posted.json()["id"]
        store = MetricsStore.in_dir(runs_dir)
        deadline = time.monotonic() + 240
        while len(store.rounds(run_id)) < 4:  # rounds 0..3: a few real rounds
            assert time.monotonic() < deadline, store.get_run(run_id)
            time.sleep(0.2)
        cancelled = httpx.post(f"{base}/runs/{run_id}/cancel", headers=TOKEN, timeout=60)
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
        wait_gone(store.get_run(run_id)["pid"])
        kept = store.rounds(run_id)
        assert 4 <= len(kept) < 11 and store.get_run(run_id)["status"] == "cancelled"
        assert store.get_run(run_id)["message"] == "cancelled over HTTP"

        resumed = httpx.post(f"{base}/runs/{run_id}/resume", headers=TOKEN, timeout=60)
        assert resumed.status_code == 202 and resumed.json()["status"] == "pending"
        events = follow(base, run_id)
        log = (runs_dir / run_id / "orthofed.log").read_text()
        statuses = [d["status"] for e, d in events if e == "status"]
        assert statuses[-1] == "completed" and "running" in statuses, log[-3000:]
        assert "resuming" in log
        rounds = store.rounds(run_id)
        assert [r["round"] for r in rounds] == list(range(11))
        streamed = [d for e, d in events if e == "round"]
        assert streamed == rounds  # replayed from the start, then followed live
        assert httpx.get(f"{base}/runs/{run_id}/rounds", timeout=60).json()["rounds"] == rounds
        assert rounds[:len(kept) - 1] == kept[:len(kept) - 1]  # what was recorded stays
        clients = httpx.get(f"{base}/runs/{run_id}/clients", timeout=60).json()["clients"]
        assert [c["rounds"] for c in clients] == [list(range(1, 11))] * 3
        wait_gone(store.get_run(run_id)["pid"])
