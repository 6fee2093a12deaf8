"""Sweeps in the metrics store: each sweep, and each of its runs by scenario digest.

A sweep's runs are ordinary runs (the `runs` table, `orthofed compare`, the dashboard);
these two tables say which sweep, study (cell/method), phase (tune or report), setting
and seed each one ran for. A planned run is keyed by its scenario's digest: a resumed
sweep finds the run that already completed (in this sweep or another) and never runs
it again, and continues one that was cut short from its checkpoint.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from server.runs.status import RunStatus
from server.runs.store import STORE_FILE, MetricsStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,             -- the sweep's name
    file TEXT,                       -- the sweep file it was started from
    spec TEXT NOT NULL,              -- the sweep as validated (JSON)
    status TEXT NOT NULL,            -- pending | running | completed | failed | cancelled
    message TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    pid INTEGER                      -- the `orthofed sweep` process while it runs
);
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep_id TEXT NOT NULL REFERENCES sweeps(id),
    study TEXT NOT NULL,             -- cell/method
    phase TEXT NOT NULL,             -- tune | report
    digest TEXT NOT NULL,            -- the scenario's digest (scenarios.sweep.digest)
    setting TEXT NOT NULL,           -- the tuned values (JSON)
    seed INTEGER NOT NULL,
    run_id TEXT,                     -- its run in `runs`, once started
    status TEXT NOT NULL,            -- queued | running | completed | failed | pruned | cancelled
    message TEXT,
    updated REAL NOT NULL,
    PRIMARY KEY (sweep_id, phase, study, digest)
);
CREATE INDEX IF NOT EXISTS sweep_runs_by_digest ON sweep_runs (digest);
"""


class SweepStore:
    """The sweep tables of a runs directory's store (the same SQLite file as the runs)."""

    def __init__(self, runs_dir: str | Path) -> None:
        self.runs = MetricsStore.in_dir(runs_dir)  # creates the file and its run tables
        self.path = Path(runs_dir) / STORE_FILE
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30.0)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA busy_timeout=30000")
            with db:  # one transaction, committed or rolled back
                yield db
        finally:
            db.close()

    # ---- sweeps ----------------------------------------------------------------------

    def start_sweep(self, sweep_id: str, spec: dict[str, Any], file: str | None,
                    pid: int | None) -> None:
        """Record the sweep as running (a new one, or one resumed under its name)."""
        now = time.time()
        with self._connect() as db:
            db.execute(
                "INSERT INTO sweeps (id, file, spec, status, created, updated, pid) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET file = "
                "excluded.file, spec = excluded.spec, status = excluded.status, message = "
                "NULL, updated = excluded.updated, pid = excluded.pid",
                (sweep_id, file, json.dumps(spec), RunStatus.RUNNING, now, now, pid))

    def set_sweep_status(self, sweep_id: str, status: str, message: str | None = None) -> None:
        with self._connect() as db:
            db.execute("UPDATE sweeps SET status = ?, message = ?, updated = ?, pid = NULL "
                       "WHERE id = ?", (status, message, time.time(), sweep_id))

    def get_sweep(self, sweep_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
        return None if row is None else {**dict(row), "spec": json.loads(row["spec"])}

    def list_sweeps(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT id, file, status, message, created, updated FROM sweeps "
                              "ORDER BY created DESC").fetchall()
        return [dict(row) for row in rows]

    # ---- its runs --------------------------------------------------------------------

    def record_run(self, sweep_id: str, study: str, phase: str, digest: str,
                   setting: dict[str, Any], seed: int, status: str,
                   run_id: str | None = None, message: str | None = None) -> None:
        """Insert or update one planned run of the sweep (a run id, once known, is kept)."""
        with self._connect() as db:
            db.execute(
                "INSERT INTO sweep_runs (sweep_id, study, phase, digest, setting, seed, run_id,"
                " status, message, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(sweep_id, phase, study, digest) DO UPDATE SET run_id = "
                "COALESCE(excluded.run_id, run_id), status = excluded.status, message = "
                "excluded.message, updated = excluded.updated",
                (sweep_id, study, phase, digest, json.dumps(setting, sort_keys=True), seed,
                 run_id, status, message, time.time()))

    def sweep_runs(self, sweep_id: str) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM sweep_runs WHERE sweep_id = ? ORDER BY study, "
                              "phase, setting, seed", (sweep_id,)).fetchall()
        return [{**dict(row), "setting": json.loads(row["setting"])} for row in rows]

    def completed_run(self, digest: str) -> str | None:
        """A completed run of this scenario digest, from any sweep, if one exists."""
        with self._connect() as db:
            row = db.execute(
                "SELECT s.run_id FROM sweep_runs s JOIN runs r ON r.id = s.run_id WHERE "
                "s.digest = ? AND r.status = ? ORDER BY r.ended LIMIT 1",
                (digest, RunStatus.COMPLETED)).fetchone()
        return None if row is None else row["run_id"]

    def unfinished_run(self, sweep_id: str, digest: str) -> str | None:
        """The run this sweep started for `digest` and did not see finish (a resumed
        sweep continues it from its checkpoint), if any."""
        with self._connect() as db:
            row = db.execute(
                "SELECT s.run_id FROM sweep_runs s JOIN runs r ON r.id = s.run_id WHERE "
                "s.sweep_id = ? AND s.digest = ? AND r.status != ? ORDER BY s.updated DESC "
                "LIMIT 1", (sweep_id, digest, RunStatus.COMPLETED)).fetchone()
        return None if row is None else row["run_id"]
