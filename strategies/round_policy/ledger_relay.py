"""The clients' privacy ledgers, relayed back to them.

Each DP client reports its ledger (strategies.ledger_record) with every reply; it goes
back with that partition's next train message, so a client process that lost its
context.state (a restarted SuperNode, a resumed run) carries on spending from its
recorded history instead of from zero. A sampled client whose reply brought no ledger
(it failed, hung or died, maybe after training) is charged a round.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Message

from strategies.client_replies import reported_ledgers
from strategies.ledger_record import charge_unreported_round


class LedgerRelay:
    """`ledgers` {partition: ledger record}: shared across a run's tasks, and saved in
    its checkpoints, by the caller that owns the dict. `local_steps`: what a round
    costs a client whose reply never came (0: nothing is charged)."""

    def __init__(self, ledgers: dict[int, dict] | None = None, local_steps: int = 0) -> None:
        self.ledgers = ledgers if ledgers is not None else {}
        self.local_steps = local_steps

    def ledger_for(self, partition: int | None) -> ConfigRecord | None:
        """The ledger to send to `partition` with its train message, if one is known."""
        ledger = self.ledgers.get(partition)
        return ConfigRecord(ledger) if ledger is not None else None

    def remember(self, replies: list[Message], sampled: dict[int, int | None]) -> None:
        """Keep each DP client's reported ledger; charge a round to the sampled clients
        (`sampled` {node: partition}) with a known ledger whose reply brought none."""
        reported = reported_ledgers(replies)
        for partition in set(sampled.values()) - set(reported):
            if partition in self.ledgers and self.local_steps:
                self.ledgers[partition] = charge_unreported_round(self.ledgers[partition],
                                                                  self.local_steps)
        self.ledgers.update(reported)
