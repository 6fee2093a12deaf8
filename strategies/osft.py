"""OSFT in a federation: FedAvg over full weights whose updates clients keep orthogonal
to the preserved subspaces (clients.training.osft, ALGORITHMS.md section 2, "In a federation").

The projection is linear, so the weighted average of projected client updates is itself
projected: plain FedAvg keeps every preserved singular triplet of the task start. The
server computes the bases at each task start (server.serverapp.osft_plan) and sends them with every
train message of the task; a client joining mid-task may never have seen the task-start
weights, so it could not compute them itself.
"""

from __future__ import annotations

from strategies.fedavg import FedAvgFull


class Osft(FedAvgFull):
    """FedAvg of full weights. The OSFT settings (rank rule, targets) are the ServerApp's
    business at each task start (server.serverapp.osft_plan reads them from the scenario); the
    aggregation itself needs none of them."""

    trains = "full"

    def __init__(self, rank_rule: str = "adaptive", mrr: float = 0.1, trr: float = 0.8,
                 schedule_fraction: float = 0.07, importance_samples: int = 64,
                 target_modules: tuple[str, ...] = (), importance_data: str | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)  # the OSFT settings arrive with the spec and are not used
