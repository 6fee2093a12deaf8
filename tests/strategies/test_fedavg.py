"""FedAvg-family strategies and the recording wrapper, with hand-built replies."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from scenarios.loader import load_scenario
from strategies import keys
from strategies.fedavg import FedAvgFull
from strategies.fedavg_lora import FedAvgLora
from strategies.recording import RecordedStrategy
from strategies.round_policy.budget_watch import BudgetExhausted, BudgetWatch
from strategies.round_policy.ledger_relay import LedgerRelay
from strategies.round_policy.quorum import AllClientsFailed, Quorum
from strategies.round_policy.sampling import ClientSampler
from strategies.registry import build_strategy, strategy_class, trained_set
from tests.conftest import ROOT
from server.serverapp.federation import PartitionOrderedGrid
from tests.strategies.replies import as_server, error_reply, refusal_reply, train_reply


def test_weighted_mean_of_every_trained_tensor() -> None:
    rng = np.random.default_rng(0)
    a = [rng.normal(size=(4, 8)) for _ in range(3)]
    b = [rng.normal(size=(8, 4)) for _ in range(3)]
    n = [10, 30, 60]
    replies = [train_reply(k + 1, k, {"lora_A": a[k], "lora_B": b[k]}, n[k],
                           **{keys.TRAIN_LOSS: float(k)}) for k in range(3)]
    arrays, metrics = FedAvgLora().aggregate_train(1, replies)
    got = {k: v.numpy() for k, v in arrays.items()}
    # Oracle: sum_k n_k X_k / sum_k n_k, written out independently of Flower.
    np.testing.assert_allclose(got["lora_A"], sum(w * x for w, x in zip(n, a)) / 100, rtol=1e-12)
    np.testing.assert_allclose(got["lora_B"], sum(w * x for w, x in zip(n, b)) / 100, rtol=1e-12)
    assert metrics[keys.TRAIN_LOSS] == pytest.approx((0 * 10 + 1 * 30 + 2 * 60) / 100)


def test_registry_builds_sampling_from_the_scenario() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "quick.yaml")
    strategy = build_strategy(scenario)
    assert isinstance(strategy, FedAvgLora)
    # The recording wrapper samples; the inner strategy trains every node it is shown.
    assert strategy.fraction_train == 1.0
    assert strategy.min_train_nodes == strategy.min_available_nodes == \
        scenario.federation.clients_per_round
    assert strategy.fraction_evaluate == 0.0
    assert trained_set("fedavg-lora") == "lora" and trained_set("fedavg") == "full"
    assert strategy_class("fedavg") is FedAvgFull


def test_unknown_strategy_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown 'fedsgd'; known: fedavg, fedavg-lora"):
        strategy_class("fedsgd")


class FakeStore:
    """Collects what the wrapper writes (the real store has its own tests)."""

    def __init__(self, broken: bool = False) -> None:
        self.rounds, self.clients, self.broken = [], [], broken

    def record_round(self, run_id, round_, task, train=None, eval=None):
        if self.broken:
            raise OSError("disk full")
        self.rounds.append((run_id, round_, task, train))

    def record_clients(self, run_id, round_, metrics_by_partition, failures):
        if self.broken:
            raise OSError("disk full")
        self.clients.append((run_id, round_, metrics_by_partition, failures))


class Nodes:
    """A Grid's node listing, all the wrapper's configure_train needs of it."""

    def __init__(self, *node_ids: int) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def grid_of(node_by_partition: dict[int, int]) -> PartitionOrderedGrid:
    return PartitionOrderedGrid(Nodes(*node_by_partition.values()), node_by_partition)


def send_round(strategy: RecordedStrategy, server_round: int, grid) -> list[Message]:
    """The wrapper's train messages of a round: it learns whom it sampled."""
    as_server()
    return list(strategy.configure_train(server_round, ArrayRecord({"w": Array(np.zeros(3))}),
                                         ConfigRecord(), grid))


def test_wrapper_records_clients_failures_and_the_aggregate() -> None:
    """An error reply names no partition: the wrapper records it under the partition
    it sampled the node as."""
    store = FakeStore()
    strategy = RecordedStrategy(FedAvgLora(), store, "run-1", task=2, round_offset=10)
    send_round(strategy, 1, grid_of({0: 7, 1: 8, 2: 9}))
    replies = [
        train_reply(7, 0, {"w": np.ones(3)}, 10, **{keys.TRAIN_LOSS: 0.5}),
        error_reply(8, "ValueError: bad row"),
        error_reply(9, "node vanished"),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_array_equal(arrays["w"].numpy(), np.ones(3))
    (run_id, round_, per_client, failures), = store.clients
    assert (run_id, round_) == ("run-1", 11)
    assert per_client == {0: {keys.NUM_EXAMPLES: 10, keys.TRAIN_LOSS: 0.5, keys.DEVICE: "cpu"}}
    assert failures == [(1, "8", "ValueError: bad row"), (2, "9", "node vanished")]
    (_, round_, task, train), = store.rounds
    assert (round_, task, train["clients"], train["failures"]) == (11, 2, 1, 2)
    # The wire cost, measured from the messages; the oracle is numpy's own .npy encoding.
    assert train[keys.BYTES_UP] == npy_bytes(np.ones(3))      # the one reply's "w"
    assert train[keys.BYTES_DOWN] == npy_bytes(np.zeros(3))   # the instruction's "w"


def npy_bytes(array: np.ndarray) -> int:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return len(buffer.getvalue())


def test_a_round_where_every_client_failed_fails_loudly() -> None:
    store = FakeStore()
    strategy = RecordedStrategy(FedAvgLora(), store, "run-1")
    send_round(strategy, 1, grid_of({0: 3, 1: 4}))  # FedAvg's default: 2 nodes at least
    with pytest.raises(AllClientsFailed, match="round 1: every client failed: partition 0 "
                                               ".node 3.: boom; partition 1 .node 4.: bad"):
        strategy.aggregate_train(1, [error_reply(3, "boom"), error_reply(4, "bad")])
    assert store.clients[0][3] == [(0, "3", "boom"), (1, "4", "bad")]  # recorded before failing


def test_a_store_outage_does_not_stop_training() -> None:
    strategy = RecordedStrategy(FedAvgLora(), FakeStore(broken=True), "run-1")
    arrays, _ = strategy.aggregate_train(1, [train_reply(1, 0, {"w": np.zeros(2)}, 5)])
    assert arrays is not None


def test_refusals_are_recorded_and_left_out_of_the_average() -> None:
    store = FakeStore()
    budget = BudgetWatch(num_clients=3)
    strategy = RecordedStrategy(FedAvgLora(), store, "run-1", budget=budget)
    replies = [train_reply(1, 0, {"w": np.full(2, 4.0)}, 10, **{keys.EPSILON: 2.0}),
               refusal_reply(2, 1, epsilon=5.9)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_array_equal(arrays["w"].numpy(), np.full(2, 4.0))  # only the trainer
    per_client = store.clients[0][2]
    assert per_client[1][keys.REFUSED] == 1 and per_client[1][keys.EPSILON] == 5.9
    train = store.rounds[0][3]
    assert (train["clients"], train["refusals"], train["failures"]) == (1, 1, 0)
    assert strategy.out_of_budget == budget.out_of_budget == {1}  # what checkpoints save


def test_the_run_ends_when_every_client_has_refused() -> None:
    store = FakeStore()
    strategy = RecordedStrategy(FedAvgLora(), store, "run-1", budget=BudgetWatch(2))
    arrays, _ = strategy.aggregate_train(1, [refusal_reply(1, 0, 6.0)])
    assert arrays is None  # nobody trained: the global model stays as it was
    with pytest.raises(BudgetExhausted, match="all 2 clients have spent their privacy budget"):
        strategy.aggregate_train(2, [refusal_reply(2, 1, 6.0)])
    assert [r[1] for r in store.rounds] == [1, 2]  # the last round recorded before ending


def test_a_resumed_run_remembers_who_refused() -> None:
    budget = BudgetWatch(2, out_of_budget=[0])
    budget.check(round_=5)  # one of two: the run goes on
    budget.note({1})
    with pytest.raises(BudgetExhausted, match="stopped after round 6"):
        budget.check(round_=6)


def test_a_sampled_node_that_never_replies_is_a_recorded_failure() -> None:
    """Flower drops the message of a node that vanished: no reply of any kind arrives."""
    store = FakeStore()
    strategy = RecordedStrategy(FedAvgLora(), store, "run-1")
    sent = send_round(strategy, 1, grid_of({0: 7, 1: 8}))
    assert sorted(m.metadata.dst_node_id for m in sent) == [7, 8]
    strategy.aggregate_train(1, [train_reply(7, 0, {"w": np.ones(3)}, 10)])
    (_, _, per_client, failures), = store.clients
    assert list(per_client) == [0]
    assert failures == [(1, "8", "no reply within the round timeout (the node disappeared "
                                 "or hung)")]


def test_a_round_with_fewer_results_than_the_minimum_fails_naming_who_and_why() -> None:
    store = FakeStore()
    strategy = RecordedStrategy(FedAvgLora(), store, "run-1", quorum=Quorum(min_replies=2))
    send_round(strategy, 1, grid_of({0: 7, 1: 8}))
    replies = [train_reply(7, 0, {"w": np.ones(3)}, 10), error_reply(8, "ValueError: bad row")]
    with pytest.raises(AllClientsFailed) as failed:
        strategy.aggregate_train(1, replies)
    assert str(failed.value) == ("round 1: 1 replied, fewer than federation.min_replies = 2: "
                                 "partition 1 (node 8): ValueError: bad row")
    ok = RecordedStrategy(FedAvgLora(), FakeStore(), "run-1", quorum=Quorum(min_replies=1))
    arrays, _ = ok.aggregate_train(1, replies)  # one result is enough at the default
    np.testing.assert_array_equal(arrays["w"].numpy(), np.ones(3))


def test_a_quorum_without_replies_says_so() -> None:
    Quorum(1).check(1, results=1, failures=[])
    with pytest.raises(AllClientsFailed, match="round 3: every client failed: no replies "
                                               "before the timeout"):
        Quorum(1).check(3, results=0, failures=[])


def test_each_client_gets_back_its_own_privacy_ledger() -> None:
    """DP replies carry the client's ledger; the next train message to that partition
    carries it back (a client process that lost its context.state resumes from it), and
    only to that partition: Flower's FedAvg shares one RecordDict between messages."""
    def ledger(partition: int) -> dict:
        return {"partition-id": partition, "noise-multiplier": 1.1,
                "history-sigma": [1.1], "history-q": [0.1], "history-steps": [5]}

    run_ledgers: dict[int, dict] = {}  # the run's, saved in its checkpoints
    relay = LedgerRelay(run_ledgers, local_steps=5)
    strategy = RecordedStrategy(FedAvgLora(), FakeStore(), "run-1", ledgers=relay)
    grid = grid_of({0: 7, 1: 8})
    replies = []
    for node, partition in ((7, 0), (8, 1)):
        reply = train_reply(node, partition, {"w": np.ones(3)}, 10)
        reply.content = RecordDict({**reply.content,
                                    keys.PRIVACY_STATE: ConfigRecord(ledger(partition))})
        replies.append(reply)
    strategy.aggregate_train(1, replies)
    assert run_ledgers == {0: ledger(0), 1: ledger(1)}
    sent = send_round(strategy, 2, grid)
    got = {m.metadata.dst_node_id: dict(m.content[keys.PRIVACY_STATE]) for m in sent}
    assert got == {7: ledger(0), 8: ledger(1)}

    # Round 2: partition 1 fails (it may have trained first): the server charges it a
    # round at its sigma and largest rate, so a restarted client cannot under-count.
    strategy.aggregate_train(2, [replies[0], error_reply(8, "boom")])
    assert run_ledgers[0] == ledger(0)
    assert run_ledgers[1] == {**ledger(1), "history-sigma": [1.1, 1.1],
                              "history-q": [0.1, 0.1], "history-steps": [5, 5]}


def test_a_resumed_task_continues_its_round_numbers() -> None:
    """After 3 of a task's rounds were done (and 10 rounds of earlier tasks), Flower's
    round 1 is the task's round 4 for the inner strategy and the clients, and global
    round 14 in the store."""
    store = FakeStore()
    strategy = RecordedStrategy(FedAvgLora(), store, "run-1", task=1, round_offset=10,
                                rounds_done=3)
    sent = send_round(strategy, 1, grid_of({0: 7, 1: 8}))
    assert {m.content[keys.CONFIG][keys.SERVER_ROUND] for m in sent} == {4}
    strategy.aggregate_train(1, [train_reply(7, 0, {"w": np.ones(3)}, 10),
                                 train_reply(8, 1, {"w": np.ones(3)}, 10)])
    assert [r[1] for r in store.rounds] == [14]


def test_the_average_does_not_depend_on_the_order_replies_arrive_in() -> None:
    """Float sums depend on their order (in float32, 1e8 + 1 - 1e8 is 0, 1e8 - 1e8 + 1
    is 1): Flower's own FedAvg gives different averages for different arrival orders;
    the wrapper averages in partition order, so a resumed run adds up the same."""
    values = {0: 1e8, 1: 1.0, 2: -1e8}
    plain, wrapped = set(), set()
    for arrival in ([0, 1, 2], [0, 2, 1], [2, 0, 1]):
        replies = [train_reply(10 + p, p, {"w": np.array([values[p]], dtype=np.float32)}, 10)
                   for p in arrival]
        plain.add(FedAvgLora().aggregate_train(1, replies)[0]["w"].numpy().tobytes())
        arrays, _ = RecordedStrategy(FedAvgLora(), FakeStore(), "run-1").aggregate_train(1, replies)
        wrapped.add(arrays["w"].numpy().tobytes())
    assert len(plain) > 1 and len(wrapped) == 1


def test_the_wrapper_samples_with_its_own_generator_whatever_else_draws() -> None:
    """Two wrappers with equally seeded samplers pick the same partitions round after
    round, however much the global `random` is used meanwhile (Flower's heartbeat and
    retry threads draw from it); the inner strategy sends to exactly the sample."""
    grid = PartitionOrderedGrid(Nodes(50, 40, 30, 20, 10),
                                {0: 10, 1: 20, 2: 30, 3: 40, 4: 50})
    picks = []
    for noise in (0, 7):
        sampler = ClientSampler(random.Random(3), clients_per_round=2, num_clients=5)
        strategy = RecordedStrategy(FedAvgLora(fraction_train=1.0, min_train_nodes=2,
                                               min_available_nodes=2), FakeStore(), "run-1",
                                    sampler=sampler)
        rounds = []
        for server_round in (1, 2, 3):
            for _ in range(noise * server_round):
                random.random()
            sent = send_round(strategy, server_round, grid)
            rounds.append(sorted(strategy.sampled.values()))
            assert len(sent) == 2
        picks.append(rounds)
    assert picks[0] == picks[1]
    assert len({tuple(r) for r in picks[0]}) > 1  # it does sample, not always the same pair
