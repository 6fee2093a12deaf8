"""The REST API through FastAPI's TestClient: every path and its errors, auth, path
traversal, restart recovery. The queue is paused (concurrency 0) so no run starts here;
tests/integration/test_api_server.py runs one for real through uvicorn."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from fastapi.testclient import TestClient

from server.api import create_app
from server.settings import ServeSettings
from server.store import MetricsStore
from tests.conftest import ROOT, SHARED_DATA

TOKEN = {"Authorization": "Bearer s3cret"}


@pytest.fixture
def settings(tmp_path) -> ServeSettings:
    return ServeSettings(runs_dir=tmp_path / "runs", concurrency=0, token="s3cret",
                         data_dirs=(SHARED_DATA,))


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def store(settings) -> MetricsStore:
    return MetricsStore.in_dir(settings.runs_dir)


def quick() -> dict:
    return yaml.safe_load((ROOT / "scenarios" / "quick.yaml").read_text())


def finished_run(store: MetricsStore, run_id: str = "done-1", rounds: int = 3) -> str:
    """A completed run with rounds, clients and a 2-task matrix, written as the
    ServerApp would."""
    store.create_run(run_id, "done", {"name": "done"})
    store.set_status(run_id, "running")
    for r in range(rounds + 1):
        store.record_round(run_id, r, r // 2, train={"train-loss": 1.0 / (r + 1)},
                           eval={"eval-acc": 0.1 * r})
        store.record_clients(run_id, r, {0: {"epsilon": 0.5 * r, "num-examples": 10}}, [])
    store.record_task_evals(run_id, -1, [("a", 0.5, 1.0), ("b", 0.3, 1.0)])
    store.record_task_evals(run_id, 0, [("a", 0.9, 1.0), ("b", 0.35, 1.0)])
    store.record_task_evals(run_id, 1, [("a", 0.7, 1.0), ("b", 0.8, 1.0)])
    store.set_status(run_id, "completed")
    return run_id


def test_health_and_paginated_list(client, store) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    for i in range(5):
        store.create_run(f"r{i}", "s", {})
    store.set_status("r1", "failed", "boom")
    page = client.get("/runs", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 5 and page["limit"] == 2
    assert [r["id"] for r in page["runs"]] == ["r3", "r2"]  # newest first
    failed = client.get("/runs", params={"status": "failed"}).json()
    assert [r["id"] for r in failed["runs"]] == ["r1"] and failed["runs"][0]["message"] == "boom"
    assert client.get("/runs", params={"limit": 0}).status_code == 422
    assert client.get("/runs", params={"status": "sleeping"}).status_code == 422


def test_posting_a_scenario_queues_a_pending_run(client, store, settings) -> None:
    created = client.post("/runs", json=quick(), headers=TOKEN)
    assert created.status_code == 202, created.text
    run = created.json()
    assert run["status"] == "pending" and run["name"] == "quick"
    stored = store.get_run(run["id"])
    assert stored["scenario_path"] == str(settings.runs_dir.resolve() / run["id"] / "scenario.yaml")
    assert stored["scenario"]["runs_dir"] == str(settings.runs_dir.resolve())
    as_yaml = client.post("/runs", content=(ROOT / "scenarios" / "quick.yaml").read_text(),
                          headers={**TOKEN, "Content-Type": "application/yaml"})
    assert as_yaml.status_code == 202
    shipped = client.post("/runs", params={"shipped": "quick-stream"}, headers=TOKEN)
    assert shipped.status_code == 202 and shipped.json()["name"] == "quick-stream"
    detail = client.get(f"/runs/{run['id']}").json()
    assert detail["scenario"]["federation"]["rounds"] == 3 and detail["rounds"] == 0


def test_changes_need_the_token_reads_do_not(client, store) -> None:
    assert client.post("/runs", json=quick()).status_code == 401
    wrong = client.post("/runs", json=quick(), headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    run_id = finished_run(store)
    assert client.post(f"/runs/{run_id}/cancel").status_code == 401
    assert client.get(f"/runs/{run_id}/rounds").status_code == 200


def test_a_bad_scenario_gets_every_error_by_path(client, store) -> None:
    doc = quick()
    doc["model"]["lora"]["rank"] = 0
    doc["federation"]["rounds"] = -1
    doc["strategy"] = {"name": "fedsgd"}
    answer = client.post("/runs", json=doc, headers=TOKEN)
    assert answer.status_code == 422
    errors = answer.json()["detail"]
    assert "model.lora.rank: must be >= 1, got 0" in errors
    assert "federation.rounds: must be >= 1, got -1" in errors
    assert any(e.startswith("strategy.name: unknown 'fedsgd'") for e in errors)
    for body, kind, status in [("[1, 2]", "application/json", 422),
                               ("name: [", "application/yaml", 422),
                               ("name: x", "text/plain", 415),
                               ("", "application/json", 422)]:
        answer = client.post("/runs", content=body, headers={**TOKEN, "Content-Type": kind})
        assert answer.status_code == status, (body, answer.text)
    huge = client.post("/runs", content="x" * 1_000_001, headers=TOKEN)
    assert huge.status_code == 413
    unknown = client.post("/runs", params={"shipped": "nope"}, headers=TOKEN)
    assert unknown.status_code == 404 and "'quick'" in unknown.json()["detail"]
    assert store.count_runs() == 0  # nothing recorded for a refused scenario


@pytest.mark.parametrize("where,value", [
    ("data", {"source": {"kind": "cl-json", "path": "/etc"}}),
    ("data", {"source": {"kind": "cl-json", "path": "../../../../../../etc"}}),
    ("data", {"source": {"kind": "jsonl", "train": ["/etc/passwd"], "test": "/etc/passwd"}}),
    ("model", {"name": "/etc", "max_length": 24}),
])
def test_a_scenario_cannot_read_outside_the_servers_folders(client, where, value) -> None:
    doc = quick()
    doc[where] = value
    answer = client.post("/runs", json=doc, headers=TOKEN)
    assert answer.status_code == 422, answer.text
    assert any("is outside the directories this server may read" in e
               for e in answer.json()["detail"])


def test_a_symlink_out_of_the_scenarios_folder_is_refused(tmp_path) -> None:
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "escape").symlink_to("/etc")
    settings = ServeSettings(runs_dir=tmp_path / "runs", concurrency=0, scenarios_dir=scenarios,
                             data_dirs=())
    doc = quick()
    doc["data"] = {"source": {"kind": "cl-json", "path": "escape"}}
    with TestClient(create_app(settings)) as client:
        answer = client.post("/runs", json=doc)
        assert answer.status_code == 422 and "outside" in answer.json()["detail"][0]
        assert client.post("/runs", params={"shipped": "../scenarios/quick"}).status_code == 422


def test_rounds_clients_and_tasks_of_a_run(client, store) -> None:
    run_id = finished_run(store)
    rounds = client.get(f"/runs/{run_id}/rounds", params={"after": 1, "limit": 1}).json()
    assert [r["round"] for r in rounds["rounds"]] == [2]
    assert rounds["rounds"][0]["eval"] == {"eval-acc": pytest.approx(0.2)}
    clients = client.get(f"/runs/{run_id}/clients").json()["clients"]
    assert clients[0]["partition_id"] == "0" and clients[0]["epsilon"] == 1.5
    tasks = client.get(f"/runs/{run_id}/tasks").json()
    assert tasks["names"] == ["a", "b"] and tasks["matrix"] == [[0.9, 0.35], [0.7, 0.8]]
    assert tasks["bwt"] == pytest.approx(-0.2) and tasks["fwt"] == pytest.approx(0.05)
    for path in ("", "/rounds", "/clients", "/tasks", "/events"):
        missing = client.get(f"/runs/nope{path}")
        assert missing.status_code == 404 and missing.json() == {"detail": "no run 'nope'"}


def read_events(text: str) -> list[dict]:
    """Parse a text/event-stream body into [{"event", "id", "data"}]."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append({"event": fields["event"], "id": fields.get("id"),
                           "data": json.loads(fields["data"])})
    return events


