"""Sampling follows partitions, not Flower's random node ids."""

from __future__ import annotations

import random
from types import SimpleNamespace

from server.serverapp.federation import PartitionOrderedGrid, send_and_receive


class ShuffledGrid:
    """A grid whose node ids (and their order) change from run to run, like Flower's."""

    def __init__(self, node_by_partition: dict[int, int], seed: int) -> None:
        self.node_by_partition = node_by_partition
        self.ids = list(node_by_partition.values())
        random.Random(seed).shuffle(self.ids)

    def get_node_ids(self):
        return list(self.ids)

    def run_label(self) -> str:
        return "delegated"


def sampled_partitions(run: int) -> list[int]:
    rng = random.Random(1000 + run)
    node_by_partition = {p: rng.getrandbits(63) for p in range(10)}  # fresh ids per run
    grid = PartitionOrderedGrid(ShuffledGrid(node_by_partition, seed=run), node_by_partition)
    partition_of = {n: p for p, n in node_by_partition.items()}
    random.seed(7)  # what the ServerApp does before strategy.start
    return sorted(partition_of[n] for n in random.sample(list(grid.get_node_ids()), 3))


def test_same_seed_samples_the_same_partitions_whatever_the_node_ids() -> None:
    assert sampled_partitions(1) == sampled_partitions(2) == sampled_partitions(3)


def test_a_restarted_supernode_takes_its_partition_back(monkeypatch) -> None:
    """Node 12 (partition 1) dies and comes back as node 99: 99 is asked its partition
    (a `query` message, here answered by a stand-in for the ClientApp) and replaces 12,
    which is never listed again even while Flower still lists it."""
    import server.serverapp.federation as federation

    asked = []

    def answer(grid, node_ids, timeout_s):
        asked.append(list(node_ids))
        return {1: 99}

    monkeypatch.setattr(federation, "discover_partitions", answer)
    inner = ShuffledGrid({0: 11, 1: 12}, seed=0)
    grid = PartitionOrderedGrid(inner, {0: 11, 1: 12})
    assert list(grid.get_node_ids()) == [11, 12] and asked == []
    inner.ids.append(99)
    assert list(grid.get_node_ids()) == [11, 99] and asked == [[99]]
    inner.ids.remove(12)
    assert list(grid.get_node_ids()) == [11, 99] and asked == [[99]]  # asked once
    assert grid.run_label() == "delegated"


class SlowRepliesGrid:
    """Pushed messages get ids m0, m1, ...; message i's reply shows up at pull i + 1."""

    def __init__(self) -> None:
        self.pulls = 0

    def push_messages(self, messages):
        self.ids = [f"m{i}" for i, _ in enumerate(messages)]
        return list(self.ids)

    def pull_messages(self, message_ids):
        self.pulls += 1
        ready = [i for i in self.ids if i in set(message_ids) and int(i[1:]) < self.pulls]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ready]


def test_replies_are_pulled_until_all_arrived_at_the_short_interval(monkeypatch) -> None:
    import server.serverapp.federation as federation

    slept: list[float] = []
    monkeypatch.setattr(federation.time, "sleep", slept.append)
    grid = SlowRepliesGrid()
    replies = send_and_receive(grid, ["a", "b", "c"], timeout=30)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert grid.pulls == 3  # no pull after the last reply, each reply pulled once
    # Flower's HTTP grid sleeps 3 s between pulls
    assert slept == [federation.REPLY_PULL_INTERVAL_S] * 2 and federation.REPLY_PULL_INTERVAL_S <= 0.1


class FakeClock:
    """time.monotonic and time.sleep on a clock that only sleeping moves."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_timeout_returns_the_replies_that_arrived(monkeypatch) -> None:
    import server.serverapp.federation as federation

    clock = FakeClock()
    monkeypatch.setattr(federation.time, "monotonic", clock.monotonic)
    monkeypatch.setattr(federation.time, "sleep", clock.sleep)
    grid = SlowRepliesGrid()
    # pulls at t = 0, 0.05, 0.10, 0.15; the one at 0.15 is past the 0.12 s deadline
    replies = send_and_receive(grid, list("abcdefghij"), timeout=0.12, pull_interval_s=0.05)
    assert grid.pulls == 4 and [r.metadata.reply_to_message_id for r in replies] == [
        "m0", "m1", "m2", "m3"]
    grid = SlowRepliesGrid()
    assert len(send_and_receive(grid, ["a", "b"], timeout=0)) == 1 and grid.pulls == 1
    # the wrapper used by the strategies has the same contract
    wrapped = PartitionOrderedGrid(SlowRepliesGrid(), {})
    assert len(wrapped.send_and_receive(["a", "b"], timeout=10)) == 2
