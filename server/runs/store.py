"""MetricsStore: runs, rounds, per-client metrics and failures in one SQLite file (WAL).

The ServerApp writes as rounds happen; the CLI and the API read concurrently. WAL mode
lets readers see the last committed round while the writer adds the next; each write is
one short transaction, so a reader never sees half a round. Run ids are TEXT (Flower's
are unsigned 64-bit and overflow SQLite INTEGER).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scenarios.disclosure import privacy_note
from server.runs.status import REOPENABLE, TERMINAL, RunStatus

STORE_FILE = "orthofed.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scenario TEXT NOT NULL,          -- the scenario as JSON, as validated
    scenario_path TEXT,
    status TEXT NOT NULL,            -- pending | running | completed | failed | cancelled
    message TEXT,                    -- why it failed, for humans
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    pid INTEGER,                     -- the `orthofed run` process of a run the API started
    privacy_note TEXT                -- what a private run's epsilon does not cover
                                     -- (scenarios.disclosure); NULL: all of it, or not private
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT NOT NULL REFERENCES runs(id),
    round INTEGER NOT NULL,          -- global round, counted across tasks
    task INTEGER NOT NULL,
    train TEXT,                      -- aggregated client metrics (JSON)
    eval TEXT,                       -- server-side evaluation of the global model (JSON)
    recorded REAL NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS client_rounds (
    run_id TEXT NOT NULL REFERENCES runs(id),
    round INTEGER NOT NULL,
    partition_id INTEGER NOT NULL,
    metrics TEXT NOT NULL,           -- the client's own metrics (JSON)
    PRIMARY KEY (run_id, round, partition_id)
);
CREATE TABLE IF NOT EXISTS task_evals (
    run_id TEXT NOT NULL REFERENCES runs(id),
    after_task INTEGER NOT NULL,     -- -1: the initial model, before the stream
    task INTEGER NOT NULL,           -- the task evaluated
    name TEXT NOT NULL,              -- that task's name
    accuracy REAL NOT NULL,
    loss REAL NOT NULL,
    recorded REAL NOT NULL,
    probe_accuracy REAL,             -- linear probe of the head's input (server.serverapp.probe); NULL: none
    PRIMARY KEY (run_id, after_task, task)
);
CREATE TABLE IF NOT EXISTS failures (
    run_id TEXT NOT NULL REFERENCES runs(id),
    round INTEGER NOT NULL,
    partition_id INTEGER,            -- NULL when the failing node never said who it is
    node_id TEXT,
    reason TEXT NOT NULL,
    recorded REAL NOT NULL
);
"""


# Columns added after the first stores were written, in order: (table, column, type).
# A store's schema version is SQLite's `PRAGMA user_version`: the number of these it
# has. Opening an older file adds the rest (a file from before versions were kept, at
# 0, may already have some: each is added only when missing).
ADDED_COLUMNS = (("runs", "pid", "INTEGER"), ("task_evals", "probe_accuracy", "REAL"),
                 ("runs", "privacy_note", "TEXT"))
SCHEMA_VERSION = len(ADDED_COLUMNS)


