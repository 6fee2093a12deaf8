"""The sweep resources under TestClient: every problem of a posted sweep at once (its
file, each cell and method, this server's caps and folders), the file written for
`orthofed sweep` and the process started (stubbed: no run starts here; the real one is
tests/integration/test_api_sweeps.py), 409 while it runs, cancel, the token, the list,
404s, and sweeps whose process vanished."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys

import pytest
import yaml
from fastapi.testclient import TestClient

from scenarios.sweep import load_sweep
from server.api.app import create_app
from server.runs.sweep_store import SweepStore
from tests.conftest import ROOT
from tests.server.api.helpers import TOKEN

BASE = {
    "name": "toy", "seed": 0,
    "model": {"name": "tiny-bert", "max_length": 16, "lora": {"rank": 2, "alpha": 4}},
    "data": {"source": {"kind": "generated", "num_labels": 3, "train_size": 120,
                        "test_size": 30}, "validation_fraction": 0.2},
    "federation": {"num_clients": 2, "clients_per_round": 2, "rounds": 2, "local_steps": 2,
                   "optimizer": {"name": "sgd", "lr": 0.1}},
    "strategy": {"name": "fedavg-lora"},
}


def sweep(**overrides) -> dict:
    """A small valid sweep (one method, two learning rates), changed by `overrides`."""
    document = {"name": "toy-sweep", "base": copy.deepcopy(BASE),
                "methods": {"fedavg": {"strategy.name": "fedavg-lora"}},
                "tune": {"federation.optimizer.lr": {"values": [0.05, 0.1]}},
                "seeds": {"tune": [0], "report": [100]}}
    document.update(overrides)
    return document


class FakeProcess:
    """subprocess.Popen standing in for `orthofed sweep`: alive until signalled."""

    started: list[FakeProcess] = []

    def __init__(self, command, **kwargs) -> None:
        self.command, self.kwargs, self.signals = command, kwargs, []
        self.pid, self.returncode = os.getpid(), None
        FakeProcess.started.append(self)

    def poll(self):
        return self.returncode

    def send_signal(self, signum) -> None:
        self.signals.append(signum)
        self.returncode = -signum

    def wait(self, timeout=None):
        return self.returncode

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@pytest.fixture
def fake_sweeps(monkeypatch):
    FakeProcess.started = []
    monkeypatch.setattr("server.api.sweep_processes.SweepProcesses.spawn",
                        staticmethod(lambda command, log: FakeProcess(command, log=log)))
    return FakeProcess.started


def errors_of(client, document, **kwargs) -> list[str]:
    answer = client.post("/sweeps", json={"sweep": document}, headers=TOKEN, **kwargs)
    assert answer.status_code == 422, answer.text
    return answer.json()["detail"]


def test_the_sweep_files_own_errors_all_at_once(client) -> None:
    errors = errors_of(client, sweep(name="bad name", methods={},
                                     selection={"metric": "eval-acc"}))
    assert any(e.startswith("name:") for e in errors), errors
    assert any(e.startswith("methods:") for e in errors), errors
    assert any(e.startswith("selection.metric:") and "validation" in e for e in errors)
    assert len(errors) == 3
    for body in ({}, {"sweep": "x"}, {"sweep": sweep(), "more": 1}, []):
        answer = client.post("/sweeps", json=body, headers=TOKEN)
        assert answer.status_code == 422 and answer.json()["detail"][0].startswith("body:")


def test_every_bad_cell_and_setting_is_named(client) -> None:
    """Errors of the expanded scenarios, each by cell, method, setting and path."""
    errors = errors_of(client, sweep(
        grid={"federation.clients_per_round": [2, 5]},
        methods={"fedavg": {"strategy.name": "fedavg-lora"},
                 "ffa": {"strategy.name": "ffa-lora"}},
        tune={"model.lora.rank": {"values": [2, 0]}}))
    assert sum(e.startswith("cell 5, method ") and "clients_per_round" in e
               for e in errors) == 2, errors
    assert any(e.startswith("cell 2, method ffa, model.lora.rank=0: model.lora.rank:")
               for e in errors), errors
    base = copy.deepcopy(BASE)
    base["federation"]["rounds"] = 0
    assert errors_of(client, sweep(base=base))[0].startswith("base: federation.rounds:")


def test_every_expanded_scenario_keeps_within_the_caps(tmp_path, fake_sweeps) -> None:
    """A cap holds for each cell and each tuned setting: a cell over it is named by
    its cell, a setting over it by its setting; nothing starts."""
    from server.api.settings import ServeSettings
    from tests.conftest import SHARED_DATA

    capped = ServeSettings(runs_dir=tmp_path / "runs", concurrency=0, token="s3cret",
                           data_dirs=(SHARED_DATA,), max_clients=2, max_local_steps=5)
    with TestClient(create_app(capped)) as client:
        errors = errors_of(client, sweep(
            grid={"federation.num_clients": [2, 3]},
            tune={"federation.local_steps": {"values": [2, 9]}}))
    assert errors == [
        "cell 2, method fedavg, federation.local_steps=9: federation.local_steps: this "
        "server accepts at most 5 local steps per round, got 9",
        "cell 3, method fedavg: federation.num_clients: this server accepts at most 2 "
        "clients per run, got 3",
        "cell 3, method fedavg, federation.local_steps=9: federation.local_steps: this "
        "server accepts at most 5 local steps per round, got 9"], errors
    assert fake_sweeps == []


def test_paths_stay_in_the_servers_folders(client, settings, fake_sweeps) -> None:
    """A base file or an override's data path outside the scenarios and data folders is
    refused by name, the server's absolute paths never shown; relative paths resolve
    against the scenarios folder."""
    outside = errors_of(client, sweep(base="/etc/hosts.yaml"))
    assert outside == ["base: '/etc/hosts.yaml' is outside the directories this server may "
                       "read (., ../../shared/data); use a path under one of them"]
    jsonl = {"kind": "jsonl", "train": ["/etc/a.jsonl", "/etc/b.jsonl"], "test": "t.jsonl"}
    errors = errors_of(client, sweep(grid={"data.source": {"files": jsonl}}))
    assert any(e.startswith("cell files, method fedavg: data.source.train.0: ")
               and "etc/a.jsonl' is outside" in e for e in errors), errors
    inside = {**jsonl, "train": ["nope/a.jsonl", "nope/b.jsonl"]}
    errors = errors_of(client, sweep(grid={"data.source": {"files": inside}}))
    assert errors == [f"cell files, method fedavg: data.source.{where}: no such file {name!r}"
                      for where, name in (("train.0", "nope/a.jsonl"),
                                          ("train.1", "nope/b.jsonl"), ("test", "t.jsonl"))]
    assert not any(str(ROOT) in e for e in errors), errors
    assert fake_sweeps == []


def test_posting_starts_orthofed_sweep_on_a_file_it_can_run(client, settings,
                                                             fake_sweeps) -> None:
    """202 with the sweep and its Location; the file under RUNS_DIR/sweeps/NAME/ has the
    base inlined and its paths absolute, and expands as the posted sweep did; the
    process is `python -m server.cli sweep FILE --runs-dir D --workers N`."""
    shipped = sweep(base="quick.yaml",  # scenarios/quick.yaml, given a validation split
                    methods={"fedavg": {"data.validation_fraction": 0.2}})
    answer = client.post("/sweeps", json={"sweep": shipped}, headers=TOKEN)
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == "/sweeps/toy-sweep"
    assert answer.json()["id"] == "toy-sweep" and answer.json()["status"] == "running"
    runs_dir = settings.runs_dir.resolve()
    file = runs_dir / "sweeps" / "toy-sweep" / "sweep.yaml"
    assert fake_sweeps[0].command == [sys.executable, "-m", "server.cli", "sweep", str(file),
                                      "--runs-dir", str(runs_dir), "--workers", "1"]
    written = yaml.safe_load(file.read_text())
    assert written["base"]["name"] == "quick" and written["base"]["model"]["name"] == "tiny-bert"
    studies = load_sweep(file).studies  # what `orthofed sweep FILE` reads
    assert [s.key for s in studies] == ["all/fedavg"] and len(studies[0].grid()) == 2
    detail = client.get("/sweeps/toy-sweep").json()
    assert detail["status"] == "running" and detail["file"] == "sweeps/toy-sweep/sweep.yaml"
    assert detail["spec"]["name"] == "toy-sweep"


def test_a_running_sweep_is_not_started_twice_and_cancels(client, fake_sweeps) -> None:
    assert client.post("/sweeps", json={"sweep": sweep()}, headers=TOKEN).status_code == 202
    again = client.post("/sweeps", json={"sweep": sweep()}, headers=TOKEN)
    assert again.status_code == 409 and "toy-sweep" in again.json()["detail"]
    assert client.post("/sweeps/toy-sweep/cancel").status_code == 401
    cancelled = client.post("/sweeps/toy-sweep/cancel", headers=TOKEN)
    assert cancelled.status_code == 202 and fake_sweeps[0].signals == [signal.SIGINT]
    # Its process gone without recording an end: failed, and it may be posted again.
    listed = client.get("/sweeps").json()["sweeps"]
    assert [(s["id"], s["status"]) for s in listed] == [("toy-sweep", "failed")]
    assert client.post("/sweeps/toy-sweep/cancel", headers=TOKEN).status_code == 409
    assert client.post("/sweeps", json={"sweep": sweep()}, headers=TOKEN).status_code == 202
    assert len(fake_sweeps) == 2


def test_the_token_unknown_ids_and_the_list(client, settings, fake_sweeps) -> None:
    assert client.post("/sweeps", json={"sweep": sweep()}).status_code == 401
    assert fake_sweeps == []
    for answer in (client.get("/sweeps/nope"), client.post("/sweeps/nope/cancel", headers=TOKEN)):
        assert answer.status_code == 404 and answer.json()["detail"] == "no sweep 'nope'"
    assert client.get("/sweeps").json() == {"sweeps": []}
    store = SweepStore(settings.runs_dir)
    spec = {"name": "a", "base": BASE, "methods": {"m": {}}}
    store.start_sweep("a", spec, None, None)
    store.set_sweep_status("a", "completed")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    store.start_sweep("b", {**spec, "name": "b"}, "/elsewhere/b.yaml", int(gone.stdout))
    listed = client.get("/sweeps").json()["sweeps"]  # newest first
    assert [(s["id"], s["status"]) for s in listed] == [("b", "failed"), ("a", "completed")]
    assert "ended without recording an end" in listed[0]["message"]
    detail = client.get("/sweeps/a").json()
    assert detail["studies"] == [] and detail["table"]["rows"] == []
    assert client.get("/sweeps/b").json()["file"] == "b.yaml"  # not the server's path


def test_shutdown_stops_the_running_sweeps_it_started(settings, fake_sweeps) -> None:
    """SIGTERM to a running sweep (it cancels its runs); one that has ended is left to
    finish writing its report."""
    app = create_app(settings)
    with TestClient(app) as client:
        for name in ("running-sweep", "ended-sweep"):
            posted = client.post("/sweeps", json={"sweep": sweep(name=name)}, headers=TOKEN)
            assert posted.status_code == 202, posted.text
        app.state.sweeps.store.set_sweep_status("ended-sweep", "completed")
    assert [p.signals for p in fake_sweeps] == [[signal.SIGTERM], []]
