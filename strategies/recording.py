"""A wrapper that records every round of any strategy, and fails rounds nobody trained.

Cross-cutting, like Flower's DP wrappers: it wraps a strategy instead of adding flags
to it. Per round it writes the clients' own metrics, their failures and the aggregated
metrics to the store as they happen. Flower alone logs "0 results, N failures" and
carries on, ending the run `completed`; here a round in which every client failed
raises `AllClientsFailed`, which fails the run with the clients' reasons.

It also owns what must survive a resume bit for bit: which clients a round samples
(a seeded generator of its own), the order replies are averaged in (by partition), and
the clients' privacy ledgers it relays back to them.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from clients.privacy import charge_unreported_round
from strategies import keys

# Clients prefix their error replies with who they are (clients.client_app).
_PARTITION_IN_REASON = re.compile(r"^partition-id=(\d+):")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
REASON_MAX = 500  # characters of an error reason kept in the store


class RoundRecorder(Protocol):
    """What the wrapper needs of a metrics store (server.runs.store.MetricsStore has it)."""

    def record_round(self, run_id: str, round_: int, task: int,
                     train: dict | None = None, eval: dict | None = None) -> None: ...

    def record_clients(self, run_id: str, round_: int, metrics_by_partition: dict,
                       failures: list) -> None: ...


class AllClientsFailed(RuntimeError):
    """Fewer clients of a round replied with a result than the scenario's minimum
    (federation.min_replies, default 1: a round in which every client failed)."""


class BudgetExhausted(RuntimeError):
    """Every client has refused to train: their privacy budgets are spent. The run ends."""


class RecordedStrategy(Strategy):
    """Delegates to `inner`; records round `round_offset + rounds_done + server_round`
    of task `task`.

    `rounds_done` > 0 continues a task after a resume: Flower's `start` counts its rounds
    from 1 again, the inner strategy and the clients see the task's own round numbers
    (FedSVD's svd_period and the clients' per-round seeds depend on them).
    """

    def __init__(self, inner: Strategy, store: RoundRecorder, run_id: str,
                 task: int = 0, round_offset: int = 0, num_clients: int | None = None,
                 extra_records: dict[str, ArrayRecord] | None = None,
                 min_replies: int = 1, rounds_done: int = 0,
                 ledgers: dict[int, dict] | None = None,
                 out_of_budget: Iterable[int] = (), local_steps: int = 0,
                 sampler: random.Random | None = None, clients_per_round: int = 0) -> None:
        self.inner, self.store, self.run_id = inner, store, run_id
        # Sent with every train message, besides the global arrays (keys.BASE_WEIGHTS,
        # keys.OSFT_BASES): fixed for the task, never averaged.
        self.extra_records = dict(extra_records or {})
        self.min_replies = min_replies
        self.task, self.round_offset, self.rounds_done = task, round_offset, rounds_done
        self.num_clients = num_clients
        # The clients' privacy ledgers as they last reported them, by partition; each
        # goes back with that partition's next train message, so a client process that
        # lost its context.state (a restarted SuperNode, a resumed run) carries on
        # spending from its recorded history instead of from zero. Shared across tasks.
        self.ledgers = ledgers if ledgers is not None else {}
        self.local_steps = local_steps
        # Client sampling with a generator of our own (seeded, and saved in checkpoints):
        # Flower's FedAvg draws from the global `random`, which Flower's heartbeat and
        # retry threads also draw from, at times of their own. The inner strategy, built
        # to train every node it is shown, is shown the sample. None: Flower samples.
        self.sampler, self.clients_per_round = sampler, clients_per_round
        self.out_of_budget: set[int] = set(out_of_budget)  # refused: they stay refused
        self.latest_arrays: ArrayRecord | None = None  # the newest global model
        self.sampled: dict[int, int | None] = {}  # this round's node id -> partition id

    def task_round(self, server_round: int) -> int:
        """The round's number within its task (what the inner strategy and clients see)."""
        return self.rounds_done + server_round

    def global_round(self, server_round: int) -> int:
        return self.round_offset + self.task_round(server_round)

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        partition_of = getattr(grid, "partition_of", lambda _: None)
        if self.sampler is not None:
            grid = SampledGrid(grid, self.sample_nodes(grid))
        messages = list(self.inner.configure_train(self.task_round(server_round), arrays,
                                                   config, grid))
        self.sampled = {m.metadata.dst_node_id: partition_of(m.metadata.dst_node_id)
                        for m in messages}
        for message in messages:
            # Flower's FedAvg gives every message the same RecordDict: this one's own
            # content is a new dict over the same (shared, read-only) records.
            content = RecordDict({**message.content, **self.extra_records})
            ledger = self.ledgers.get(self.sampled[message.metadata.dst_node_id])
            if ledger is not None:
                content[keys.PRIVACY_STATE] = ConfigRecord(ledger)
            message.content = content
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message],
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        round_ = self.global_round(server_round)
        per_client, failures = split_replies(replies, self.sampled)
        self.remember_ledgers(replies)
        failures += silent_nodes(self.sampled, replies)
        best_effort(self.store.record_clients, self.run_id, round_, per_client, failures)
        refused = {p for p, m in per_client.items() if m.get(keys.REFUSED)}
        self.out_of_budget |= refused
        if len(per_client) < self.min_replies:
            reasons = "; ".join(f"partition {p if p is not None else '?'} (node {n}): {r}"
                                for p, n, r in failures) or "no replies before the timeout"
            what = ("every client failed" if not per_client else
                    f"{len(per_client)} replied, fewer than federation.min_replies = "
                    f"{self.min_replies}")
            raise AllClientsFailed(f"round {round_}: {what}: {reasons}")
        # In partition order: a float sum depends on its order, and replies arrive in
        # whatever order the clients finish; sorted, a resumed run adds up the same.
        trained = sorted((m for m in replies if not m.has_error() and not is_refusal(m)),
                         key=partition_of_reply)
        arrays, metrics = (self.inner.aggregate_train(self.task_round(server_round), trained)
                           if trained else (None, None))  # nobody trained: the model stays
        self.latest_arrays = arrays if arrays is not None else self.latest_arrays
        train = dict(metrics) if metrics is not None else {}
        train.update(clients=len(trained), failures=len(failures), refusals=len(refused))
        best_effort(self.store.record_round, self.run_id, round_, self.task, train=train)
        if self.num_clients is not None and len(self.out_of_budget) >= self.num_clients:
            raise BudgetExhausted(
                f"stopped after round {round_}: all {self.num_clients} clients have spent their "
                "privacy budget (each refuses a round that would pass its target epsilon)")
        return arrays, metrics

    def remember_ledgers(self, replies: list[Message]) -> None:
        """Keep each DP client's reported ledger; charge a round to the sampled clients
        with a known ledger whose reply brought none (they may have trained)."""
        reported = reported_ledgers(replies)
        for partition in set(self.sampled.values()) - set(reported):
            if partition in self.ledgers and self.local_steps:
                self.ledgers[partition] = charge_unreported_round(self.ledgers[partition],
                                                                  self.local_steps)
        self.ledgers.update(reported)

    def sample_nodes(self, grid: Grid) -> list[int]:
        """`clients_per_round` of the live nodes, once all `num_clients` are connected
        (as Flower's sample_nodes waits), drawn with `self.sampler`."""
        while len(live := list(grid.get_node_ids())) < (self.num_clients or 0):
            log(INFO, "Waiting for nodes to connect: %d connected (minimum required: %d).",
                len(live), self.num_clients)
            time.sleep(1)
        return self.sampler.sample(live, min(self.clients_per_round, len(live)))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(self.task_round(server_round), arrays, config,
                                             grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message],
                           ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(self.task_round(server_round), replies)


