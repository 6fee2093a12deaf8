"""Checks that need the disk or the model: run before any process starts.

Schema validation (scenarios.loader) knows shapes and ranges; these checks know the
world: the data files exist, the model can be loaded offline, and every LoRA target
module exists in that model. Each problem is one line naming its path in the file.
They live with the clients because they need what the clients know (how a model is
built, what a task folder holds); scenarios/ itself imports nothing of the project.

They are cheap, and cheaper when repeated in one process (`check_scenarios`: a sweep
checks its hundreds of expanded scenarios up front): the named models' module names
come from their configs without torch (clients.models.architecture), whatever is read
from disk is cached by file path, mtime and size (never stale), and the privacy plan
and prompt checks remember their answers per model, plan and prompt.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from scenarios.schema import ClBenchmarkSource, HubSource, JsonlSource, ModelSpec, Scenario
from scenarios.stream import task_plans


def check_scenarios(scenarios: Iterable[Scenario | Mapping[str, Any]],
                    base: Path | None = None) -> list[list[str]]:
    """The problems of each scenario, in order (`check_scenario`'s lines; [] for one that
    can run): a mapping is first validated by the scenario loader, its relative data
    paths resolved against `base` (default the working directory), and its schema
    errors are its lines. One process checking many scenarios pays for the imports, the
    model configs and the data files once: a sweep validates every expanded scenario up
    front with this."""
    from scenarios.loader import ScenarioError, load_scenario

    results = []
    for item in scenarios:
        try:
            scenario = item if isinstance(item, Scenario) else load_scenario(dict(item), base)
        except ScenarioError as exc:
            results.append(list(exc.errors))
            continue
        results.append(check_scenario(scenario))
    return results


def check_scenario(scenario: Scenario, base: Path | None = None) -> list[str]:
    """Every problem found, as `path: message` lines; empty when the scenario can run.

    With `base` (a scenario posted over HTTP: the folder its relative paths resolve
    against), data paths are named relative to it, never by the server's absolute path.
    """
    data_errors = check_data(scenario, base)
    model_errors = check_model(scenario)
    # Prompts and the privacy plan need the data (label texts, partition sizes) and a
    # model that loads.
    if data_errors or model_errors:
        return [*data_errors, *model_errors]
    return [*check_prompts(scenario), *check_privacy_budget(scenario)]


def check_privacy_budget(scenario: Scenario) -> list[str]:
    """A private scenario's target epsilon can be planned for every client: each sizes
    sigma for its whole planned participation at its own sampling rate
    (clients.training.privacy), and a target below what sigma = SIGMA_CEILING spends would make
    every client fail at its first round. The client with the highest rate is the
    hardest; the message names the smallest epsilon that plan reaches.

    Epsilon never grows as the sampling rate falls (Poisson subsampling only amplifies
    privacy), so a target that rate 1 reaches is reached by every client's plan: the
    clients' own rates, which need the data read and partitioned, are worked out only
    when it is not (a target within RATE_ONE_SLACK of rate 1's floor included).

    A scenario that fixes privacy.noise_multiplier has no target: any sigma > 0 can be
    trained with, and no client refuses a round, so there is nothing to check."""
    spec = scenario.privacy
    if spec is None or spec.target_epsilon is None:
        return []
    from clients.training.privacy import planned_sample_rate, planned_steps

    steps = planned_steps(scenario)
    rate_one = reachable_floor(spec, 1.0, steps)
    if spec.target_epsilon >= rate_one + abs(rate_one) * RATE_ONE_SLACK:
        return []
    from clients.data.tasks import train_sizes

    batch = scenario.federation.batch_size
    q = max(planned_sample_rate(train_sizes(scenario, p), batch)
            for p in range(scenario.federation.num_clients))
    floor = reachable_floor(spec, q, steps)
    if spec.target_epsilon >= floor:
        return []
    return [f"privacy.target_epsilon: must be at least {floor:.3g} for this plan ({steps} "
            f"DP-SGD steps per client at sampling rate up to {q:.3g}, delta {spec.delta:g}, "
            f"{spec.accountant}: no noise multiplier reaches less), got {spec.target_epsilon:g}"]


# The accountants' floors at nearby rates wobble by ~1e-9 of their size (PRV integrates
# numerically): far inside this margin, so the rate-1 shortcut never passes a target
# that the clients' own rates would refuse (tests/clients/test_checks.py).
RATE_ONE_SLACK = 1e-6
_FLOORS: dict[tuple, float] = {}  # (delta, accountant, q, steps) -> smallest epsilon


def reachable_floor(spec, q: float, steps: int) -> float:
    """`smallest_reachable_epsilon`, computed once per process for each delta,
    accountant, rate and step count (PRV takes a tenth of a second to seconds)."""
    from clients.training.privacy import smallest_reachable_epsilon

    key = (spec.delta, spec.accountant, q, steps)
    if key not in _FLOORS:
        import numpy as np

        # At q = 1 PRV takes log(1 - q) = -inf on purpose (every step samples everyone).
        quiet = np.errstate(divide="ignore") if q == 1.0 else contextlib.nullcontext()
        with quiet:
            _FLOORS[key] = smallest_reachable_epsilon(spec, q, steps)
    return _FLOORS[key]


def check_data(scenario: Scenario, base: Path | None = None) -> list[str]:
    """Each task's files exist (single task: data.source; stream: stream.tasks.N.source)."""
    if scenario.stream is None:
        return check_source(scenario.data.source, "data.source", base)
    return [error for i, task in enumerate(scenario.stream.tasks)
            for error in check_source(task.source, f"stream.tasks.{i}.source", base, task.name)]


def check_source(source, where: str, base: Path | None = None,
                 task: str | None = None) -> list[str]:
    def shown(path: Path) -> str:
        return repr(os.path.relpath(path, base) if base and path.is_absolute() else str(path))

    errors: list[str] = []
    if isinstance(source, ClBenchmarkSource):
        if not source.path.is_dir():
            if task is None:
                return [f"{where}.path: no such folder {shown(source.path)}"]
            return [f"{where}.path: the stream's task {task!r} is not in the data folder "
                    f"{shown(source.path.parent)} (no such folder {shown(source.path)})"]
        if not (source.path / "labels.json").is_file():
            errors.append(f"{where}.path: {shown(source.path)} has no labels.json")
        if not any((source.path / f).is_file() for f in ("train.json", "test.json")):
            errors.append(f"{where}.path: {shown(source.path)} has neither train.json "
                          "nor test.json")
    elif isinstance(source, JsonlSource):
        for i, path in enumerate(source.train):
            if not Path(path).is_file():
                errors.append(f"{where}.train.{i}: no such file {shown(path)}")
        if not Path(source.test).is_file():
            errors.append(f"{where}.test: no such file {shown(source.test)}")
    elif isinstance(source, HubSource) and _hub_offline():
        errors.append(f"{where}.name: {source.name!r} needs the Hugging Face hub, which "
                      "is offline here (HF_HUB_OFFLINE=1); use local files")
    return errors


def check_model(scenario: Scenario) -> list[str]:
    """The model loads offline, and each LoRA target matches a module of it (its module
    names from its config: clients.models.architecture, no weights, no torch for the
    named models)."""
    from clients.models.architecture import (
        decoder_family,
        lora_targets,
        model_kind,
        module_names,
        osft_targets,
        pretrained_path,
    )
    from clients.models.decoders import DECODER_NAMES, SUPPORTED_DECODERS

    spec = scenario.model
    path = None if spec.name in DECODER_NAMES else pretrained_path(spec.name)
    if path is not None and not Path(path).exists() and _hub_offline():
        return [f"model.name: unknown model {spec.name!r}: not 'tiny-bert', 'minilm', "
                "'tiny-llama' or 'smollm2', not a local folder, and the hub is offline"]
    try:
        names = module_names(spec)
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises, say it plainly
        return [f"model.name: cannot load {spec.name!r}: {type(exc).__name__}: {exc}"]
    if model_kind(spec) == "causal-lm":
        family = decoder_family(spec)
        if family not in SUPPORTED_DECODERS:
            return [f"model.kind: {spec.name!r} is a {family!r} decoder; causal LMs run here "
                    f"are those whose logits are lm_head(model(...)): "
                    f"{', '.join(SUPPORTED_DECODERS)}"]
        if spec.pooling is not None:
            return [f"model.pooling: {spec.pooling!r} is for encoders; a causal LM reads its "
                    "answer from its own next-token distribution: remove model.pooling"]
    if scenario.strategy.name == "fedavg":
        return []  # full fine-tuning: no adapters
    if scenario.strategy.name == "osft":
        targets = osft_targets(spec, scenario.strategy.target_modules)
        where = "strategy.target_modules"
    else:
        targets, where = lora_targets(spec), "model.lora.target_modules"
    leaves = {n.rsplit(".", 1)[-1] for n in names}
    return [f"{where}: {t!r} is not a module of {spec.name!r} "
            f"(some of its modules: {sorted(leaves)[:12]})"
            for t in targets
            if not any(n == t or n.endswith("." + t) for n in names)]


def check_prompts(scenario: Scenario) -> list[str]:
    """A causal LM's every task fits its instruction, options and answer in
    model.max_length (clients.data.prompts.text_budget); nothing to check for an encoder."""
    from clients.models.architecture import model_kind

    if model_kind(scenario.model) != "causal-lm":
        return []  # before importing clients.data.tasks: flwr-datasets takes ~2 s to import
    from clients.data.tasks import prompt_format

    errors = []
    for task_id, plan in enumerate(task_plans(scenario)):
        problem = prompt_problem(scenario.model, prompt_format(scenario, task_id))
        if problem is not None:
            errors.append(f"{problem} (task {plan.name!r})")
    return errors


@functools.lru_cache(maxsize=256)
def prompt_problem(spec: ModelSpec, prompt) -> str | None:
    """Why a task of `prompt` (a clients.data.prompts.PromptFormat: instruction and label
    texts) cannot fit in spec.max_length tokens, else None; once per process for each
    model and prompt."""
    from clients.data.prompts import text_budget
    from clients.models.factory import build_tokenizer

    try:
        text_budget(build_tokenizer(spec), prompt, spec.max_length)
    except ValueError as exc:
        return str(exc)
    return None


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "1") == "1"
