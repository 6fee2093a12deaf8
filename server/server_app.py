"""The ServerApp: scenario -> global model -> strategy.start, recording every round.

Reads top to bottom: load the scenario named in the run config, build the model and the
strategy, run the rounds, mark the run completed (or failed, with the reason) in the
store. Later issues extend `run_scenario` with task streams; the seams are the task id
in the train config and the round offset of the recording wrapper.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from clients.data import cached_task, server_test_set
from clients.models import (
    build_model,
    frozen_fingerprint,
    global_state,
    load_trainable,
    pick_device,
)
from clients.training import evaluate
from scenarios.loader import load_scenario, resolve_scenario_path
from scenarios.schema import Scenario
from server.federation import PartitionOrderedGrid, discover_partitions, wait_for_nodes
from server.store import MetricsStore
from strategies import keys
from strategies.recording import BudgetExhausted, RecordedStrategy, best_effort
from strategies.registry import build_strategy, trained_set

app = ServerApp()
NODE_WAIT_S = 60.0  # simulation registers nodes at once; deployment SuperNodes may be slower


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the scenario of `context.run_config["scenario"]` to the end."""
    scenario_path = resolve_scenario_path(str(context.run_config["scenario"]))
    scenario = load_scenario(scenario_path)
    run_id = str(context.run_config.get("run-id") or f"flwr-{context.run_id}")
    runs_dir = Path(str(context.run_config.get("runs-dir") or scenario.runs_dir)).resolve()
    store = MetricsStore.in_dir(runs_dir)
    if store.get_run(run_id) is None:  # launched by plain `flwr run`, not by orthofed
        store.create_run(run_id, scenario.name, scenario.model_dump(mode="json"),
                         str(scenario_path))
    store.set_status(run_id, "running")
    message = None
    try:
        run_dir = runs_dir / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        run_scenario(grid, scenario, store, run_id, run_dir)
    except BudgetExhausted as exc:
        message = str(exc)  # a planned end under DP, not a failure
    except BaseException as exc:
        store.set_status(run_id, "failed", f"{type(exc).__name__}: {exc}")
        raise
    store.set_status(run_id, "completed", message)


def run_scenario(grid: Grid, scenario: Scenario, store: MetricsStore, run_id: str,
                 run_dir: Path) -> None:
    """Build the global model and run the scenario's rounds through its strategy."""
    fed = scenario.federation
    nodes = wait_for_nodes(grid, fed.num_clients, NODE_WAIT_S)
    grid = PartitionOrderedGrid(grid, discover_partitions(grid, nodes, fed.round_timeout))

    torch.manual_seed(scenario.seed)
    test_set = server_test_set(scenario)
    num_labels = len(cached_task(scenario.data, scenario.seed).label_names)
    device = pick_device()
    model = build_model(scenario.model, num_labels, scenario.seed,
                        trained_set(scenario.strategy.name), device)
    strategy = RecordedStrategy(build_strategy(scenario), store, run_id, task=0,
                                num_clients=fed.num_clients)
    initial = global_state(model)
    train_config = ConfigRecord({keys.TASK_ID: 0,
                                 keys.FROZEN_FINGERPRINT: frozen_fingerprint(model, frozenset(initial))})

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Accuracy of the global model on the test split; recorded as the round's eval."""
        started = time.perf_counter()
        load_trainable(model, arrays.to_torch_state_dict())
        result = evaluate(model, test_set, device)
        metrics = {keys.EVAL_ACC: result.accuracy, keys.EVAL_LOSS: result.loss,
                   "eval-seconds": time.perf_counter() - started}
        best_effort(store.record_round, run_id, strategy.global_round(server_round),
                    strategy.task, eval=metrics)
        return MetricRecord(metrics)

    # The server-owned tensors before and after: the trained adapter (or model), to keep.
    torch.save(initial, run_dir / "global-initial.pt")
    random.seed(scenario.seed)  # FedAvg samples clients with `random`, nodes in partition order
    try:
        strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=fed.rounds,
                       timeout=fed.round_timeout, train_config=train_config,
                       evaluate_fn=evaluate_global)
    finally:  # also when the run ends early (budget spent, a round failed)
        final = strategy.latest_arrays
        torch.save(final.to_torch_state_dict() if final is not None else initial,
                   run_dir / "global-final.pt")
