"""The dashboard in headless Chromium (Debian's chromium package) against a real
`orthofed serve`: a finished private stream run shows its settings, accuracy and loss
charts with numeric axes and a task boundary, an epsilon chart per client, its epsilon
table and accuracy heat map; a running run's curve and progress grow from the event
stream while the page is open; /?compare= overlays runs; a screenshot is taken."""

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
LIVE_SCENARIO = {"name": "live", "model": {"name": "tiny-bert"},
                 "strategy": {"name": "fedavg-lora"},
                 "federation": {"num_clients": 3, "clients_per_round": 2, "rounds": 3}}


def chromium(*args: str) -> str:
    assert CHROMIUM, "chromium is not installed (tests/setup.sh installs Debian's chromium)"
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--window-size=1100,1500", *args],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def dom(url: str, budget_ms: int = 5000) -> str:
    """The page at `url` as rendered, its script left out (so nothing below can match
    the templates in the code instead of what they drew)."""
    page = chromium(f"--virtual-time-budget={budget_ms}", "--dump-dom", url)
    return re.sub(r"<script>.*?</script>", "", page, flags=re.S)


def svg_of(page: str, chart: str) -> str:
    """The markup of the chart `chart` (its data-chart attribute) in a dumped page."""
    found = re.search(rf'<svg class="chart" data-chart="{chart}".*?</svg>', page, re.S)
    assert found, f"no {chart} chart in the page"
    return found.group(0)


def tick_values(page: str, axis: str) -> list[float]:
    return [float(v) for v in re.findall(
        rf'<text class="tick y-tick" data-axis="{axis}"[^>]*>([0-9.]+)</text>', page)]


def polylines(svg: str, cls: str) -> list[tuple[str, list[str]]]:
    """(the tag, its points) of every polyline of class `cls`."""
    return [(tag, points.split()) for tag, points in re.findall(
        rf'(<polyline class="series {cls}"[^>]*points="([^"]*)")', svg)]


