"""Whether this Python has everything orthofed needs, and at versions its ranges admit.

Walks orthofed's requirements (pyproject.toml, no extras) and theirs, as pip would,
with markers evaluated here, and reports each package missing, each one installed at a
version outside a range some package asks for, and how many came from the kit's
folder (`site`) against the machine's own. Run by bench/device/run.sh after it installs
the kit's wheels: on the accelerator it says what the machine's packages lack; in the
CI smoke, that the kit's folder holds what is not already there.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def applies(req: Requirement, extras: frozenset[str]) -> bool:
    if req.marker is None:
        return True
    env = default_environment()
    return any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""}))


def report(site: Path | None) -> dict:
    """{"missing", "out_of_range", "from_kit", "from_machine"} for orthofed here."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [(Requirement(r), "orthofed") for r in project["dependencies"]]
    seen: set[tuple[str, frozenset[str]]] = set()
    missing, out_of_range, places = [], [], {}
    while todo:
        req, parent = todo.pop()
        name = canonicalize_name(req.name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(f"{name} (for {parent})")
            continue
        if not req.specifier.contains(dist.version, prereleases=True):
            out_of_range.append(f"{name} {dist.version} (for {parent}: {req.specifier})")
        where = Path(str(dist.locate_file(""))).resolve()
        places[name] = "kit" if site is not None and where.is_relative_to(site.resolve()) \
            else "machine"
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        todo += [(sub, name) for sub in map(Requirement, dist.requires or [])
                 if applies(sub, frozenset(req.extras))]
    return {"missing": sorted(set(missing)), "out_of_range": sorted(set(out_of_range)),
            "from_kit": sum(p == "kit" for p in places.values()),
            "from_machine": sum(p == "machine" for p in places.values())}
