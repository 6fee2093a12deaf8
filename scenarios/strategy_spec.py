"""Scenario sections naming the aggregation method, one spec per strategy."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from scenarios.spec_base import Items, Spec


class FedAvgLoraSpec(Spec):
    """FedAvg over LoRA A and B (McMahan et al. 2017; Hu et al. 2021)."""

    name: Literal["fedavg-lora"] = Field(
        description="Clients train LoRA A and B; the server averages each separately."
    )


class FedAvgSpec(Spec):
    """FedAvg over every weight: full fine-tuning."""

    name: Literal["fedavg"] = Field(
        description="Full fine-tuning; the server averages the full weights."
    )


class FfaLoraSpec(Spec):
    """FFA-LoRA (Sun et al., ICLR 2024): A frozen at its init, only B trained and averaged."""

    name: Literal["ffa-lora"] = Field(description="A fixed; clients train and send only B.")


class FedSvdSpec(Spec):
    """FedSVD (arXiv 2505.12805): FFA-LoRA, then B_bar A = U S V^T gives B = U S, A = V^T."""

    name: Literal["fedsvd"] = Field(
        description="Clients train only B; the server averages B and re-factorizes B A by SVD."
    )
    svd_period: int = Field(
        1, ge=1, le=1_000_000,
        description="Re-factorize every this many rounds (1: every round, as in the paper).",
    )


class FloraSpec(Spec):
    """FLoRA (Wang et al., NeurIPS 2024): the server stacks the clients' A and B, merges
    s sum_k w_k B_k A_k into the frozen weight and restarts the adapter (A re-drawn, B = 0)."""

    name: Literal["flora"] = Field(
        description="Clients train A and B; the server merges their stacked product into the "
        "frozen weights (sent down each round) and re-initialises the adapters."
    )


class FedExLoraSpec(Spec):
    """FedEx-LoRA (Singhal et al., ACL 2025): A and B averaged, and the residual
    mean(B_k A_k) - mean(B_k) mean(A_k) folded into the frozen weight: exact."""

    name: Literal["fedex-lora"] = Field(
        description="Clients train A and B; the server averages each and folds the residual of "
        "the averaged product into the frozen weights (sent down each round)."
    )


BERT_LINEAR_LAYERS = ("query", "key", "value", "attention.output.dense", "intermediate.dense",
                      "output.dense")
LLAMA_LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class PreservedRanksSpec(Spec):
    """How many of each target matrix's top singular directions a task start preserves
    (OSFT's rank rules, ALGORITHMS.md section 2): shared by `osft` and `fedsvd-osft`."""

    rank_rule: Literal["adaptive", "schedule"] = Field(
        "adaptive", description="How many singular directions each matrix preserves at a task "
        "start: 'adaptive' (layer importance from input-output cosine similarity on the previous "
        "task) or 'schedule' (a fixed share that grows with the task index)."
    )
    mrr: float = Field(0.1, ge=0, le=1, description="Adaptive rule: minimum preserved share "
                       "(r = mrr + I (trr - mrr)).")
    trr: float = Field(0.8, ge=0, le=1, description="Adaptive rule: target preserved share, "
                       "the mean over layers.")
    schedule_fraction: float = Field(
        0.07, gt=0, le=1, description="Schedule rule: task t (0-based) preserves "
        "floor(max(d_out, d_in) * fraction * t) directions, capped below min(d_out, d_in)."
    )
    importance_samples: int = Field(
        64, ge=1, le=100_000, description="Adaptive rule: examples of the previous task the "
        "server runs through the model to measure layer importance."
    )
    importance_data: Literal["train", "test"] | None = Field(
        None, description="Adaptive rule: which rows of the previous task the server measures "
        "importance on: 'train' (the clients' training rows: client data, outside any DP "
        "guarantee) or 'test' (the held-out test split the server evaluates on anyway). "
        "None: 'train' without privacy, 'test' with it."
    )

    @model_validator(mode="after")
    def _mrr_below_trr(self) -> PreservedRanksSpec:
        if self.mrr > self.trr:
            raise ValueError(f"mrr ({self.mrr}) must be <= trr ({self.trr})")
        return self


class OsftSpec(PreservedRanksSpec):
    """OSFT, "Sculpting Subspaces" (Nayak et al., 2025): full fine-tuning whose updates to
    each target matrix stay orthogonal to its top-k singular directions, fixed at each
    task start (ALGORITHMS.md section 2). The server averages the full weights (FedAvg)."""

    name: Literal["osft"] = Field(
        description="Full fine-tuning with every update of a target matrix projected off its "
        "preserved singular subspace."
    )
    target_modules: Items[str] | None = Field(
        None, min_length=1,
        description="Linear layers whose weights are projected (matched by name suffix). "
        "Embeddings, norms and the heads never are. None: every linear layer of every "
        "transformer block, " + ", ".join(BERT_LINEAR_LAYERS) + " in a BERT-style encoder, "
        + ", ".join(LLAMA_LINEAR_LAYERS) + " in a LLaMA-style decoder.",
    )


class FedSvdOsftSpec(PreservedRanksSpec):
    """Orthogonal FedSVD (clients.training.orthogonal_lora): FedSVD per task with A started in the
    complement of each LoRA target's preserved right subspace and every update of B
    projected off its preserved left subspace, so OSFT's preserved triplets survive
    while clients send only B. The rank rules are OSFT's, over the LoRA targets' base
    weights, with k capped at min(d_out, d_in) - model.lora.rank (room for A's rows)."""

    name: Literal["fedsvd-osft"] = Field(
        description="FedSVD whose adapters stay orthogonal to OSFT's preserved singular "
        "subspaces of the LoRA targets (model.lora.target_modules); clients send only B."
    )
    svd_period: int = Field(
        1, ge=1, le=1_000_000,
        description="Re-factorize every this many rounds (1: every round, as in FedSVD).",
    )


# Strategies whose task start computes preserved bases (their specs subclass
# PreservedRanksSpec); disclosure reads the stored scenario by name, hence the names.
PRESERVING_STRATEGIES = ("osft", "fedsvd-osft")

StrategySpec = Annotated[
    FedAvgLoraSpec | FedAvgSpec | FfaLoraSpec | FedSvdSpec | OsftSpec | FedSvdOsftSpec
    | FloraSpec | FedExLoraSpec,
    Field(discriminator="name"),
]
