"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import pytest

from tests.integration.helpers import kill_all, processes_mentioning


@pytest.fixture
def runs_dir(tmp_path):
    """A fresh runs directory; afterwards, no process started for it may be left."""
    path = tmp_path / "runs"
    yield path
    leftovers = processes_mentioning(str(tmp_path))
    kill_all(leftovers)
    assert leftovers == [], f"processes left running: {[p.pid for p in leftovers]}"