def test_the_event_stream_of_a_finished_run_replays_and_ends(client, store) -> None:
    run_id = finished_run(store)
    answer = client.get(f"/runs/{run_id}/events")
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = read_events(answer.text)
    assert [e["id"] for e in events if e["event"] == "round"] == ["0", "1", "2", "3"]
    assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "completed"
    resumed = read_events(client.get(f"/runs/{run_id}/events",
                                     headers={"Last-Event-ID": "2"}).text)
    assert [e["id"] for e in resumed if e["event"] == "round"] == ["3"]


def test_cancel(client, store) -> None:
    queued = client.post("/runs", json=quick(), headers=TOKEN).json()
    cancelled = client.post(f"/runs/{queued['id']}/cancel", headers=TOKEN)
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["message"] == "cancelled over HTTP"
    again = client.post(f"/runs/{queued['id']}/cancel", headers=TOKEN)
    assert again.status_code == 409 and "already ended (cancelled)" in again.json()["detail"]
    assert client.post("/runs/nope/cancel", headers=TOKEN).status_code == 404


def test_resume(client, store, settings) -> None:
    """Ended or abandoned runs are queued again (pending, records kept); a completed
    run, one already waiting, or one whose processes still live are refused (409)."""
    done = finished_run(store)
    store.create_run("broken", "s", {"name": "s"})
    store.set_status("broken", "running")
    store.record_round("broken", 0, 0, eval={"eval-acc": 0.1})
    store.set_status("broken", "failed", "killed")
    resumed = client.post("/runs/broken/resume", headers=TOKEN)
    assert resumed.status_code == 202, resumed.text
    assert (resumed.json()["status"], resumed.json()["message"]) == ("pending", None)
    assert [r["round"] for r in client.get("/runs/broken/rounds").json()["rounds"]] == [0]
    again = client.post("/runs/broken/resume", headers=TOKEN)
    assert again.status_code == 409 and "already waiting" in again.json()["detail"]
    finished = client.post(f"/runs/{done}/resume", headers=TOKEN)
    assert finished.status_code == 409 and "completed" in finished.json()["detail"]
    assert client.post("/runs/nope/resume", headers=TOKEN).status_code == 404
    assert client.post("/runs/broken/resume").status_code == 401

    alive = "alive-7f3e9c21"
    store.create_run(alive, "s", {"name": "s"})
    store.set_status(alive, "cancelled")  # the store says ended, a process of it lives on
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                               "server.cli", "run", "--run-id", alive])
    try:
        busy = client.post(f"/runs/{alive}/resume", headers=TOKEN)
        assert busy.status_code == 409, busy.text
        assert f"still running (pids {holder.pid})" in busy.json()["detail"]
    finally:
        holder.kill()
        holder.wait()
    assert client.post(f"/runs/{alive}/resume", headers=TOKEN).status_code == 202  # now gone


def test_a_restarted_server_fails_runs_whose_process_vanished(settings, store) -> None:
    """The store says running, with the pid of a process that has exited."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    store.create_run("orphan", "s", {})
    store.set_status("orphan", "running")
    store.set_pid("orphan", int(gone.stdout))
    store.create_run("waiting", "s", {})
    store.create_run("still-here", "s", {})
    store.set_status("still-here", "running")
    store.set_pid("still-here", os.getpid())  # not a run process: its cmdline lacks the id
    with TestClient(create_app(settings)) as client:
        orphan = client.get("/runs/orphan").json()
        assert orphan["status"] == "failed" and "ended without finishing" in orphan["message"]
        assert client.get("/runs/waiting").json()["status"] == "pending"  # paused queue
        assert client.get("/runs/still-here").json()["status"] == "failed"  # pid reused


def test_dashboard_page_is_served(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "EventSource" in page.text
    assert "/runs/{run_id}/events" in client.get("/openapi.json").json()["paths"]
