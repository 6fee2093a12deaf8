"""The ClientApp: plumbing between Flower messages and the local training code.

A train message carries the global values of the tensors the method trains; the reply
carries the client's new values of exactly those tensors, its metrics (num-examples,
train loss, local eval accuracy) and who it is. A client that fails logs its traceback
and replies with an error saying why; the server, which knows the partition each node
holds, records which client failed.
"""

from __future__ import annotations

import functools
import socket
import sys
import traceback
from logging import ERROR

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.supercore import log

from clients.data.tasks import client_data, label_counts, train_sizes
from clients.training.dp_training import dp_train_steps
from clients.models.heads import activate_task
from clients.models.factory import (
    build_model,
    frozen_fingerprint,
    load_trainable,
    pick_device,
    trainable_state,
)
from clients.training.osft_training import projected_updates, unpack_bases
from clients.training.privacy import (
    PrivacyState,
    noise_for_budget,
    planned_sample_rate,
    planned_steps,
    sample_rate,
)
from clients.training.loop import evaluate, make_optimizer, round_seed, train_steps
from scenarios.loader import load_scenario, resolve_scenario_path
from scenarios.schema import Scenario
from strategies import keys
from strategies.packed_arrays import is_packed, pack, unpack
from strategies.registry import trained_set

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the method's tensors for `local_steps` steps and reply with them."""
    partition_id = int(context.node_config["partition-id"])
    try:
        scenario = scenario_of(context)
        # A packed message (the deployment engine) gets a packed reply.
        packed = is_packed(msg.content)
        content = train_round(scenario, partition_id,
                              unpack(msg.content) if packed else msg.content, context.state)
        return Message(content=pack(content) if packed else content, reply_to=msg)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a recorded error reply
        log(ERROR, "partition %d failed:\n%s", partition_id, traceback.format_exc())
        # The server knows which partition this node holds: the reason says only what.
        reason = f"{type(exc).__name__}: {exc}"
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                       reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Say which partition this node holds (the server orders its sampling by it)."""
    who = ConfigRecord({keys.PARTITION_ID: int(context.node_config["partition-id"])})
    return Message(RecordDict({keys.CLIENT: who}), reply_to=msg)


def scenario_of(context: Context) -> Scenario:
    """The run's scenario: the path in the run config, resolved like the ServerApp does."""
    return cached_scenario(str(resolve_scenario_path(str(context.run_config["scenario"]))))


@functools.lru_cache(maxsize=4)
def cached_scenario(path: str) -> Scenario:
    return load_scenario(path)


@functools.lru_cache(maxsize=2)
def cached_model(scenario: Scenario, device: str) -> torch.nn.Module:
    """The client's model, built once per process; each round overwrites every tensor the
    server owns with the global values, so reuse is safe. A stream gets a head per task."""
    counts = label_counts(scenario)
    return build_model(scenario.model, counts[0], scenario.seed,
                       trained_set(scenario.strategy.name), device,
                       label_counts=counts if scenario.stream is not None else None)


@functools.lru_cache(maxsize=8)
def cached_fingerprint(model: torch.nn.Module, sent: frozenset[str]) -> str:
    return frozen_fingerprint(model, sent)  # those weights never change: hash them once


def train_round(scenario: Scenario, partition_id: int, content: RecordDict,
                node_state: RecordDict) -> RecordDict:
    """One round of local training; returns the reply's records. `node_state` is the
    node's context.state: it keeps the privacy ledger between rounds (and tasks)."""
    config = content[keys.CONFIG] if keys.CONFIG in content else ConfigRecord()
    server_round = int(config.get(keys.SERVER_ROUND, 0))
    task_id = int(config.get(keys.TASK_ID, 0))
    # The scenario's CPUs per client, on either engine (Ray sets 1 thread per CPU in
    # simulation; a SuperNode's ClientApp process would take every core): the same
    # thread count keeps results identical between engines.
    torch.set_num_threads(scenario.resources.num_cpus)
    device = pick_device()
    data = client_data(scenario, partition_id, task_id)
    model, bases = received_model(scenario, content, task_id, device)

    seed = round_seed(scenario.seed, task_id, server_round, partition_id)
    torch.manual_seed(seed)  # dropout
    generator = torch.Generator().manual_seed(seed)
    fed = scenario.federation
    who = ConfigRecord({keys.PARTITION_ID: partition_id, keys.DEVICE: str(device),
                        keys.NODE: node_address()})
    optimizer = make_optimizer(model, fed.optimizer)
    dp: dict[str, float] = {}
    ledger_record: dict[str, ConfigRecord] = {}  # DP: the ledger goes back to the server
    with projected_updates(model, optimizer, bases):  # OSFT; a no-op without bases
        if scenario.privacy is None:
            result = train_steps(model, data.train, fed.local_steps, fed.batch_size, optimizer,
                                 generator, device, max_grad_norm=fed.max_grad_norm)
        else:
            spec = scenario.privacy
            sent = content[keys.PRIVACY_STATE] if keys.PRIVACY_STATE in content else None
            ledger = privacy_ledger(node_state, scenario, partition_id, sent)
            q = sample_rate(len(data.train), fed.batch_size)
            if not ledger.can_train(spec, q, fed.local_steps):
                metrics = {keys.NUM_EXAMPLES: len(data.train), keys.REFUSED: 1,
                           keys.EPSILON: ledger.epsilon(spec)}
                return RecordDict({keys.METRICS: MetricRecord(metrics), keys.CLIENT: who,
                                   keys.PRIVACY_STATE: ConfigRecord(ledger.to_record())})
            noise_seed = seed if spec.reproducible_noise_voids_guarantee else None
            result, ledger.history = dp_train_steps(model, data.train, fed.local_steps,
                                                    fed.batch_size, optimizer, spec,
                                                    ledger.noise_multiplier, ledger.history,
                                                    device, seed=noise_seed,
                                                    diagnose=spec.report_dp_diagnostics)
            node_state[keys.PRIVACY_STATE] = ConfigRecord(ledger.to_record())
            ledger_record = {keys.PRIVACY_STATE: ConfigRecord(ledger.to_record())}
            dp = {keys.EPSILON: ledger.epsilon(spec), keys.NOISE_MULTIPLIER: ledger.noise_multiplier,
                  keys.SAMPLE_RATE: q, keys.DP_STEPS: result.steps,
                  keys.SEEDED_NOISE: int(noise_seed is not None),
                  **unnoised_dp_diagnostics(result)}
    metrics = MetricRecord({keys.NUM_EXAMPLES: len(data.train), **dp,
                            **data_metrics(scenario, model, data.local_eval, result, device)})
    arrays = ArrayRecord({k: v.cpu() for k, v in trainable_state(model).items()})
    return RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics, keys.CLIENT: who,
                       **ledger_record})


