"""Per-round checkpoints: round trip, keep-last-K, a writer killed mid-write, a damaged
newest file, a checkpoint of another scenario; and the store's side of a resume."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from scenarios.loader import load_scenario
from server.runs.store import MetricsStore
from server.serverapp.checkpoint import (
    Checkpoints,
    RunState,
    restore_rng,
    rng_state,
    save_atomically,
    scenario_digest,
)
from tests.conftest import ROOT


def state(round_: int, task: int = 0, fill: float | None = None) -> RunState:
    value = float(round_) if fill is None else fill
    return RunState(round=round_, task=task, task_rounds=round_, scenario_digest="d",
                    model={"w": torch.full((3, 4), value), "head": torch.arange(3.0)},
                    ledgers={1: {"partition-id": 1, "noise-multiplier": 1.5,
                                 "history-sigma": [1.5] * round_, "history-q": [0.1] * round_,
                                 "history-steps": [5] * round_}},
                    out_of_budget=[2], rng=rng_state(random.Random(round_)))


def test_round_trip_restores_model_ledgers_and_random_state(tmp_path) -> None:
    checkpoints = Checkpoints(tmp_path, keep=2)
    sampler = random.Random(7)
    sampler.random()
    torch.manual_seed(7)
    saved = state(3)
    saved.rng = rng_state(sampler)
    checkpoints.save(saved)
    expected_draws = (sampler.sample(range(10), 3), torch.rand(2))
    torch.manual_seed(99)  # moved on, as a new process would be

    loaded = checkpoints.latest("d")
    assert loaded is not None and (loaded.round, loaded.task, loaded.task_rounds) == (3, 0, 3)
    assert loaded.model.keys() == saved.model.keys()
    assert all(torch.equal(loaded.model[k], saved.model[k]) for k in saved.model)
    assert loaded.ledgers == saved.ledgers and loaded.out_of_budget == [2]
    fresh = random.Random(0)
    restore_rng(loaded.rng, fresh)
    draws = (fresh.sample(range(10), 3), torch.rand(2))
    assert draws[0] == expected_draws[0] and torch.equal(draws[1], expected_draws[1])


def test_only_the_newest_k_are_kept_and_task_files_no_checkpoint_needs_go(tmp_path) -> None:
    checkpoints = Checkpoints(tmp_path, keep=2)
    for task in range(3):
        checkpoints.save_task(task, "d", {"osft-bases": {"u": torch.ones(2)}})
    for round_, task in [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2)]:
        checkpoints.save(state(round_, task))
    assert [p.name for p in checkpoints.rounds()] == ["round-000005-task-0002.pt",
                                                      "round-000004-task-0001.pt"]
    assert checkpoints.load_task(0, "d") is None  # task 0 has no kept checkpoint
    assert torch.equal(checkpoints.load_task(1, "d")["osft-bases"]["u"], torch.ones(2))
    assert checkpoints.load_task(1, "other") is None  # another scenario's: unusable
    assert checkpoints.latest("d").round == 5
    assert not list(tmp_path.glob("checkpoints/.*"))  # no temporary file left behind


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path) -> None:
    checkpoints = Checkpoints(tmp_path, keep=3)
    for round_ in (1, 2):
        checkpoints.save(state(round_))
    newest = checkpoints.rounds()[0]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn write
    loaded = checkpoints.latest("d")
    assert loaded.round == 1 and torch.equal(loaded.model["w"], torch.full((3, 4), 1.0))


def test_checkpoints_none_of_which_loads_are_an_error_not_a_fresh_start(tmp_path) -> None:
    checkpoints = Checkpoints(tmp_path, keep=3)
    checkpoints.save(state(1))
    checkpoints.rounds()[0].write_bytes(b"not a checkpoint")
    (checkpoints.folder / ".round-000002-task-0000.pt.123.tmp").write_bytes(b"half")
    with pytest.raises(ValueError, match="no checkpoint in .* loads: round-000001"):
        checkpoints.latest("d")
    checkpoints.remove_temporaries()
    assert [p.name for p in checkpoints.folder.iterdir()] == ["round-000001-task-0000.pt"]


def test_a_checkpoint_of_another_scenario_is_refused_by_name(tmp_path) -> None:
    checkpoints = Checkpoints(tmp_path, keep=1)
    checkpoints.save(state(1))
    with pytest.raises(ValueError, match="belongs to another scenario"):
        checkpoints.latest("other")
    assert Checkpoints(tmp_path / "nothing", keep=1).latest("d") is None


def test_the_digest_tells_scenarios_apart() -> None:
    quick = load_scenario(ROOT / "scenarios" / "quick.yaml")
    assert scenario_digest(quick) == scenario_digest(load_scenario(ROOT / "scenarios" / "quick.yaml"))
    assert scenario_digest(quick) != scenario_digest(quick.model_copy(update={"seed": 1}))


WRITER = textwrap.dedent("""
    import sys, torch
    from server.serverapp.checkpoint import Checkpoints, RunState
    checkpoints = Checkpoints(sys.argv[1], keep=3)
    for r in range(1, 10_000):
        checkpoints.save(RunState(round=r, task=0, task_rounds=r, scenario_digest="d",
                                  model={"w": torch.full((1024, 1024), float(r))}))
        print(r, flush=True)
