"""Balanced client sampling (federation.sampling 'balanced'): every client joins floor or
ceil of R k / n rounds, never more than the participation a DP client plans for, and a
checkpoint of the generator resumes mid-deck."""

from __future__ import annotations

import math
import pickle
import random
from collections import Counter

import pytest
import torch

from strategies.round_policy.sampling import ClientSampler, ShuffledDeck


class Nodes:
    """A grid listing node ids (10 x partition + 7) in partition order."""

    def __init__(self, n: int) -> None:
        self.ids = [10 * p + 7 for p in range(n)]

    def get_node_ids(self) -> list[int]:
        return list(self.ids)


@pytest.mark.parametrize("n, k, rounds", [(6, 3, 10), (6, 4, 7), (5, 2, 13), (7, 7, 3),
                                          (10, 3, 20), (4, 1, 9)])
def test_each_client_joins_floor_or_ceil_of_its_share_and_never_twice_a_round(n, k, rounds) -> None:
    deck = ShuffledDeck(11)
    counts: Counter[int] = Counter()
    for r in range(1, rounds + 1):
        dealt = deck.deal(n, k)
        assert len(dealt) == k == len(set(dealt)) and set(dealt) <= set(range(n))
        counts.update(dealt)
        share = r * k / n  # after every round, not only the last
        assert all(math.floor(share) - 1 <= counts[i] <= math.ceil(share) for i in range(n)), \
            (r, counts)
    planned = math.ceil(rounds * k / n)  # clients.training.privacy.planned_rounds
    assert max(counts.values()) <= planned
    assert sum(counts.values()) == rounds * k


def test_uniform_sampling_is_the_plain_generators_and_balanced_differs_from_it() -> None:
    """A ShuffledDeck's own draws are random.Random's: uniform sampling samples exactly
    as before it existed; balanced sampling spreads participation that uniform does not."""
    grid = Nodes(6)
    uniform = ClientSampler(ShuffledDeck(3), clients_per_round=3, num_clients=6)
    plain = random.Random(3)
    for _ in range(12):
        assert uniform.sample(grid) == plain.sample(grid.get_node_ids(), 3)
    spread = {}
    for balanced in (False, True):
        sampler = ClientSampler(ShuffledDeck(0), 3, 6, balanced=balanced)
        counts = Counter(node for _ in range(10) for node in sampler.sample(grid))
        spread[balanced] = max(counts.values()) - min(counts.values())
    assert spread[True] == 0 and spread[False] > 0  # 10 rounds of 3 of 6: 5 each


def test_a_restored_deck_deals_what_the_uninterrupted_one_deals() -> None:
    """The state goes through torch.save / torch.load(weights_only=True), as checkpoints do."""
    import io

    one = ShuffledDeck(5)
    for _ in range(3):
        one.deal(6, 4)  # mid-deck: 12 dealt of two shuffles of 6
    buffer = io.BytesIO()
    torch.save({"sampling": one.getstate()}, buffer)
    buffer.seek(0)
    two = ShuffledDeck(999)
    two.setstate(torch.load(buffer, weights_only=True)["sampling"])
    assert [two.deal(6, 4) for _ in range(5)] == [one.deal(6, 4) for _ in range(5)]
    assert pickle.loads(pickle.dumps(one)).deal(6, 4) == one.deal(6, 4)


def test_an_older_checkpoints_plain_random_state_loads_with_an_empty_deck() -> None:
    deck = ShuffledDeck(1)
    deck.setstate(random.Random(8).getstate())
    assert deck.deck == [] and deck.random() == random.Random(8).random()


def test_bad_deals_and_a_plain_generator_for_balanced_sampling_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot deal 4 of 3 clients"):
        ShuffledDeck(0).deal(3, 4)
    with pytest.raises(TypeError, match="ShuffledDeck"):
        ClientSampler(random.Random(0), 2, 4, balanced=True)
