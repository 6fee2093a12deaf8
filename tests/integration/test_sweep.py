"""A toy sweep end to end, as a user runs it: `orthofed sweep FILE --workers 2` over 2
methods x 2 learning rates x 2 tuning seeds on a tiny model, stopped with `kill` as
its first run starts, run again and SIGKILLed mid-way, run a third time to the end; then
the report: every study chose the setting with the best mean
validation score (recomputed here from the store), its fresh report seeds ran once each,
no completed scenario ran twice, and `orthofed sweep report NAME` prints the table."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import ROOT
from tests.integration.helpers import ONE_CLIENT_PROCESS, run_orthofed, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("toy-sweep")]

SWEEP = {
    "name": "toy",
    "description": "2 methods x 2 learning rates x 2 seeds on tiny BERT",
    "base": {
        "name": "toy", "seed": 0,
        "model": {"name": "tiny-bert", "max_length": 16,
                  "lora": {"rank": 4, "alpha": 8, "target_modules": ["query", "value"]}},
        "data": {"source": {"kind": "generated", "num_labels": 3, "train_size": 240,
                            "test_size": 60}, "validation_fraction": 0.25},
        "federation": {"num_clients": 2, "clients_per_round": 2, "rounds": 2,
                       "local_steps": 8, "batch_size": 16,
                       "optimizer": {"name": "adamw", "lr": 0.01}},
        "strategy": {"name": "fedsvd"},
        "resources": ONE_CLIENT_PROCESS,
    },
    "methods": {"fedsvd": {"strategy": {"name": "fedsvd"}},
                "ffa-lora": {"strategy": {"name": "ffa-lora"}}},
    "tune": {"federation.optimizer.lr": {"values": [0.0001, 0.03]}},
    "seeds": {"tune": [0, 1], "report": [10, 11]},
    "selection": {"metric": "val-acc", "last_rounds": 2},
    "report": {"metrics": ["eval-acc"], "last_rounds": 2},
    "reference": "fedsvd",
}


def store_rows(runs_dir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(runs_dir / "orthofed.sqlite", timeout=30) as db:
        return db.execute(sql).fetchall()


def completed_sweep_runs(runs_dir: Path) -> int:
    if not (runs_dir / "orthofed.sqlite").exists():
        return 0
    try:
        return store_rows(runs_dir, "SELECT count(*) FROM sweep_runs WHERE status = "
                          "'completed'")[0][0]
    except sqlite3.OperationalError:  # the sweep tables are not made yet
        return 0


def gone_within(pids: list[int], timeout: float) -> list[int]:
    """The pids still alive (not zombies) after waiting up to `timeout` s for them."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p.pid for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def start_sweep(argv: list[str]) -> subprocess.Popen:
    """`orthofed sweep` in its own session, as `cmd &` in a script: no terminal's signal
    reaches its runs, only what the sweep itself (or the kernel, when it dies) sends."""
    return subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def stop_when(sweep: subprocess.Popen, ready, what: str, signum: int) -> list[int]:
    """Once `ready()`, send `signum` to the sweep alone and wait for it to exit; the pids
    of the processes it had started (its runs and their Flower processes)."""
    try:
        wait_for(lambda: ready() or sweep.poll() is not None, timeout=600, what=what)
        assert sweep.poll() is None, sweep.stderr.read().decode()[-3000:]
        family = [p.pid for p in psutil.Process(sweep.pid).children(recursive=True)]
        sweep.send_signal(signum)
        sweep.wait(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
        sweep.stderr.close()
    return family


def test_a_stopped_then_killed_sweep_resumes_to_a_report_chosen_on_validation(
        tmp_path: Path, runs_dir: Path) -> None:
    """`kill` (SIGTERM) of the sweep stops its runs at once, records them and the sweep
    as cancelled, exits 130; run again, then SIGKILLed as by a crash (its runs get SIGTERM
    from the kernel), nothing keeps running; run a third time, it resumes the cancelled
    and cut runs and ends with the report."""
    sweep_file = tmp_path / "toy.yaml"
    sweep_file.write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    argv = [sys.executable, "-m", "server.cli", "sweep", str(sweep_file), "--runs-dir",
            str(runs_dir), "--workers", "2"]
    first = start_sweep(argv)
    family = stop_when(first, lambda: len(running_runs(runs_dir)) >= 1,
                       "a run of the sweep started", signal.SIGTERM)
    assert first.returncode == 130
    assert gone_within(family, timeout=60) == [], "the stopped sweep's runs kept running"
    assert store_rows(runs_dir, "SELECT status FROM sweeps WHERE id = 'toy'") == [("cancelled",)]
    runs = store_rows(runs_dir, "SELECT s.status, r.status FROM sweep_runs s JOIN runs r ON "
                      "r.id = s.run_id")
    assert runs and all(pair == ("cancelled", "cancelled") for pair in runs), runs

    second = start_sweep(argv)
    family = stop_when(second, lambda: completed_sweep_runs(runs_dir) >= 2,
                       "two runs of the sweep completed", signal.SIGKILL)
    assert gone_within(family, timeout=120) == [], "the killed sweep's runs kept running"

    third = run_orthofed("sweep", str(sweep_file), "--runs-dir", str(runs_dir),
                         "--workers", "2", timeout=1500)
    assert third.returncode == 0, third.stderr[-4000:]
    check_the_report(runs_dir)
    shown = run_orthofed("sweep", "report", "toy", "--runs-dir", str(runs_dir))
    assert shown.returncode == 0, shown.stderr
    assert "Paired by seed against" in shown.stdout and "ffa-lora" in shown.stdout


def running_runs(runs_dir: Path) -> list[tuple]:
    try:
        return store_rows(runs_dir, "SELECT run_id FROM sweep_runs WHERE status = 'running' "
                          "AND run_id IS NOT NULL")
    except sqlite3.OperationalError:  # the sweep tables are not made yet
        return []


def check_the_report(runs_dir: Path) -> None:
    """The report agrees with the store: chosen = best mean validation score, report
    seeds once each, and no scenario digest completed twice."""
    report = json.loads((runs_dir / "sweeps" / "toy" / "report.json").read_text())
    rows = {r["method"]: r for r in report["table"]["rows"]}
    assert set(rows) == {"fedsvd", "ffa-lora"}
    completed = store_rows(runs_dir, "SELECT s.digest, s.run_id FROM sweep_runs s JOIN runs r "
                           "ON r.id = s.run_id WHERE r.status = 'completed'")
    by_digest = defaultdict(set)
    for digest, run_id in completed:
        by_digest[digest].add(run_id)
    assert all(len(ids) == 1 for ids in by_digest.values()), by_digest
    for method, row in rows.items():
        means = validation_means(runs_dir, f"all/{method}")
        chosen = means[json.dumps(row["setting"], sort_keys=True)]
        assert chosen == pytest.approx(max(means.values())), (method, means)
        assert row["selection"] == pytest.approx(chosen)
        assert row["seeds"]["eval-acc"] == [10, 11]
        assert 0.0 <= row["spread"]["eval-acc"]["mean"] <= 1.0
    [diff] = report["table"]["differences"]
    assert (diff["method"], diff["seeds"]) == ("ffa-lora", [10, 11])
    markdown = (runs_dir / "sweeps" / "toy" / "report.md").read_text()
    assert "| all | fedsvd | lr 0." in markdown and "| all | ffa-lora | lr 0." in markdown
    assert "| all | ffa-lora | eval-acc |" in markdown  # the paired difference's row


def validation_means(runs_dir: Path, study: str) -> dict[str, float]:
    """Per tuned setting (as JSON), the mean over the tuning seeds of each run's mean
    val-acc over its rounds 1-2, read straight from the rounds table."""
    rows = store_rows(runs_dir, "SELECT s.setting, s.seed, rd.round, rd.eval FROM sweep_runs s "
                      "JOIN rounds rd ON rd.run_id = s.run_id JOIN runs r ON r.id = s.run_id "
                      f"WHERE s.study = '{study}' AND s.phase = 'tune' AND r.status = 'completed'")
    per_run = defaultdict(list)
    for setting, seed, round_, evaluation in rows:
        if round_ > 0:
            per_run[(setting, seed)].append(json.loads(evaluation)["val-acc"])
    per_setting = defaultdict(list)
    for (setting, _), values in per_run.items():
        per_setting[setting].append(sum(values) / len(values))
    assert len(per_setting) == 2 and all(len(v) == 2 for v in per_setting.values()), per_setting
    return {setting: sum(values) / 2 for setting, values in per_setting.items()}