""")


def test_a_writer_killed_mid_write_leaves_a_whole_checkpoint(tmp_path) -> None:
    """SIGKILL a process that writes 4 MB checkpoints back to back, at several instants:
    every time, every file under a checkpoint's name loads, and the newest is whole (its
    tensor holds its round number everywhere) and is the last one the writer reported,
    or the one after it (renamed, not yet reported)."""
    for attempt in range(4):
        folder = tmp_path / f"attempt-{attempt}"
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], cwd=ROOT,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout.readline().strip() == "1"
            time.sleep(0.05 + 0.07 * attempt)
        finally:
            writer.send_signal(signal.SIGKILL)
            out, _ = writer.communicate()
        finished = int(out.split()[-1]) if out.split() else 1
        checkpoints = Checkpoints(folder, keep=3)
        for path in checkpoints.rounds():  # no torn file under a checkpoint's name
            torch.load(path, weights_only=True)
        loaded = checkpoints.latest("d")
        assert loaded.round in (finished, finished + 1)
        assert torch.equal(loaded.model["w"], torch.full((1024, 1024), float(loaded.round)))


def test_save_atomically_replaces_whole_files(tmp_path) -> None:
    path = tmp_path / "x.pt"
    save_atomically({"a": torch.ones(2)}, path)
    save_atomically({"a": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_truncate_after_drops_later_rounds_and_evaluations_in_one_go(tmp_path) -> None:
    store = MetricsStore.in_dir(tmp_path)
    store.create_run("r", "n", {})
    for round_ in range(6):
        store.record_round("r", round_, round_ // 3, train={"x": round_}, eval={"y": round_})
        store.record_clients("r", round_, {0: {"epsilon": round_}}, [(1, "7", "boom")])
    for after in (-1, 0, 1):
        store.record_task_evals("r", after, [("a", 0.5, 1.0), ("b", 0.5, 1.0)])
    store.truncate_after("r", 3, 1)
    assert [r["round"] for r in store.rounds("r")] == [0, 1, 2, 3]
    assert [r["round"] for r in store.client_rounds("r")] == [0, 1, 2, 3]
    assert [f["round"] for f in store.failures("r")] == [0, 1, 2, 3]
    assert sorted({e["after_task"] for e in store.task_evals("r")}) == [-1, 0]
    store.truncate_after("r", -1, -1)
    assert store.rounds("r") == [] and store.task_evals("r") == []


def test_reopen_makes_only_unfinished_runs_pending(tmp_path) -> None:
    store = MetricsStore.in_dir(tmp_path)
    for run_id, status in [("f", "failed"), ("c", "cancelled"), ("ok", "completed")]:
        store.create_run(run_id, "n", {})
        store.set_status(run_id, "running")
        store.set_status(run_id, status, "why")
    assert store.reopen("f") and store.reopen("c")
    assert not store.reopen("ok") and not store.reopen("missing")
    reopened = store.get_run("f")
    assert (reopened["status"], reopened["message"], reopened["ended"]) == ("pending", None, None)
    assert reopened["started"] is not None  # it ran before: the queue resumes it
    assert store.get_run("ok")["status"] == "completed"
