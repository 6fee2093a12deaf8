"""Privacy budget arithmetic for DP-SGD clients (Opacus accountants), and its state.

Accounting across federated rounds (PRIVACY_AND_MODELS.md): Opacus's
`make_private_with_epsilon` plans as if nothing had been spent, which over-spends in a
federation. Here each client sizes its noise multiplier ONCE for its whole planned
participation,

    sigma = get_noise_multiplier(eps_target, delta, q, steps = planned_rounds * local_steps),

trains every round with that sigma, and keeps its accountant history, a list of
(noise_multiplier, sample_rate, steps), across the rounds it actually joins. Its spent
epsilon is always recomputed from that history; a round that would take it past the
target is refused.

A scenario may instead fix sigma itself (privacy.noise_multiplier: researchers compare
methods at equal noise and read off the epsilon each spent). Every client then trains
every round with that sigma; its history and epsilon are kept and reported exactly as
above, but there is no target to pass, so it never refuses a round. No Flower here: the
ClientApp stores `PrivacyState` in context.state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from opacus.accountants import create_accountant
from opacus.accountants.utils import MAX_SIGMA, get_noise_multiplier
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from scenarios.schema import PrivacySpec, Scenario
from scenarios.stream import total_rounds
from strategies.ledger_record import PrivacyLedger, Step


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


def planned_steps(scenario: Scenario) -> int:
    """DP-SGD steps a client plans its noise for: its planned rounds x local steps."""
    return planned_rounds(scenario) * scenario.federation.local_steps


def planned_sample_rate(train_sizes: list[int], batch_size: int) -> float:
    """The rate q a client plans its noise at: the largest over its tasks' training-set
    sizes (epsilon grows with q, so the plan stays an upper bound)."""
    return max(sample_rate(size, batch_size) for size in train_sizes)


def epsilon_of(history: list[Step], delta: float, accountant: str) -> float:
    """Epsilon spent by a history, from a fresh Opacus accountant (0 for no history)."""
    if not history:
        return 0.0
    acc = create_accountant(accountant)
    acc.load_state_dict({"history": [tuple(h) for h in history], "mechanism": acc.mechanism()})
    return float(acc.get_epsilon(delta))


def noise_for_budget(spec: PrivacySpec, q: float, total_steps: int) -> float:
    """The sigma that spends exactly (at most) the target epsilon over `total_steps`
    (privacy.target_epsilon; a scenario with a fixed noise_multiplier has none to size)."""
    if spec.target_epsilon is None:
        raise ValueError("noise_for_budget: privacy.target_epsilon is not set (the scenario "
                         f"fixes privacy.noise_multiplier {spec.noise_multiplier:g} instead)")
    return float(get_noise_multiplier(target_epsilon=spec.target_epsilon, target_delta=spec.delta,
                                      sample_rate=q, steps=total_steps,
                                      accountant=spec.accountant))


# The largest sigma Opacus's get_noise_multiplier tries (it doubles from 20 and gives up
# past MAX_SIGMA): a target it cannot reach there is "too low" for the plan.
SIGMA_CEILING = float(10 * 2 ** int(math.log2(MAX_SIGMA / 10)))


def smallest_reachable_epsilon(spec: PrivacySpec, q: float, total_steps: int) -> float:
    """The least target epsilon `noise_for_budget` can plan `total_steps` at rate q for:
    the epsilon spent at sigma = SIGMA_CEILING. Below it Opacus refuses ("The privacy
    budget is too low"), so a scenario asking for less is refused at validation."""
    return epsilon_of([(SIGMA_CEILING, q, total_steps)], spec.delta, spec.accountant)


@dataclass
class PrivacyState(PrivacyLedger):
    """One client's privacy ledger (its record format: strategies.ledger_record) and the
    epsilon it has spent and would spend."""

    def epsilon(self, spec: PrivacySpec) -> float:
        return epsilon_of(self.history, spec.delta, spec.accountant)

    def epsilon_after(self, spec: PrivacySpec, q: float, steps: int) -> float:
        """What epsilon would be after `steps` more steps at rate q."""
        return epsilon_of([*self.history, (self.noise_multiplier, q, steps)], spec.delta,
                          spec.accountant)

    def can_train(self, spec: PrivacySpec, q: float, steps: int) -> bool:
        """Whether `steps` more steps at rate q stay within the target epsilon; always
        with a fixed noise multiplier (no target: epsilon is only reported)."""
        if spec.target_epsilon is None:
            return True
        # A relative slack absorbs get_noise_multiplier's own tolerance (0.01 in epsilon).
        return self.epsilon_after(spec, q, steps) <= spec.target_epsilon * (1 + 1e-9)
