"""Who is in the federation: partition ids of the connected nodes, in a stable order.

Flower's node ids are random per run (and change when a SuperNode restarts), and
clients are sampled with `sampler.sample(grid.get_node_ids(), k)` (strategies.round_policy.sampling).
Listing the nodes in partition order makes that sample, under a seeded sampler, the
same partitions in every run of a scenario: runs are reproducible, not only each
client's local step.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from strategies import keys
from strategies.packed_arrays import pack, unpack


# Seconds between pulls for replies. Flower's deployment grid (flwr/superlink/grid/
# http_grid.py) sleeps 3 s between pulls, which every round of a deployment run paid on
# top of the clients' work; its simulation grid pulls every 0.1 s. Both engines get 0.1 s.
REPLY_PULL_INTERVAL_S = 0.1


def send_and_receive(grid: Grid, messages: Iterable[Message], timeout: float | None,
                     pull_interval_s: float = REPLY_PULL_INTERVAL_S) -> list[Message]:
    """Grid.send_and_receive's contract (push, then pull until every message has a reply
    or `timeout` seconds passed; at least one pull), pulling every `pull_interval_s`."""
    waiting = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while True:
        pulled = list(grid.pull_messages(waiting))
        replies.extend(pulled)
        waiting.difference_update(m.metadata.reply_to_message_id for m in pulled)
        if not waiting or (deadline is not None and time.monotonic() >= deadline):
            return replies
        time.sleep(pull_interval_s)


class FederationTooSmall(RuntimeError):
    """Fewer nodes than the scenario has clients."""


def wait_for_nodes(grid: Grid, needed: int, timeout_s: float) -> list[int]:
    """The node ids once `needed` are connected; a clear error after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while len(nodes := sorted(grid.get_node_ids())) < needed:
        if time.monotonic() > deadline:
            raise FederationTooSmall(
                f"the scenario has federation.num_clients = {needed} but only {len(nodes)} "
                f"SuperNodes joined within {timeout_s:.0f} s. With `flwr run`, add "
                f"--federation-config \"num-supernodes={needed}\" (or use `orthofed run`)."
            )
        time.sleep(0.5)
    return nodes


def discover_partitions(grid: Grid, node_ids: list[int], timeout_s: float) -> dict[int, int]:
    """{partition_id: node_id}, asked of every node with one `query` message."""
    messages = [Message(RecordDict({keys.CONFIG: ConfigRecord({})}), dst_node_id=n,
                        message_type="query") for n in node_ids]
    by_partition: dict[int, int] = {}
    for reply in send_and_receive(grid, messages, timeout_s):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} did not say its partition: "
                               f"{reply.error.reason}")
        partition = int(reply.content[keys.CLIENT][keys.PARTITION_ID])
        if partition in by_partition:
            raise RuntimeError(f"two nodes claim partition-id {partition}: "
                               f"{by_partition[partition]} and {reply.metadata.src_node_id}")
        by_partition[partition] = reply.metadata.src_node_id
    return dict(sorted(by_partition.items()))


class PartitionOrderedGrid:
    """A Grid whose `get_node_ids` lists nodes by partition id; all else delegated.

    Replies are pulled every REPLY_PULL_INTERVAL_S (send_and_receive). With `pack`
    (the deployment engine), arrays travel packed (strategies.packed_arrays). A SuperNode that
    restarts comes back with a new node id: an unknown live node is
    asked its partition, and takes that partition's place (the old id is dropped, so a
    dead node is not sampled again).
    """

    def __init__(self, grid: Grid, node_by_partition: dict[int, int],
                 timeout_s: float = 60.0, pack: bool = False) -> None:
        self._grid = grid
        self._pack = pack
        self._by_partition = dict(node_by_partition)
        self._timeout_s = timeout_s

    def get_node_ids(self) -> Iterable[int]:
        live = set(self._grid.get_node_ids())
        new = sorted(live - set(self._by_partition.values()))
        if new:
            try:
                self._by_partition.update(discover_partitions(self._grid, new, self._timeout_s))
            except RuntimeError:
                pass  # a node that cannot say its partition is not sampled
        return [n for _, n in sorted(self._by_partition.items()) if n in live]

    def partition_of(self, node_id: int) -> int | None:
        """The partition a node holds (None for a node never asked)."""
        return next((p for p, n in self._by_partition.items() if n == node_id), None)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        """Grid.send_and_receive; with `pack`, each message's arrays travel packed into
        one Array per record (strategies.packed_arrays) and replies are unpacked, so the
        strategy sends and receives what it would unpacked."""
        if not self._pack:
            return send_and_receive(self._grid, messages, timeout)
        messages = list(messages)
        for message in messages:
            message.content = pack(message.content)
        replies = send_and_receive(self._grid, messages, timeout)
        for reply in replies:
            if reply.has_content():
                reply.content = unpack(reply.content)
        return replies

    def __getattr__(self, name: str):
        return getattr(self._grid, name)
