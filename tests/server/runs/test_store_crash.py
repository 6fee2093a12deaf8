"""The store under a writer killed mid-write and readers running alongside: every round a
reader sees is whole, and after SIGKILL the database is consistent and keeps every round
that was committed."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time

from server.runs.store import MetricsStore
from tests.conftest import ROOT

WRITER = """
import sys, time
from server.runs.store import MetricsStore
store = MetricsStore.in_dir(sys.argv[1])
store.create_run("r", "s", {})
metrics = {f"m{i}": float(i) for i in range(200)}  # a fat round: longer transactions
r = 0
while True:
    store.record_clients("r", r, {p: metrics for p in range(8)}, [(9, "n9", "boom")])
    store.record_round("r", r, 0, train=metrics, eval={"eval-acc": 0.5})
    print(r, flush=True)
    r += 1
"""


def test_readers_see_whole_rounds_and_a_killed_writer_loses_nothing_committed(tmp_path) -> None:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    store = None
    try:
        deadline = time.monotonic() + 60
        while store is None or not store.rounds("r"):
            assert time.monotonic() < deadline and writer.poll() is None
            if (tmp_path / "orthofed.sqlite").exists():
                store = MetricsStore.in_dir(tmp_path)
            time.sleep(0.05)
        reads = 0
        stop_at = time.monotonic() + 3
        # read while the writer writes: 3 s, and at least 4 whole reads on a loaded machine
        while time.monotonic() < stop_at or reads < 4:
            assert time.monotonic() < deadline
            for row in store.rounds("r"):
                assert len(row["train"]) == 200 and row["eval"] == {"eval-acc": 0.5}
            per_round: dict[int, int] = {}
            for row in store.client_rounds("r"):
                per_round[row["round"]] = per_round.get(row["round"], 0) + 1
            assert set(per_round.values()) <= {8}  # a round's clients land together
            reads += 1
        writer.send_signal(signal.SIGKILL)  # mid-write, most likely
        writer.wait(timeout=10)
        printed = [int(x) for x in writer.stdout.read().split()]
    finally:
        if writer.poll() is None:
            writer.kill()
    db = sqlite3.connect(tmp_path / "orthofed.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    rounds = store.rounds("r")
    assert reads > 3 and printed and len(rounds) >= len(printed)  # nothing committed lost
    assert [r["round"] for r in rounds] == list(range(len(rounds)))
    assert all(json.dumps(r["train"]) and len(r["train"]) == 200 for r in rounds)
    clients = store.client_rounds("r")
    assert len(clients) in (8 * len(rounds), 8 * (len(rounds) + 1))  # the last may be ahead
