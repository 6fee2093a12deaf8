"""What a private run's epsilon covers, read off its scenario.

DP-SGD noise covers the tensors a client sends. Anything else computed from a client's
data and released without noise is outside the (epsilon, delta) guarantee; so is noise
whose seed the server knows. A scenario can opt into each, for debugging or for
monitoring; a run that did is marked, with the same words, in `--json`, the API and
the report. Works on the scenario as the store keeps it (validated, then JSON), so a
reader needs neither the file nor the schema's classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scenarios.strategy_spec import PRESERVING_STRATEGIES

UNNOISED_METRICS = "epsilon excludes reported metrics (clients' training loss and local " \
                   "eval, computed on their data without noise: privacy.report_unnoised_metrics)"
DP_DIAGNOSTICS = "epsilon excludes the DP diagnostics (clients' clipped fraction and " \
                 "noise-to-signal ratio, computed without noise: privacy.report_dp_diagnostics)"
IMPORTANCE_ROWS = "epsilon excludes the OSFT importance sample (the server reads clients' " \
                  "training rows: strategy.importance_data = 'train')"
SEEDED_NOISE = "no DP guarantee: the noise and Poisson batches are derived from the scenario's " \
               "seed, so whoever holds the scenario can remove the noise " \
               "(privacy.reproducible_noise_voids_guarantee)"


def importance_data(strategy: Mapping[str, Any], private: bool) -> str:
    """Which rows OSFT's adaptive rule measures layer importance on: the strategy's
    choice, else the clients' training rows without privacy and the server's held-out
    test split with it (the server evaluates on that split anyway: no client data)."""
    chosen = strategy.get("importance_data")
    return chosen if chosen is not None else ("test" if private else "train")


def privacy_disclosure(scenario: Mapping[str, Any]) -> dict[str, Any]:
    """{"noise": "os-entropy" | "seeded", "excludes": [why, ...]} for a private
    scenario (`excludes` empty when epsilon covers everything a client releases); {} for
    a non-private one."""
    privacy = scenario.get("privacy")
    if not privacy:
        return {}
    strategy = scenario.get("strategy") or {}
    excludes = []
    if privacy.get("reproducible_noise_voids_guarantee"):
        excludes.append(SEEDED_NOISE)
    if privacy.get("report_unnoised_metrics"):
        excludes.append(UNNOISED_METRICS)
    if privacy.get("report_dp_diagnostics"):
        excludes.append(DP_DIAGNOSTICS)
    if (strategy.get("name") in PRESERVING_STRATEGIES and strategy.get("rank_rule", "adaptive") == "adaptive"
            and importance_data(strategy, private=True) == "train"):
        excludes.append(IMPORTANCE_ROWS)
    seeded = bool(privacy.get("reproducible_noise_voids_guarantee"))
    return {"noise": "seeded" if seeded else "os-entropy", "excludes": excludes}


def privacy_note(scenario: Mapping[str, Any]) -> str | None:
    """One line for tables and the API: what epsilon does not cover; None when it covers
    all (or the run is not private)."""
    excludes = privacy_disclosure(scenario).get("excludes")
    return "; ".join(excludes) if excludes else None
