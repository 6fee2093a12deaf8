"""A sweep submitted over HTTP -> the sweep file to run, or every problem with it.

The checks of `orthofed sweep FILE` (scenarios.sweep: the file, then every scenario it
expands into), plus what server.api.submission asks of a posted scenario, applied to
every expanded scenario at each setting the search will try (a range's ends for random
and TPE search): this server's caps, tracking servers only, paths inside the scenarios
and data folders, then the disk checks. A posted sweep's relative paths resolve against
the scenarios folder, as a posted scenario's do (`base: quick.yaml` is the shipped
scenario); the file written for `orthofed sweep` lives in RUNS_DIR/sweeps/NAME/, so it
carries them absolute, its base inlined as validated.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from clients.checks import check_scenario
from scenarios.loader import ScenarioError, format_error, load_scenario, oversized
from scenarios.sweep import Study, Sweep, base_document, expand, scenario_document
from scenarios.sweep_spec import SweepSpec
from server.api.confine import outside_roots, relative, resolved
from server.api.settings import ServeSettings
from server.api.submission import SubmissionError, over_caps, private, tracking_problems

# The scenario fields that hold data paths (the loader resolves these against a folder).
PATH_FIELD = re.compile(r"^(data|stream\.tasks\.\d+)\.source\.(path|test|train(\.\d+)?)$"
                        r"|^stream\.benchmark_dir$")


@dataclass(frozen=True)
class SweepSubmission:
    """A posted sweep that passed every check: its name, the file to write, its spec."""

    name: str
    document: dict[str, Any]        # the sweep file: base inlined, paths absolute
    spec: dict[str, Any]            # as validated (JSON), what the store records


def submit_sweep(settings: ServeSettings, body: Any) -> SweepSubmission:
    """Validate a POST /sweeps body, `{"sweep": <the sweep file as a mapping>}`; a 422
    with every problem of the first step that fails (the file, its expansion, this
    server's rules, the disk)."""
    spec = parsed_spec(settings, sweep_of(body))
    folder = settings.scenarios_dir.resolve()
    document = spec.model_dump(mode="json")
    document["base"] = inline_base(settings, spec, folder)
    for section in ("grid", "methods", "tune"):
        document[section] = {path: absolute_paths(section, path, value, folder)
                             for path, value in document[section].items()}
    try:
        sweep = expand(SweepSpec.model_validate(document),
                       settings.runs_dir.resolve() / "sweeps" / spec.name)
    except ScenarioError as exc:
        raise SubmissionError(422, [private(settings, e) for e in exc.errors]) from None
    errors = sweep_problems(settings, sweep)
    if errors:
        raise SubmissionError(422, [private(settings, e) for e in errors])
    return SweepSubmission(spec.name, document, sweep.spec.model_dump(mode="json"))


def sweep_of(body: Any) -> dict[str, Any]:
    """The sweep mapping of a body `{"sweep": {...}}`."""
    if not isinstance(body, dict) or not isinstance(body.get("sweep"), dict):
        got = type(body.get("sweep") if isinstance(body, dict) else body).__name__
        raise SubmissionError(422, ['body: send {"sweep": <the sweep file as a mapping>}, '
                                    f"got {got} for the sweep"])
    if set(body) != {"sweep"}:
        extra = sorted(str(k) for k in body if k != "sweep")
        raise SubmissionError(422, [f"body: only 'sweep' is read, got also {extra}"])
    return body["sweep"]


def parsed_spec(settings: ServeSettings, document: dict[str, Any]) -> SweepSpec:
    """The sweep file's schema (scenarios.sweep_spec), every error by its path."""
    problems = oversized(document)
    if problems:  # refused before pydantic, as the scenario loader refuses them
        raise SubmissionError(422, problems)
    try:
        return SweepSpec.model_validate(document)
    except ValidationError as exc:
        raise SubmissionError(422, [private(settings, format_error(e))
                                    for e in exc.errors()]) from None


def inline_base(settings: ServeSettings, spec: SweepSpec, folder: Path) -> dict[str, Any]:
    """The base scenario as validated, data paths absolute: inline, or a file that must
    lie in the scenarios or data folders (checked before it is read)."""
    if not isinstance(spec.base, dict):
        file = spec.base if spec.base.is_absolute() else folder / spec.base
        real, roots = resolved(file), [r.resolve() for r in settings.readable_roots()]
        if real is None or not any(real == r or r in real.parents for r in roots):
            folders = ", ".join(relative(r, folder) for r in roots)
            raise SubmissionError(422, [f"base: {str(spec.base)!r} is outside the directories "
                                        f"this server may read ({folders}); use a path under "
                                        "one of them"])
    try:
        return base_document(spec, folder)
    except ScenarioError as exc:
        prefix = "base: " if isinstance(spec.base, dict) else ""  # a file's lines name it
        raise SubmissionError(422, [private(settings, prefix + e) for e in exc.errors]) from None


def absolute_paths(section: str, path: str, value: Any, folder: Path) -> Any:
    """An override section's entry (grid: a list or label -> value; methods: path ->
    value; tune: an axis) with each relative data path made absolute against `folder`."""
    if section == "grid":
        return ({label: at_path(path, v, folder) for label, v in value.items()}
                if isinstance(value, dict) else [at_path(path, v, folder) for v in value])
    if section == "methods":
        return {where: at_path(where, v, folder) for where, v in value.items()}
    if value.get("values") is not None:  # a tuned axis
        return {**value, "values": [at_path(path, v, folder) for v in value["values"]]}
    return value


def at_path(where: str, value: Any, folder: Path) -> Any:
    """`value`, set at dotted path `where` of a scenario, with the relative data paths
    in it (PATH_FIELD) made absolute against `folder`."""
    if isinstance(value, dict):
        return {k: at_path(f"{where}.{k}", v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [at_path(f"{where}.{i}", v, folder) for i, v in enumerate(value)]
    if isinstance(value, str) and PATH_FIELD.match(where) and not Path(value).is_absolute():
        return str(folder / value)
    return value


def sweep_problems(settings: ServeSettings, sweep: Sweep) -> list[str]:
    """This server's rules (caps, tracking, confinement) for every scenario the sweep
    will run; when they all pass, the disk checks of each study's first setting (as
    `orthofed sweep` does before it starts)."""
    errors: list[str] = []
    for study in sweep.studies:
        errors += study_problems(settings, sweep, study)
    if errors:
        return list(dict.fromkeys(errors))
    base = settings.scenarios_dir.resolve()
    for study in sweep.studies:
        scenario = load_scenario(first_document(sweep, study), base=sweep.folder)
        errors += [f"cell {study.cell}, method {study.method}: {line}"
                   for line in check_scenario(scenario, base)]
    return list(dict.fromkeys(errors))


def study_problems(settings: ServeSettings, sweep: Sweep, study: Study) -> list[str]:
    """The server-rule problems of one study's settings; a problem that every setting
    has is named once, by the study only."""
    base = settings.scenarios_dir.resolve()
    spec = sweep.spec
    tried = study.grid() if study.search_kind(spec.search) == "grid" else study.corners()
    found: dict[str, list[str]] = defaultdict(list)  # line -> settings that have it
    for setting in tried:
        document = scenario_document(study, setting, spec.seeds.tune[0], spec.name,
                                     sweep.folder)
        scenario = load_scenario(document, base=sweep.folder)
        shown = ", ".join(f"{k}={v}" for k, v in setting.items())
        for line in (over_caps(settings, scenario) + tracking_problems(scenario)
                     + outside_roots(scenario, settings.readable_roots(), base)):
            found[line].append(shown)
    where, lines = f"cell {study.cell}, method {study.method}", []
    for line, shown in found.items():
        if len(shown) == len(tried):  # every setting has it: a problem of the study
            lines.append(f"{where}: {line}")
        else:
            lines += [f"{where}, {setting}: {line}" for setting in shown]
    return lines


def first_document(sweep: Sweep, study: Study) -> dict[str, Any]:
    """The scenario of a study's first setting and first tuning seed."""
    search = study.search_kind(sweep.spec.search)
    first = study.grid()[0] if search == "grid" else study.corners()[0]
    return scenario_document(study, first, sweep.spec.seeds.tune[0], sweep.spec.name,
                             sweep.folder)
