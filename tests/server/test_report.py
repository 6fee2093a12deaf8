"""`orthofed report`: tables on stdout, the plots that apply written as PNG files."""

from __future__ import annotations

import pytest

from server.cli import main
from server.store import MetricsStore
from tests.server.test_api import finished_run

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_prints_tables_and_writes_the_plots(tmp_path, capsys) -> None:
    store = MetricsStore.in_dir(tmp_path)
    run_id = finished_run(store)  # clients report epsilon, two tasks
    assert main(["report", run_id, "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "accuracy on each task" in out and "epsilon spent" in out
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
