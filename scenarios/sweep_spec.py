"""Sweep files: many runs as one experiment, tuned on validation data, reported on test.

A sweep names a base scenario, the methods to compare (each a set of overrides of the
base), a grid of cells (every combination of the grid's values: tasks, privacy settings,
...), the axes tuned per cell and method (a learning rate on a log grid, a clip norm),
the seeds used for tuning and the fresh seeds the chosen setting is reported on, the
metric that selects (a validation metric: tuning never reads test data) and the method
the others are compared with, paired by seed.

Overrides are dotted paths into the scenario (`federation.optimizer.lr`) or whole
sections (`privacy`); a value replaces exactly what is at its path. A tuned axis whose
section is absent from a cell (`privacy.max_grad_norm` where `privacy` is null) is not
tuned there. server.orchestration.sweep expands and runs the file.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from scenarios.spec_base import Items, LaxPath, Spec

# A dotted path into a scenario: section names and field names.
DOTTED = r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$"
LABEL = r"^[A-Za-z0-9._-]+$"
Label = Annotated[str, Field(min_length=1, max_length=40, pattern=LABEL)]
Scalar = str | int | float | bool | None
MAX_POINTS = 10_000  # a grid beyond this is a mistake, not an experiment


class TuneAxis(Spec):
    """One tuned hyper-parameter: explicit `values`, or a range (`low`, `high`, `log`)
    that a grid search splits into `num` points and random / TPE search samples."""

    values: Items[Scalar] | None = Field(
        None, min_length=1, description="The values to try (a grid axis; categorical for "
        "random and TPE search).")
    low: float | None = Field(None, description="A range's lower end.")
    high: float | None = Field(None, description="A range's upper end (included).")
    log: bool = Field(False, description="A log-scaled range (learning rates): grid points "
                      "evenly spaced in log(value), sampled log-uniformly.")
    num: int = Field(5, ge=2, le=100, description="Grid search: points of a range, ends included.")

    @model_validator(mode="after")
    def _values_or_range(self) -> TuneAxis:
        if (self.values is None) == (self.low is None or self.high is None):
            raise ValueError("give either values: [...] or a range (low and high), not "
                             f"{'both' if self.values is not None else 'neither'}")
        if self.values is None:
            if not self.low < self.high:
                raise ValueError(f"low must be < high, got low {self.low:g}, high {self.high:g}")
            if self.log and self.low <= 0:
                raise ValueError(f"a log range needs low > 0, got {self.low:g}")
        return self

    def grid_points(self) -> tuple[Scalar, ...]:
        """The values a grid search tries: `values`, else `num` points from low to high
        (geometric when `log`), each rounded to 6 significant digits."""
        if self.values is not None:
            return self.values
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high)
            points = [math.exp(lo + (hi - lo) * i / (self.num - 1)) for i in range(self.num)]
        else:
            points = [self.low + (self.high - self.low) * i / (self.num - 1) for i in range(self.num)]
        return tuple(float(f"{p:.6g}") for p in points)


class SearchSpec(Spec):
    """How each cell and method's settings are searched (Optuna)."""

    kind: Literal["grid", "random", "tpe"] = Field(
        "grid", description="'grid': every combination of the axes' grid points; 'random': "
        "Optuna's RandomSampler; 'tpe': Optuna's TPESampler. Both draw `trials` settings.")
    trials: int | None = Field(None, ge=1, le=MAX_POINTS, description="random, tpe: settings "
                               "tried per cell and method (required there; unused by grid).")
    pruner: Literal["none", "median"] = Field(
        "none", description="'median': Optuna's MedianPruner stops a setting whose mean "
        "selection metric over its tuning seeds, at some round, is below the median of "
        "earlier settings at that round (after `warmup_rounds`); its runs are cancelled.")
    warmup_rounds: int = Field(5, ge=0, description="Rounds before a setting can be pruned.")
    startup_trials: int = Field(3, ge=0, description="Settings finished before pruning starts.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the random and TPE samplers.")

    @model_validator(mode="after")
    def _trials_for_sampling(self) -> SearchSpec:
        if self.kind != "grid" and self.trials is None:
            raise ValueError(f"trials: required for search {self.kind!r} (settings to try)")
        return self


