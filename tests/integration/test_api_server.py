"""The API for real: `orthofed serve` under uvicorn on a free loopback port, a run
POSTed over HTTP and followed through its event stream to the end, checked against
the store; a run cancelled over HTTP stops every process it started."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from server.store import MetricsStore
from tests.conftest import ROOT
from tests.integration.helpers import serving, wait_gone

pytestmark = pytest.mark.integration
TOKEN = {"Authorization": "Bearer it-token"}


def follow(base: str, run_id: str, timeout: float = 300) -> list[tuple[str, dict]]:
    """(event, data) of the run's event stream until it ends."""
    events, event = [], None
    with httpx.stream("GET", f"{base}/runs/{run_id}/events", timeout=timeout) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: ") and event:
                events.append((event, json.loads(line[len("data: "):])))
    return events


def test_a_run_posted_over_http_streams_its_rounds_to_the_end(tmp_path, runs_dir) -> None:
    runs_dir.mkdir(parents=True)
    with serving(runs_dir) as base:
        posted = httpx.post(f"{base}/runs", params={"shipped": "quick"}, headers=TOKEN,
                            timeout=120)
        assert posted.status_code == 202, posted.text
        run_id = posted.json()["id"]
        events = follow(base, run_id)
        statuses = [d["status"] for e, d in events if e == "status"]
        assert statuses[-1] == "completed", (runs_dir / run_id / "orthofed.log").read_text()[-3000:]
        assert "running" in statuses
        streamed = [d for e, d in events if e == "round"]
        assert [r["round"] for r in streamed] == [0, 1, 2, 3]
        assert streamed == MetricsStore.in_dir(runs_dir).rounds(run_id)
        assert httpx.get(f"{base}/runs/{run_id}/rounds", timeout=60).json()["rounds"] == streamed
        clients = httpx.get(f"{base}/runs/{run_id}/clients", timeout=60).json()["clients"]
        assert [c["rounds"] for c in clients] == [[1, 2, 3]] * 3
        # The run's process stops its Flower processes after the last round: wait for it.
        wait_gone(MetricsStore.in_dir(runs_dir).get_run(run_id)["pid"])


def test_cancel_over_http_stops_the_run_and_keeps_its_rounds(tmp_path, runs_dir) -> None:
    runs_dir.mkdir(parents=True)
    with serving(runs_dir) as base:
        doc_path = ROOT / "scenarios" / "quick.yaml"
        body = doc_path.read_text().replace("rounds: 3", "rounds: 40")
        posted = httpx.post(f"{base}/runs", content=body,
                            headers={**TOKEN, "Content-Type": "application/yaml"}, timeout=120)
        assert posted.status_code == 202, posted.text
        run_id = posted.json()["id"]
        store = MetricsStore.in_dir(runs_dir)
        deadline = time.monotonic() + 240
        while len(store.rounds(run_id)) < 3:  # wait for a couple of real rounds
            assert time.monotonic() < deadline, store.get_run(run_id)
            time.sleep(0.5)
        cancelled = httpx.post(f"{base}/runs/{run_id}/cancel", headers=TOKEN, timeout=60)
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
        wait_gone(store.get_run(run_id)["pid"])
        kept = store.rounds(run_id)
        assert len(kept) >= 3 and store.get_run(run_id)["status"] == "cancelled"
        assert store.get_run(run_id)["message"] == "cancelled over HTTP"
