"""The fewest results a round may end with.

Flower alone logs "0 results, N failures" and carries on, ending the run `completed`;
here a round with fewer results than federation.min_replies (default 1: every client
failed) raises `AllClientsFailed`, which fails the run with the clients' reasons.
"""

from __future__ import annotations

from strategies.client_replies import Failure


class AllClientsFailed(RuntimeError):
    """Fewer clients of a round replied with a result than the scenario's minimum
    (federation.min_replies, default 1: a round in which every client failed)."""


class Quorum:
    def __init__(self, min_replies: int = 1) -> None:
        self.min_replies = min_replies

    def check(self, round_: int, results: int, failures: list[Failure]) -> None:
        """Raise AllClientsFailed naming who failed and why, if `results` is too few."""
        if results >= self.min_replies:
            return
        reasons = "; ".join(f"partition {p if p is not None else '?'} (node {n}): {r}"
                            for p, n, r in failures) or "no replies before the timeout"
        what = ("every client failed" if not results else
                f"{results} replied, fewer than federation.min_replies = {self.min_replies}")
        raise AllClientsFailed(f"round {round_}: {what}: {reasons}")
