"""FedAvg of full fine-tuning: every weight trains and is averaged (McMahan et al. 2017).

W_bar = sum_k n_k W_k / sum_k n_k. The baseline of the continual-learning methods.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg


class FedAvgFull(FedAvg):
    """Flower's FedAvg over every parameter of the model."""

    trains = "full"
