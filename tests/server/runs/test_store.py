"""The SQLite metrics store: round trips, WAL, final statuses, concurrent readers."""

from __future__ import annotations

import sqlite3
import threading

from server.runs.store import SCHEMA, SCHEMA_VERSION, MetricsStore


def make_store(tmp_path) -> MetricsStore:
    store = MetricsStore.in_dir(tmp_path)
    store.create_run("r1", "quick", {"name": "quick"}, "/x/quick.yaml")
    return store


def test_round_trip_of_a_run(tmp_path) -> None:
    store = make_store(tmp_path)
    store.set_status("r1", "running")
    store.record_round("r1", 0, 0, eval={"eval-acc": 0.3})
    store.record_round("r1", 1, 0, train={"train-loss": 1.0})
    store.record_round("r1", 1, 0, eval={"eval-acc": 0.6})  # eval arrives after train
    store.record_clients("r1", 1, {0: {"train-loss": 1.1}, 2: {"train-loss": 0.9}},
                         [(1, "77", "partition-id=1: boom")])
    store.set_status("r1", "completed")
    run = store.get_run("r1")
    assert run["status"] == "completed" and run["scenario"] == {"name": "quick"}
    assert run["started"] <= run["ended"]
    assert store.rounds("r1") == [
        {"round": 0, "task": 0, "train": {}, "eval": {"eval-acc": 0.3}},
        {"round": 1, "task": 0, "train": {"train-loss": 1.0}, "eval": {"eval-acc": 0.6}},
    ]
    assert [c["partition_id"] for c in store.client_rounds("r1")] == [0, 2]
    assert store.failures("r1") == [
        {"round": 1, "partition_id": 1, "node_id": "77", "reason": "partition-id=1: boom"}]
    assert [r["id"] for r in store.list_runs()] == ["r1"]


def test_wal_mode_and_text_run_ids(tmp_path) -> None:
    store = make_store(tmp_path)
    big = str(2**64 - 1)  # Flower run ids are unsigned 64-bit
    store.create_run(big, "x", {})
    assert store.get_run(big)["id"] == big
    mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_runs_listed_and_counted_by_scenario_name(tmp_path) -> None:
    store = make_store(tmp_path)  # r1: quick
    store.create_run("r2", "quick-stream", {})
    store.create_run("r3", "quick", {})
    store.set_status("r3", "running")
    assert [r["id"] for r in store.list_runs(name="quick")] == ["r3", "r1"]
    assert [r["id"] for r in store.list_runs(name="quick", oldest_first=True)] == ["r1", "r3"]
    assert [r["id"] for r in store.list_runs(1, 1, name="quick")] == ["r1"]
    assert [r["id"] for r in store.list_runs(statuses=("running",), name="quick")] == ["r3"]
    assert store.list_runs(statuses=("running",), name="quick-stream") == []
    assert store.list_runs(name="QUICK") == [] and store.list_runs(name="quick%") == []
    assert (store.count_runs(name="quick"), store.count_runs(("pending",), "quick")) == (2, 1)
    assert store.count_runs() == 3 and len(store.list_runs()) == 3  # no name: all


def test_a_terminal_status_is_final(tmp_path) -> None:
    store = make_store(tmp_path)
    store.set_status("r1", "failed", "round 2: every client failed")
    store.set_status("r1", "completed")
    store.set_status("r1", "failed", "a later message")
    run = store.get_run("r1")
    assert (run["status"], run["message"]) == ("failed", "round 2: every client failed")


def test_readers_never_see_half_a_round(tmp_path) -> None:
    """A writer adds rounds with 50 clients each; readers must see all 50 or none."""
    store = make_store(tmp_path)
    stop, torn = threading.Event(), []

    def read() -> None:
        reader = MetricsStore(store.path)
        while not stop.is_set():
            counts: dict[int, int] = {}
            for row in reader.client_rounds("r1"):
                counts[row["round"]] = counts.get(row["round"], 0) + 1
            torn.extend(n for n in counts.values() if n != 50)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    for round_ in range(1, 31):
        store.record_clients("r1", round_, {p: {"loss": 1.0} for p in range(50)}, [])
    stop.set()
    for t in readers:
        t.join()
    assert torn == []
    assert len(store.client_rounds("r1")) == 30 * 50


def test_a_store_from_before_the_probes_gains_the_column(tmp_path) -> None:
    """A file whose task_evals has no probe_accuracy (and runs no pid, no privacy_note):
    opening it adds them; its rows read back with None there, new rows keep theirs."""
    path = tmp_path / "old.sqlite"
    added = ("pid", "privacy_note", "probe_accuracy", "--")  # columns, and their comments
    old_schema = "\n".join(line for line in SCHEMA.splitlines()
                           if not line.split() or line.split()[0] not in added)
    old_schema = old_schema.replace("ended REAL,", "ended REAL")
    db = sqlite3.connect(path)
    db.executescript(old_schema)
    db.execute("INSERT INTO runs (id, name, scenario, status, created) "
               "VALUES ('old', 's', '{}', 'completed', 0)")
    db.execute("INSERT INTO task_evals VALUES ('old', -1, 0, 'a', 0.5, 1.0, 0)")
    db.commit()
    db.close()
    store = MetricsStore(path)
    assert store.task_evals("old") == [{"after_task": -1, "task": 0, "name": "a",
                                        "accuracy": 0.5, "loss": 1.0, "probe_accuracy": None}]
    store.record_task_evals("old", 0, [("a", 0.9, 0.2)], [0.75])
    assert store.task_evals("old")[1]["probe_accuracy"] == 0.75
    assert store.get_run("old")["pid"] is None and store.get_run("old")["privacy_note"] is None
    with sqlite3.connect(path) as db:  # the schema's version is SQLite's user_version
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    MetricsStore(path)  # opening it again changes nothing
    assert len(store.task_evals("old")) == 2