class SampledGrid:
    """A view of a Grid that lists only the sampled nodes; all else delegated."""

    def __init__(self, grid: Grid, nodes: list[int]) -> None:
        self._grid, self._nodes = grid, list(nodes)

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name: str):
        return getattr(self._grid, name)


def best_effort(write, *args, **kwargs) -> None:
    """A metrics-store outage must never kill training: log it and go on."""
    try:
        write(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any store error is only logged
        log(WARNING, "metrics store write failed (%s): %s", write.__name__, exc)


def silent_nodes(sampled: dict[int, int | None], replies: list[Message],
                 ) -> list[tuple[int | None, str, str]]:
    """Failures for the sampled nodes that sent nothing back: Flower drops a message
    whose node vanished or hung past the round timeout without a reply of any kind."""
    answered = {msg.metadata.src_node_id for msg in replies}
    return [(partition, str(node), "no reply within the round timeout (the node "
             "disappeared or hung)")
            for node, partition in sampled.items() if node not in answered]


def concise_reason(reason: str) -> str:
    """An error reason fit for the store and a terminal: Flower's simulation wraps what a
    client raised, or its process's death, in a Ray traceback with colour codes; keep
    what happened."""
    reason = _ANSI.sub("", reason)
    if "ActorDiedError" in reason:
        return ("the client's process died (Ray ActorDiedError: its worker exited "
                "unexpectedly, e.g. killed or out of memory)")
    raised = re.search(r"ClientAppException occurred\. Message: (.*)", reason, re.DOTALL)
    if raised:
        message = raised.group(1).strip().rstrip("'>").strip()
        kind = re.search(rf"^(\w+): {re.escape(message)}$", reason, re.MULTILINE)
        reason = f"the ClientApp raised {kind.group(1) if kind else 'an exception'}: {message}"
    return reason if len(reason) <= REASON_MAX else reason[:REASON_MAX - 3] + "..."


def partition_of_reply(msg: Message) -> int:
    who = msg.content.config_records.get(keys.CLIENT, ConfigRecord())
    return int(who.get(keys.PARTITION_ID, -1))


def reported_ledgers(replies: list[Message]) -> dict[int, dict]:
    """{partition: privacy ledger} of the replies that carry one (DP clients)."""
    return {partition_of_reply(m): dict(m.content[keys.PRIVACY_STATE])
            for m in replies if not m.has_error() and keys.PRIVACY_STATE in m.content}


def is_refusal(msg: Message) -> bool:
    """A DP client that would pass its budget replies with `refused` = 1 and no arrays."""
    metrics = next(iter(msg.content.metric_records.values()), MetricRecord())
    return bool(metrics.get(keys.REFUSED, 0))


def split_replies(replies: list[Message], sampled: dict[int, int | None] | None = None,
                  ) -> tuple[dict[int, dict], list[tuple[int | None, str, str]]]:
    """({partition_id: metrics} of the results, [(partition_id, node_id, reason)] of errors).
    An error that does not name its partition (it escaped the ClientApp, or its process
    died) gets the partition the node was sampled as, from `sampled` {node: partition}."""
    sampled = sampled or {}
    per_client: dict[int, dict] = {}
    failures: list[tuple[int | None, str, str]] = []
    for msg in replies:
        node = str(msg.metadata.src_node_id)
        if msg.has_error():
            reason = concise_reason(msg.error.reason or f"error code {msg.error.code}")
            match = _PARTITION_IN_REASON.match(reason)
            partition = int(match.group(1)) if match else sampled.get(msg.metadata.src_node_id)
            failures.append((partition, node, reason))
            continue
        who = msg.content.config_records.get(keys.CLIENT, ConfigRecord())
        metrics = dict(next(iter(msg.content.metric_records.values()), MetricRecord()))
        metrics.update({k: v for k, v in who.items() if k != keys.PARTITION_ID})
        per_client[partition_of_reply(msg)] = metrics
    return per_client, failures
