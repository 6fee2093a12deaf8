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

from server.api.app import create_app
from server.api.settings import ServeSettings
from server.runs.store import MetricsStore
from tests.conftest import ROOT, SHARED_DATA
from tests.server.runs.test_resume import live_process_of

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
    """A completed run with rounds, clients, a 2-task matrix and its linear probes,
    written as the ServerApp would."""
    store.create_run(run_id, "done", {"name": "done"})
    store.set_status(run_id, "running")
    for r in range(rounds + 1):
        store.record_round(run_id, r, r // 2, train={"train-loss": 1.0 / (r + 1)},
                           eval={"eval-acc": 0.1 * r})
        store.record_clients(run_id, r, {0: {"epsilon": 0.5 * r, "num-examples": 10}}, [])
    store.record_task_evals(run_id, -1, [("a", 0.5, 1.0), ("b", 0.3, 1.0)], [0.6, 0.4])
    store.record_task_evals(run_id, 0, [("a", 0.9, 1.0), ("b", 0.35, 1.0)], [0.95, 0.55])
    store.record_task_evals(run_id, 1, [("a", 0.7, 1.0), ("b", 0.8, 1.0)], [0.9, 0.85])
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


def test_a_private_run_says_what_its_epsilon_excludes(client, store) -> None:
    """Marked in the store, GET /runs and GET /runs/{id}: nothing for a default private
    run; the opt-in to un-noised metrics, in the disclosure's own words."""
    from scenarios.disclosure import UNNOISED_METRICS

    notes = {}
    for opt_in in (False, True):
        doc = quick()
        doc["privacy"] = {"target_epsilon": 4.0, "report_unnoised_metrics": opt_in}
        run = client.post("/runs", json=doc, headers=TOKEN).json()
        notes[opt_in] = run["privacy_note"]
        assert client.get(f"/runs/{run['id']}").json()["privacy_note"] == notes[opt_in]
        assert store.get_run(run["id"])["privacy_note"] == notes[opt_in]
    assert notes == {False: None, True: UNNOISED_METRICS}
    listed = {r["privacy_note"] for r in client.get("/runs").json()["runs"]}
    assert listed == {None, UNNOISED_METRICS}


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
        assert client.post("/runs", params={"shipped": "../scenarios/quick"}).status_code == 422
    [line] = answer.json()["detail"]  # named as written, not as the server resolved it
    assert answer.status_code == 422 and line.startswith(
        "data.source.path: 'escape' is outside the directories this server may read (.)"), line
    assert str(tmp_path) not in line


def test_rounds_clients_and_tasks_of_a_run(client, store) -> None:
    run_id = finished_run(store)
    rounds = client.get(f"/runs/{run_id}/rounds", params={"after": 1, "limit": 1}).json()
    assert [r["round"] for r in rounds["rounds"]] == [2]
    assert rounds["rounds"][0]["eval"] == {"eval-acc": pytest.approx(0.2)}
    clients = client.get(f"/runs/{run_id}/clients").json()["clients"]
    assert clients[0]["partition_id"] == "0" and clients[0]["epsilon"] == 1.5
    tasks = client.get(f"/runs/{run_id}/tasks").json()
    assert tasks["names"] == ["a", "b"] and tasks["matrix"] == [[0.9, 0.35], [0.7, 0.8]]
    assert tasks["probe_initial"] == [0.6, 0.4]
    assert tasks["probe_matrix"] == [[0.95, 0.55], [0.9, 0.85]]
    # FWT of the probes (0.55 - 0.4), not of the untrained head (0.35 - 0.3)
    assert tasks["bwt"] == pytest.approx(-0.2) and tasks["fwt"] == pytest.approx(0.15)
    assert tasks["fwt_source"].startswith("linear probe")
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
    holder = live_process_of(alive, settings.runs_dir.parent, seconds=60)
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


def test_the_queue_starts_its_runs_with_the_worker(settings, store, monkeypatch) -> None:
    """`python -m server.api.worker run|resume ID --runs-dir D`, not the user's CLI; a
    program server.runs.resume counts as the run's own."""
    from server.api.queue import RunQueue
    from server.runs.resume import runs_our_program

    started = []

    class Started:
        pid = os.getpid()

        def __init__(self, command, **kwargs) -> None:
            started.append(command)

    monkeypatch.setattr("server.api.queue.subprocess.Popen", Started)
    store.create_run("new-1", "s", {"name": "s"}, "/scenarios/s.yaml")
    store.create_run("again-1", "s", {"name": "s"})
    store.set_status("again-1", "running")  # it started once: it resumes
    store.set_status("again-1", "failed", "killed")
    assert store.reopen("again-1")
    RunQueue(store, settings.runs_dir, concurrency=2).tick()
    runs_dir = str(settings.runs_dir.resolve())
    assert sorted(c[1:] for c in started) == [
        ["-m", "server.api.worker", "resume", "again-1", "--runs-dir", runs_dir],
        ["-m", "server.api.worker", "run", "new-1", "--runs-dir", runs_dir]]
    assert all(runs_our_program(command) for command in started)


