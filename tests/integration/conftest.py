"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import pytest

from tests.integration.helpers import kill_all, left_running


@pytest.fixture
def runs_dir(tmp_path):
    """A fresh runs directory; afterwards, no process started for it may be left (one
    still exiting gets a few seconds: tests.integration.helpers.left_running)."""
    path = tmp_path / "runs"
    yield path
    leftovers = left_running(str(tmp_path))
    kill_all(leftovers)
    assert leftovers == [], f"processes left running: {[p.pid for p in leftovers]}"
