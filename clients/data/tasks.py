"""Task data: read a scenario's dataset, split it over clients, tokenize it once.

Examples are normalised to {"text", "text_pair", "label"} with integer labels, whatever
the source format. Partitioning goes through flwr-datasets' partitioners, so a Dirichlet
split here is the one Flower users know. A validation split (data.validation_fraction)
is carved out of the training rows before they are partitioned, so no client sees it.
Tokenized tensors are cached per process: a simulated client (a Ray actor) tokenizes its
partition once, not every round.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from clients.data.prompts import PromptFormat, instruction_for, scoring_set, training_set
from clients.data.synthetic import TOPIC_NAMES, make_examples
from scenarios.schema import (
    ClBenchmarkSource,
    DataSpec,
    DirichletPartitioning,
    GeneratedSource,
    HubSource,
    IidPartitioning,
    JsonlSource,
    Scenario,
)
from scenarios.stream import task_plan, task_plans


def hf_datasets():
    """The `datasets` module, imported on first use: it and flwr-datasets (which imports
    seaborn) take seconds to import, and validating a scenario rarely needs them."""
    import datasets

    datasets.disable_progress_bars()  # its bars would fill every client's log at each cast
    return datasets


@dataclass(frozen=True)
class TaskData:
    """One task's examples. Pre-split sources keep their per-client files unread in
    `train_files`: each client reads only its own file (and carves its validation rows
    out of it, `partition`). `validation`: the rows data.validation_fraction carved out
    of `train` (none for pre-split sources: `validation_rows` reads them)."""

    train: list[dict]
    test: list[dict]
    label_names: tuple[str, ...]
    train_files: tuple[Path, ...] = ()
    validation: list[dict] = dataclasses.field(default_factory=list)


def load_task(spec: DataSpec, seed: int) -> TaskData:
    """Read the dataset of `spec`, normalise its examples and carve the validation split
    out of the training rows, before anything partitions them, so no client gets one."""
    task = _load_source(spec, seed)
    if not spec.validation_fraction or task.train_files:
        return task
    train, validation = carve_validation(task.train, spec.validation_fraction, seed,
                                         "the training rows")
    return dataclasses.replace(task, train=train, validation=validation)


def _load_source(spec: DataSpec, seed: int) -> TaskData:
    """The task's rows as its source holds them, normalised."""
    source = spec.source
    if isinstance(source, GeneratedSource):
        train = make_examples(source.num_labels, source.train_size, seed, source.label_noise,
                              source.first_topic)
        test = make_examples(source.num_labels, source.test_size, seed + 1,
                             first_topic=source.first_topic)
        names = generated_label_names(source)
        return TaskData([_normalise(e, spec, names) for e in train],
                        [_normalise(e, spec, names) for e in test], names)
    if isinstance(source, ClBenchmarkSource):
        return _load_cl_benchmark(source, spec, seed)
    if isinstance(source, JsonlSource):
        return _load_jsonl(source, spec)
    if isinstance(source, HubSource):
        return _load_hub(source, spec)
    raise TypeError(f"unknown data source {type(source).__name__}")


def _normalise(row: dict, spec: DataSpec, label_names: tuple[str, ...]) -> dict:
    """{"text", "text_pair", "label": int}; a row that does not fit says which field."""
    for field in (spec.text_field, spec.label_field):
        if field not in row:
            raise ValueError(f"a row has no field {field!r} (data.text_field / "
                             f"data.label_field): {str(row)[:120]}")
    label = row[spec.label_field]
    if isinstance(label, int) and 0 <= label < len(label_names):
        index = label
    elif str(label) in label_names:
        index = label_names.index(str(label))
    else:
        raise ValueError(f"label {label!r} is not one of the task's labels {label_names}")
    pair = row.get(spec.text_pair_field) if spec.text_pair_field else None
    return {"text": str(row[spec.text_field]), "text_pair": pair, "label": index}


