"""orthofed's own ClientApp with faults injected, for tests/integration/test_faults.py.

The run config's `faults` says which: "PARTITION@ROUND=KIND,..." where KIND is
  raise  an exception escapes the ClientApp (Flower turns it into an error reply),
  hang   the client sleeps `hang-seconds` before training: past the round timeout,
  exit   the client's process dies on the spot, as under an out-of-memory kill.
Every other round of every partition is orthofed's ClientApp, untouched.
"""

from __future__ import annotations

import os
import time

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import app as orthofed_client

app = ClientApp()


def faults(spec: str) -> dict[tuple[int, int], str]:
    """{(partition, round): kind} from "1@2=hang,0@1=raise"."""
    out = {}
    for item in filter(None, spec.split(",")):
        where, kind = item.split("=")
        partition, round_ = where.split("@")
        out[int(partition), int(round_)] = kind
    return out


@app.train()
def train(msg: Message, context: Context) -> Message:
    partition = int(context.node_config["partition-id"])
    round_ = int(msg.content["config"]["server-round"])
    kind = faults(str(context.run_config.get("faults", ""))).get((partition, round_))
    if kind == "raise":
        raise RuntimeError(f"injected fault in round {round_}")
    if kind == "hang":
        time.sleep(float(context.run_config["hang-seconds"]))
    if kind == "exit":
        os._exit(17)
    return orthofed_client.train(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    return orthofed_client.query(msg, context)
