"""`flower-supernode` with its fixed waits shortened to one pull interval.

Flower 1.42's SuperNode loop (flwr/supernode/start_client_internal.py) sleeps 3 s
whenever a pull from the SuperLink finds no message, and 0.5 s between checks for the
ClientApp's reply. A round's instruction usually arrives while the node sleeps (it
pulled just before the ServerApp had aggregated), so every round of a deployment run
waited 1.5 s on average, up to 3 s, for the message, and up to 0.5 s more for the reply
to leave: on the quick scenario that is longer than the round's training. Those three
sleeps are the only use of `time` in that module; this process replaces the module's
`time` with one whose `sleep` waits at most `--pull-interval` seconds. The message's
objects are pulled from the SuperLink with retries after 1 s, doubling up to 10 s,
while the ServerApp may still be pushing them; here the first retry comes after
OBJECT_RETRY_FIRST_S, doubling up to OBJECT_RETRY_CAP_S. Then it runs Flower's own
`flower-supernode` entry point with the remaining flags. Nothing else of the SuperNode
changes: what it pulls, stores and pushes, and when it gives up (Flower's limits on
tries and total time).

flwr is pinned exactly (pyproject.toml); tests/clients/node/test_warm_node.py checks that the
patched module still sleeps through `time.sleep` and that the waits are capped.

Usage: python -m clients.node.supernode_polling [--pull-interval S] [flower-supernode flags]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from types import ModuleType

import flwr.superlink.grid.http_grid as serverapp_grid
import flwr.supernode.runtime.run_clientapp as clientapp_runtime
import flwr.supernode.start_client_internal as supernode_loop
from flwr.supercore.inflatable.inflatable_utils import (
    pull_and_inflate_object_from_tree,
    pull_objects,
)
from flwr.supernode.cli import flower_supernode

DEFAULT_PULL_INTERVAL_S = 0.1  # what Flower's simulation grid waits between pulls
# Retry delays for a message's objects not there yet: on the SuperLink when the
# SuperNode pulls them, on the SuperNode when the warm worker (which claims a task as
# soon as it exists) pulls them. Flower's defaults, 1 s doubling up to 10 s, cost a
# task claimed at once 3 s a message (1 + 2 s of sleeps, measured).
OBJECT_RETRY_FIRST_S, OBJECT_RETRY_CAP_S = 0.02, 0.5


class CappedSleeps:
    """`time`, except that sleep(s) waits min(s, cap) seconds."""

    def __init__(self, real_time: ModuleType, cap_s: float) -> None:
        self.real_time, self.cap_s = real_time, cap_s

    def sleep(self, seconds: float) -> None:
        self.real_time.sleep(min(seconds, self.cap_s))

    def __getattr__(self, name: str):
        return getattr(self.real_time, name)


def cap_supernode_waits(cap_s: float) -> None:
    """Make the SuperNode loop's fixed sleeps (3 s, 0.5 s) wait at most `cap_s`."""
    if not isinstance(supernode_loop.time, CappedSleeps):
        supernode_loop.time = CappedSleeps(time, cap_s)
    supernode_loop.time.cap_s = cap_s


def retry_object_pulls_sooner() -> None:
    """Make every pull of a message's objects in this process retry a missing object
    after OBJECT_RETRY_FIRST_S, doubling up to OBJECT_RETRY_CAP_S: the SuperNode loop
    (pull_objects), the ClientApp runtime's pull_task_input
    (pull_and_inflate_object_from_tree) and the ServerApp's deployment grid pulling
    replies (http_grid.pull_objects: a reply listed before all its objects arrived
    waited 1 s). Their limits on tries and total time stay Flower's."""
    delays = {"initial_backoff": OBJECT_RETRY_FIRST_S, "backoff_cap": OBJECT_RETRY_CAP_S}
    supernode_loop.pull_objects = functools.partial(pull_objects, **delays)
    serverapp_grid.pull_objects = functools.partial(pull_objects, **delays)
    clientapp_runtime.pull_and_inflate_object_from_tree = functools.partial(
        pull_and_inflate_object_from_tree, **delays)


def pull_interval_error(seconds: float) -> str | None:
    """Why `seconds` is not a usable --pull-interval, or None."""
    if 0.01 <= seconds <= 3:
        return None
    return (f"--pull-interval: must be between 0.01 and 3 seconds (3 is Flower's own wait), "
            f"got {seconds}")


def split_arguments(argv: list[str]) -> tuple[float, list[str]]:
    """--pull-interval, and the rest for flower-supernode."""
    parser = argparse.ArgumentParser(prog="python -m clients.node.supernode_polling",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pull-interval", type=float, default=DEFAULT_PULL_INTERVAL_S,
                        help="longest wait between pulls from the SuperLink, in seconds "
                             "(Flower's own: 3; default %(default)s)")
    ours, rest = parser.parse_known_args(argv)
    if (error := pull_interval_error(ours.pull_interval)) is not None:
        parser.error(error)
    return ours.pull_interval, rest


def main(argv: list[str] | None = None) -> None:
    interval, flags = split_arguments(sys.argv[1:] if argv is None else argv)
    cap_supernode_waits(interval)
    retry_object_pulls_sooner()
    sys.argv = ["flower-supernode", *flags]
    flower_supernode()


if __name__ == "__main__":
    main()
