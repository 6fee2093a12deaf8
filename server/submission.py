"""A scenario submitted over HTTP -> a pending run in the store, or every problem with it.

Same loader and disk checks as `orthofed run`, plus what a network caller must not do:
read outside the server's scenarios and data folders (scenarios.confine) or choose
where the run writes (runs go to the server's runs folder, whatever `runs_dir` says).
"""

from __future__ import annotations

from typing import Any

import yaml

from scenarios.checks import check_scenario
from scenarios.confine import outside_roots
from scenarios.loader import ScenarioError, load_scenario, read_document
from server.cli import new_run_id
from server.settings import ServeSettings
from server.store import MetricsStore


class SubmissionError(Exception):
    """HTTP status and the problems, one line each."""

    def __init__(self, status: int, errors: list[str] | str) -> None:
        super().__init__(errors)
        self.status, self.errors = status, errors


def shipped_document(settings: ServeSettings, name: str) -> dict[str, Any]:
    """scenarios/NAME.yaml of this server; 404 naming the shipped ones otherwise."""
    folder = settings.scenarios_dir.resolve()
    path = (folder / f"{name}.yaml").resolve()
    if path.parent != folder or not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise SubmissionError(404, f"shipped: no scenario {name!r}; shipped: {known}")
    return read_document(path)


def submit_scenario(settings: ServeSettings, store: MetricsStore, document: Any,
                    shipped: str | None) -> str:
    """Validate, confine, write RUNS/<id>/scenario.yaml and record the run as pending."""
    if shipped is not None:
        document = shipped_document(settings, shipped)
    if not isinstance(document, dict):
        raise SubmissionError(422, ["body: a scenario must be a mapping (JSON object or YAML "
                                    f"mapping), got {type(document).__name__}; or use "
                                    "?shipped=NAME"])
    try:
        scenario = load_scenario(document, base=settings.scenarios_dir.resolve())
    except ScenarioError as exc:
        raise SubmissionError(422, exc.errors) from None
    errors = outside_roots(scenario, settings.readable_roots())
    if errors:
        raise SubmissionError(422, errors)  # never look at paths it may not read
    errors = check_scenario(scenario)
    if errors:
        raise SubmissionError(422, errors)
    runs_dir = settings.runs_dir.resolve()
    scenario = scenario.model_copy(update={"runs_dir": runs_dir})
    run_id = new_run_id(scenario.name)
    path = runs_dir / run_id / "scenario.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False))
    store.create_run(run_id, scenario.name, scenario.model_dump(mode="json"), str(path))
    return run_id


