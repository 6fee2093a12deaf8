"""Read a sweep file and expand it into full scenarios, every error listed at once.

A sweep expands into studies, one per grid cell and method: the base scenario with the
cell's and the method's overrides. A study's settings (its tuned axes' values) and a
seed give one scenario, validated by the scenario loader like any file. Every study is
checked before anything runs (its grid points, or a range's ends for random and TPE
search), each error naming its cell, method and path. A scenario's digest (its
validated content, name and description left out) keys its run: a sweep that resumes,
or another sweep asking for the same scenario, never runs it again.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from scenarios.loader import ScenarioError, format_error, load_scenario, read_document
from scenarios.schema import Scenario
from scenarios.sweep_spec import SearchSpec, SweepSpec, TuneAxis, cell_labels


@dataclass(frozen=True)
class Study:
    """One grid cell and method: the document its settings override, and its axes."""

    cell: str                       # the cell's labels joined by '.', 'all' without a grid
    method: str
    document: dict[str, Any]        # base + cell + method, validated (compact), paths absolute
    axes: dict[str, TuneAxis] = field(default_factory=dict)  # the tuned axes that apply here

    @property
    def key(self) -> str:
        return f"{self.cell}/{self.method}"

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the axes' grid points (one empty setting without axes)."""
        names = list(self.axes)
        return [dict(zip(names, values, strict=True)) for values in
                itertools.product(*(self.axes[n].grid_points() for n in names))]

    def search_kind(self, search: SearchSpec) -> str:
        """The search this study runs: random or TPE over categorical axes whose whole
        grid fits in `trials` is that grid (every setting once, none drawn twice)."""
        if (search.kind != "grid" and all(a.values is not None for a in self.axes.values())
                and len(self.grid()) <= search.trials):
            return "grid"
        return search.kind

    def planned_runs(self, spec: SweepSpec) -> int:
        """Runs planned: its settings times the tuning seeds, then the report seeds
        (random and TPE: `trials` settings; pruning may stop some early)."""
        settings = 0
        if self.axes:
            kind = self.search_kind(spec.search)
            settings = len(self.grid()) if kind == "grid" else spec.search.trials
        return settings * len(spec.seeds.tune) + len(spec.seeds.report)

    def corners(self) -> list[dict[str, Any]]:
        """The settings checked before random or TPE search: every axis at each end."""
        names = list(self.axes)
        ends = [(a.values[0], a.values[-1]) if a.values is not None else (a.low, a.high)
                for a in self.axes.values()]
        return [dict(zip(names, values, strict=True)) for values in itertools.product(*ends)]


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file: its spec, where it lives, and its studies."""

    spec: SweepSpec
    folder: Path                    # relative paths of the file resolve against it
    studies: tuple[Study, ...]


def load_sweep(path: str | Path) -> Sweep:
    """Read, validate and expand a sweep file; ScenarioError lists every problem."""
    path = Path(path)
    document = read_document(path)
    try:
        spec = SweepSpec.model_validate(document)
    except ValidationError as exc:
        raise ScenarioError([format_error(e) for e in exc.errors()]) from None
    return expand(spec, path.resolve().parent)


def expand(spec: SweepSpec, folder: Path) -> Sweep:
    """The studies of `spec` (relative paths against `folder`), each checked at the
    settings it will run (grid points, or a range's ends)."""
    base = base_document(spec, folder)
    studies, errors = [], []
    for cell, overrides in cells(spec):
        for method, method_overrides in spec.methods.items():
            where = f"cell {cell}, method {method}"
            try:
                document = validated({**overrides, **method_overrides}, base, folder)
            except ScenarioError as exc:
                errors += [f"{where}: {line}" for line in exc.errors]
                continue
            full = Scenario.model_validate(document).model_dump(mode="json")
            axes = {p: a for p, a in spec.tune.items() if section_present(full, p)}
            study = Study(cell, method, document, axes)
            studies.append(study)
            errors += setting_errors(study, spec, folder, where)
            if axes and not full["data"]["validation_fraction"]:
                errors.append(f"{where}: data.validation_fraction: tuning reads "
                              f"{spec.selection.metric}, which needs a validation split: "
                              "set it above 0 (e.g. 0.1), got 0")
    if errors:
        raise ScenarioError(errors)
    return Sweep(spec, folder, tuple(studies))


def base_document(spec: SweepSpec, folder: Path) -> dict[str, Any]:
    """The base scenario, validated, as a mapping with absolute data paths."""
    if isinstance(spec.base, dict):
        scenario = load_scenario(spec.base, base=folder)
    else:
        file = spec.base if spec.base.is_absolute() else folder / spec.base
        try:
            scenario = load_scenario(file)
        except ScenarioError as exc:
            raise ScenarioError([f"base ({file.name}): {line}" for line in exc.errors]) from None
    return compact(scenario)


def compact(scenario: Scenario) -> dict[str, Any]:
    """A scenario as a mapping of what differs from the defaults: an override then
    replaces exactly what it names (`strategy.name: ffa-lora` on a FedSVD base carries
    no FedSVD-only field at its default along)."""
    return scenario.model_dump(mode="json", exclude_defaults=True)


def cells(spec: SweepSpec) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, overrides) of every combination of the grid's values."""
    axes = cell_labels(spec)
    if not axes:
        yield "all", {}
        return
    for combination in itertools.product(*(labels.items() for labels in axes.values())):
        label = ".".join(name for name, _ in combination)
        yield label, {path: value for path, (_, value) in zip(axes, combination, strict=True)}


