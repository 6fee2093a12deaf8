"""Privacy budget arithmetic for DP-SGD clients (Opacus accountants), and its state.

Accounting across federated rounds (PRIVACY_AND_MODELS.md): Opacus's
`make_private_with_epsilon` plans as if nothing had been spent, which over-spends in a
federation. Here each client sizes its noise multiplier ONCE for its whole planned
participation,

    sigma = get_noise_multiplier(eps_target, delta, q, steps = planned_rounds * local_steps),

trains every round with that sigma, and keeps its accountant history, a list of
(noise_multiplier, sample_rate, steps), across the rounds it actually joins. Its spent
epsilon is always recomputed from that history; a round that would take it past the
target is refused. No Flower here: the ClientApp stores `PrivacyState` in context.state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from scenarios.schema import PrivacySpec, Scenario
from scenarios.stream import total_rounds

Step = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps): Opacus's history


def sample_rate(num_examples: int, batch_size: int) -> float:
    """The Poisson rate q that Opacus's accountant records for these examples and batch
    size, which is what the guarantee is computed from: `make_private` takes
    1 / len(DPDataLoader), whose sampler draws at 1/m (m = ceil(n / batch), the plain
    DataLoader's length) but counts int(1 / (1/m)) batches, in floating point m - 1 for
    about 6% of m (93, 99, 105, ...). So q is read off Opacus's own sampler, never
    re-derived: the ledger plans, checks and reports with the accountant's figure (at
    worst slightly above the rate batches are really drawn at: conservative)."""
    batches = math.ceil(num_examples / batch_size)
    sampler = UniformWithReplacementSampler(num_samples=num_examples, sample_rate=1 / batches)
    return 1.0 / len(sampler)


def planned_rounds(scenario: Scenario) -> int:
    """Rounds a client expects to join: all rounds of every task x the share of clients
    sampled."""
    fed = scenario.federation
    return math.ceil(total_rounds(scenario) * fed.clients_per_round / fed.num_clients)


def epsilon_of(history: list[Step], delta: float, accountant: str) -> float:
    """Epsilon spent by a history, from a fresh Opacus accountant (0 for no history)."""
    if not history:
        return 0.0
    acc = create_accountant(accountant)
    acc.history = [tuple(h) for h in history]
    return float(acc.get_epsilon(delta))


def noise_for_budget(spec: PrivacySpec, q: float, total_steps: int) -> float:
    """The sigma that spends exactly (at most) the target epsilon over `total_steps`."""
    return float(get_noise_multiplier(target_epsilon=spec.target_epsilon, target_delta=spec.delta,
                                      sample_rate=q, steps=total_steps,
                                      accountant=spec.accountant))


@dataclass
class PrivacyState:
    """One client's privacy ledger: its sigma (sized once) and what it has spent."""

    partition_id: int
    noise_multiplier: float
    history: list[Step] = field(default_factory=list)

    def epsilon(self, spec: PrivacySpec) -> float:
        return epsilon_of(self.history, spec.delta, spec.accountant)

    def epsilon_after(self, spec: PrivacySpec, q: float, steps: int) -> float:
        """What epsilon would be after `steps` more steps at rate q."""
        return epsilon_of([*self.history, (self.noise_multiplier, q, steps)], spec.delta,
                          spec.accountant)

    def can_train(self, spec: PrivacySpec, q: float, steps: int) -> bool:
        # A relative slack absorbs get_noise_multiplier's own tolerance (0.01 in epsilon).
        return self.epsilon_after(spec, q, steps) <= spec.target_epsilon * (1 + 1e-9)

    def to_record(self) -> dict:
        """Plain lists of scalars, as a Flower ConfigRecord holds them."""
        return {"partition-id": self.partition_id, "noise-multiplier": self.noise_multiplier,
                "history-sigma": [float(h[0]) for h in self.history],
                "history-q": [float(h[1]) for h in self.history],
                "history-steps": [int(h[2]) for h in self.history]}

    @classmethod
    def from_record(cls, record: dict) -> PrivacyState:
        history = list(zip(record.get("history-sigma", []), record.get("history-q", []),
                           record.get("history-steps", []), strict=True))
        return cls(int(record["partition-id"]), float(record["noise-multiplier"]),
                   [(float(s), float(q), int(n)) for s, q, n in history])


def charge_unreported_round(record: dict, steps: int) -> dict:
    """A ledger record (PrivacyState.to_record) charged for one more round of `steps`
    steps at its sigma and the largest sampling rate in its history: what the server
    assumes a client spent in a round it was sent but whose reply never came (it may
    have trained, then hung or died). The client's own ledger replaces this guess with
    its next reply; a client that lost its state starts from it, erring on the side of
    spending. A ledger with no history yet is returned as it is (no rate to assume)."""
    ledger = PrivacyState.from_record(record)
    if not ledger.history:
        return record
    q = max(h[1] for h in ledger.history)
    ledger.history.append((ledger.noise_multiplier, q, steps))
    return ledger.to_record()
