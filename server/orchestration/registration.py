"""Register SuperNodes' public keys with a SuperLink started with `--enable-supernode-auth`
(Flower 1.42: only registered keys join), the way an operator would with
`flwr supernode register KEY CONNECTION`, but safe to repeat: compose.yaml runs it on
every start, and a key the SuperLink already holds (its SQLite state keeps them across
restarts) counts as registered, not as an error.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from server.orchestration.launcher import CONNECTION, health_problem, write_flwr_config

# What flwr 1.42 answers (its JSON "error-message") for a key the SuperLink already has.
ALREADY_REGISTERED = "Public key already in use"
POLL_S = 1.0
REGISTER_TIMEOUT_S = 120.0
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def wait_for_superlink(address: str, ca: Path | None, wait_s: float) -> None:
    """Return once a SuperLink answers at `address`; a RuntimeError with the last
    problem after `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    while (problem := health_problem(address, min(5.0, wait_s), ca)) is not None:
        if time.monotonic() >= deadline:
            raise RuntimeError(f"no SuperLink answered at {address} within {wait_s:g} s "
                               f"({problem})")
        time.sleep(POLL_S)


def register_key(key: Path, flwr_home: Path) -> str:
    """Register one public key over the connection in `flwr_home`: "registered (node N)"
    or "already registered"; a RuntimeError with Flower's message otherwise."""
    try:
        done = subprocess.run(["flwr", "supernode", "register", str(key), CONNECTION,
                               "--format", "json"], capture_output=True, text=True,
                              timeout=REGISTER_TIMEOUT_S,
                              env={**os.environ, "FLWR_HOME": str(flwr_home),
                                   "FLWR_DISABLE_UPDATE_CHECK": "1"})
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{key}: flwr supernode register did not answer within "
                           f"{REGISTER_TIMEOUT_S:g} s") from None
    try:
        answer = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"{key}: flwr supernode register exited {done.returncode}: "
                           f"{ANSI_COLOUR.sub('', done.stdout + done.stderr).strip()[-500:]}") from None
    if answer.get("success"):
        return f"registered (node {answer['node-id']})"
    message = str(answer.get("error-message", "")).strip()
    if ALREADY_REGISTERED in message:
        return "already registered"
    last_line = message.splitlines()[-1] if message else "no reason given"
    raise RuntimeError(f"{key}: the SuperLink refused it: {last_line}")


def register_keys(keys: list[Path], address: str, ca: Path | None,
                  wait_s: float) -> dict[Path, str]:
    """Every key registered with the SuperLink at `address` (waiting up to `wait_s` for it
    to answer): what became of each."""
    wait_for_superlink(address, ca, wait_s)
    with tempfile.TemporaryDirectory(prefix="orthofed-register-") as home:
        write_flwr_config(Path(home), address, ca.resolve() if ca else None)
        return {key: register_key(key.resolve(), Path(home)) for key in keys}

