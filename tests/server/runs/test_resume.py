"""`orthofed resume` started under wrappers (`timeout`, `bash -c`) whose command lines
name the run: they are its ancestors, not live processes of the run, so it is not
refused as still running; a real live process of the run still is."""

from __future__ import annotations

import shlex
import subprocess
import sys

from server.runs.store import MetricsStore
from tests.conftest import ROOT


def wrapped_resume(run_id: str, runs_dir) -> subprocess.CompletedProcess:
    """`timeout 120 bash -c '<orthofed> resume ID --runs-dir D; exit $?'`: two wrapper
    ancestors whose command lines name the run and orthofed (`; exit` keeps bash from
    exec-ing the command, so it stays a process of its own)."""
    resume = shlex.join([sys.executable, "-m", "server.cli", "resume", run_id,
                         "--runs-dir", str(runs_dir), "--json"])
    return subprocess.run(["timeout", "120", "bash", "-c", f"{resume}; exit $?"], cwd=ROOT,
                          capture_output=True, text=True, timeout=150)


def live_process_of(run_id: str, folder, seconds: int = 120) -> subprocess.Popen:
    """A process that looks like the run's own `orthofed run` (a script named orthofed,
    run by the interpreter, naming the run) and sleeps: a run the store lost track of."""
    script = folder / "orthofed"
    script.write_text(f"import time\ntime.sleep({seconds})\n")
    return subprocess.Popen([sys.executable, str(script), "run", "--run-id", run_id])


def test_only_our_programs_count_not_their_arguments() -> None:
    from server.runs.resume import runs_our_program

    assert runs_our_program(["python", "/usr/local/bin/orthofed", "run", "--run-id", "x"])
    assert runs_our_program(["python", "-m", "server.cli", "run"])
    assert runs_our_program(["python", "/venv/bin/flower-superlink", "--database", "x.db"])
    assert runs_our_program(["/venv/lib/python3.11/site-packages/ray/core/src/ray/gcs/gcs_server"])
    assert runs_our_program(["ray::ClientAppActor"])
    # a folder named like orthofed or Flower in the arguments does not make a program ours
    assert not runs_our_program(["tail", "-f", "/home/u/orthofed/runs/x/flower.log"])
    assert not runs_our_program(["tee", "/home/u/orthofed/runs/x.log"])


def test_resume_under_a_wrapper_is_not_refused_as_its_own_live_process(tmp_path) -> None:
    """The run has no process left; its stored scenario no longer validates, so the
    resume gets past the live-process check, claims the run and stops there (exit 2,
    the run failed with that reason) without starting Flower."""
    run_id = "wrapped-4c1d8e07"
    store = MetricsStore.in_dir(tmp_path)
    store.create_run(run_id, "s", {"name": "s"})  # not a valid scenario
    store.set_status(run_id, "running")
    store.set_status(run_id, "failed", "killed")
    done = wrapped_resume(run_id, tmp_path)
    assert "still running" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr[-2000:]
    run = store.get_run(run_id)
    assert (run["status"], run["message"]) == ("failed",
                                               "resume: the scenario no longer validates")


def test_resume_under_a_wrapper_still_sees_a_live_process_of_the_run(tmp_path) -> None:
    """A process of the run that is not an ancestor (here one `orthofed run` of it the
    store lost track of) is still a reason to refuse, and the only pid named."""
    run_id = "alive-93b0f6a2"
    store = MetricsStore.in_dir(tmp_path)
    store.create_run(run_id, "s", {"name": "s"})
    store.set_status(run_id, "cancelled")  # the store says ended, a process of it lives on
    holder = live_process_of(run_id, tmp_path)
    try:
        done = wrapped_resume(run_id, tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"it is still running (pids {holder.pid});" in done.stderr, done.stderr
    assert store.get_run(run_id)["status"] == "cancelled"  # not claimed