def _load_cl_benchmark(source: ClBenchmarkSource, spec: DataSpec, seed: int) -> TaskData:
    names = cl_label_names(source)
    files = {split: source.path / f"{split}.json" for split in ("train", "test")}
    rows = {k: json.loads(p.read_text()) for k, p in files.items() if p.is_file()}
    # The benchmark ships some tasks with one split only (dbpedia: test, yelp: train);
    # MNLI marks unlabelled rows "-". Keep labelled rows, split what exists.
    rows = {k: [r for r in v if str(r[spec.label_field]) in names] for k, v in rows.items()}
    if len(rows) == 1:
        rows["train"], rows["test"] = stratified_split(
            next(iter(rows.values())), source.test_fraction, seed, spec.label_field
        )
    return TaskData([_normalise(r, spec, names) for r in rows["train"]],
                    [_normalise(r, spec, names) for r in rows["test"]], names)


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _load_jsonl(source: JsonlSource, spec: DataSpec) -> TaskData:
    """Integer labels 0..C-1, C taken from the test file (every class is in it)."""
    test = _read_jsonl(source.test)
    names = tuple(str(i) for i in range(max(int(r[spec.label_field]) for r in test) + 1))
    if spec.partitioning.kind == "presplit":
        return TaskData([], [_normalise(r, spec, names) for r in test], names, source.train)
    train = [_normalise(r, spec, names) for p in source.train for r in _read_jsonl(p)]
    return TaskData(train, [_normalise(r, spec, names) for r in test], names)


def _load_hub(source: HubSource, spec: DataSpec) -> TaskData:
    splits = hf_datasets().load_dataset(source.name, source.subset)  # needs the hub
    train, test = splits[source.train_split], splits[source.test_split]
    feature = train.features[spec.label_field]
    names = tuple(getattr(feature, "names", None) or sorted({str(x) for x in train[spec.label_field]}))
    return TaskData([_normalise(r, spec, names) for r in train],
                    [_normalise(r, spec, names) for r in test], names)


def stratified_split(rows: list[dict], test_fraction: float, seed: int, label_field: str):
    """Split `rows` into (train, test), holding out `test_fraction` of every label, with
    datasets' own stratified split (`Dataset.train_test_split(stratify_by_column=...)`,
    seeded); both come back shuffled, not grouped by label, so anything that takes a
    contiguous slice of them (a partitioner, a capped eval set) gets every label. Rows
    come back as they went in (their labels as text)."""
    names = sorted({str(row[label_field]) for row in rows})
    datasets = hf_datasets()
    data = datasets.Dataset.from_list([{**row, label_field: str(row[label_field])}
                                       for row in rows])
    data = data.cast_column(label_field, datasets.ClassLabel(names=names))
    split = data.train_test_split(test_size=test_fraction, stratify_by_column=label_field,
                                  seed=seed)
    text = split["train"].features[label_field].int2str
    train, test = ([{**row, label_field: text(row[label_field])} for row in split[part].to_list()]
                   for part in ("train", "test"))
    return train, test


VALIDATION_SEED_OFFSET = 7_919  # the validation split's own stream, apart from `seed`'s


def validation_seed(seed: int) -> int:
    """The seed of the validation split, derived from the scenario's seed alone (not the
    client count): the same rows are held out whatever the federation. Offset so that it
    draws apart from the test split a one-file CL-benchmark task cuts with `seed`."""
    return seed + VALIDATION_SEED_OFFSET


def carve_validation(rows: list[dict], fraction: float, seed: int,
                     where: str) -> tuple[list[dict], list[dict]]:
    """(kept, validation) of normalised `rows` ({"label": int, ...}): `fraction` of each
    label held out (`stratified_split`, seeded by `validation_seed`). A share too small
    or a class too rare to stratify is refused naming the field to change."""
    try:
        kept, held = stratified_split(rows, fraction, validation_seed(seed), "label")
    except ValueError as exc:
        raise ValueError(
            f"data.validation_fraction {fraction}: cannot hold out a share of every label of "
            f"{where} ({len(rows)} rows): {exc}; change data.validation_fraction (0: no "
            "validation split)") from None
    # stratified_split hands labels back as text; normalised rows hold integers
    kept, held = ([{**row, "label": int(row["label"])} for row in part] for part in (kept, held))
    return kept, held