class MetricsStore:
    """A SQLite file of run metrics. Cheap to construct; opens a connection per call so
    one object can be shared by threads, and many processes can open the same file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: set once per file
            db.executescript(SCHEMA)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for table, column, kind in ADDED_COLUMNS[version:]:
                if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            if version < SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        finally:
            db.close()

    @classmethod
    def in_dir(cls, runs_dir: str | Path) -> MetricsStore:
        """The store of a runs directory."""
        return cls(Path(runs_dir) / STORE_FILE)

    @contextmanager
    def _connect(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction. Writers take the write lock up front (BEGIN IMMEDIATE) so two
        writers queue instead of deadlocking; readers use a plain snapshot."""
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    # ---- writes ----------------------------------------------------------------------

    def create_run(self, run_id: str, name: str, scenario: dict[str, Any],
                   scenario_path: str | None = None) -> None:
        """A pending run of `scenario` (validated, as JSON), marked with what its epsilon
        does not cover when it is private and opted into releases outside it."""
        with self._connect() as db:
            db.execute(
                "INSERT INTO runs (id, name, scenario, scenario_path, status, created, "
                "privacy_note) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, name, json.dumps(scenario), scenario_path, RunStatus.PENDING,
                 time.time(), privacy_note(scenario)),
            )

    def set_status(self, run_id: str, status: RunStatus, message: str | None = None) -> None:
        """Move a run on (server.runs.status). A terminal status is final: a late writer
        cannot undo it, and the first failure message is the one kept."""
        status, now, terminal = RunStatus(status), time.time(), _sql_list(TERMINAL)
        with self._connect() as db:
            db.execute(
                "UPDATE runs SET status = ?, message = COALESCE(message, ?), "
                "started = CASE WHEN ? = ? THEN COALESCE(started, ?) ELSE started END, "
                f"ended = CASE WHEN ? IN {terminal} THEN ? ELSE ended END "
                f"WHERE id = ? AND status NOT IN {terminal}",
                (status, message, status, RunStatus.RUNNING, now, status, now, run_id),
            )

    def set_pid(self, run_id: str, pid: int) -> None:
        """The process that runs `run_id` (the API watches it; gone = failed)."""
        with self._connect() as db:
            db.execute("UPDATE runs SET pid = ? WHERE id = ?", (pid, run_id))

    def record_round(self, run_id: str, round_: int, task: int,
                     train: dict[str, float] | None = None,
                     eval: dict[str, float] | None = None) -> None:
        """Add or complete a round: train and eval metrics may arrive in two writes."""
        with self._connect() as db:
            db.execute(
                "INSERT INTO rounds (run_id, round, task, train, eval, recorded) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, round) DO UPDATE SET "
                "train = COALESCE(excluded.train, train), eval = COALESCE(excluded.eval, eval)",
                (run_id, round_, task, _dumps(train), _dumps(eval), time.time()),
            )

    def record_clients(self, run_id: str, round_: int,
                       metrics_by_partition: dict[int, dict[str, Any]],
                       failures: list[tuple[int | None, str | None, str]]) -> None:
        """One round's per-client metrics and failures (partition, node, reason), together."""
        now = time.time()
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO client_rounds (run_id, round, partition_id, metrics) "
                "VALUES (?, ?, ?, ?)",
                [(run_id, round_, pid, json.dumps(m)) for pid, m in metrics_by_partition.items()],
            )
            db.executemany(
                "INSERT INTO failures (run_id, round, partition_id, node_id, reason, recorded) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(run_id, round_, pid, node, reason, now) for pid, node, reason in failures],
            )

    def record_task_evals(self, run_id: str, after_task: int,
                          results: list[tuple[str, float, float]],
                          probes: list[float | None] | None = None) -> None:
        """One row of the accuracy matrix: after task `after_task` (-1: before the
        stream), (name, accuracy, loss) of the global model on every task, in order;
        `probes`: each task's linear-probe accuracy (server.serverapp.probe), None: not measured."""
        now = time.time()
        probes = probes if probes is not None else [None] * len(results)
        if len(probes) != len(results):
            raise ValueError(f"{len(probes)} probes for {len(results)} task results")
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO task_evals (run_id, after_task, task, name, accuracy, "
                "loss, recorded, probe_accuracy) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, after_task, task, name, acc, loss, now, probe)
                 for task, ((name, acc, loss), probe) in enumerate(zip(results, probes,
                                                                       strict=True))],
            )

    def reopen(self, run_id: str, pid: int | None = None) -> bool:
        """Make an ended (or abandoned) run pending again, to be resumed, in one
        statement (two resumers cannot both win): its message and end time are cleared,
        its start time and records stay. `pid`: the process that resumes it (None: for
        the API's queue to start). False when the run is unknown, completed or already
        pending."""
        with self._connect() as db:
            changed = db.execute(
                "UPDATE runs SET status = ?, message = NULL, ended = NULL, pid = ? "
                f"WHERE id = ? AND status IN {_sql_list(REOPENABLE)}",
                (RunStatus.PENDING, pid, run_id),
            ).rowcount
        return changed == 1

    def truncate_after(self, run_id: str, round_: int, task: int) -> None:
        """Forget everything recorded after global round `round_` of task `task`, in one
        transaction: a resumed run redoes those rounds, so keeping them would count them
        twice. Task evaluations after task `task` (or of it: they are redone when its
        rounds end) go too. round_ = -1, task = -1: everything."""
        with self._connect() as db:
            for table in ("rounds", "client_rounds", "failures"):
                db.execute(f"DELETE FROM {table} WHERE run_id = ? AND round > ?",
                           (run_id, round_))
            db.execute("DELETE FROM task_evals WHERE run_id = ? AND after_task >= ?",
                       (run_id, task))

    # ---- reads -----------------------------------------------------------------------

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self._connect(write=False) as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        run = dict(row)
        run["scenario"] = json.loads(run["scenario"])
        return run

    def list_runs(self, limit: int = 100, offset: int = 0,
                  statuses: tuple[str, ...] | None = None,
                  oldest_first: bool = False, name: str | None = None) -> list[dict[str, Any]]:
        """Runs, newest first (or oldest first), optionally only those in `statuses` and
        only those of the scenario called `name` (exact match)."""
        where, args = self._filter(statuses, name)
        order = "ASC" if oldest_first else "DESC"
        with self._connect(write=False) as db:
            rows = db.execute(
                "SELECT id, name, status, message, created, started, ended, pid, scenario_path, "
                "privacy_note "
                f"FROM runs {where} ORDER BY created {order}, rowid {order} LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        return [dict(r) for r in rows]

    def count_runs(self, statuses: tuple[str, ...] | None = None,
                   name: str | None = None) -> int:
        """How many runs list_runs would give with no limit."""
        where, args = self._filter(statuses, name)
        with self._connect(write=False) as db:
            return db.execute(f"SELECT COUNT(*) FROM runs {where}", args).fetchone()[0]

    @staticmethod
    def _filter(statuses: tuple[str, ...] | None, name: str | None) -> tuple[str, tuple]:
        """The WHERE clause (and its arguments) of list_runs and count_runs."""
        clauses, args = [], []
        if statuses:
            clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
            args.extend(statuses)
        if name is not None:
            clauses.append("name = ?")
            args.append(name)
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)

    def rounds(self, run_id: str, after: int = -1, limit: int = -1) -> list[dict[str, Any]]:
        """Rounds of a run in order; only those numbered above `after`, at most `limit`
        (-1: all)."""
        with self._connect(write=False) as db:
            rows = db.execute(
                "SELECT round, task, train, eval FROM rounds WHERE run_id = ? AND round > ? "
                "ORDER BY round LIMIT ?", (run_id, after, limit),
            ).fetchall()
        return [{"round": r["round"], "task": r["task"], "train": _loads(r["train"]),
                 "eval": _loads(r["eval"])} for r in rows]

    def round_times(self, run_id: str) -> list[float]:
        """When each round was first recorded (Unix seconds), in round order."""
        with self._connect(write=False) as db:
            rows = db.execute("SELECT recorded FROM rounds WHERE run_id = ? ORDER BY round",
                              (run_id,)).fetchall()
        return [r[0] for r in rows]

    def client_rounds(self, run_id: str) -> list[dict[str, Any]]:
        with self._connect(write=False) as db:
            rows = db.execute(
                "SELECT round, partition_id, metrics FROM client_rounds WHERE run_id = ? "
                "ORDER BY round, partition_id", (run_id,),
            ).fetchall()
        return [{"round": r["round"], "partition_id": r["partition_id"],
                 "metrics": json.loads(r["metrics"])} for r in rows]

    def task_evals(self, run_id: str) -> list[dict[str, Any]]:
        """Every recorded evaluation of the stream, by (after_task, task);
        probe_accuracy None where no probe was measured (runs from before probes)."""
        with self._connect(write=False) as db:
            rows = db.execute(
                "SELECT after_task, task, name, accuracy, loss, probe_accuracy FROM task_evals "
                "WHERE run_id = ? ORDER BY after_task, task", (run_id,),
            ).fetchall()
        return [dict(r) for r in rows]

    def failures(self, run_id: str) -> list[dict[str, Any]]:
        with self._connect(write=False) as db:
            rows = db.execute(
                "SELECT round, partition_id, node_id, reason FROM failures WHERE run_id = ? "
                "ORDER BY round, recorded", (run_id,),
            ).fetchall()
        return [dict(r) for r in rows]


def _dumps(value: dict | None) -> str | None:
    return None if value is None else json.dumps(value)


def _loads(text: str | None) -> dict:
    return {} if text is None else json.loads(text)


def _sql_list(statuses: tuple[RunStatus, ...]) -> str:
    """('completed', 'failed', ...) for an SQL IN clause (enum values, never user input)."""
    return "(" + ", ".join(f"'{s.value}'" for s in statuses) + ")"
