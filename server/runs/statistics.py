"""Statistics over seeds, as papers report them, for comparisons of methods.

Pure functions of plain floats (no Flower, no store). A method's score over n seeds is
reported as its mean, sample standard deviation and 95 % Student-t interval,
mean +- t(0.975, n - 1) sd / sqrt(n). Two methods run at the same seeds (same clients,
same client sampling, same initial model) are compared by their paired differences
d_i = x_i - y_i: mean(d) with its t-interval and the two-sided p-value of the paired
t-test, t = mean(d) / (sd(d) / sqrt(n)) with n - 1 degrees of freedom. A table of such
comparisons is corrected for multiplicity with Holm's step-down method (Holm 1979):
with p-values sorted ascending p_(1) <= ... <= p_(m), the adjusted
p_(i)' = max_{j <= i} min(1, (m - j + 1) p_(j)). Tested against scipy.stats.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Spread:
    """A score over seeds: n, mean, sample sd and the t-interval's half width (None
    where n < 2 gives no spread), and its extremes."""

    n: int
    mean: float
    sd: float | None
    ci95: float | None
    min: float
    max: float

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference:
    """mean(x - y) over paired seeds, its sd, t-interval half width and two-sided
    p-value (None where n < 2, or where every difference is the same and nonzero: a
    t statistic over a zero sd is no test)."""

    n: int
    mean: float
    sd: float | None
    ci95: float | None
    p_value: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def t_half_width(sd: float, n: int, confidence: float = CONFIDENCE) -> float:
    """t(1 - (1 - confidence) / 2, n - 1) * sd / sqrt(n)."""
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)


def spread(values: Sequence[float]) -> Spread:
    """The spread of `values` (one per seed); at least one value."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("spread of no values")
    n = len(values)
    sd = statistics.stdev(values) if n > 1 else None
    return Spread(n=n, mean=statistics.fmean(values), sd=sd,
                  ci95=t_half_width(sd, n) if sd is not None else None,
                  min=min(values), max=max(values))


def paired_difference(x: Sequence[float], y: Sequence[float]) -> PairedDifference:
    """x - y paired by position (seed): mean, sd, t-interval and the paired t-test's
    two-sided p-value, 2 (1 - F_t(|t|; n - 1))."""
    if len(x) != len(y) or not x:
        raise ValueError(f"paired values need equal, non-zero lengths, got {len(x)} and {len(y)}")
    diffs = [float(a) - float(b) for a, b in zip(x, y, strict=True)]
    n, mean = len(diffs), statistics.fmean(diffs)
    if n < 2:
        return PairedDifference(n=n, mean=mean, sd=None, ci95=None, p_value=None)
    sd = statistics.stdev(diffs)
    if sd == 0.0:  # identical runs: no difference at all, or a constant one (no test)
        return PairedDifference(n=n, mean=mean, sd=0.0, ci95=0.0,
                                p_value=1.0 if mean == 0.0 else None)
    t = mean / (sd / math.sqrt(n))
    p = 2.0 * float(stats.t.sf(abs(t), n - 1))
    return PairedDifference(n=n, mean=mean, sd=sd, ci95=t_half_width(sd, n), p_value=p)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values, in the order given; a None (no test) stays None and is
    not counted among the m hypotheses."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(tested)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted
