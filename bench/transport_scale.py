"""Flower's object transport at model scale: a round whose messages are a whole model
(SmolLM2-135M full fine-tuning under OSFT, about 540 MB each way per client) on the
simulation engine and on the deployment engine (warm SuperNodes), run one after the
other in one invocation, beside a plain loopback TCP copy of the same bytes.

Prints, per arrangement, the per-round times (from the rounds' recorded timestamps), the
median of the later rounds (round 2 on: round 1 includes imports, the model build and
OSFT's first bases), the bytes each client received and sent (the strategy's own count of
the messages' arrays), and for the deployment engine: the extra seconds per round over
simulation, the megabytes per second that extra time amounts to for the round's bytes
(all clients, both ways), and how long the plain copy takes for the same bytes over the
same number of hops (ServerApp -> SuperLink -> SuperNode -> ClientApp, and back).

The scenario is scenarios/smollm2-osft-cl.yaml cut to what moves the bytes: one task,
2 clients (both every round), 1 local step of batch 1, 8 evaluation rows,
so the compute per round is small next to the messages.

Usage: python bench/transport_scale.py [--rounds 3] [--clients 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy_vs_sim import round_seconds  # noqa: E402

from server.runs.store import MetricsStore  # noqa: E402
from strategies import keys  # noqa: E402

# ServerApp -> SuperLink -> SuperNode -> ClientApp: the hops a message makes on the
# deployment engine (warm nodes run the ClientApp in a process of their own).
HOPS = 3
CHUNK = 8 << 20
ARRANGEMENTS = (("simulation", [], {}),
                ("deployment, warm nodes", ["--deployment"], {}),
                ("deployment, warm nodes, arrays unpacked", ["--deployment"],
                 {"ORTHOFED_PACK_ARRAYS": "0"}))


def scenario_document(rounds: int, clients: int) -> dict:
    document = yaml.safe_load((ROOT / "scenarios" / "smollm2-osft-cl.yaml").read_text())
    document["name"] = "transport-scale"
    document["data"]["server_eval_max"] = 8
    document["stream"]["tasks"] = document["stream"]["tasks"][:1]
    for task in document["stream"]["tasks"]:  # paths relative to the scenarios folder
        task["source"]["path"] = str((ROOT / "scenarios" / task["source"]["path"]).resolve())
    document["federation"].update(num_clients=clients, clients_per_round=clients, rounds=rounds,
                                  local_steps=1, batch_size=1, round_timeout=1800.0)
    document["strategy"]["importance_samples"] = 4
    return document


def loopback_copy_seconds(nbytes: int) -> float:
    """Seconds to send `nbytes` through one TCP connection on loopback and read them."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def drain() -> None:
        connection, _ = server.accept()
        with connection:
            left = nbytes
            while left:
                left -= len(connection.recv(min(CHUNK, left)))

    reader = threading.Thread(target=drain)
    reader.start()
    payload = memoryview(os.urandom(CHUNK))
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sender:
        sent = 0
        while sent < nbytes:
            sent += sender.send(payload[: min(CHUNK, nbytes - sent)])
        reader.join()
    seconds = time.perf_counter() - started
    server.close()
    return seconds


def round_bytes(runs_dir: Path) -> tuple[float, float]:
    """Bytes down and up per client in the last round, as the strategy counted them."""
    store = MetricsStore.in_dir(runs_dir)
    last = store.rounds(store.list_runs()[0]["id"])[-1]
    return float(last["train"][keys.BYTES_DOWN]), float(last["train"][keys.BYTES_UP])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()
    later: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="transport-scale-") as tmp:
        scenario = Path(tmp) / "transport-scale.yaml"
        scenario.write_text(yaml.safe_dump(scenario_document(args.rounds, args.clients)))
        print(f"SmolLM2-135M OSFT, {args.clients} clients, {args.rounds} rounds, "
              f"{os.cpu_count()} CPUs")
        for index, (name, flags, env) in enumerate(ARRANGEMENTS):
            runs_dir = Path(tmp) / f"runs-{index}"
            seconds, wall = round_seconds(scenario, runs_dir, flags, env)
            later[name] = median(seconds[1:]) if len(seconds) > 1 else seconds[0]
            down, up = round_bytes(runs_dir)
            print(f"{name:>40}: rounds " + " ".join(f"{s:6.1f}" for s in seconds)
                  + f" s; wall {wall:6.1f} s; per client {down / 1e6:6.1f} MB down, "
                  f"{up / 1e6:6.1f} MB up", flush=True)
    moved = args.clients * (down + up)
    copy = loopback_copy_seconds(int(moved))
    base = later["simulation"]
    print(f"\nbytes per round (all clients, both ways): {moved / 1e6:.0f} MB; a plain loopback "
          f"TCP copy of them: {copy:.2f} s ({moved / 1e6 / copy:.0f} MB/s), over {HOPS} hops "
          f"{HOPS * copy:.2f} s")
    print("later rounds, median, and deployment's extra time over simulation:")
    for name, seconds in later.items():
        extra = seconds - base
        rate = (f"= {moved / 1e6 / extra:5.0f} MB/s of message, {extra / (HOPS * copy):4.0f}x "
                "the plain copy's time" if extra > 0 else "")
        print(f"{name:>40}: {seconds:6.1f} s ({seconds / base:4.2f}x)  extra {extra:5.1f} s {rate}")

if __name__ == "__main__":
    main()
