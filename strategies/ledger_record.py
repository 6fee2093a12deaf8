"""A client's privacy ledger as it travels between client and server, and the server's
charge for a round whose reply never came.

Pure (no Opacus): the server relays ledgers (strategies.round_policy.ledger_relay)
without computing epsilon; clients.training.privacy.PrivacyState adds the accountant arithmetic
on top of this record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

Step = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps): Opacus's history


@dataclass
class PrivacyLedger:
    """One client's ledger: its sigma (sized once) and the steps it has spent."""

    partition_id: int
    noise_multiplier: float
    history: list[Step] = field(default_factory=list)

    def to_record(self) -> dict:
        """Plain lists of scalars, as a Flower ConfigRecord holds them."""
        return {"partition-id": self.partition_id, "noise-multiplier": self.noise_multiplier,
                "history-sigma": [float(h[0]) for h in self.history],
                "history-q": [float(h[1]) for h in self.history],
                "history-steps": [int(h[2]) for h in self.history]}

    @classmethod
    def from_record(cls, record: dict) -> Self:
        history = list(zip(record.get("history-sigma", []), record.get("history-q", []),
                           record.get("history-steps", []), strict=True))
        return cls(int(record["partition-id"]), float(record["noise-multiplier"]),
                   [(float(s), float(q), int(n)) for s, q, n in history])


def charge_unreported_round(record: dict, steps: int) -> dict:
    """A ledger record (PrivacyLedger.to_record) charged for one more round of `steps`
    steps at its sigma and the largest sampling rate in its history: what the server
    assumes a client spent in a round it was sent but whose reply never came (it may
    have trained, then hung or died). The client's own ledger replaces this guess with
    its next reply; a client that lost its state starts from it, erring on the side of
    spending. A ledger with no history yet is returned as it is (no rate to assume)."""
    ledger = PrivacyLedger.from_record(record)
    if not ledger.history:
        return record
    q = max(h[1] for h in ledger.history)
    ledger.history.append((ledger.noise_multiplier, q, steps))
    return ledger.to_record()