class SeedsSpec(Spec):
    """Seeds for tuning and for the report: the report's seeds are fresh, so the chosen
    setting is not scored on the runs that chose it."""

    tune: Items[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field(
        (0, 1), min_length=1, description="Seeds each tuned setting runs with; its score is "
        "the mean over them (unused when nothing is tuned).")
    report: Items[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field(
        (100, 101, 102, 103, 104), min_length=1, description="Fresh seeds the chosen setting "
        "runs with for the report (5 or more for a paper's interval).")

    @model_validator(mode="after")
    def _distinct(self) -> SeedsSpec:
        for name, seeds in (("tune", self.tune), ("report", self.report)):
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"seeds.{name}: each seed once, got {list(seeds)}")
        return self


RoundMetric = Annotated[str, Field(min_length=1, pattern=r"^[a-z0-9-]+$|^tasks\.[a-z]+$")]


class SelectionSpec(Spec):
    """What picks a cell and method's setting: a validation metric, never a test one."""

    metric: RoundMetric = Field("val-acc", description="A per-round validation metric of "
                                "the server's evaluation (data.validation_fraction > 0 records "
                                "val-acc and val-loss).")
    mode: Literal["max", "min"] = Field("max", description="Whether larger is better.")
    last_rounds: int = Field(5, ge=1, description="Score of a run: the mean of the metric "
                             "over its last this many rounds (steadier than the final round).")

    @field_validator("metric")
    @classmethod
    def _validation_only(cls, metric: str) -> str:
        if not metric.startswith("val-"):
            raise ValueError(f"tuning must read validation metrics only (val-...), got "
                             f"{metric!r}: test metrics are for the report")
        return metric


class ReportSpec(Spec):
    """What the report gives for each chosen setting over its fresh seeds."""

    metrics: Items[RoundMetric] = Field(
        ("eval-acc",), min_length=1, description="Metrics reported (the first is the "
        "headline): a per-round metric (eval-acc: the test split), the mean over the last "
        "`last_rounds` rounds; or a stream's summary, tasks.aa, tasks.bwt, tasks.fwt.")
    last_rounds: int = Field(5, ge=1, description="Rounds averaged per run for per-round metrics.")


class SweepSpec(Spec):
    """A sweep file, as read."""

    name: str = Field(..., min_length=1, max_length=48, pattern=LABEL,
                      description="The sweep's name (letters, digits, . _ -): its folder "
                      "and its id in the store and the API.")
    description: str = Field("", description="Free text for humans.")
    base: LaxPath | dict[str, Any] = Field(
        ..., description="The base scenario: a file (relative: to the sweep file) or an "
        "inline scenario mapping.")
    methods: dict[Label, dict[str, Any]] = Field(
        ..., min_length=1, description="The methods compared: label -> overrides of the "
        "base (dotted paths or sections), e.g. fedsvd: {strategy: {name: fedsvd}}.")
    grid: dict[Annotated[str, Field(pattern=DOTTED)], Items[Any] | dict[Label, Any]] = Field(
        default_factory=dict, description="Cells: dotted path -> its values (a list) or "
        "label -> value; every combination is a cell.")
    tune: dict[Annotated[str, Field(pattern=DOTTED)], TuneAxis] = Field(
        default_factory=dict, description="Axes tuned per cell and method: dotted path -> axis.")
    search: SearchSpec = Field(default_factory=SearchSpec, description="How settings are searched.")
    seeds: SeedsSpec = Field(default_factory=SeedsSpec, description="Tuning and report seeds.")
    selection: SelectionSpec = Field(default_factory=SelectionSpec,
                                     description="What picks the setting.")
    report: ReportSpec = Field(default_factory=ReportSpec, description="What is reported.")
    reference: Label | None = Field(None, description="The method every other one is "
                                    "compared with, paired by seed; None: the first method.")

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        if self.reference is not None and self.reference not in self.methods:
            raise ValueError(f"reference: {self.reference!r} is not one of the methods "
                             f"{sorted(self.methods)}")
        shared = set(self.seeds.tune) & set(self.seeds.report)
        if self.tune and shared:  # without tuning, nothing is chosen on any seed
            raise ValueError(f"seeds: seeds.report must be fresh (none in seeds.tune) when "
                             f"settings are tuned, got {sorted(shared)} in both")
        for path, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{path}: needs at least one value")
        points = math.prod(len(v) for v in self.grid.values()) * len(self.methods)
        if self.search.kind == "grid":
            points *= math.prod(len(a.grid_points()) for a in self.tune.values())
        if points > MAX_POINTS:
            raise ValueError(f"the sweep expands to {points} settings; at most {MAX_POINTS}")
        return self

    @property
    def reference_method(self) -> str:
        return self.reference or next(iter(self.methods))


def cell_labels(spec: SweepSpec) -> dict[str, dict[str, Any]]:
    """Each grid axis's values by label: a list's values get labels of their own
    (`axis=value`, shortened), a mapping's keys are its labels."""
    return {path: dict(values) if isinstance(values, dict)
            else {value_label(v): v for v in values} for path, values in spec.grid.items()}


def value_label(value: Any) -> str:
    """A short label of a grid value: a path's last name, a number, a word; a mapping
    or list by its first items."""
    if isinstance(value, dict):
        value = "-".join(f"{k}{v}" for k, v in list(value.items())[:2])
    text = str(value).rstrip("/").rsplit("/", 1)[-1] if value is not None else "none"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:40] or "_"
