"""FFA-LoRA: A frozen at its random initialisation, only B trained and averaged.

Sun et al., "Improving LoRA in Privacy-preserving Federated Learning", ICLR 2024.
With A shared and fixed, mean_k(B_k) A = mean_k(B_k A): averaging is exact, and only B
travels up. A never adapts, which is what FedSVD (strategies.fedsvd) fixes.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg


class FfaLora(FedAvg):
    """FedAvg over what clients send (B, and the head if it trains); every other global
    array (the A factors) is carried over from the global model unchanged.

    B_bar = sum_k n_k B_k / sum_k n_k;  A_{t+1} = A_t.
    """

    trains = "lora-b"

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.global_arrays = arrays  # what the clients start from this round
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message],
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        averaged, metrics = super().aggregate_train(server_round, replies)
        if averaged is None:
            return None, metrics
        return merge_into(self.global_arrays, averaged), metrics


def merge_into(base: ArrayRecord, update: ArrayRecord) -> ArrayRecord:
    """`base` with the arrays of `update` replacing those of the same name (order kept)."""
    unknown = set(update) - set(base)
    if unknown:
        raise KeyError(f"clients sent arrays the global model does not have: {sorted(unknown)[:5]}")
    return ArrayRecord(array_dict={k: update.get(k, v) for k, v in base.items()})
