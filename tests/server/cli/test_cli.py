"""`orthofed validate`: exit codes and messages, with no traceback for user mistakes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT


def orthofed(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_validate_accepts_the_quick_scenario() -> None:
    done = orthofed("validate", "scenarios/quick.yaml")
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout


def test_validate_lists_every_error_and_exits_2(quick_document, tmp_path) -> None:
    quick_document["model"]["lora"] = {"rank": 0, "target_modules": ["nope"]}
    quick_document["federation"]["local_steps"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(quick_document))
    done = orthofed("validate", str(path))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == ["model.lora.rank: must be >= 1, got 0",
                     "federation.local_steps: must be >= 1, got 0"]
    assert "Traceback" not in done.stderr


def test_disk_problems_are_reported_before_anything_starts(quick_document, tmp_path) -> None:
    quick_document["model"]["lora"]["target_modules"] = ["q_proj"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(quick_document))
    done = orthofed("run", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert done.returncode == 2
    assert done.stderr.startswith("model.lora.target_modules: 'q_proj' is not a module")
    assert not (tmp_path / "runs").exists()  # nothing recorded, nothing started


def test_missing_file_exits_2_without_traceback(tmp_path) -> None:
    done = orthofed("validate", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2 and "no such scenario file" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("args", [["run", "scenarios/quick.yaml", "--run-id", "x"],
                                  ["resume", "x", "--queued"]])
def test_the_api_queues_modes_are_not_the_users(args, capsys) -> None:
    """`--run-id` and `--queued` were the API queue's; it has server.api.worker now."""
    from server.cli.commands import main

    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["launch", "snapshot"])
def test_a_run_interrupted_before_flower_starts_is_cancelled_not_left_pending(
        where, tmp_path, monkeypatch) -> None:
    """Ctrl-C (a sweep cancelling its run) right after the run's row exists, before
    Flower starts: the run is recorded cancelled and `orthofed run` exits 130; it used to
    stay `pending` forever (found by the toy sweep stopped as its first runs started)."""
    from server.cli.commands import main
    from server.orchestration import launcher
    from server.runs.layout import RunFolder
    from server.runs.store import MetricsStore

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    target = (launcher, "launch") if where == "launch" else (RunFolder, "write_snapshot")
    monkeypatch.setattr(*target, interrupted)
    runs = tmp_path / "runs"
    code = main(["run", str(ROOT / "scenarios" / "quick.yaml"), "--runs-dir", str(runs)])
    assert code == 130
    [run] = MetricsStore.in_dir(runs).list_runs()
    assert (run["status"], run["message"]) == ("cancelled", "interrupted by the user (Ctrl-C)")
