"""The dashboard in headless Chromium (Debian's chromium package) against a real
`orthofed serve`: a finished stream run shows its epsilon table and accuracy heat map,
a running run's curve grows from the event stream while the page is open, and a
screenshot is taken."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time

import pytest

from server.runs.store import MetricsStore
from tests.integration.helpers import serving
from tests.server.runs.stored import finished_run

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str) -> str:
    assert CHROMIUM, "chromium is not installed (tests/setup.sh installs Debian's chromium)"
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--window-size=1100,1500", *args],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_dashboard_renders_runs_and_follows_a_live_run(tmp_path, runs_dir) -> None:
    store = MetricsStore.in_dir(runs_dir)
    finished_run(store, "done-1")
    store.create_run("live-1", "live", {})
    store.set_status("live-1", "running")
    store.record_round("live-1", 0, 0, eval={"eval-acc": 0.1})
    with serving(runs_dir) as base:
        page = chromium("--virtual-time-budget=5000", "--dump-dom", f"{base}/?run=done-1")
        assert "done-1" in page and "live-1" in page  # the run list
        cells = re.findall(r"<td style=\"background:hsl\([^\"]*\">([0-9.]+)</td>", page)
        assert cells == ["0.500", "0.300", "0.900", "0.350", "0.700", "0.800"]  # heat map
        assert "BWT -0.200" in page
        probes = re.findall(r"<td class=\"probe\" style=\"background:hsl\([^\"]*\">([0-9.]+)</td>",
                            page)
        assert probes == ["0.600", "0.400", "0.950", "0.550", "0.900", "0.850"]
        assert "FWT (linear probe) 0.150" in page
        assert "<td>1.500</td>" in page  # client 0's epsilon after its last round

        def finish_later() -> None:  # while the page is open: one more round, then done
            time.sleep(2.5)
            store.record_round("live-1", 1, 0, train={"train-loss": 0.5}, eval={"eval-acc": 0.9})
            store.set_status("live-1", "completed")

        writer = threading.Thread(target=finish_later)
        writer.start()
        live = chromium("--virtual-time-budget=8000", "--dump-dom", f"{base}/?run=live-1")
        writer.join()
        accuracy = re.search(r'stroke="#1f77b4" stroke-width="2" points="([^"]*)"', live)
        assert accuracy and len(accuracy.group(1).split()) == 2, live[-1500:]  # 2 rounds drawn
        assert 'class="status-completed">completed</b>' in live

        shot = tmp_path / "dashboard.png"
        chromium("--virtual-time-budget=5000", f"--screenshot={shot}", f"{base}/?run=done-1")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
