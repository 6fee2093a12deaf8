"""Task streams end to end through `orthofed run` (Flower's simulation engine, a real
store): the accuracy matrix, OSFT's preserved triplets across a real federated task, and
a private LoRA stream whose budget spans every task."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from server.continual import cl_metrics
from server.store import MetricsStore
from tests.conftest import ROOT
from tests.integration.helpers import last_json_line, run_orthofed

pytestmark = pytest.mark.integration


def test_osft_stream_keeps_the_preserved_triplets_and_reports_the_matrix(runs_dir) -> None:
    done = run_orthofed("run", "scenarios/quick-stream.yaml", "--runs-dir", str(runs_dir),
                        "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = last_json_line(done.stdout)
    assert summary["status"] == "completed"
    assert [(r["round"], r["task"]) for r in summary["rounds"]] == [
        (0, 0), (1, 0), (2, 0), (3, 1), (4, 1)]
    tasks = summary["tasks"]
    assert tasks["names"] == ["topics-a", "topics-b"]
    assert len(tasks["initial"]) == 2 and [len(row) for row in tasks["matrix"]] == [2, 2]
    assert {k: tasks[k] for k in ("aa", "bwt", "fwt", "forgetting")} == pytest.approx(
        cl_metrics(tasks["initial"], tasks["matrix"]))
    # The last round of task 0 was evaluated on task 0 (not overwritten by task 1's start).
    assert summary["rounds"][2]["eval"]["eval-acc"] == pytest.approx(tasks["matrix"][0][0])
    assert MetricsStore.in_dir(runs_dir).task_evals(summary["run_id"])[0]["after_task"] == -1

    run_dir = runs_dir / summary["run_id"]
    start = torch.load(run_dir / "global-after-task-0.pt")
    end = torch.load(run_dir / "global-after-task-1.pt")
    plan = json.loads((run_dir / "osft-task-1.json").read_text())
    preserved = {n: k for n, k in plan["ranks"].items() if 0 < k < min(plan["shapes"][n])}
    assert preserved, f"no partially preserved matrix to check: {plan['ranks']}"
    for name, k in preserved.items():
        u, s, vh = torch.linalg.svd(start[name].double(), full_matrices=False)
        w = end[name].double()
        error = (w @ vh[:k].T - u[:, :k] * s[:k]).norm() / s[:k].norm()
        assert error < 1e-4, (name, float(error))
        assert (w - start[name].double()).norm() > 1e-4 * w.norm(), f"{name} did not train"


def test_private_lora_stream_budget_spans_every_task(tmp_path, runs_dir) -> None:
    """FedSVD-LoRA per task under DP: the adapter is folded into the base at the task
    end (clients get the merged base), task 0's head is untouched by task 1, and each
    client's ledger carries across tasks: epsilon keeps growing and ends within budget."""
    from clients.privacy import epsilon_of

    doc = yaml.safe_load((ROOT / "scenarios" / "quick-stream.yaml").read_text())
    doc["name"] = "dp-lora-stream"
    doc["model"]["lora"] = {"rank": 4, "alpha": 8}
    doc["strategy"] = {"name": "fedsvd"}
    doc["federation"]["local_steps"] = 4
    doc["federation"]["optimizer"]["lr"] = 0.01
    doc["privacy"] = {"target_epsilon": 4.0, "delta": 1e-5, "max_grad_norm": 1.0}
    path = tmp_path / "dp-stream.yaml"
    path.write_text(yaml.safe_dump(doc))
    done = run_orthofed("run", str(path), "--runs-dir", str(runs_dir), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = last_json_line(done.stdout)
    assert summary["status"] == "completed" and len(summary["tasks"]["matrix"]) == 2

    run_dir = runs_dir / summary["run_id"]
    after0 = torch.load(run_dir / "global-after-task-0.pt")
    after1 = torch.load(run_dir / "global-after-task-1.pt")
    head0 = [n for n in after0 if ".heads.0." in n]
    assert head0 and all(torch.equal(after0[n], after1[n]) for n in head0)
    merged = [n for n in after1 if n.endswith(".base_layer.weight")]
    assert merged and any(not torch.equal(after0[n], after1[n]) for n in merged)

    rows = MetricsStore.in_dir(runs_dir).client_rounds(summary["run_id"])
    for partition in (0, 1):
        mine = [r["metrics"] for r in rows if r["partition_id"] == partition]
        assert len(mine) == 4  # 2 rounds x 2 tasks
        history = [(m["noise-multiplier"], m["sample-rate"], int(m["dp-steps"])) for m in mine]
        spent = [m["epsilon"] for m in mine]
        assert spent == sorted(spent) and spent[-1] <= 4.0
        assert spent[-1] == pytest.approx(epsilon_of(history, 1e-5, "rdp"), rel=1e-9)
        assert summary["clients"][str(partition)]["epsilon"] == spent[-1]
