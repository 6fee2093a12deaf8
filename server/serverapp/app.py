"""The ServerApp: scenario -> global model -> strategy.start, recording every round.

Reads top to bottom: load the scenario named in the run config, build the model, run
its tasks one after the other (a single-task scenario is a stream of one), each with a
fresh strategy whose rounds are numbered on from the previous task's, and mark the run
completed (or failed, with the reason) in the store. In a stream, the global model is
evaluated on every task before the stream and after each task (the accuracy matrix);
LoRA methods fold their adapter into the base weights at each task end; OSFT gets its
preserved bases at each task start (server.serverapp.osft_plan). After every round a checkpoint
(server.serverapp.checkpoint) records where the run stands; a resumed run continues from it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid.inmemory_grid import InMemoryGrid
from flwr.supercore import log
from torch.utils.data import TensorDataset

from clients.data.tasks import (
    label_counts,
    server_sample,
    server_test_set,
    server_validation_set,
)
from clients.models.heads import HEADS, activate_task, task_heads
from clients.node.supernode_polling import retry_object_pulls_sooner
from clients.models.factory import (
    build_model,
    frozen_fingerprint,
    global_state,
    load_trainable,
    merge_adapters,
    osft_targets,
    pick_device,
)
from clients.training.loop import evaluate
from scenarios.disclosure import importance_data
from scenarios.loader import load_scenario, resolve_scenario_path
from scenarios.schema import PRESERVING_STRATEGIES, Scenario
from scenarios.stream import task_plans
from server.runs.layout import RunFolder
from server.runs.status import RunStatus
from server.runs.store import STORE_FILE, MetricsStore
from server.serverapp.checkpoint import (
    Checkpoints,
    RunState,
    restore_rng,
    rng_state,
    scenario_digest,
)
from server.serverapp.federation import (
    PartitionOrderedGrid,
    discover_partitions,
    wait_for_nodes,
)
from server.serverapp.orthogonal_lora_plan import task_start as orthogonal_task_start
from server.serverapp.osft_plan import TaskBases, task_bases
from server.serverapp.probe import head_inputs, probe_accuracy
from server.tracking.tracked_store import TrackedStore, open_trackers
from strategies import keys
from strategies.recording import RecordedStrategy, best_effort
from strategies.registry import build_strategy, trained_set
from strategies.round_policy.budget_watch import BudgetExhausted, BudgetWatch
from strategies.round_policy.ledger_relay import LedgerRelay
from strategies.round_policy.quorum import Quorum
from strategies.round_policy.sampling import ClientSampler, ShuffledDeck

app = ServerApp()
PACK_ENV = "ORTHOFED_PACK_ARRAYS"
NODE_WAIT_S = 60.0  # simulation registers nodes at once; deployment SuperNodes may be slower


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the scenario of `context.run_config["scenario"]` to the end; with
    `resume = true`, continue it from its newest checkpoint."""
    # Replies on the deployment engine: Flower's grid retries their objects after 1 s.
    retry_object_pulls_sooner()
    scenario_path = resolve_scenario_path(str(context.run_config["scenario"]))
    scenario = load_scenario(scenario_path)
    run_id = str(context.run_config.get("run-id") or f"flwr-{context.run_id}")
    runs_dir = Path(str(context.run_config.get("runs-dir") or scenario.runs_dir)).resolve()
    resume = bool(context.run_config.get("resume", False))
    run_dir = runs_dir / run_id
    document = scenario.model_dump(mode="json")
    store = TrackedStore(runs_dir / STORE_FILE, [], document)
    if store.get_run(run_id) is None:  # launched by plain `flwr run`, not by orthofed
        store.create_run(run_id, scenario.name, document, str(scenario_path))
    store.set_status(run_id, RunStatus.RUNNING)
    message, final = None, RunStatus.FAILED
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # TensorBoard, MLflow: what the scenario's tracking section asks for (none: no import)
        store.trackers = open_trackers(scenario.tracking, document, run_id, run_dir, runs_dir)
        run_scenario(grid, scenario, store, run_id, run_dir, resume)
        final = RunStatus.COMPLETED
    except BudgetExhausted as exc:
        message, final = str(exc), RunStatus.COMPLETED  # a planned end under DP
    except BaseException as exc:
        store.set_status(run_id, RunStatus.FAILED, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        store.close_trackers(final)
    store.set_status(run_id, RunStatus.COMPLETED, message)


@dataclass
class RunContext:
    """What every task of one run shares."""

    grid: Grid
    model: torch.nn.Module
    scenario: Scenario
    store: MetricsStore
    run_id: str
    run_dir: Path
    device: torch.device
    checkpoints: Checkpoints
    digest: str
    sampler: ShuffledDeck  # which clients train each round (strategies.round_policy)
    ledgers: dict[int, dict] = field(default_factory=dict)  # clients' privacy ledgers


def run_scenario(grid: Grid, scenario: Scenario, store: MetricsStore, run_id: str,
                 run_dir: Path, resume: bool = False) -> None:
    """Build the global model and run the scenario's task stream (a single-task scenario
    is a stream of one): each task through its own strategy.start. `resume`: restore the
    newest checkpoint, drop what the store holds past it, and go on from there."""
    run = run_context(grid, scenario, store, run_id, run_dir)
    state = starting_state(run, resume)
    plans = task_plans(scenario)
    base_weights: dict[str, torch.Tensor] = {}  # LoRA streams: earlier tasks merged in
    round_offset = sum(plan.rounds for plan in plans[:state.task])
    try:
        for task_id in range(state.task, len(plans)):
            resumed = task_id == state.task
            rounds_done = state.task_rounds if resumed else 0
            activate_task(run.model, task_id)
            extra = task_setup(run, task_id, base_weights, resumed and state.round > 0)
            a_start = extra.pop(keys.LORA_A_START, None)  # fedsvd-osft: the task's A
            if a_start is not None and rounds_done == 0:
                load_trainable(run.model, a_start.to_torch_state_dict())
            if keys.BASE_WEIGHTS in extra:
                base_weights = extra[keys.BASE_WEIGHTS].to_torch_state_dict()
                load_trainable(run.model, base_weights)  # a no-op unless restored from disk
            if rounds_done < plans[task_id].rounds:
                run_task(run, task_id, round_offset, extra, rounds_done,
                         state.out_of_budget if resumed else ())
            round_offset += plans[task_id].rounds
            if scenario.stream is not None:
                base_weights = end_task(run, task_id, base_weights)
    finally:  # also when the run ends early (budget spent, a round failed)
        final = (stream_checkpoint(run.model, base_weights) if scenario.stream is not None
                 else global_state(run.model))
        torch.save(final, RunFolder(run_dir).global_final)


def packs_arrays(grid: Grid) -> bool:
    """Whether messages on `grid` travel with their arrays packed: off the simulation
    engine (whose InMemoryGrid moves no objects), unless ORTHOFED_PACK_ARRAYS=0."""
    return not isinstance(grid, InMemoryGrid) and os.environ.get(PACK_ENV, "1") != "0"


def run_context(grid: Grid, scenario: Scenario, store: MetricsStore, run_id: str,
                run_dir: Path) -> RunContext:
    """Build the global model (a head per task for a stream) from the scenario's seed,
    then wait for the clients and order them by partition. In that order: the model's
    build overlaps the clients' start (Ray's, in a simulation, and their imports), which
    the partition query waits for."""
    fed = scenario.federation
    torch.manual_seed(scenario.seed)
    counts = label_counts(scenario)
    device = pick_device()
    model = build_model(scenario.model, counts[0], scenario.seed,
                        trained_set(scenario.strategy.name), device,
                        label_counts=counts if scenario.stream is not None else None)
    nodes = wait_for_nodes(grid, fed.num_clients, NODE_WAIT_S)
    grid = PartitionOrderedGrid(grid, discover_partitions(grid, nodes, fed.round_timeout),
                                min(fed.round_timeout, NODE_WAIT_S), pack=packs_arrays(grid))
    return RunContext(grid, model, scenario, store, run_id, run_dir, device,
                      Checkpoints(run_dir, scenario.checkpoints.keep),
                      scenario_digest(scenario), ShuffledDeck(scenario.seed))


def starting_state(run: RunContext, resume: bool) -> RunState:
    """Where the run starts: a fresh start (the initial model saved, a stream's initial
    accuracy row recorded), or, resuming, the newest checkpoint restored into the model,
    the sampler and the ledgers, with what the store holds past it dropped (those rounds
    are redone)."""
    state = run.checkpoints.latest(run.digest) if resume else None
    if resume:
        run.checkpoints.remove_temporaries()
        run.store.truncate_after(run.run_id, state.round if state else -1,
                                 state.task if state else -1)
    if state is None:
        torch.save(global_state(run.model), RunFolder(run.run_dir).global_initial)
        if run.scenario.stream is not None:
            record_task_evals(run.model, run.scenario, run.store, run.run_id, after_task=-1,
                              device=run.device)
        return RunState(round=0, task=0, task_rounds=0, model={}, scenario_digest=run.digest)
    load_trainable(run.model, state.model)
    restore_rng(state.rng, run.sampler)
    run.ledgers.update(state.ledgers)
    log(INFO, "resuming %s after round %d (task %d, %d of its rounds done)", run.run_id,
        state.round, state.task, state.task_rounds)
    return state


def end_task(run: RunContext, task_id: int,
             base_weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A stream's task end: LoRA methods fold the adapter into the base weights (B
    restarts at 0), the model is saved, and the accuracy matrix gets its row. Returns
    the base weights the next task starts from."""
    if trained_set(run.scenario.strategy.name) != "full":
        base_weights = merge_adapters(run.model)  # sequential LoRA: fold, restart B
    torch.save(stream_checkpoint(run.model, base_weights),
               RunFolder(run.run_dir).after_task(task_id))
    record_task_evals(run.model, run.scenario, run.store, run.run_id, task_id, run.device)
    activate_task(run.model, task_id)
    return base_weights


def stream_checkpoint(model: torch.nn.Module,
                      base_weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Everything a stream's global model differs from its seed-built self in: what the
    method trains, every task's head, and (LoRA methods) the merged base weights."""
    heads = {n: p.detach().clone() for n, p in model.named_parameters() if HEADS in n}
    return {**base_weights, **global_state(model), **heads}


def task_setup(run: RunContext, task_id: int, base_weights: dict[str, torch.Tensor],
               resumed: bool = False) -> dict[str, ArrayRecord]:
    """What every train message of the task carries besides the global arrays: OSFT's
    preserved bases, or the merged base weights of a LoRA stream. Computed at the
    task's start and saved with the checkpoints, so a resumed task reuses them; they
    depend on the model as the task started, so a task resumed from a checkpoint cannot
    recompute them once its file is gone."""
    saved = run.checkpoints.load_task(task_id, run.digest)
    if saved is not None:
        return {name: ArrayRecord(state) for name, state in saved.items()}
    scenario = run.scenario
    from_training = scenario.strategy.name in PRESERVING_STRATEGIES or (
        scenario.stream is not None and trained_set(scenario.strategy.name) != "full")
    if resumed and task_id > 0 and from_training:
        raise RuntimeError(f"cannot resume task {task_id}: {run.checkpoints.task_path(task_id)} "
                           "(what its start computed from the model) is missing or unusable")
    extra = task_records(run.model, scenario, task_id, base_weights, run.run_dir, run.device)
    run.checkpoints.save_task(task_id, run.digest, {name: record.to_torch_state_dict()
                                                    for name, record in extra.items()})
    return extra


def task_records(model: torch.nn.Module, scenario: Scenario, task_id: int,
                 base_weights: dict[str, torch.Tensor], run_dir: Path,
                 device: torch.device) -> dict[str, ArrayRecord]:
    """What every train message of the task carries besides the global arrays: OSFT's
    preserved bases, the merged base weights of a LoRA stream, and for fedsvd-osft both
    (B's left bases) plus the task's starting A (keys.LORA_A_START, not sent)."""
    if scenario.strategy.name == "osft":
        targets = osft_targets(scenario.model, scenario.strategy.target_modules)
        bases = task_bases(model, scenario.strategy, targets, task_id,
                           preserved_rank_sample(scenario, task_id), device)
        write_rank_plan(run_dir, task_id, bases)
        return {keys.OSFT_BASES: bases.record}
    # FLoRA, FedEx-LoRA: the base weights are global arrays already, sent every round.
    merged = ({keys.BASE_WEIGHTS: ArrayRecord({k: v.cpu() for k, v in base_weights.items()})}
              if base_weights and trained_set(scenario.strategy.name) != "lora-merged" else {})
    if scenario.strategy.name == "fedsvd-osft":
        start = orthogonal_task_start(model, scenario.strategy, task_id,
                                      preserved_rank_sample(scenario, task_id), device,
                                      scenario.seed)
        write_rank_plan(run_dir, task_id, start.bases)
        return {**merged, keys.OSFT_BASES: start.b_bases, keys.LORA_A_START: start.a_start}
    return merged


def preserved_rank_sample(scenario: Scenario, task_id: int):
    """The previous task's rows the adaptive rank rule measures importance on; None for
    the first task or the schedule rule."""
    if task_id > 0 and scenario.strategy.rank_rule == "adaptive":
        return importance_sample(scenario, task_id - 1)
    return None


def write_rank_plan(run_dir: Path, task_id: int, bases: TaskBases) -> None:
    """osft-task-T.json: every target's preserved rank and shape, and the SVDs' cost."""
    RunFolder(run_dir).osft_plan(task_id).write_text(json.dumps(
        {"ranks": bases.ranks, "shapes": bases.shapes, "svd-seconds": bases.seconds}, indent=1))


def importance_sample(scenario: Scenario, task_id: int):
    """The rows of task `task_id` OSFT's adaptive rule measures layer importance on:
    the clients' training rows, or (by default under privacy) the test split the server
    evaluates on, so no un-noised client data reaches the server (scenarios.disclosure)."""
    count = scenario.strategy.importance_samples
    if importance_data(scenario.strategy.model_dump(), scenario.privacy is not None) == "test":
        return server_sample(scenario, task_id, count, split="test")
    return server_sample(scenario, task_id, count)


def run_task(run: RunContext, task_id: int, round_offset: int, extra: dict[str, ArrayRecord],
             rounds_done: int = 0, out_of_budget: Iterable[int] = ()) -> None:
    """The rounds of one task after its first `rounds_done`; the global model ends
    holding the task's final arrays. A checkpoint follows every round."""
    scenario, model, store, run_id = run.scenario, run.model, run.store, run.run_id
    fed = scenario.federation
    plan = task_plans(scenario)[task_id]
    strategy = RecordedStrategy(
        build_strategy(scenario), store, run_id, task=task_id, round_offset=round_offset,
        rounds_done=rounds_done, extra_records=extra,
        sampler=ClientSampler(run.sampler, fed.clients_per_round, fed.num_clients,
                              balanced=fed.sampling == "balanced"),
        ledgers=LedgerRelay(run.ledgers, fed.local_steps), quorum=Quorum(fed.min_replies),
        budget=BudgetWatch(fed.num_clients, out_of_budget),
        diagnostics_scaling=(scenario.model.lora.alpha / scenario.model.lora.rank
                             if scenario.diagnostics else None))
    initial = global_state(model)
    sent = frozenset(initial) | frozenset(extra.get(keys.BASE_WEIGHTS, {}))
    train_config = ConfigRecord({keys.TASK_ID: task_id,
                                 keys.FROZEN_FINGERPRINT: frozen_fingerprint(model, sent)})
    test_set = server_test_set(scenario, task_id)
    validation_set = server_validation_set(scenario, task_id)  # None: no validation split

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Accuracy of the global model on the task's test (and validation) split; the
        round's eval, then the round's checkpoint. Round 0 of a later (or resumed) task is
        an earlier round: already evaluated."""
        if server_round == 0 and (task_id > 0 or rounds_done > 0):
            return None
        started = time.perf_counter()
        load_trainable(model, arrays.to_torch_state_dict())
        metrics = global_metrics(model, test_set, validation_set, run.device)
        metrics["eval-seconds"] = time.perf_counter() - started
        best_effort(store.record_round, run_id, strategy.global_round(server_round),
                    strategy.task, eval=metrics)
        if server_round > 0:
            run.checkpoints.save(RunState(
                round=strategy.global_round(server_round), task=task_id,
                task_rounds=strategy.task_round(server_round),
                model=stream_checkpoint(model, {}), scenario_digest=run.digest,
                ledgers=dict(run.ledgers), out_of_budget=sorted(strategy.out_of_budget),
                rng=rng_state(run.sampler)))
        return MetricRecord(metrics)

    try:
        strategy.start(grid=run.grid, initial_arrays=ArrayRecord(initial),
                       num_rounds=plan.rounds - rounds_done, timeout=fed.round_timeout,
                       train_config=train_config, evaluate_fn=evaluate_global)
    finally:
        if strategy.latest_arrays is not None:
            load_trainable(model, strategy.latest_arrays.to_torch_state_dict())


def global_metrics(model: torch.nn.Module, test_set: TensorDataset,
                   validation_set: TensorDataset | None,
                   device: torch.device) -> dict[str, float]:
    """The global model's accuracy and loss on the test split (eval-acc, eval-loss) and,
    when the scenario holds one out, on the validation split (val-acc, val-loss): the
    split a sweep tunes on, so its choice never reads the test split."""
    result = evaluate(model, test_set, device)
    metrics = {keys.EVAL_ACC: result.accuracy, keys.EVAL_LOSS: result.loss}
    if validation_set is not None:
        result = evaluate(model, validation_set, device)
        metrics.update({keys.VAL_ACC: result.accuracy, keys.VAL_LOSS: result.loss})
    return metrics


def record_task_evals(model: torch.nn.Module, scenario: Scenario, store: MetricsStore,
                      run_id: str, after_task: int, device: torch.device) -> None:
    """One row of the accuracy matrix: the global model on every task's test split,
    each through its own head (a causal LM: its rank classification); and of the probe
    matrix: a linear probe fitted on the pooled features the head reads
    (server.serverapp.probe), captured in the same pass (None for a causal LM)."""
    results, probes = [], []
    for task_id, plan in enumerate(task_plans(scenario)):
        activate_task(model, task_id)
        test_set = server_test_set(scenario, task_id)
        if task_heads(model) is None:  # a causal LM: no head to probe (continual.prompted)
            result, probe = evaluate(model, test_set, device), None
        else:
            with head_inputs(model) as features:
                result = evaluate(model, test_set, device)
            probe = probe_accuracy(torch.cat(features).numpy(), test_set.tensors[3].numpy(),
                                   scenario.seed + task_id)
        results.append((plan.name, result.accuracy, result.loss))
        probes.append(probe)
    best_effort(store.record_task_evals, run_id, after_task, results, probes)
