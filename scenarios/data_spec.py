"""Scenario sections about data: sources, partitioning over clients, task streams."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from scenarios.spec_base import Items, LaxPath, Spec, path_problem


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
    path: LaxPath = Field(description="The task folder (relative paths: from the scenario file).")
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
    train: Items[LaxPath] = Field(
        ...,
        min_length=1,
        description="Training files. With partitioning 'presplit' each file is one client.",
    )
    test: LaxPath = Field(description="The test file (the server evaluates the global model on it).")


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
    validation_fraction: float = Field(
        0.0, ge=0, lt=1, description="Share of each task's training rows held out as a "
        "validation split (seeded from `seed`, stratified by label, the same whatever "
        "federation.num_clients) before the rows are split over clients: no client trains or "
        "locally evaluates on them; the server evaluates the global model on them every round "
        "(`val-acc`, `val-loss`, capped like the test split by server_eval_max), so "
        "hyper-parameters can be tuned without reading the test split. With partitioning "
        "'presplit' the share is carved out of each client's file (stratified within it), so "
        "every class in a file needs 2 rows or more. 0: no validation split."
    )
    server_eval_max: int | None = Field(
        None, ge=1, description="Evaluate the global model on at most this many test examples "
        "(a seeded subset), and as many validation examples; None uses the whole splits."
    )
    instruction: str | None = Field(
        None, min_length=1, max_length=2000, description="Causal LMs: the task's instruction, "
        "the first line of every prompt (then the options, the text, and 'Answer:'). None: "
        "one for the CL benchmark's task by its name (e.g. agnews: 'What is the topic of the "
        "text?'), else 'Which option fits the text?'. In a stream, a task's own "
        "`instruction` takes its place."
    )


# ---- continual task streams ---------------------------------------------------------

# The CL benchmark's standard orders (O-LoRA, Sculpting Subspaces) with yelp in place of
# yahoo, which ../shared/data does not have (its README suggests exactly this).
NAMED_ORDERS: dict[str, tuple[str, ...]] = {
    "order-1": ("dbpedia", "amazon", "yelp", "agnews"),
    "order-2": ("dbpedia", "amazon", "agnews", "yelp"),
    "order-3": ("yelp", "amazon", "agnews", "dbpedia"),
    # The OSFT paper's long sequence (MNLI, CB, WiC, COPA, QQP, BoolQA, RTE, IMDB, yelp,
    # amazon, SST-2, dbpedia, agnews, MultiRC, yahoo) kept to the tasks ../shared/data has,
    # in the paper's order.
    "long-7": ("MNLI", "QQP", "yelp", "amazon", "SST-2", "dbpedia", "agnews"),
}


_FRACTION = TypeAdapter(Annotated[float, Field(gt=0, lt=1)])  # StreamSpec.test_fraction


class TaskSpec(Spec):
    """One task of a stream: its dataset (and label set) and how many rounds it gets."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9._-]+$", description="Task name.")
    source: DataSource = Field(description="The task's dataset; its labels are its own.")
    rounds: int | None = Field(
        None, ge=1, le=100_000, description="Rounds of this task; None: federation.rounds."
    )
    instruction: str | None = Field(
        None, min_length=1, max_length=2000,
        description="Causal LMs: this task's instruction; None: data.instruction's rule."
    )


class StreamSpec(Spec):
    """An ordered stream of tasks, learned one after the other by the same federation.

    An encoder keeps a classifier head per task (chosen by the task id at training and
    at test time): the benchmark is task-aware (its instructions name the task and its
    options), so forgetting then measures the shared encoder's drift, which is what OSFT
    protects, and amazon and yelp, which share label texts, do not overwrite each other's
    head. A causal LM reads each task's instruction and options in its prompt instead.
    """

    order: Literal["order-1", "order-2", "order-3", "long-7"] | None = Field(
        None, description="A standard order of the CL benchmark by name (" + "; ".join(
            f"{k}: {' -> '.join(v)}" for k, v in NAMED_ORDERS.items()) + "), read from "
        "`benchmark_dir`. Leave it out to list `tasks` yourself."
    )
    benchmark_dir: LaxPath | None = Field(
        None, description="With `order`: the folder holding one CL-benchmark folder per task "
        "(e.g. ../shared/data/cl_benchmark; relative paths: from the scenario file)."
    )
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="With `order`: the share held out as test for tasks that "
        "ship one file only (dbpedia: test only, yelp: train only), seeded and stratified."
    )
    tasks: Items[TaskSpec] = Field(
        (), description="The tasks in order (filled from `order` when that is given)."
    )

    @model_validator(mode="before")
    @classmethod
    def _expand_order(cls, data: Any) -> Any:
        """Fill `tasks` from a named order. This runs on the raw input, before any field is
        validated, so it expands only well-typed values (a known order name, a folder as
        text the OS accepts) and leaves anything else untouched for the fields to refuse by
        their own path (not once more per task)."""
        if not isinstance(data, dict) or data.get("tasks"):
            return data
        order, root = data.get("order"), data.get("benchmark_dir")
        if not (isinstance(order, str) and order in NAMED_ORDERS
                and isinstance(root, str | Path) and path_problem(str(root)) is None):
            return data
        source: dict[str, Any] = {"kind": "cl-json"}
        try:  # a valid fraction goes to every task; an invalid one only to stream.test_fraction,
            # which refuses it once (not once more per task)
            source["test_fraction"] = _FRACTION.validate_python(data.get("test_fraction", 0.2))
        except ValidationError:
            pass
        tasks = [{"name": task, "source": {**source, "path": str(Path(root) / task)}}
                 for task in NAMED_ORDERS[order]]
        return {**data, "tasks": tasks}

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