def test_dashboard_renders_runs_and_follows_a_live_run(tmp_path, runs_dir) -> None:
    store = MetricsStore.in_dir(runs_dir)
    finished_run(store, "done-1")
    for r in range(4):  # a second client, so the epsilon chart has two curves
        store.record_clients("done-1", r, {1: {"epsilon": 0.4 * r, "num-examples": 10}}, [])
    store.create_run("live-1", "live", LIVE_SCENARIO)
    store.set_status("live-1", "running")
    store.record_round("live-1", 0, 0, eval={"eval-acc": 0.1})
    with serving(runs_dir) as base:
        page = dom(f"{base}/?run=done-1")
        assert "done-1" in page and "live-1" in page  # the run list
        cells = re.findall(r"<td style=\"background:hsl\([^\"]*\">([0-9.]+)</td>", page)
        assert cells == ["0.500", "0.300", "0.900", "0.350", "0.700", "0.800"]  # heat map
        assert "BWT -0.200" in page
        probes = re.findall(r"<td class=\"probe\" style=\"background:hsl\([^\"]*\">([0-9.]+)</td>",
                            page)
        assert probes == ["0.600", "0.400", "0.950", "0.550", "0.900", "0.850"]
        assert "FWT (linear probe) 0.150" in page
        assert "<td>1.500</td>" in page  # client 0's epsilon after its last round

        # Settings of the scenario, the API's docs, and the progress of a finished run.
        settings = dict(re.findall(r'<dd data-setting="(\w+)">([^<]*)</dd>', page))
        assert settings["model"] == "tiny-bert" and settings["strategy"] == "fedavg-lora"
        assert settings["clients"] == "1 / 1" and settings["tasks"] == "a → b"
        assert settings["privacy"] == "target ε 4, δ 0.00001" and settings["rounds"] == "3"
        assert 'href="/docs"' in page
        assert '<span class="progress-text">round 3 of 3</span>' in page

        # Accuracy and loss on their own labelled scales, rounds 0-3 on x.
        accuracy, loss = svg_of(page, "acc"), svg_of(page, "loss")
        assert tick_values(accuracy, "acc") == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        assert tick_values(loss, "loss") == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        for svg, axis, title in ((accuracy, "acc", "test accuracy"), (loss, "loss", "train loss")):
            for labelled, text in ((axis, title), ("round", "round")):  # both axes titled
                assert re.search(rf'<text class="axis-title" data-axis="{labelled}"[^>]*>'
                                 rf'{text}<', svg)
            assert re.findall(r'class="tick x-tick" data-axis="round"[^>]*>(\d+)<', svg) == \
                ["0", "1", "2", "3"]
        ((_, acc_points),) = polylines(accuracy, "acc")
        assert len(acc_points) == 4 and len(polylines(loss, "loss")[0][1]) == 4
        # Task a for rounds 0-1, task b from round 2: one dashed line between, labelled b.
        for svg in (accuracy, loss):
            assert re.findall(r'<line class="task-boundary" data-task="(\w+)"', svg) == ["b"]
            assert re.findall(r'<text class="task-label" data-task="\w+"[^>]*>(\w+)<', svg) == \
                ["a", "b"]
        assert 'stroke-dasharray="5 4"' in accuracy

        # Epsilon over the rounds, one curve per client, the target drawn, a legend.
        epsilon = svg_of(page, "epsilon")
        curves = {re.search(r'data-client="(\d+)"', tag).group(1): points
                  for tag, points in polylines(epsilon, "eps-line")}
        assert sorted(curves) == ["0", "1"] and all(len(p) == 4 for p in curves.values())
        assert max(tick_values(epsilon, "epsilon")) == 4 and "target ε 4" in epsilon
        assert 'data-series="client 0"' in page and 'data-series="client 1"' in page

        def finish_later() -> None:  # while the page is open: one more round, then done
            time.sleep(2.5)
            store.record_round("live-1", 1, 0, train={"train-loss": 0.5}, eval={"eval-acc": 0.9})
            store.set_status("live-1", "completed")

        writer = threading.Thread(target=finish_later)
        writer.start()
        live = dom(f"{base}/?run=live-1", 8000)
        writer.join()
        ((_, points),) = polylines(svg_of(live, "acc"), "acc")
        assert len(points) == 2, live[-1500:]  # 2 rounds drawn
        assert 'class="status-completed">completed</b>' in live
        # Loss up to 0.5 here: its own scale, while accuracy keeps 0-1.
        assert tick_values(svg_of(live, "loss"), "loss") == \
            pytest.approx([0, 0.1, 0.2, 0.3, 0.4, 0.5])
        assert tick_values(svg_of(live, "acc"), "acc") == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1])
        # The page opened at round 0 of 3: the event stream moved the progress on.
        assert re.search(r'<progress class="run-progress" [^>]*value="1" max="3">', live)
        assert '<span class="progress-text">round 1 of 3</span>' in live
        settings = dict(re.findall(r'<dd data-setting="(\w+)">([^<]*)</dd>', live))
        assert (settings["clients"], settings["privacy"], settings["tasks"]) == \
            ("2 / 3", "non-private", "single task")
        assert '<line class="task-boundary"' not in live  # a single task: no boundary
        assert "no epsilon reported (non-private run)</p>" in live

        overlay = dom(f"{base}/?compare=done-1,live-1")
        lines = polylines(svg_of(overlay, "acc"), "compare-acc")
        assert [re.search(r'data-run="([^"]+)"', tag).group(1) for tag, _ in lines] == \
            ["done-1", "live-1"]
        assert [len(points) for _, points in lines] == [4, 2]
        legend = re.search(  # the legend right under the accuracy overlay, not the loss one
            r'<div id="compare-acc"><svg(?:(?!</svg>).)*</svg><div class="legend">(.*?)</div>',
            overlay, re.S)
        assert legend, "no legend under the overlaid accuracy"
        assert re.findall(r'<span class="legend-item" data-series="([^"]+)"', legend.group(1)) \
            == ["done (done-1)", "live (live-1)"]  # the runs, by scenario name and id
        assert len(re.findall(r'class="pick" value="[^"]+" checked', overlay)) == 2

        shot = tmp_path / "dashboard.png"
        chromium("--virtual-time-budget=5000", f"--screenshot={shot}", f"{base}/?run=done-1")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