def node_address() -> str:
    """Where this client runs: in a simulation, its Ray node's IP (a Ray cluster spreads
    the clients over several machines); elsewhere the host name."""
    if "ray" in sys.modules:  # a simulation's actor; never imported for it here
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    return socket.gethostname()


def received_model(scenario: Scenario, content: RecordDict, task_id: int,
                   device: torch.device) -> tuple[torch.nn.Module, dict]:
    """This process's model with the server's message loaded: the trained arrays, the
    server-owned base weights (LoRA merging, a LoRA stream's folded adapters) and OSFT's
    preserved bases; refused when the frozen weights differ from the server's."""
    model = cached_model(scenario, str(device))
    activate_task(model, task_id)
    received = content[keys.ARRAYS].to_torch_state_dict()
    base = (content[keys.BASE_WEIGHTS].to_torch_state_dict()
            if keys.BASE_WEIGHTS in content else {})
    fingerprint = cached_fingerprint(model, frozenset(received) | frozenset(base))
    config = content[keys.CONFIG] if keys.CONFIG in content else ConfigRecord()
    expected = config.get(keys.FROZEN_FINGERPRINT)
    if expected is not None and expected != fingerprint:
        raise RuntimeError(
            f"frozen weights differ from the server's (fingerprint {fingerprint} != {expected}): "
            "the model files or library versions differ between server and client"
        )
    load_trainable(model, base)  # a LoRA stream: earlier tasks' adapters folded in
    load_trainable(model, received)
    bases = (unpack_bases(content[keys.OSFT_BASES], device)
             if keys.OSFT_BASES in content else {})
    return model, bases


def unnoised_dp_diagnostics(result) -> dict[str, float]:
    """privacy.report_dp_diagnostics: the round's clipped fraction and noise-to-signal
    ratio under their un-noised names (empty when not asked)."""
    names = {"clipped-fraction": keys.UNNOISED_CLIPPED_FRACTION,
             "noise-to-signal": keys.UNNOISED_NOISE_TO_SIGNAL}
    return {names[k]: v for k, v in result.dp_diagnostics.items()}


def data_metrics(scenario: Scenario, model: torch.nn.Module, local_eval, result,
                 device: torch.device) -> dict[str, float]:
    """The training loss and local-eval accuracy and loss: computed on the client's data
    without noise, so a private client reports them only when the scenario opts in
    (privacy.report_unnoised_metrics; the run is then marked, scenarios.disclosure).
    By default a private client's reply holds its noised tensors, num-examples (the
    partition size, treated as public: the server weights the average by it), its
    sampling rate and its ledger, nothing else."""
    if scenario.privacy is not None and not scenario.privacy.report_unnoised_metrics:
        return {}
    local = evaluate(model, local_eval, device)
    return {keys.TRAIN_LOSS: result.mean_loss, keys.LOCAL_EVAL_ACC: local.accuracy,
            keys.LOCAL_EVAL_LOSS: local.loss}


def privacy_ledger(node_state: RecordDict, scenario: Scenario, partition_id: int,
                   sent: ConfigRecord | None = None) -> PrivacyState:
    """The node's ledger from context.state; else the one the server sent back (this
    client's own last report: its process lost its state, a restarted SuperNode or a
    resumed run); else a new one, with the scenario's privacy.noise_multiplier when it
    fixes one, or sigma sized for the client's whole planned participation over every
    task of the stream (clients.training.privacy), at the largest of its tasks' sampling
    rates (epsilon grows with q: the plan stays an upper bound)."""
    for record in (node_state.get(keys.PRIVACY_STATE), sent):
        if record is None:
            continue
        ledger = PrivacyState.from_record(dict(record))
        if ledger.partition_id != partition_id:
            raise RuntimeError(f"the privacy ledger given to partition {partition_id} is "
                               f"partition {ledger.partition_id}'s")
        return ledger
    if scenario.privacy.noise_multiplier is not None:  # fixed: nothing to plan
        return PrivacyState(partition_id, scenario.privacy.noise_multiplier)
    q = planned_sample_rate(train_sizes(scenario, partition_id), scenario.federation.batch_size)
    return PrivacyState(partition_id, noise_for_budget(scenario.privacy, q,
                                                       planned_steps(scenario)))
