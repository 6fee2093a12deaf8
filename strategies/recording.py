"""A wrapper that records every round of any strategy.

Cross-cutting, like Flower's DP wrappers: it wraps a strategy instead of adding flags
to it. Per round it writes the clients' own metrics, their failures and the aggregated
metrics to the store as they happen, and numbers the rounds across a run's tasks and
resumes. What else a round needs it is given, built by the ServerApp
(strategies.round_policy): a `ClientSampler` (which clients train), a `LedgerRelay`
(the DP clients' ledgers sent back to them), a `Quorum` (a round with too few results
fails: AllClientsFailed) and a `BudgetWatch` (the run ends once every client has
refused: BudgetExhausted). Replies are averaged in partition order
(strategies.client_replies.in_partition_order), so a resumed run adds up the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING
from typing import Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from strategies import keys
from strategies.client_replies import (
    in_partition_order,
    silent_nodes,
    split_replies,
    trained_replies,
)
from strategies.diagnostics import round_diagnostics
from strategies.message_size import array_bytes
from strategies.round_policy.budget_watch import BudgetWatch
from strategies.round_policy.ledger_relay import LedgerRelay
from strategies.round_policy.quorum import Quorum
from strategies.round_policy.sampling import ClientSampler


class RoundRecorder(Protocol):
    """What the wrapper needs of a metrics store (server.runs.store.MetricsStore has it)."""

    def record_round(self, run_id: str, round_: int, task: int,
                     train: dict | None = None, eval: dict | None = None) -> None: ...

    def record_clients(self, run_id: str, round_: int, metrics_by_partition: dict,
                       failures: list) -> None: ...


class RecordedStrategy(Strategy):
    """Delegates to `inner`; records round `round_offset + rounds_done + server_round`
    of task `task`.

    `rounds_done` > 0 continues a task after a resume: Flower's `start` counts its rounds
    from 1 again, the inner strategy and the clients see the task's own round numbers
    (FedSVD's svd_period and the clients' per-round seeds depend on them). `sampler`
    None: Flower samples. The defaults: no ledgers, at least one result per round, no
    budget end.
    """

    def __init__(self, inner: Strategy, store: RoundRecorder, run_id: str,
                 task: int = 0, round_offset: int = 0, rounds_done: int = 0,
                 extra_records: dict[str, ArrayRecord] | None = None,
                 sampler: ClientSampler | None = None, ledgers: LedgerRelay | None = None,
                 quorum: Quorum | None = None, budget: BudgetWatch | None = None,
                 diagnostics_scaling: float | None = None) -> None:
        self.inner, self.store, self.run_id = inner, store, run_id
        self.task, self.round_offset, self.rounds_done = task, round_offset, rounds_done
        # Sent with every train message, besides the global arrays (keys.BASE_WEIGHTS,
        # keys.OSFT_BASES): fixed for the task, never averaged.
        self.extra_records = dict(extra_records or {})
        self.sampler = sampler
        self.ledgers = ledgers if ledgers is not None else LedgerRelay()
        self.quorum = quorum if quorum is not None else Quorum()
        self.budget = budget if budget is not None else BudgetWatch(num_clients=None)
        self.latest_arrays: ArrayRecord | None = None  # the newest global model
        self.sampled: dict[int, int | None] = {}  # this round's node id -> partition id
        self.bytes_down = 0  # this round's train message to one client, its arrays
        # scenario.diagnostics: LoRA's scaling s; the rounds' arrays for strategies.diagnostics
        self.diagnostics_scaling = diagnostics_scaling
        self.round_start: dict[str, np.ndarray] = {}
        self.task_start: dict[str, np.ndarray] = {}

    @property
    def out_of_budget(self) -> set[int]:
        """The partitions that have refused to train (saved in checkpoints)."""
        return self.budget.out_of_budget

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
            grid = self.sampler.sampled_grid(grid)
        messages = list(self.inner.configure_train(self.task_round(server_round), arrays,
                                                   config, grid))
        if self.diagnostics_scaling is not None:
            self.round_start = {k: v.numpy() for k, v in arrays.items()}
            self.task_start = self.task_start or self.round_start
        self.sampled = {m.metadata.dst_node_id: partition_of(m.metadata.dst_node_id)
                        for m in messages}
        for message in messages:
            # Flower's FedAvg gives every message the same RecordDict: this one's own
            # content is a new dict over the same (shared, read-only) records.
            content = RecordDict({**message.content, **self.extra_records})
            ledger = self.ledgers.ledger_for(self.sampled[message.metadata.dst_node_id])
            if ledger is not None:
                content[keys.PRIVACY_STATE] = ledger
            message.content = content
        # The messages differ only in their ledger (a ConfigRecord): one weighs them all.
        self.bytes_down = array_bytes(messages[0].content) if messages else 0
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message],
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        round_ = self.global_round(server_round)
        per_client, failures = split_replies(replies, self.sampled)
        self.ledgers.remember(replies, self.sampled)
        failures += silent_nodes(self.sampled, replies)
        best_effort(self.store.record_clients, self.run_id, round_, per_client, failures)
        refused = {p for p, m in per_client.items() if m.get(keys.REFUSED)}
        self.budget.note(refused)
        self.quorum.check(round_, len(per_client), failures)  # recorded before failing
        updates = in_partition_order(trained_replies(replies))
        arrays, metrics = (self.inner.aggregate_train(self.task_round(server_round), updates)
                           if updates else (None, None))  # nobody trained: the model stays
        self.latest_arrays = arrays if arrays is not None else self.latest_arrays
        train = dict(metrics) if metrics is not None else {}
        train.update(clients=len(updates), failures=len(failures), refusals=len(refused))
        if arrays is not None and self.diagnostics_scaling is not None:
            train.update(round_diagnostics(self.round_start, {k: v.numpy() for k, v in arrays.items()},
                                           self.task_start, self.diagnostics_scaling))
        if updates:  # what the method costs on the wire, per client (mean over replies)
            train[keys.BYTES_UP] = sum(array_bytes(m.content) for m in updates) / len(updates)
            train[keys.BYTES_DOWN] = self.bytes_down
        best_effort(self.store.record_round, self.run_id, round_, self.task, train=train)
        self.budget.check(round_)
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(self.task_round(server_round), arrays, config,
                                             grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message],
                           ) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(self.task_round(server_round), replies)


def best_effort(write, *args, **kwargs) -> None:
    """A metrics-store outage must never kill training: log it and go on."""
    try:
        write(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any store error is only logged
        log(WARNING, "metrics store write failed (%s): %s", write.__name__, exc)
