"""The whole path, for real: `orthofed run` and `flwr run` through Flower's simulation
engine, a real SQLite store, nothing mocked. Each test checks that every process it
caused is gone afterwards (and kills leftovers so a failure cannot leak them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from clients.data.synthetic import make_examples
from server.runs.store import MetricsStore
from tests.conftest import ROOT
from tests.integration.helpers import (
    ONE_CLIENT_PROCESS,
    kill_all,
    last_json_line,
    processes_mentioning,
    run_orthofed,
    write_jsonl,
)
from tests.integration.tracked import assert_tracked

pytestmark = pytest.mark.integration


def test_quick_scenario_runs_end_to_end(runs_dir) -> None:
    done = run_orthofed("run", "scenarios/quick.yaml", "--runs-dir", str(runs_dir), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = last_json_line(done.stdout)
    assert summary["status"] == "completed"
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert all(r["train"]["clients"] == 3 and r["train"]["failures"] == 0 for r in rounds[1:])
    first, last = rounds[0]["eval"]["eval-acc"], rounds[-1]["eval"]["eval-acc"]
    assert last > first + 0.2, f"the model did not learn: {first} -> {last}"
    assert sorted(summary["clients"]) == ["0", "1", "2"]
    assert all(c["rounds"] == [1, 2, 3] for c in summary["clients"].values())
    # What --json printed is what the store holds.
    store = MetricsStore.in_dir(runs_dir)
    assert store.rounds(summary["run_id"]) == rounds
    assert (runs_dir / summary["run_id"] / "flwr-home" / "config.toml").is_file()


def _presplit_scenario(tmp_path, bad_partitions: set[int], **data) -> str:
    """Two clients, one file each; a bad file has rows without the text field. `data`:
    more data.* settings."""
    rows = make_examples(3, 240, seed=1)
    for i in range(2):
        part = rows[i * 120:(i + 1) * 120]
        if i in bad_partitions:
            part = [{"text": r["sentence"], "label": r["label"]} for r in part]
        write_jsonl(tmp_path / f"p{i}.jsonl", part)
    write_jsonl(tmp_path / "test.jsonl", make_examples(3, 60, seed=2))
    doc = yaml.safe_load((ROOT / "scenarios" / "quick.yaml").read_text())
    doc["name"] = "faulty"
    doc["data"] = {"source": {"kind": "jsonl", "train": ["p0.jsonl", "p1.jsonl"],
                              "test": "test.jsonl"}, "partitioning": {"kind": "presplit"},
                   **data}
    doc["federation"].update(num_clients=2, clients_per_round=2, rounds=2, local_steps=3)
    doc["resources"] = ONE_CLIENT_PROCESS
    path = tmp_path / "faulty.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_a_failing_client_is_recorded_and_the_others_go_on(tmp_path, runs_dir) -> None:
    done = run_orthofed("run", _presplit_scenario(tmp_path, {1}), "--runs-dir", str(runs_dir),
                        "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = last_json_line(done.stdout)
    assert summary["status"] == "completed"
    assert [r["train"]["failures"] for r in summary["rounds"][1:]] == [1, 1]
    bad = summary["clients"]["1"]
    assert bad["failures"] == 2 and bad["rounds"] == []
    assert "no field 'sentence'" in bad["reasons"][0]
    assert summary["clients"]["0"]["rounds"] == [1, 2]
    assert "client 1 failed: ValueError" in done.stderr  # shown to the user, by partition


def test_a_round_where_every_client_fails_fails_the_run(tmp_path, runs_dir) -> None:
    done = run_orthofed("run", _presplit_scenario(tmp_path, {0, 1}), "--runs-dir", str(runs_dir),
                        "--json")
    assert done.returncode == 1
    summary = last_json_line(done.stdout)
    assert summary["status"] == "failed"
    assert "round 1: every client failed" in summary["message"]
    assert "no field 'sentence'" in summary["message"]


def test_plain_flwr_run_works_too(tmp_path, runs_dir) -> None:
    """`flwr run .` with Flower's own local SuperLink, started and stopped here."""
    env = dict(os.environ, FLWR_HOME=str(tmp_path / "flwr-home"), HF_HUB_OFFLINE="1",
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    command = ["flwr", "run", ".", "--stream",
               "--run-config", f"scenario='scenarios/quick.yaml' runs-dir='{runs_dir}'",
               "--federation-config", "num-supernodes=3"]
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        (run,) = MetricsStore.in_dir(runs_dir).list_runs()
        assert run["status"] == "completed" and run["id"].startswith("flwr-")
        rounds = MetricsStore.in_dir(runs_dir).rounds(run["id"])
        assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    finally:
        # Flower leaves its local SuperLink running in the background: stop it.
        kill_all(processes_mentioning(str(tmp_path / "flwr-home")))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_interrupting_a_run_stops_every_flower_process(runs_dir, signum) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    # Started with SIGINT ignored, as a shell without job control starts a background
    # command (and as a test runner started so passes on): the CLI must still honour it.
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "run", "scenarios/quick.yaml",
                             "--runs-dir", str(runs_dir)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until the ServerApp is running
            runs = MetricsStore.in_dir(runs_dir).list_runs() if runs_dir.exists() else []
            if runs and runs[0]["status"] == "running":
                break
            time.sleep(0.5)
        assert processes_mentioning(str(runs_dir)), "Flower never started"
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    (run,) = MetricsStore.in_dir(runs_dir).list_runs()
    assert run["status"] == "cancelled"
    assert "cancelled; Flower processes stopped" in stderr


def assert_a_rotates_under_fedsvd(run_dir) -> None:
    """B trained; A re-based to orthonormal rows by FedSVD."""
    import torch

    initial = torch.load(run_dir / "global-initial.pt")
    final = torch.load(run_dir / "global-final.pt")
    a_names = [n for n in initial if ".lora_A." in n]
    b_names = [n for n in initial if ".lora_B." in n]
    assert a_names and b_names and set(initial) == set(final)
    assert all(torch.count_nonzero(final[n]) > 0 for n in b_names)  # B trained
    assert all(not torch.equal(initial[n], final[n]) for n in a_names)
    for n in a_names:  # and A's rows are orthonormal after the re-basis
        eye = torch.eye(final[n].shape[0])
        torch.testing.assert_close(final[n] @ final[n].T, eye, rtol=0, atol=1e-5)


# One strategy per trained set: B only (fedsvd; ffa-lora's clients train the same set and
# its server step, FedSVD's parent, is tested with hand-built replies), A and B, A and B
# merged into the base weights on the server (fedex-lora; flora's server step is tested
# with hand-built replies), every weight.
# A and B are also trained under a noise multiplier fixed by the scenario instead of a
# target epsilon; the fedavg run also holds out a validation split (data.validation_fraction).
TARGET = {"target_epsilon": 8.0, "delta": 1e-5, "max_grad_norm": 1.0}
FIXED_SIGMA = {"noise_multiplier": 0.6, "delta": 1e-5, "max_grad_norm": 1.0}


@pytest.mark.parametrize("strategy, privacy", [
    *(pytest.param(s, TARGET, id=s) for s in ("fedsvd", "fedex-lora", "fedavg")),
    pytest.param("fedavg-lora", FIXED_SIGMA, id="fedavg-lora-fixed-sigma")])
def test_dp_run_reports_epsilon_that_opacus_recomputes(tmp_path, runs_dir, strategy,
                                                       privacy) -> None:
    """DP-SGD through Flower with each trained set: each client's epsilon grows round by
    round (its ledger survives in context.state) and equals Opacus's accountant over its
    own history. Under FedSVD, A rotates (orthonormal rows). With a fixed sigma every
    client trains every round at exactly that sigma, no target, no refusal."""
    from clients.training.privacy import epsilon_of

    doc = yaml.safe_load((ROOT / "scenarios" / "quick.yaml").read_text())
    doc["strategy"] = {"name": strategy}
    doc["federation"].update(rounds=2, local_steps=5)
    doc["resources"] = ONE_CLIENT_PROCESS
    doc["privacy"] = privacy
    if strategy == "fedavg":  # and a validation split, evaluated by the server each round
        doc["data"]["validation_fraction"] = 0.2
    if strategy == "fedex-lora":  # and its metrics to TensorBoard and MLflow
        doc["tracking"] = {"tensorboard": True, "mlflow": True}
    path = tmp_path / "dp.yaml"
    path.write_text(yaml.safe_dump(doc))
    done = run_orthofed("run", str(path), "--runs-dir", str(runs_dir), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = last_json_line(done.stdout)["run_id"]
    rows = MetricsStore.in_dir(runs_dir).client_rounds(run_id)
    assert len(rows) == 3 * 2
    for partition in range(3):
        mine = [r["metrics"] for r in rows if r["partition_id"] == partition]
        history = [(m["noise-multiplier"], m["sample-rate"], int(m["dp-steps"])) for m in mine]
        spent = [m["epsilon"] for m in mine]
        assert spent[0] < spent[1] <= privacy.get("target_epsilon", float("inf"))
        if "noise_multiplier" in privacy:
            assert {m["noise-multiplier"] for m in mine} == {privacy["noise_multiplier"]}
        assert spent[1] == pytest.approx(epsilon_of(history, 1e-5, "rdp"), rel=1e-9)
        assert spent[0] == pytest.approx(epsilon_of(history[:1], 1e-5, "rdp"), rel=1e-9)
        # Nothing un-noised left the client (no loss, no local eval); fresh noise.
        for metrics in mine:
            assert set(metrics) == {"num-examples", "epsilon", "noise-multiplier",
                                    "sample-rate", "dp-steps", "seeded-noise", "device", "node"}
            assert metrics["seeded-noise"] == 0
    summary = last_json_line(done.stdout)
    assert summary["privacy"] == {"noise": "os-entropy", "excludes": []}
    assert all("train-loss" not in r["train"] for r in summary["rounds"])
    if strategy == "fedavg":  # every round's eval (round 0's too) has the split's metrics
        assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
        for r in summary["rounds"]:
            assert {"eval-acc", "eval-loss", "val-acc", "val-loss"} <= set(r["eval"]), r
            assert 0 <= r["eval"]["val-acc"] <= 1 and r["eval"]["val-loss"] > 0
    if strategy == "fedsvd":
        assert_a_rotates_under_fedsvd(runs_dir / run_id)
    if strategy == "fedex-lora":
        assert_base_weights_move_under_fedex(runs_dir / run_id)
        assert_tracked(runs_dir, run_id, doc)


def assert_base_weights_move_under_fedex(run_dir) -> None:
    """FedEx-LoRA's server folds the residual into the adapted layers' base weights: they
    are global arrays, and they changed; the other frozen weights are not sent."""
    import torch

    initial = torch.load(run_dir / "global-initial.pt")
    final = torch.load(run_dir / "global-final.pt")
    bases = [n for n in initial if n.endswith(".base_layer.weight")]
    assert bases and set(initial) == set(final)
    assert all(not torch.equal(initial[n], final[n]) for n in bases)
    assert not any("embeddings" in n for n in initial)
