"""Client sampling with a generator of its own.

Flower's FedAvg draws from the global `random`, which Flower's heartbeat and retry
threads also draw from, at times of their own. A seeded generator that nothing else
draws from (and that checkpoints save, server.serverapp.checkpoint) samples the same
clients in every run of a scenario and after a resume. With the grid listing nodes in
partition order (server.serverapp.federation), the same nodes are the same partitions.
"""

from __future__ import annotations

import random
import time
from logging import INFO

from flwr.serverapp import Grid
from flwr.supercore import log


class ClientSampler:
    """`clients_per_round` of the live nodes, once all `num_clients` are connected (as
    Flower's sample_nodes waits), drawn with `rng`."""

    def __init__(self, rng: random.Random, clients_per_round: int,
                 num_clients: int | None = None) -> None:
        self.rng, self.clients_per_round, self.num_clients = rng, clients_per_round, num_clients

    def sample(self, grid: Grid) -> list[int]:
        while len(live := list(grid.get_node_ids())) < (self.num_clients or 0):
            log(INFO, "Waiting for nodes to connect: %d connected (minimum required: %d).",
                len(live), self.num_clients)
            time.sleep(1)
        return self.rng.sample(live, min(self.clients_per_round, len(live)))

    def sampled_grid(self, grid: Grid) -> SampledGrid:
        """The grid as the inner strategy should see it: only this round's sample (it is
        built to train every node it is shown)."""
        return SampledGrid(grid, self.sample(grid))


class SampledGrid:
    """A view of a Grid that lists only the sampled nodes; all else delegated."""

    def __init__(self, grid: Grid, nodes: list[int]) -> None:
        self._grid, self._nodes = grid, list(nodes)

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name: str):
        return getattr(self._grid, name)
