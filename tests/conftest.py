"""Shared fixtures: the project root, the shared data folder, a writable scenario dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def quick_document() -> dict:
    """The quick scenario as a mapping, to be changed by a test."""
    return yaml.safe_load((ROOT / "scenarios" / "quick.yaml").read_text())


@pytest.fixture
def write_scenario(tmp_path):
    """Write a mapping as a YAML scenario file under tmp_path; returns its path."""

    def write(document: dict, name: str = "scenario.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(document))
        return path

    return write


def needs_shared_data(*parts: str):
    """Skip (saying why) when ../shared/data, or the named part of it, is absent."""
    path = SHARED_DATA.joinpath(*parts)
    return pytest.mark.skipif(not path.exists(), reason=f"shared data not present: {path}")
