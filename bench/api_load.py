"""API load: requests per second and latency of GET /runs/{id}/rounds on a 1000-round
run while another run is being written, side by side with GET /healthz.

Three processes on loopback: `orthofed serve` (uvicorn, one worker), a writer that
records rounds and client metrics of a live run into the same SQLite store (WAL) as the
ServerApp would, and this process, which sends the requests from `--threads` client
threads (keep-alive connections). The two endpoints alternate in phases of `--seconds`
so that both see the same machine load; the table gives each one's totals and the ratio.

Usage: python bench/api_load.py [--seconds 5] [--phases 4] [--threads 4] [--rounds 1000]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.orchestration.launcher import free_port  # noqa: E402
from server.runs.store import MetricsStore  # noqa: E402

METRICS = {"train-loss": 0.5, "local-eval-acc": 0.8, "local-eval-loss": 0.4, "clients": 3,
           "failures": 0, "refusals": 0, "num-examples": 270}


def fill(store: MetricsStore, run_id: str, rounds: int) -> None:
    store.create_run(run_id, "big", {"name": "big"})
    store.set_status(run_id, "completed")
    for r in range(rounds):
        store.record_round(run_id, r, r // 250, train=METRICS,
                           eval={"eval-acc": 0.5, "eval-loss": 0.7, "eval-seconds": 0.1})


def writer(runs_dir: str, stop_file: str) -> None:
    """Child process: a live run, one round (train, clients, eval) every 50 ms."""
    store = MetricsStore.in_dir(runs_dir)
    store.create_run("live", "live", {"name": "live"})
    store.set_status("live", "running")
    r = 0
    while not os.path.exists(stop_file):
        store.record_round("live", r, 0, train=METRICS)
        store.record_clients("live", r, {p: METRICS for p in range(3)}, [])
        store.record_round("live", r, 0, eval={"eval-acc": 0.5})
        r += 1
        time.sleep(0.05)
    print(r)


def hammer(url: str, seconds: float, threads: int) -> list[float]:
    """Latencies (s) of back-to-back GETs of `url` from `threads` threads for `seconds`."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        mine = []
        with httpx.Client(timeout=30) as client:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = client.get(url)
                mine.append(time.perf_counter() - start)
                response.raise_for_status()
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--phases", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--writer", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        writer(*args.writer)
        return
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(tmp) / "runs"
        fill(MetricsStore.in_dir(runs_dir), "big", args.rounds)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port",
                                   str(port), "--runs-dir", str(runs_dir), "--concurrency", "0"],
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        stop_file = Path(tmp) / "stop"
        live = subprocess.Popen([sys.executable, __file__, "--writer", str(runs_dir),
                                 str(stop_file)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).is_success:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            size = len(httpx.get(f"{base}/runs/big/rounds").content)
            results: dict[str, list[float]] = {"/healthz": [], "/runs/big/rounds": []}
            for _ in range(args.phases):
                for path in results:
                    results[path] += hammer(base + path, args.seconds, args.threads)
        finally:
            stop_file.touch()
            written = live.communicate(timeout=30)[0].strip()
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    seconds = args.seconds * args.phases
    print(f"{args.threads} client threads, {args.phases} alternating phases of {args.seconds:.0f} s "
          f"per endpoint; meanwhile a writer recorded {written} rounds of a live run; "
          f"/runs/big/rounds returns {args.rounds} rounds ({size / 1024:.0f} KiB)")
    print(f"{'endpoint':>18} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    rows = {}
    for path, latencies in results.items():
        ms = sorted(x * 1000 for x in latencies)
        p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
        rows[path] = (len(ms) / seconds, statistics.median(ms), p99)
        print(f"{path:>18} {len(ms):9d} {rows[path][0]:8.1f} {rows[path][1]:8.2f} {p99:8.2f}")
    health, rounds = rows["/healthz"], rows["/runs/big/rounds"]
    print(f"rounds / healthz: throughput {rounds[0] / health[0]:.3f}x, "
          f"p99 latency {rounds[2] / health[2]:.1f}x")


if __name__ == "__main__":
    main()
