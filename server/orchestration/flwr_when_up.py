"""`flwr ARGS...` once the SuperLink at HOST:PORT answers:
`python -m server.orchestration.flwr_when_up HOST:PORT TIMEOUT_S run APP ...`.

Flower's CLI takes about 1.4 s of CPU to import (FastAPI, gRPC, its protobufs), and its
Control API client does not retry a refused connection, so a plain `flwr run` can only
start once the SuperLink answers. This process imports the CLI while the SuperLink is
still starting (two processes, two cores), waits for the SuperLink's GET /health, then
runs the same CLI entry point the `flwr` script runs (flwr.cli.app:app). It exits 1
when the SuperLink does not answer within TIMEOUT_S (the launcher reports why).
"""

from __future__ import annotations

import sys
import time

import httpx
from flwr.cli.app import app  # the `flwr` console script's entry point (the slow import)

POLL_S = 0.05


def wait_for_health(address: str, timeout_s: float) -> bool:
    """Whether an insecure SuperLink answers GET /health at `address` within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://{address}/health", timeout=1.0).is_success:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(POLL_S)
    return False


def main() -> int:
    address, timeout_s, *args = sys.argv[1:]
    if not wait_for_health(address, float(timeout_s)):
        print(f"no SuperLink answered at {address} within {timeout_s} s", file=sys.stderr)
        return 1
    sys.argv = ["flwr", *args]
    return app()


if __name__ == "__main__":
    sys.exit(main())
