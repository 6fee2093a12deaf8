"""Client sampling with a generator of its own.

Flower's FedAvg draws from the global `random`, which Flower's heartbeat and retry
threads also draw from, at times of their own. A seeded generator that nothing else
draws from (and that checkpoints save, server.serverapp.checkpoint) samples the same
clients in every run of a scenario and after a resume. With the grid listing nodes in
partition order (server.serverapp.federation), the same nodes are the same partitions.

Two ways to sample (federation.sampling): 'uniform', a uniformly random subset every
round, as Flower's FedAvg; 'balanced', clients dealt from a shuffled deck of all of
them, reshuffled when it runs out (random reshuffling, as SGD's epochs shuffle examples),
so after R rounds of k of n clients each has joined floor or ceil of R k / n rounds, never
more than ceil(R k / n): exactly the participation a DP client sizes its noise for
(clients.training.privacy.planned_rounds), so none refuses a round for lack of budget.
"""

from __future__ import annotations

import random
import time
from logging import INFO

from flwr.serverapp import Grid
from flwr.supercore import log


class ShuffledDeck(random.Random):
    """A `random.Random` that can also deal balanced samples (`deal`). The deck left over
    is part of its state (`getstate` / `setstate`), so a checkpoint of the generator
    resumes mid-deck; a plain Random's state (an older checkpoint) loads with no deck.
    Its other draws are Random's own: uniform sampling is unchanged by it."""

    def __init__(self, seed: int | None = None) -> None:  # None: as Random (and pickle)
        self.deck: list[int] = []
        super().__init__(seed)

    def deal(self, n: int, k: int) -> list[int]:
        """k distinct positions of 0..n-1, the next ones of the deck; an empty deck is
        refilled with a fresh shuffle of all n. A position of the fresh deck that was
        already dealt this round stays in the deck for a later round, so each shuffle
        deals every position once."""
        if not 0 < k <= n:
            raise ValueError(f"cannot deal {k} of {n} clients")
        chosen: list[int] = []
        while len(chosen) < k:
            if not self.deck:
                self.deck = self.sample(range(n), n)
            pick = next(i for i in self.deck if i not in chosen)  # always exists: k <= n
            self.deck.remove(pick)
            chosen.append(pick)
        return chosen

    def getstate(self) -> tuple:
        return super().getstate(), tuple(self.deck)

    def setstate(self, state: tuple) -> None:
        inner, deck = state if len(state) == 2 else (state, ())  # Random's state has 3 parts
        super().setstate(inner)
        self.deck = list(deck)


class ClientSampler:
    """`clients_per_round` of the live nodes, once all `num_clients` are connected (as
    Flower's sample_nodes waits), drawn with `rng`: uniformly, or dealt from its deck
    (`balanced`; the live nodes in partition order, so positions are partitions)."""

    def __init__(self, rng: random.Random, clients_per_round: int,
                 num_clients: int | None = None, balanced: bool = False) -> None:
        if balanced and not isinstance(rng, ShuffledDeck):
            raise TypeError("balanced sampling deals from a ShuffledDeck")
        self.rng, self.clients_per_round, self.num_clients = rng, clients_per_round, num_clients
        self.balanced = balanced

    def sample(self, grid: Grid) -> list[int]:
        while len(live := list(grid.get_node_ids())) < (self.num_clients or 0):
            log(INFO, "Waiting for nodes to connect: %d connected (minimum required: %d).",
                len(live), self.num_clients)
            time.sleep(1)
        k = min(self.clients_per_round, len(live))
        if self.balanced:
            return [live[i] for i in self.rng.deal(self.num_clients or len(live), k)]
        return self.rng.sample(live, k)

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
