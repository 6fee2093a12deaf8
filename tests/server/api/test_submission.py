"""What a posted scenario goes through: every error by its path, confinement to the
server's folders (named as the caller sees them), pathological bodies, the serve caps."""

from __future__ import annotations

import json

import pytest
import yaml
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.api.settings import ServeSettings
from tests.conftest import ROOT, SHARED_DATA
from tests.server.api.helpers import TOKEN, quick


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
    ("stream.order", ["order-1"], "stream.order: must be 'order-1', 'order-2', 'order-3' or 'long-7'"),
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
     "stream.tasks.0.source.path: the stream's task 'dbpedia' is not in the data folder "
     "'../../shared/data/nope' (no such folder '../../shared/data/nope/dbpedia')"),
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


def test_posted_runs_take_the_servers_trackers_unless_they_name_their_own(tmp_path) -> None:
    settings = ServeSettings(runs_dir=tmp_path / "runs", concurrency=0, token="s3cret",
                             data_dirs=(SHARED_DATA,), tensorboard=True, mlflow=True,
                             mlflow_uri=f"sqlite:///{tmp_path}/server-mlflow.db")
    with TestClient(create_app(settings)) as client:
        plain = client.post("/runs", json=quick(), headers=TOKEN)
        own = quick()
        own["tracking"] = {"mlflow": True, "mlflow_experiment": "mine"}
        named = client.post("/runs", json=own, headers=TOKEN)
        remote = quick()
        remote["tracking"] = {"mlflow": True, "mlflow_uri": "https://mlflow.example:5000"}
        served = client.post("/runs", json=remote, headers=TOKEN)
    tracking = {}
    for name, answer in (("plain", plain), ("named", named), ("remote", served)):
        assert answer.status_code == 202, answer.text
        snapshot = settings.runs_dir / answer.json()["id"] / "scenario.yaml"
        tracking[name] = yaml.safe_load(snapshot.read_text())["tracking"]  # what the ServerApp reads
    server_uri = f"sqlite:///{tmp_path}/server-mlflow.db"
    assert tracking["plain"] == {"tensorboard": True, "mlflow": True, "mlflow_uri": server_uri,
                                 "mlflow_experiment": None}
    assert tracking["named"] == {"tensorboard": False, "mlflow": True, "mlflow_uri": server_uri,
                                 "mlflow_experiment": "mine"}
    assert tracking["remote"]["mlflow_uri"] == "https://mlflow.example:5000"


@pytest.mark.parametrize("uri", ["sqlite:////tmp/elsewhere.db", "file:///etc", "/var/lib/x"])
def test_a_posted_run_cannot_name_a_local_mlflow_store(client, store, uri) -> None:
    doc = quick()
    doc["tracking"] = {"mlflow": True, "mlflow_uri": uri}
    answer = client.post("/runs", json=doc, headers=TOKEN)
    assert answer.status_code == 422
    assert answer.json()["detail"] == [
        f"tracking.mlflow_uri: a posted run may name a tracking server (http:// or https://) "
        f"only, got {uri!r}; local MLflow stores are this server's (orthofed serve "
        "--mlflow-uri, ORTHOFED_MLFLOW_URI)"]
    assert store.count_runs() == 0
