"""`orthofed report`: tables on stdout, the plots that apply written as PNG files."""

from __future__ import annotations

import pytest

from server.cli.commands import main
from server.runs.store import MetricsStore
from tests.server.runs.stored import finished_run

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_prints_tables_and_writes_the_plots(tmp_path, capsys) -> None:
    store = MetricsStore.in_dir(tmp_path)
    run_id = finished_run(store)  # clients report epsilon, two tasks
    assert main(["report", run_id, "--runs-dir", str(tmp_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps captions
    assert "accuracy on each task" in out and "epsilon spent" in out
    assert "FWT (linear probe) 0.1500" in out
    assert "probe initial │ 0.6000 │ 0.4000" in out and "probe b │ 0.9000 │ 0.8500" in out
    for name in ("rounds.png", "epsilon.png", "tasks.png"):
        assert (tmp_path / run_id / name).read_bytes()[:8] == PNG, name


def test_a_single_task_run_without_dp_gets_only_the_round_curves(tmp_path) -> None:
    store = MetricsStore.in_dir(tmp_path)
    store.create_run("plain", "plain", {})
    store.record_round("plain", 0, 0, eval={"eval-acc": 0.3})
    store.record_round("plain", 1, 0, train={"train-loss": 0.9}, eval={"eval-acc": 0.6})
    assert main(["report", "plain", "--runs-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["rounds.png"]


@pytest.mark.parametrize("command", ["report", "resume"])
def test_an_unknown_run_is_a_clear_error(tmp_path, capsys, command) -> None:
    assert main([command, "nope", "--runs-dir", str(tmp_path)]) == 2
    assert f"{command}: no metrics store in" in capsys.readouterr().err
    MetricsStore.in_dir(tmp_path).create_run("other", "s", {})
    assert main([command, "nope", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no run 'nope'" in err and "recent runs: ['other']" in err


def test_a_run_without_probes_reports_fwt_unavailable(tmp_path, capsys) -> None:
    store = MetricsStore.in_dir(tmp_path)
    store.create_run("old", "old", {})
    store.record_round("old", 0, 0, eval={"eval-acc": 0.3})
    for after, row in enumerate([[0.5, 0.3], [0.9, 0.35]]):
        store.record_task_evals("old", after - 1, [("a", row[0], 1.0), ("b", row[1], 1.0)])
    assert main(["report", "old", "--runs-dir", str(tmp_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps the caption
    assert "FWT - (unavailable: no linear probes recorded" in out
    assert "probe initial" not in out
    assert (tmp_path / "old" / "tasks.png").read_bytes()[:8] == PNG
