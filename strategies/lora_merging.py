"""Plumbing shared by the LoRA strategies that fold the clients' adapters into the
frozen weight on the server (FLoRA, FedEx-LoRA): clients train A and B; the global
arrays also carry each adapted layer's base weight W, which the server updates.

Per adapted layer with base weight W (d_out x d_in), the clients' factors B_k (d_out x r),
A_k (r x d_in) and weights w_k = n_k / sum_j n_j, the ideal update of the model is the
weighted mean of the clients' products, s * sum_k w_k B_k A_k (s = lora_alpha / r,
PEFT's scaling). Each subclass says how much of it goes into W and what the next
round's A and B are (`merge`); both are exact: W_new + s B_new A_new = W + s sum_k
w_k B_k A_k. Every other trained array (the head) is FedAvg's weighted mean.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from strategies.ffa_lora import merge_into

LORA_A, LORA_B, BASE = ".lora_A.", ".lora_B.", ".base_layer.weight"


def base_name(name_a: str) -> str:
    """'m.lora_A.default.weight' -> 'm.base_layer.weight' (PEFT's layout)."""
    return name_a.split(LORA_A)[0] + BASE


class LoraMerging(FedAvg):
    """FedAvg over what clients send (A, B, the head), then `merge` per adapted layer."""

    # Clients train A and B; the server also owns the adapted layers' base weights
    # (clients.models.factory.set_trainable and global_state read this name).
    trains = "lora-merged"

    def __init__(self, lora_scaling: float = 1.0, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.lora_scaling, self.seed = lora_scaling, seed

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.global_arrays = arrays  # W, A and B as the clients start this round
        return super().configure_train(server_round, arrays, config, grid)

    def merge(self, server_round: int, layer: str, w: np.ndarray, b: np.ndarray,
              a: np.ndarray, weights: np.ndarray, b_mean: np.ndarray, a_mean: np.ndarray,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(W_new, B_new, A_new) of the layer whose base weight is named `layer`, from W,
        the stacked B_k (K, d_out, r) and A_k (K, r, d_in), their weights w_k (K,) and
        their weighted means; float64 throughout."""
        raise NotImplementedError

    def aggregate_train(self, server_round: int, replies: Iterable[Message],
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        averaged, metrics = super().aggregate_train(server_round, replies)
        if averaged is None:
            return None, metrics
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        sent = [m.content[self.arrayrecord_key] for m in valid]
        counts = np.array([float(m.content.metric_records[next(iter(m.content.metric_records))]
                                 [self.weighted_by_key]) for m in valid])
        weights = counts / counts.sum()
        merged = dict(averaged.items())
        for name_a in (n for n in averaged if LORA_A in n):
            name_b, name_w = name_a.replace(LORA_A, LORA_B), base_name(name_a)
            if name_w not in self.global_arrays:
                raise KeyError(f"{name_w} (the base weight of {name_a}) is not among the "
                               "global arrays: the model was built for another strategy")
            w = self.global_arrays[name_w].numpy()
            b = np.stack([record[name_b].numpy() for record in sent]).astype(np.float64)
            a = np.stack([record[name_a].numpy() for record in sent]).astype(np.float64)
            w_new, b_new, a_new = self.merge(server_round, name_w, w.astype(np.float64), b, a, weights,
                                             np.einsum("k,kij->ij", weights, b),
                                             np.einsum("k,kij->ij", weights, a))
            merged[name_w] = Array(w_new.astype(w.dtype))
            merged[name_b] = Array(b_new.astype(w.dtype))
            merged[name_a] = Array(a_new.astype(w.dtype))
        return merge_into(self.global_arrays, ArrayRecord(array_dict=merged)), metrics


def weighted_product_sum(b: np.ndarray, a: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_k w_k B_k A_k (d_out x d_in), the ideal aggregate of the clients' products.
    One matmul over the stacked factors: [w_1 B_1 | ... | w_K B_K] [A_1; ...; A_K], which
    is how FLoRA stacks the modules (rank K r)."""
    stacked_b = np.concatenate(list(b * weights[:, None, None]), axis=1)  # (d_out, K r)
    stacked_a = np.concatenate(list(a), axis=0)                            # (K r, d_in)
    return stacked_b @ stacked_a
