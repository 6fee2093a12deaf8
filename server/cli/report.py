"""`orthofed report RUN_ID`: a finished (or running) run's tables, and PNG plots in its
folder: round curves, epsilon per client, the task-accuracy heat map beside the
linear-probe one (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from server.runs.continual import fwt_basis  # noqa: E402
from server.runs.layout import RunFolder  # noqa: E402
from server.runs.store import MetricsStore  # noqa: E402


def plot_rounds(summary: dict[str, Any], path: Path) -> None:
    """Test accuracy and mean train loss per round, task boundaries dashed."""
    rounds = summary["rounds"]
    fig, acc_axis = plt.subplots(figsize=(7, 4))
    acc = [(r["round"], r["eval"]["eval-acc"]) for r in rounds if "eval-acc" in r["eval"]]
    loss = [(r["round"], r["train"]["train-loss"]) for r in rounds if "train-loss" in r["train"]]
    if acc:
        acc_axis.plot(*zip(*acc, strict=True), "o-", color="tab:blue", label="test accuracy")
    acc_axis.set_xlabel("round")
    acc_axis.set_ylabel("test accuracy", color="tab:blue")
    loss_axis = acc_axis.twinx()
    if loss:
        loss_axis.plot(*zip(*loss, strict=True), "s--", color="tab:red", label="train loss")
    loss_axis.set_ylabel("mean train loss", color="tab:red")
    for previous, current in zip(rounds, rounds[1:], strict=False):
        if current["task"] != previous["task"]:
            acc_axis.axvline(previous["round"] + 0.5, color="grey", linestyle=":")
    acc_axis.set_title(f"run {summary['run_id']} ({summary['status']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_epsilon(store: MetricsStore, run_id: str, path: Path) -> bool:
    """Epsilon spent by each client after each round it joined; False without DP."""
    series: dict[int, list[tuple[int, float]]] = {}
    for row in store.client_rounds(run_id):
        if "epsilon" in row["metrics"]:
            series.setdefault(row["partition_id"], []).append((row["round"],
                                                               row["metrics"]["epsilon"]))
    if not series:
        return False
    fig, axis = plt.subplots(figsize=(7, 4))
    for pid, points in sorted(series.items()):
        axis.step(*zip(*points, strict=True), where="post", marker="o", label=f"client {pid}")
    axis.set_xlabel("round")
    axis.set_ylabel("epsilon spent")
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_tasks(tasks: dict[str, Any], path: Path) -> bool:
    """The accuracy matrix as a heat map (rows: initial, after each task), beside it the
    linear-probe matrix FWT is measured on when the run recorded probes; False when the
    run is not a stream."""
    if not tasks:
        return False
    probed = bool(tasks.get("probe_initial") or tasks.get("probe_matrix"))
    panels = [("accuracy (task heads)" if probed else "accuracy", tasks["initial"], tasks["matrix"])]
    if probed:
        panels.append(("linear-probe accuracy", tasks["probe_initial"], tasks["probe_matrix"]))
    size = (1.2 * len(tasks["names"]) + 2, 0.6 * len(tasks["matrix"]) + 2.1)
    fig, axes = plt.subplots(1, len(panels), figsize=(size[0] * len(panels), size[1]),
                             squeeze=False, layout="constrained")
    for axis, (title, initial, matrix) in zip(axes[0], panels, strict=True):
        image = heat_map(axis, tasks["names"], initial, matrix, title)
    fig.colorbar(image, ax=list(axes[0]), label="accuracy")
    fwt = (f"({fwt_basis(tasks.get('fwt_source'))}) {tasks['fwt']:.3f}"
           if tasks.get("fwt") is not None else "unavailable")
    fig.suptitle(f"AA {tasks['aa']:.3f}" + (f"  BWT {tasks['bwt']:.3f}"
                                           if tasks["bwt"] is not None else "")
                 + f"  FWT {fwt}", fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def heat_map(axis, names: list[str], initial: list, matrix: list[list], title: str):
    rows = ([initial] if initial else []) + matrix
    labels = (["initial"] if initial else []) + [f"after {n}" for n in names[:len(matrix)]]
    values = np.array(rows, dtype=float)  # None (not measured) -> nan, left blank
    image = axis.imshow(values, vmin=0, vmax=1, cmap="viridis")
    axis.set_xticks(range(len(names)), names, rotation=30)
    axis.set_yticks(range(len(rows)), labels)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            axis.text(j, i, "-" if np.isnan(value) else f"{value:.2f}", ha="center",
                      va="center", color="white" if value < 0.5 else "black", fontsize=8)
    axis.set_title(title, fontsize=9)
    return image


def write_plots(store: MetricsStore, summary: dict[str, Any], run_dir: Path) -> list[Path]:
    """Every plot that applies to the run, written into its folder; their paths."""
    run_dir.mkdir(parents=True, exist_ok=True)
    folder = RunFolder(run_dir)
    written = [folder.plot("rounds")]
    plot_rounds(summary, written[0])
    if plot_epsilon(store, summary["run_id"], folder.plot("epsilon")):
        written.append(folder.plot("epsilon"))
    if plot_tasks(summary["tasks"], folder.plot("tasks")):
        written.append(folder.plot("tasks"))
    return written