def test_the_worker_executes_only_what_the_queue_gave_it(settings, store, tmp_path,
                                                         capsys) -> None:
    """An unknown or no longer pending run is refused (1); a scenario file that no longer
    validates fails the run (2); a resume is refused like `orthofed resume`'s (2)."""
    from server.api.worker import main

    runs_dir = str(settings.runs_dir)
    assert main(["run", "nope", "--runs-dir", runs_dir]) == 1
    assert "not a pending run" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [")
    store.create_run("bad-1", "s", {"name": "s"}, str(bad))
    assert main(["run", "bad-1", "--runs-dir", runs_dir]) == 2
    assert (store.get_run("bad-1")["status"], store.get_run("bad-1")["message"]) == (
        "failed", "invalid scenario file")
    assert main(["run", "bad-1", "--runs-dir", runs_dir]) == 1  # no longer pending
    done = finished_run(store)
    assert main(["resume", done, "--runs-dir", runs_dir]) == 2
    assert "it completed: there is nothing to resume" in capsys.readouterr().err
    assert main(["resume", "nope", "--runs-dir", runs_dir]) == 2


def test_dashboard_page_is_served(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "EventSource" in page.text
    assert "/runs/{run_id}/events" in client.get("/openapi.json").json()["paths"]


# ---- hostile bodies, private paths, caps --------------------------------------------------

DEEP = 5000


@pytest.mark.parametrize("body,kind", [
    ("[" * DEEP + "]" * DEEP, "application/json"),
    ('{"a": ' * DEEP + "1" + "}" * DEEP, "application/json"),
    ('{"name": ' + "[" * DEEP + "]" * DEEP + "}", "application/json"),
    ("model: " + "[" * DEEP + "]" * DEEP, "application/yaml"),
    ("model: " + "{a: " * DEEP + "1" + "}" * DEEP, "application/yaml"),
    ('{"seed": 1' + "0" * 5000 + "}", "application/json"),
    ("seed: 1" + "0" * 5000, "application/yaml"),
], ids=["json-list", "json-object", "json-in-a-field", "yaml-list", "yaml-mapping",
        "json-5001-digits", "yaml-5001-digits"])
def test_pathological_bodies_are_a_4xx_naming_the_body(client, store, body, kind) -> None:
    """Nested thousands deep (both parsers recurse per level) or an integer Python will
    not convert: a one-line 422 about the body, never a 500."""
    answer = client.post("/runs", content=body, headers={**TOKEN, "Content-Type": kind})
    assert answer.status_code == 422, answer.text[:300]
    [line] = answer.json()["detail"]
    assert line.startswith("body: ") and "\n" not in line and len(line) < 300, line
    assert store.count_runs() == 0


def osft() -> dict:
    return yaml.safe_load((ROOT / "scenarios" / "osft-cl-4task.yaml").read_text())


@pytest.mark.parametrize("where,value,expected", [
    ("stream.order", ["order-1"], "stream.order: must be 'order-1', 'order-2' or 'order-3'"),
    ("stream.order", {"a": 1}, "stream.order: must be"),
    ("stream.benchmark_dir", ["a"], "stream.benchmark_dir: must be a path (text), got ['a']"),
    ("stream.test_fraction", [0.2], "stream.test_fraction: must be a valid number"),
    ("stream", [[1]], "stream: must be a mapping (a section)"),
    ("federation.rounds", {"a": 1}, "federation.rounds: must be a valid integer, got a mapping"),
    ("model.name", 1.5, "model.name: must be a valid string, got 1.5"),
    ("seed", [[[]]], "seed: must be a valid integer"),
    ("strategy.name", None, "strategy.name: unknown 'None'"),
])
def test_wrong_types_in_a_posted_scenario_are_a_422_by_path(client, where, value,
                                                            expected) -> None:
    doc, *keys = osft(), *where.split(".")
    section = doc
    for key in keys[:-1]:
        section = section[key]
    section[keys[-1]] = value
    answer = client.post("/runs", content=json.dumps(doc, default=str), headers=TOKEN)
    assert answer.status_code == 422, answer.text[:300]
    assert any(line.startswith(expected) for line in answer.json()["detail"]), answer.text[:500]


def server_paths(settings: ServeSettings) -> list[str]:
    """The absolute folders of this server, which no error may show a network caller."""
    return [str(p) for p in (settings.scenarios_dir.resolve(), SHARED_DATA.resolve(),
                             settings.runs_dir.resolve(), ROOT, ROOT.parent)]


@pytest.mark.parametrize("where,value,shown", [
    ("data", {"source": {"kind": "cl-json", "path": "/etc"}}, "'/etc' is outside"),
    ("data", {"source": {"kind": "cl-json", "path": "../../../../../../etc"}},
     "'../../../../../../etc' is outside"),
    ("data", {"source": {"kind": "jsonl", "train": ["/etc/passwd"], "test": "x.jsonl"}},
     "data.source.train.0: '/etc/passwd' is outside"),
    ("model", {"name": "/etc", "max_length": 24}, "model.name: '/etc' is outside"),
    ("data", {"source": {"kind": "cl-json", "path": "no-such-task"}},
     "data.source.path: no such folder 'no-such-task'"),
    ("data", {"source": {"kind": "jsonl", "train": ["a.jsonl"], "test": "b.jsonl"}},
     "data.source.train.0: no such file 'a.jsonl'"),
    ("stream", {"order": "order-2", "benchmark_dir": "../../shared/data/nope"},
     "stream.tasks.0.source.path: no such folder '../../shared/data/nope/dbpedia'"),
])
def test_errors_name_folders_as_the_caller_sees_them(client, settings, where, value,
                                                      shown) -> None:
    """Allowed folders relative to the scenarios folder, offending paths as written:
    never the server's absolute directories."""
    doc = quick()
    doc[where] = value
    if where == "stream":
        del doc["data"]["source"]
    answer = client.post("/runs", json=doc, headers=TOKEN)
    assert answer.status_code == 422, answer.text
    assert any(shown in line for line in answer.json()["detail"]), answer.text
    for path in server_paths(settings):
        assert path not in answer.text, (path, answer.text)
    if "outside" in shown:
        assert "(., ../../shared/data)" in answer.text, answer.text


def test_caps_refuse_a_run_that_asks_for_more(tmp_path) -> None:
    capped = ServeSettings(runs_dir=tmp_path / "runs", concurrency=0, max_clients=2,
                           max_rounds=4, max_local_steps=5)
    doc = quick()  # 3 clients, 3 rounds, 30 local steps
    with TestClient(create_app(capped)) as client:
        answer = client.post("/runs", json=doc)
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"] == [
            "federation.num_clients: this server accepts at most 2 clients per run, got 3",
            "federation.local_steps: this server accepts at most 5 local steps per round, "
            "got 30"]
        stream = client.post("/runs", params={"shipped": "quick-stream"})  # 2 tasks x 2 rounds
        assert stream.status_code == 422, stream.text
        assert ("federation.local_steps: this server accepts at most 5 local steps per round, "
                "got 10") in stream.json()["detail"]
        doc["federation"].update(num_clients=2, clients_per_round=2, local_steps=5)
        assert client.post("/runs", json=doc).status_code == 202
        doc["stream"] = {"tasks": [{"name": f"t{i}", "rounds": 2, "source": doc["data"]["source"]}
                                   for i in range(3)]}
        del doc["data"]["source"]
        over = client.post("/runs", json=doc)
        assert over.json()["detail"] == [
            "stream.tasks: this server accepts at most 4 rounds per run (over all 3 tasks), "
            "got 6"]


def test_an_uncapped_server_accepts_a_big_run(client) -> None:
    doc = quick()
    doc["federation"].update(num_clients=500, clients_per_round=500, rounds=10_000,
                             local_steps=100_000)
    assert client.post("/runs", json=doc, headers=TOKEN).status_code == 202


def test_serve_takes_the_caps_from_flags_or_environment(monkeypatch, tmp_path) -> None:
    from server.cli.commands import main

    seen = []
    monkeypatch.setattr("server.api.app.create_app", seen.append)
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: None)
    monkeypatch.setenv("ORTHOFED_MAX_ROUNDS", "100")
    assert main(["serve", "--runs-dir", str(tmp_path), "--max-clients", "8",
                 "--max-local-steps", "50"]) == 0
    assert (seen[0].max_clients, seen[0].max_rounds, seen[0].max_local_steps) == (8, 100, 50)
    assert main(["serve", "--max-clients", "0"]) == 2  # "serve: max_clients: must be >= 1"
