"""Keep a scenario that came over the network inside the directories it may read.

A scenario names files (data paths) and possibly a model folder. From a local file that
is the user's business; from an HTTP body it must not make the server read /etc or
another user's runs. `outside_roots` lists every path of the scenario that resolves
(symlinks followed, `..` collapsed) outside the allowed roots, by its field.
"""

from __future__ import annotations

from pathlib import Path

from scenarios.schema import ClBenchmarkSource, JsonlSource, Scenario

BUILT_IN_MODELS = ("tiny-bert", "minilm")


def scenario_paths(scenario: Scenario) -> list[tuple[str, Path]]:
    """(field path, file or folder) of everything the scenario reads from disk."""
    sources = [("data.source", scenario.data.source)]
    if scenario.stream is not None:
        sources += [(f"stream.tasks.{i}.source", t.source)
                    for i, t in enumerate(scenario.stream.tasks)]
    paths: list[tuple[str, Path]] = []
    for where, source in sources:
        if isinstance(source, ClBenchmarkSource):
            paths.append((f"{where}.path", source.path))
        elif isinstance(source, JsonlSource):
            paths += [(f"{where}.train.{i}", p) for i, p in enumerate(source.train)]
            paths.append((f"{where}.test", source.test))
    if scenario.model.name not in BUILT_IN_MODELS:
        paths.append(("model.name", Path(scenario.model.name)))
    return paths


def outside_roots(scenario: Scenario, roots: list[Path]) -> list[str]:
    """One error line per path of the scenario outside every root."""
    allowed = [r.resolve() for r in roots]
    errors = []
    for where, path in scenario_paths(scenario):
        real = path.resolve()
        if not any(real == root or root in real.parents for root in allowed):
            shown = ", ".join(str(r) for r in allowed)
            errors.append(f"{where}: {str(path)!r} is outside the directories this server may "
                          f"read ({shown}); use a path under one of them")
    return errors
