"""A scenario submitted over HTTP -> a pending run in the store, or every problem with it.

Same loader and disk checks as `orthofed run`, plus what a network caller must not do:
read outside the server's scenarios and data folders (server.api.confine), choose
where the run writes (runs go to the server's runs folder, whatever `runs_dir` says),
ask for more than the server's caps (clients, rounds, local steps), or learn where the
server keeps its files (errors name folders relative to the scenarios folder).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from clients.checks import check_scenario
from scenarios.loader import ScenarioError, load_scenario, read_document
from scenarios.schema import Scenario, TrackingSpec
from scenarios.stream import total_rounds
from server.api.confine import outside_roots
from server.api.settings import ServeSettings
from server.runs.layout import PROJECT_ROOT, RunFolder, new_run_id
from server.runs.store import MetricsStore


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
    try:
        return read_document(path)
    except ScenarioError as exc:  # a broken shipped file: named as ./NAME.yaml, not by its path
        raise SubmissionError(422, [private(settings, e) for e in exc.errors]) from None


def submit_scenario(settings: ServeSettings, store: MetricsStore, document: Any,
                    shipped: str | None) -> str:
    """Validate, confine, write RUNS/<id>/scenario.yaml and record the run as pending."""
    if shipped is not None:
        document = shipped_document(settings, shipped)
    if not isinstance(document, dict):
        raise SubmissionError(422, ["body: a scenario must be a mapping (JSON object or YAML "
                                    f"mapping), got {type(document).__name__}; or use "
                                    "?shipped=NAME"])
    scenario = checked_scenario(settings, document)
    runs_dir = settings.runs_dir.resolve()
    scenario = scenario.model_copy(update={"runs_dir": runs_dir,
                                           "tracking": tracking_of(settings, scenario, document)})
    run_id = new_run_id(scenario.name)
    path = RunFolder.of(runs_dir, run_id).write_snapshot(scenario.model_dump(mode="json"))
    store.create_run(run_id, scenario.name, scenario.model_dump(mode="json"), str(path))
    return run_id


def checked_scenario(settings: ServeSettings, document: dict[str, Any]) -> Scenario:
    """The scenario if the schema, this server's caps, the confinement and the disk checks
    all pass, in that order (nothing is looked at on disk before the paths are known to
    be allowed); else a 422 with every problem of the first step that failed."""
    base = settings.scenarios_dir.resolve()
    try:
        scenario = load_scenario(document, base=base)
    except ScenarioError as exc:
        raise SubmissionError(422, [private(settings, e) for e in exc.errors]) from None
    errors = (over_caps(settings, scenario) or tracking_problems(scenario)
              or outside_roots(scenario, settings.readable_roots(), base, document)
              or check_scenario(scenario, base))
    if errors:
        raise SubmissionError(422, [private(settings, e) for e in errors])
    return scenario


REMOTE_TRACKING = ("http://", "https://")


def tracking_of(settings: ServeSettings, scenario: Scenario,
                document: dict[str, Any]) -> TrackingSpec:
    """A posted run's trackers: its own `tracking` section, else the server's settings
    (--tensorboard, --mlflow). Local MLflow stores are the server's: a posted run that
    asks for MLflow without naming a tracking server logs to the server's mlflow_uri."""
    tracking = (scenario.tracking if "tracking" in document
                else TrackingSpec(tensorboard=settings.tensorboard, mlflow=settings.mlflow))
    if tracking.mlflow and tracking.mlflow_uri is None:
        tracking = tracking.model_copy(update={"mlflow_uri": settings.mlflow_uri})
    return tracking


def tracking_problems(scenario: Scenario) -> list[str]:
    """A posted scenario's tracking.mlflow_uri must name a tracking server: a local
    store (sqlite:, file:, a path) would let a network caller write anywhere."""
    uri = scenario.tracking.mlflow_uri
    if uri is None or uri.startswith(REMOTE_TRACKING):
        return []
    return [f"tracking.mlflow_uri: a posted run may name a tracking server (http:// or "
            f"https://) only, got {uri!r}; local MLflow stores are this server's "
            "(orthofed serve --mlflow-uri, ORTHOFED_MLFLOW_URI)"]


def over_caps(settings: ServeSettings, scenario: Scenario) -> list[str]:
    """One line per cap of this server (ServeSettings.max_*) that the scenario exceeds."""
    fed, stream = scenario.federation, scenario.stream
    tasks = len(stream.tasks) if stream else 1
    rounds_where = ("stream.tasks" if stream and any(t.rounds for t in stream.tasks)
                    else "federation.rounds")
    caps = [
        ("federation.num_clients", settings.max_clients, fed.num_clients, "clients per run"),
        (rounds_where, settings.max_rounds, total_rounds(scenario),
         "rounds per run" + (f" (over all {tasks} tasks)" if tasks > 1 else "")),
        ("federation.local_steps", settings.max_local_steps, fed.local_steps,
         "local steps per round"),
    ]
    return [f"{where}: this server accepts at most {cap} {what}, got {value}"
            for where, cap, value, what in caps if cap is not None and value > cap]


def private(settings: ServeSettings, line: str) -> str:
    """`line` with the server's own folders named relative to the scenarios folder (and
    the home folder as ~). The checks already name paths that way; this also covers text
    they quote, such as the message of a model that fails to load."""
    base = settings.scenarios_dir.resolve()
    folders = {str(f.resolve()): os.path.relpath(f.resolve(), base)
               for f in (base, *settings.data_dirs, settings.runs_dir, PROJECT_ROOT)}
    folders[str(Path.home())] = "~"
    for folder in sorted(folders, key=len, reverse=True):
        if folder != "/":
            line = line.replace(folder, folders[folder])
    return line
