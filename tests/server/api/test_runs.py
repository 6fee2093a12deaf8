"""The run resources: list, post, detail, rounds, clients, tasks, the event stream,
cancel, resume, the token, the dashboard page."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT
from tests.server.api.helpers import TOKEN, quick
from tests.server.runs.stored import finished_run
from tests.server.runs.test_resume import live_process_of


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


def test_the_list_filters_by_scenario_name(client, store) -> None:
    """?name= keeps the runs whose scenario has exactly that name; it combines with
    status, limit and offset, and `total` counts what it matches."""
    for i, name in enumerate(["quick", "quick-stream", "quick", "Quick", "quick"]):
        store.create_run(f"r{i}", name, {})
    store.set_status("r2", "failed", "boom")
    quick_runs = client.get("/runs", params={"name": "quick"}).json()
    assert [r["id"] for r in quick_runs["runs"]] == ["r4", "r2", "r0"]  # newest first
    assert quick_runs["total"] == 3 and {r["name"] for r in quick_runs["runs"]} == {"quick"}
    page = client.get("/runs", params={"name": "quick", "limit": 1, "offset": 1}).json()
    assert ([r["id"] for r in page["runs"]], page["total"]) == (["r2"], 3)
    failed = client.get("/runs", params={"name": "quick", "status": "failed"}).json()
    assert ([r["id"] for r in failed["runs"]], failed["total"]) == (["r2"], 1)
    assert client.get("/runs", params={"name": "quick-stream", "status": "failed"}).json() \
        == {"runs": [], "total": 0, "limit": 50, "offset": 0}
    nobody = client.get("/runs", params={"name": "qu%"}).json()  # exact, not LIKE
    assert (nobody["runs"], nobody["total"]) == ([], 0)
    assert client.get("/runs").json()["total"] == 5  # no name: every run
    assert client.get("/runs", params={"name": ""}).status_code == 422


def test_a_run_says_how_many_rounds_it_plans(client, store) -> None:
    """GET /runs/{id}: planned_rounds, as scenarios.stream.total_rounds counts them, for
    a single task and a stream (a task without rounds runs federation.rounds)."""
    from scenarios.loader import load_scenario
    from scenarios.stream import total_rounds

    single = client.post("/runs", json=quick(), headers=TOKEN).json()
    stream = client.post("/runs", params={"shipped": "quick-stream"}, headers=TOKEN).json()
    for run, shipped in ((single, "quick"), (stream, "quick-stream")):
        expected = total_rounds(load_scenario(ROOT / "scenarios" / f"{shipped}.yaml"))
        assert client.get(f"/runs/{run['id']}").json()["planned_rounds"] == expected
    assert client.get(f"/runs/{stream['id']}").json()["planned_rounds"] == 4  # 2 tasks x 2
    finished_run(store)  # tasks: a (federation.rounds: 1), b (2 rounds)
    assert client.get("/runs/done-1").json()["planned_rounds"] == 3
    store.create_run("bare", "s", {})  # written by hand: nothing to count
    assert client.get("/runs/bare").json()["planned_rounds"] is None


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


def test_rounds_clients_and_tasks_of_a_run(client, store) -> None:
    run_id = finished_run(store)
    rounds = client.get(f"/runs/{run_id}/rounds", params={"after": 1, "limit": 1}).json()
    assert [r["round"] for r in rounds["rounds"]] == [2]
    assert rounds["rounds"][0]["eval"] == {"eval-acc": pytest.approx(0.2)}
    clients = client.get(f"/runs/{run_id}/clients").json()["clients"]
    assert clients[0]["partition_id"] == "0" and clients[0]["epsilon"] == 1.5
    assert clients[0]["epsilon_by_round"] == [{"round": r, "epsilon": 0.5 * r} for r in range(4)]
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


def test_dashboard_page_is_served(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "EventSource" in page.text
    assert "/runs/{run_id}/events" in client.get("/openapi.json").json()["paths"]
