"""FLoRA: stack the clients' LoRA modules, merge them into the frozen weight, restart.

Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous
Low-Rank Adaptations", NeurIPS 2024; as in the FedSVD paper's reference code
(seanie12/fed-svd, `_agg_flora`). With w_k = n_k / sum_j n_j and s = alpha / r:

    W_{t+1} = W_t + s [w_1 B_1 | ... | w_K B_K] [A_1; ...; A_K] = W_t + s sum_k w_k B_k A_k
    A_{t+1} = kaiming-uniform re-initialisation (PEFT's), B_{t+1} = 0

Exact (the stacked product is the mean of the products), but the frozen weights of every
adapted layer travel down to the clients each round, and each round's A starts afresh.
The re-initialisation is drawn from a generator seeded by (scenario seed, round), so a
resumed run draws the same A. Under DP the clients' A and B are noised by DP-SGD and
the merge is post-processing.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from strategies.lora_merging import LoraMerging, weighted_product_sum


def kaiming_uniform_a(shape: tuple[int, ...], seed: int, server_round: int,
                      layer: str) -> np.ndarray:
    """A fresh LoRA A as PEFT initialises it (kaiming_uniform_, a = sqrt(5): uniform on
    +-1/sqrt(d_in)), from a generator seeded by (seed, round, the layer's name)."""
    name_key = int.from_bytes(hashlib.sha256(layer.encode()).digest()[:4], "little")
    entropy = np.random.SeedSequence([seed, server_round, name_key]).generate_state(
        1, dtype=np.uint64)[0]
    generator = torch.Generator().manual_seed(int(entropy) >> 1)
    a = torch.empty(shape, dtype=torch.float64)
    bound = 1.0 / math.sqrt(shape[-1])  # gain sqrt(2 / (1 + 5)) * sqrt(3 / fan_in)
    return a.uniform_(-bound, bound, generator=generator).numpy()


class Flora(LoraMerging):
    """W += s sum_k w_k B_k A_k (the stacked modules); A re-initialised, B = 0."""

    def merge(self, server_round, layer, w, b, a, weights, b_mean, a_mean):
        w_new = w + self.lora_scaling * weighted_product_sum(b, a, weights)
        a_new = kaiming_uniform_a(a_mean.shape, self.seed, server_round, layer)
        return w_new, np.zeros_like(b_mean), a_new
