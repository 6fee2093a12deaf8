"""The ranges in pyproject.toml, the exact set in constraints.txt, and what they resolve
to on other Pythons and in a GPU environment that brings its own torch.

Resolution checks ask uv (a dependency of flwr, so always installed) to resolve for a
Python and platform other than this one's, from PyPI: `uv pip compile` reads wheel
metadata without downloading the wheels (about 10 s). Without PyPI they skip, saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# What the accelerator this project borrows (bench/device) already has, by version
# (the device tool's KINDS.md); orthofed must install beside them without replacing any.
ACCELERATOR = {"torch": "2.11.0", "transformers": "5.17.0", "numpy": "2.5.2",
               "accelerate": "1.15.0", "huggingface-hub": "1.33.0", "tokenizers": "0.23.2",
               "safetensors": "0.8.0", "sentence-transformers": "6.0.1"}
PLATFORM = "x86_64-manylinux_2_28"


def requirements() -> list[Requirement]:
    """Every requirement of orthofed and its extras, but orthofed's own self-references."""
    listed = PROJECT["dependencies"] + [r for extra in PROJECT["optional-dependencies"].values()
                                        for r in extra]
    return [req for req in map(Requirement, listed) if req.name != "orthofed"]


def constraints() -> dict[str, str]:
    """constraints.txt as name -> version."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and " " not in line, f"constraints.txt: not name==version: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


def test_requires_python_admits_311_to_313() -> None:
    spec = SpecifierSet(PROJECT["requires-python"])
    assert [v for v in ("3.10", "3.11", "3.12", "3.13", "3.14") if spec.contains(f"{v}.0")] == \
        ["3.11", "3.12", "3.13"]


def test_dependencies_are_ranges_that_admit_the_lock() -> None:
    pins = constraints()
    for req in requirements():
        assert not any(s.operator == "==" for s in req.specifier), f"{req}: a pin, not a range"
        assert any(s.operator == ">=" for s in req.specifier), f"{req}: no tested lower bound"
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in constraints.txt (python -m tests.lock)"
        assert req.specifier.contains(pins[name]), f"{req}: excludes the tested {pins[name]}"


def test_every_lower_bound_is_a_tested_version() -> None:
    """A lower bound is the locked version, or one the accelerator's stack ran on
    (README: Installed versions)."""
    pins = constraints()
    for req in requirements():
        name = canonicalize_name(req.name)
        lower = next(s.version for s in req.specifier if s.operator == ">=")
        assert lower in {pins[name], ACCELERATOR.get(name)}, f"{req}: {lower} was not tested"


def test_the_ranges_admit_the_accelerators_versions() -> None:
    by_name = {canonicalize_name(r.name): r for r in requirements()}
    for name, version in ACCELERATOR.items():
        if name in by_name:
            assert by_name[name].specifier.contains(version), f"{by_name[name]} refuses {version}"


def uv_compile(tmp_path, python: str, *args: str) -> subprocess.CompletedProcess:
    """`uv pip compile` of pyproject.toml (with the simulation extra) for `python` on
    linux x86_64, wheels only."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (flwr brings it)")
    done = subprocess.run([uv, "pip", "compile", str(ROOT / "pyproject.toml"), "--extra",
                           "simulation", "--python-version", python, "--python-platform",
                           PLATFORM, "--only-binary", ":all:", "--no-header", "-q",
                           "-o", str(tmp_path / "out.txt"), *args],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if done.returncode != 0 and any(s in done.stderr for s in ("dns error", "Failed to fetch",
                                                               "Could not connect")):
        pytest.skip(f"PyPI is not reachable: {done.stderr.strip()[-200:]}")
    return done


def resolved(tmp_path) -> dict[str, str]:
    out = (tmp_path / "out.txt").read_text().splitlines()
    return {canonicalize_name(line.split("==")[0]): line.split("==")[1].split(" ")[0]
            for line in out if "==" in line and not line.startswith(" ")}


@pytest.mark.parametrize("python", ["3.12", "3.13"])
def test_the_locked_set_resolves_for_other_pythons(tmp_path, python) -> None:
    done = uv_compile(tmp_path, python, "-c", str(ROOT / "constraints.txt"))
    assert done.returncode == 0, done.stderr
    got, pins = resolved(tmp_path), constraints()
    assert {n: got[n] for n in ("torch", "flwr", "ray", "transformers")} == \
        {n: pins[n] for n in ("torch", "flwr", "ray", "transformers")}


def test_orthofed_resolves_beside_the_accelerators_stack_for_python_312(tmp_path) -> None:
    """The accelerator's torch, transformers, numpy and accelerate held: orthofed and
    Flower's simulation engine resolve around them, replacing none."""
    held = tmp_path / "held.txt"
    held.write_text("".join(f"{n}=={v}\n" for n, v in ACCELERATOR.items()))
    done = uv_compile(tmp_path, "3.12", "-c", str(held))
    assert done.returncode == 0, done.stderr
    got = resolved(tmp_path)
    assert {n: got[n] for n in ACCELERATOR} == ACCELERATOR
    assert {"flwr", "ray", "opacus", "peft", "fastapi"} <= set(got)


def test_python_310_is_refused(tmp_path) -> None:
    done = uv_compile(tmp_path, "3.10")
    assert done.returncode != 0 and "3.10" in done.stderr and ">=3.11" in done.stderr


def test_installing_into_this_environment_keeps_its_torch(tmp_path) -> None:
    """pip, asked to install orthofed where a torch the ranges admit is installed
    (here the CPU build; in a GPU environment its CUDA build), installs no torch,
    numpy or transformers."""
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "-q",
                           "--no-build-isolation", "--report", str(report),
                           "-e", f"{ROOT}[simulation]"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    names = {canonicalize_name(i["metadata"]["name"])
             for i in json.loads(report.read_text())["install"]}
    assert names & {"torch", "numpy", "transformers", "accelerate"} == set()
    assert "orthofed" in names  # the report is of a real resolution
