"""Keep a scenario that came over the network inside the directories it may read.

A scenario names files (data paths) and possibly a model folder. From a local file that
is the user's business; from an HTTP body it must not make the server read /etc or
another user's runs. `outside_roots` lists every path of the scenario that resolves
(symlinks followed, `..` collapsed) outside the allowed roots, by its field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


def outside_roots(scenario: Scenario, roots: list[Path], base: Path | None = None,
                  document: Any = None) -> list[str]:
    """One error line per path of the scenario outside every root.

    With `base`, the folder the caller's relative paths resolve against, the lines name
    the allowed folders relative to it and each offending path as the caller wrote it
    (from `document`, else relative to `base`): a network caller learns which of its
    paths is refused, not where the server keeps its files.
    """
    allowed = [r.resolve() for r in roots]
    folders = ", ".join(relative(r, base) for r in allowed)
    errors = []
    for where, path in scenario_paths(scenario):
        real = resolved(path)
        if real is None or not any(real == root or root in real.parents for root in allowed):
            text = written(document, where)
            text = relative(path, base) if text is None else text
            errors.append(f"{where}: {text!r} is outside the directories this server may "
                          f"read ({folders}); use a path under one of them")
    return errors


def resolved(path: Path) -> Path | None:
    """`path` with symlinks followed and `..` collapsed; None for a name the OS refuses
    (a NUL byte in model.name), which is then outside every root."""
    try:
        return path.resolve()
    except (OSError, ValueError, RuntimeError):
        return None


def relative(path: Path, base: Path | None) -> str:
    """`path` as seen from `base` (as is without one, or when already relative)."""
    return os.path.relpath(path, base) if base and path.is_absolute() else str(path)


def written(document: Any, where: str) -> str | None:
    """The text at dotted path `where` of the raw document (list items by index), or None
    where it is not there as text (e.g. tasks filled in from stream.order)."""
    value = document
    for key in where.split("."):
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return None
    return value if isinstance(value, str) else None