def setting_errors(study: Study, spec: SweepSpec, folder: Path, where: str) -> list[str]:
    """Every problem of the study's settings that will run (its first tuning seed)."""
    settings = study.grid() if study.search_kind(spec.search) == "grid" else study.corners()
    errors: list[str] = []
    for setting in settings:
        try:
            scenario_document(study, setting, spec.seeds.tune[0], spec.name, folder)
        except ScenarioError as exc:
            shown = ", ".join(f"{k}={v}" for k, v in setting.items())
            errors += [f"{where}, {shown}: {line}" for line in exc.errors]
    return sorted(set(errors))


def scenario_document(study: Study, setting: dict[str, Any], seed: int, sweep: str,
                      folder: Path) -> dict[str, Any]:
    """The validated scenario of one setting and seed, named after the sweep, the study
    and the setting (a name holds at most 64 characters: a digest keeps it unique)."""
    document = validated({**setting, "seed": seed}, study.document, folder)
    tag = digest({**document, "seed": 0})[:6]
    stem = f"{sweep}.{study.cell}.{study.method}"[: 64 - len(tag) - 1]
    document["name"] = f"{stem}-{tag}"
    return document


def validated(overrides: dict[str, Any], document: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`document` with each dotted path set to its value, validated by the scenario
    loader (ScenarioError on a problem), as a mapping."""
    updated = copy.deepcopy(document)
    for path, value in overrides.items():
        set_path(updated, path, copy.deepcopy(value))
    return compact(load_scenario(updated, base=folder))


def set_path(document: dict[str, Any], path: str, value: Any) -> None:
    """document[a][b][c] = value for path 'a.b.c'; missing or null sections on the way
    become mappings (a grid may set `privacy.target_epsilon` on a non-private base)."""
    *parents, last = path.split(".")
    node = document
    for name in parents:
        if not isinstance(node.get(name), dict):
            node[name] = {}
        node = node[name]
    node[last] = value


def section_present(document: dict[str, Any], path: str) -> bool:
    """Whether the section holding `path` exists in `document` (a tuned axis of an
    absent section, e.g. privacy.max_grad_norm without privacy, is not tuned there)."""
    node: Any = document
    for name in path.split(".")[:-1]:
        node = node.get(name) if isinstance(node, dict) else None
        if node is None:
            return False
    return isinstance(node, dict)


def digest(document: dict[str, Any]) -> str:
    """What a run is, as a hash: the validated scenario without its name and
    description, and without fields at their defaults (a field added to the schema
    later, at a default that keeps today's behaviour, leaves every digest as it was)."""
    content = Scenario.model_validate(document).model_dump(
        mode="json", exclude_defaults=True, exclude={"name", "description"})
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:20]
