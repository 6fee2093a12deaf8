"""FedAvg-LoRA: clients train both LoRA factors; the server averages A and B separately.

McMahan et al. 2017 (FedAvg) applied to LoRA adapters (Hu et al. 2021). Not exact:
mean_k(B_k) mean_k(A_k) != mean_k(B_k A_k), which is the gap FedSVD and FFA-LoRA close
(ALGORITHMS.md section 1).
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg


class FedAvgLora(FedAvg):
    """Flower's FedAvg over the tensors a LoRA client trains (A, B, and the head if it
    trains). The arithmetic is FedAvg's own: B_bar = sum_k n_k B_k / sum_k n_k, same for A."""

    # What each client trains; clients.models.factory.set_trainable understands these names.
    trains = "lora"