def validation_rows(spec: DataSpec, seed: int) -> list[dict]:
    """The task's validation split: carved out of the training rows by `load_task`, or,
    for pre-split files, out of each client's file (read here: only the server asks)."""
    task = cached_task(spec, seed)
    if not spec.validation_fraction or not task.train_files:
        return task.validation
    return [row for path in task.train_files
            for row in _carved_file(path, task, spec, seed)[1]]


def _carved_file(path: Path, task: TaskData, spec: DataSpec,
                 seed: int) -> tuple[list[dict], list[dict]]:
    """(the client's training rows, its validation rows) of one pre-split file."""
    rows = [_normalise(r, spec, task.label_names) for r in _read_jsonl(path)]
    if not spec.validation_fraction:
        return rows, []
    return carve_validation(rows, spec.validation_fraction, seed, f"the file {path}")


def partition(task: TaskData, spec: DataSpec, num_clients: int, partition_id: int,
              seed: int) -> list[dict]:
    """The training examples of client `partition_id` (flwr-datasets partitioners), the
    validation split left out."""
    if spec.partitioning.kind == "presplit":
        return _carved_file(task.train_files[partition_id], task, spec, seed)[0]
    return partitioner_for(spec, num_clients, seed).load_partition(partition_id).to_list()


def partitioner_for(spec: DataSpec, num_clients: int, seed: int):
    """The flwr-datasets partitioner over the task's training rows (`cached_task`, the
    same rows `load_task` gives), built once per process (and again after a file of the
    source changed): a simulated client process serves many partitions, and rebuilding
    the dataset for each would cost O(rows) per client per round."""
    return _partitioner_for(spec, num_clients, seed, source_stamp(spec.source))


@functools.lru_cache(maxsize=4)
def _partitioner_for(spec: DataSpec, num_clients: int, seed: int, stamp: tuple):
    return build_partitioner(cached_task(spec, seed).train, spec.partitioning, num_clients,
                             seed)


def build_partitioner(rows: list[dict], parts: IidPartitioning | DirichletPartitioning,
                      num_clients: int, seed: int):
    """A flwr-datasets partitioner over `rows` ({"label": int, ...}), seeded."""
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if isinstance(parts, IidPartitioning):
        # IidPartitioner cuts contiguous shards without shuffling: rows in label order
        # would give each client a few labels. A seeded shuffle first makes it IID
        # whatever order the source has. (Dirichlet needs none: its per-client label
        # counts depend on the label counts and its seed only, not on the row order.)
        rows = rows[:]
        random.Random(seed).shuffle(rows)
        partitioner = IidPartitioner(num_partitions=num_clients)
    elif isinstance(parts, DirichletPartitioning):
        partitioner = DirichletPartitioner(
            num_partitions=num_clients, partition_by="label", alpha=parts.alpha,
            min_partition_size=parts.min_partition_size, self_balancing=False, seed=seed,
        )
    else:
        raise TypeError(f"unknown partitioning {parts.kind!r}")
    partitioner.dataset = hf_datasets().Dataset.from_list(rows)
    return partitioner


def tokenize(examples: list[dict], tokenizer, max_length: int) -> TensorDataset:
    """Tensors (input_ids, attention_mask, token_type_ids, labels), padded to max_length.

    Padding to a fixed length keeps every batch the same shape: simple, and needed
    later by per-sample gradient code that expects explicit position tensors.
    """
    texts = [e["text"] for e in examples]
    pairs = [e["text_pair"] for e in examples]
    encoded = tokenizer(
        texts, pairs if any(p is not None for p in pairs) else None,
        padding="max_length", truncation=True, max_length=max_length, return_tensors="pt",
    )
    token_types = encoded.get("token_type_ids", torch.zeros_like(encoded["input_ids"]))
    labels = torch.tensor([e["label"] for e in examples], dtype=torch.long)
    return TensorDataset(encoded["input_ids"], encoded["attention_mask"], token_types, labels)


