"""The queue: a restarted server recovers its runs; queued runs start through the worker,
which executes only what the queue handed it."""

from __future__ import annotations

import os
import subprocess
import sys

from fastapi.testclient import TestClient

from server.api.app import create_app
from tests.server.runs.stored import finished_run


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
    program server.runs.resume counts as the run's own. A run `orthofed run` created
    (a sweep's, a terminal's: pending until its ServerApp starts) is left to it."""
    from server.api.queue import RunQueue
    from server.runs.resume import runs_our_program

    started = []

    class Started:
        pid = os.getpid()

        def __init__(self, command, **kwargs) -> None:
            started.append(command)

    monkeypatch.setattr("server.api.queue.subprocess.Popen", Started)
    posted = settings.runs_dir.resolve() / "new-1" / "scenario.yaml"  # as POST /runs writes
    store.create_run("new-1", "s", {"name": "s"}, str(posted))
    store.create_run("cli-1", "s", {"name": "s"}, "/scenarios/s.yaml")  # orthofed run's own
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
