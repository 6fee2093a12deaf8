"""Reading replies and the ledger record, with hand-built replies (no simulation)."""

from __future__ import annotations

import numpy as np

from strategies.client_replies import in_partition_order, partition_of_reply, split_replies
from strategies.ledger_record import PrivacyLedger, charge_unreported_round
from tests.strategies.replies import error_reply, train_reply


def test_an_error_gets_the_partition_its_node_was_sampled_as() -> None:
    replies = [error_reply(8, "ValueError: bad row"), error_reply(9, "boom"),
               train_reply(7, 0, {"w": np.ones(2)}, 10)]
    per_client, failures = split_replies(replies, sampled={7: 0, 8: 1})
    assert list(per_client) == [0]
    # A reason is never read for a partition, whatever it says; a node the server did
    # not sample has none.
    assert failures == [(1, "8", "ValueError: bad row"), (None, "9", "boom")]
    _, failures = split_replies([error_reply(8, "partition-id=5: boom")], sampled={8: 1})
    assert failures == [(1, "8", "partition-id=5: boom")]


def test_replies_are_put_in_partition_order() -> None:
    replies = [train_reply(10 + p, p, {"w": np.ones(1)}, 1) for p in (2, 0, 1)]
    assert [partition_of_reply(m) for m in in_partition_order(replies)] == [0, 1, 2]


def test_the_ledger_record_round_trips_and_an_unreported_round_is_charged() -> None:
    ledger = PrivacyLedger(3, 1.5, [(1.5, 0.1, 4), (1.5, 0.2, 4)])
    assert PrivacyLedger.from_record(ledger.to_record()) == ledger
    charged = PrivacyLedger.from_record(charge_unreported_round(ledger.to_record(), 6))
    assert charged.history == [*ledger.history, (1.5, 0.2, 6)]  # its sigma, its largest q
    fresh = PrivacyLedger(3, 1.5).to_record()
    assert charge_unreported_round(fresh, 6) is fresh  # no rate to assume yet