@dataclass(frozen=True)
class ClientData:
    train: TensorDataset
    local_eval: TensorDataset
    num_labels: int


@functools.lru_cache(maxsize=32)
def client_data(scenario: Scenario, partition_id: int, task_id: int = 0) -> ClientData:
    """Client `partition_id`'s tokenized train and local-eval sets of task `task_id`,
    built once per process."""
    spec = task_plan(scenario, task_id).data
    task = cached_task(spec, scenario.seed)
    rows, cut = client_rows(scenario, partition_id, task_id)
    train = tokenized(rows[cut:], scenario, task_id, "train")
    # No held-out share (local_eval_fraction 0): the local eval is on the training rows.
    local_eval = tokenized(rows[:cut] if cut else rows, scenario, task_id, "score")
    return ClientData(train=train, local_eval=local_eval, num_labels=len(task.label_names))


def client_rows(scenario: Scenario, partition_id: int, task_id: int = 0) -> tuple[list[dict], int]:
    """Client `partition_id`'s rows of task `task_id`, shuffled, and where its local-eval
    share ends: rows[cut:] train, rows[:cut] are held out (untokenized: the privacy
    check at validation needs only how many there are)."""
    spec = task_plan(scenario, task_id).data
    rows = partition(cached_task(spec, scenario.seed), spec, scenario.federation.num_clients,
                     partition_id, scenario.seed)[:]
    random.Random(scenario.seed + partition_id).shuffle(rows)
    return rows, int(len(rows) * spec.local_eval_fraction)


def train_sizes(scenario: Scenario, partition_id: int) -> list[int]:
    """How many training rows client `partition_id` has in each task of the scenario
    (counted untokenized: validation plans the privacy budget from them)."""
    def size(task_id: int) -> int:
        rows, cut = client_rows(scenario, partition_id, task_id)
        return len(rows) - cut

    return [size(t) for t in range(len(task_plans(scenario)))]


def tokenized(rows: list[dict], scenario: Scenario, task_id: int, purpose: str) -> TensorDataset:
    """`rows` as the scenario's model reads them: an encoder's (ids, mask, token types,
    labels) for any purpose; a causal LM's prompt + answer for 'train', its prompt and
    options for 'score' (clients.data.prompts)."""
    from clients.models.factory import build_tokenizer, model_kind

    tokenizer, length = build_tokenizer(scenario.model), scenario.model.max_length
    if model_kind(scenario.model) != "causal-lm":
        return tokenize(rows, tokenizer, length)
    make = training_set if purpose == "train" else scoring_set
    return make(rows, tokenizer, prompt_format(scenario, task_id), length)


def prompt_format(scenario: Scenario, task_id: int) -> PromptFormat:
    """Task `task_id`'s instruction (its own, else its CL-benchmark folder's, else the
    generic one) and label texts."""
    plan = task_plan(scenario, task_id)
    source = plan.data.source
    name = source.path.name if isinstance(source, ClBenchmarkSource) else plan.name
    return PromptFormat(instruction_for(name, plan.data.instruction),
                        label_names(plan.data, scenario.seed))


def label_names(spec: DataSpec, seed: int) -> tuple[str, ...]:
    """The task's label texts, in label order (`cached_task(spec, seed).label_names`).
    A generated task's topics and a CL-benchmark folder's labels.json name them without
    reading a row: the prompt check of a sweep's every seed asks for them, and only the
    rows' split depends on the seed. Other sources read them off the loaded task."""
    source = spec.source
    if isinstance(source, GeneratedSource):
        return generated_label_names(source)
    if isinstance(source, ClBenchmarkSource):
        return cl_label_names(source)
    return cached_task(spec, seed).label_names


def generated_label_names(source: GeneratedSource) -> tuple[str, ...]:
    return tuple(TOPIC_NAMES[(source.first_topic + c) % len(TOPIC_NAMES)]
                 for c in range(source.num_labels))


def cl_label_names(source: ClBenchmarkSource) -> tuple[str, ...]:
    """labels.json of a CL-benchmark folder, read once per process (and again after it
    changed: `source_stamp`)."""
    return _labels_json(source.path / "labels.json", source_stamp(source))


