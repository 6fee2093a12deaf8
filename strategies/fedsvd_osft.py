"""Orthogonal FedSVD: FedSVD whose adapters stay off OSFT's preserved subspaces.

The aggregation is FedSVD's (strategies.fedsvd): mean of B, then B A = U S V^T. It keeps
the guarantee without knowing the bases: a mean of B's projected by P_U is projected,
and the re-factorization only re-bases within B's column space and A's row space
(clients.training.orthogonal_lora). The ServerApp computes the bases and restarts A at each task
start (server.serverapp.orthogonal_lora_plan) and sends B's bases with every train
message of the task; clients project each step of B (clients.training.osft_training).
"""

from __future__ import annotations

from strategies.fedsvd import FedSVD


class FedSvdOsft(FedSVD):
    """FedSVD's aggregation. The rank-rule settings are the ServerApp's business at each
    task start (server.serverapp.orthogonal_lora_plan reads them from the scenario)."""

    trains = "lora-b"

    def __init__(self, svd_period: int = 1, rank_rule: str = "adaptive", mrr: float = 0.1,
                 trr: float = 0.8, schedule_fraction: float = 0.07,
                 importance_samples: int = 64, importance_data: str | None = None,
                 **kwargs) -> None:
        super().__init__(svd_period=svd_period, **kwargs)  # the rank settings are not used
