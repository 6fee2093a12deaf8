"""FedEx-LoRA: average A and B, and fold the residual of the averaged product into W.

Singhal et al., "FedEx-LoRA: Exact Aggregation for Federated and Efficient Fine-Tuning
of Foundation Models", ACL 2025; as in the FedSVD paper's reference code
(seanie12/fed-svd, `_agg_fedex`). With w_k = n_k / sum_j n_j and s = alpha / r:

    B_{t+1} = sum_k w_k B_k,   A_{t+1} = sum_k w_k A_k            (FedAvg-LoRA's means)
    W_{t+1} = W_t + s (sum_k w_k B_k A_k - B_{t+1} A_{t+1})       (the residual)

so W_{t+1} + s B_{t+1} A_{t+1} = W_t + s sum_k w_k B_k A_k: exact, where FedAvg-LoRA
drops the residual. The frozen weights of every adapted layer travel down each round.
Under DP the clients' A and B are noised by DP-SGD and the fold is post-processing.
"""

from __future__ import annotations

from strategies.lora_merging import LoraMerging, weighted_product_sum


class FedExLora(LoraMerging):
    """A, B: weighted means; W += s (mean of the products - product of the means)."""

    def merge(self, server_round, layer, w, b, a, weights, b_mean, a_mean):
        residual = weighted_product_sum(b, a, weights) - b_mean @ a_mean
        return w + self.lora_scaling * residual, b_mean, a_mean