@functools.lru_cache(maxsize=64)
def _labels_json(path: Path, stamp: tuple) -> tuple[str, ...]:
    return tuple(json.loads(path.read_text()))


def cached_task(spec: DataSpec, seed: int) -> TaskData:
    """`load_task`, read from disk once per process, and again after a file of the
    source changed (`source_stamp`): a long-lived process (the API's) validates files
    that are edited between requests."""
    return _cached_task(spec, seed, source_stamp(spec.source))


@functools.lru_cache(maxsize=16)
def _cached_task(spec: DataSpec, seed: int, stamp: tuple) -> TaskData:
    return load_task(spec, seed)


def source_stamp(source) -> tuple:
    """What identifies the files a source reads as they are now: each file's path,
    mtime and size (None for one that is absent); () for sources without files."""
    if isinstance(source, ClBenchmarkSource):
        files = [source.path / f"{name}.json" for name in ("labels", "train", "test")]
    elif isinstance(source, JsonlSource):
        files = [*source.train, source.test]
    else:
        return ()

    def stamp(path: Path) -> tuple:
        try:
            stat = Path(path).stat()
        except OSError:
            return (str(path), None, None)
        return (str(path), stat.st_mtime_ns, stat.st_size)

    return tuple(stamp(path) for path in files)


def label_counts(scenario: Scenario) -> tuple[int, ...]:
    """Number of labels of each task of the stream (the sizes of the task heads)."""
    return tuple(len(cached_task(plan.data, scenario.seed).label_names)
                 for plan in task_plans(scenario))


@functools.lru_cache(maxsize=16)
def server_test_set(scenario: Scenario, task_id: int = 0) -> TensorDataset:
    """The test split of task `task_id` the server evaluates the global model on (a
    seeded subset if data.server_eval_max caps it)."""
    spec = task_plan(scenario, task_id).data
    return server_eval_set(scenario, task_id, cached_task(spec, scenario.seed).test)


@functools.lru_cache(maxsize=16)
def server_validation_set(scenario: Scenario, task_id: int = 0) -> TensorDataset | None:
    """The validation split of task `task_id` (data.validation_fraction), capped like the
    test split; None when the scenario holds none out."""
    spec = task_plan(scenario, task_id).data
    if not spec.validation_fraction:
        return None
    return server_eval_set(scenario, task_id, validation_rows(spec, scenario.seed))


def server_eval_set(scenario: Scenario, task_id: int, rows: list[dict]) -> TensorDataset:
    """`rows` as the server evaluates them: a seeded subset of data.server_eval_max rows
    when that caps them, tokenized for scoring, ordered by length."""
    cap = task_plan(scenario, task_id).data.server_eval_max
    if cap is not None and cap < len(rows):
        rows = random.Random(scenario.seed).sample(rows, cap)
    return by_length(tokenized(rows, scenario, task_id, "score"))


def by_length(data: TensorDataset) -> TensorDataset:
    """The rows ordered by token count (stable), labels with them: evaluated in batches,
    each batch then holds rows of similar length and trims to them
    (clients.training.loop.trim_padding), as Hugging Face's group_by_length does. The order
    changes no accuracy or loss, which are sums over rows."""
    order = torch.argsort(data.tensors[1].sum(dim=1), stable=True)
    return TensorDataset(*[t[order] for t in data.tensors])


def server_sample(scenario: Scenario, task_id: int, count: int,
                  split: str = "train") -> TensorDataset:
    """`count` examples of task `task_id`'s `split` (seeded): the server's calibration
    sample for OSFT's layer importance. 'train' reads the clients' training rows (in
    simulation the server can read the task files; that is client data, outside any DP
    guarantee); 'test' the held-out split the server evaluates on anyway."""
    task = cached_task(task_plan(scenario, task_id).data, scenario.seed)
    rows = task.test if split == "test" else task.train
    rows = random.Random(scenario.seed).sample(rows, min(count, len(rows)))
    return tokenized(rows, scenario, task_id, "train")  # a causal LM: prompt and answer
