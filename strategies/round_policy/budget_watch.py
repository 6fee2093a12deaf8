"""The planned end of a private run: every client has refused to train.

A DP client refuses a round that would take it past its target epsilon
(clients.training.privacy), and stays refused; once all of them have, no round can train.
A scenario that fixes privacy.noise_multiplier has no target epsilon: its clients never
refuse, so its run never ends this way.
"""

from __future__ import annotations

from collections.abc import Iterable


class BudgetExhausted(RuntimeError):
    """Every client has refused to train: their privacy budgets are spent. The run ends."""


class BudgetWatch:
    """`out_of_budget`: the partitions that refused before (a resumed run's, from its
    checkpoint). `num_clients` None: the run never ends this way."""

    def __init__(self, num_clients: int | None, out_of_budget: Iterable[int] = ()) -> None:
        self.num_clients = num_clients
        self.out_of_budget: set[int] = set(out_of_budget)

    def note(self, refused: Iterable[int]) -> None:
        self.out_of_budget |= set(refused)

    def check(self, round_: int) -> None:
        """Raise BudgetExhausted once every client has refused."""
        if self.num_clients is not None and len(self.out_of_budget) >= self.num_clients:
            raise BudgetExhausted(
                f"stopped after round {round_}: all {self.num_clients} clients have spent "
                "their privacy budget (each refuses a round that would pass its target epsilon)")
