"""`orthofed compare RUN_ID RUN_ID ...`: runs side by side, as a table and as plots.

The table has one line per run (final and best value of --metric, rounds, the largest
epsilon any client spent, AA/BWT/FWT of a stream, wall time) and, for every scenario
name given more than once (seeds), a line with the mean +- sample std over its runs
(server.runs.comparison). The plots go to --out: curves.png, the metric per round of
every run, a scenario's seeds as their mean with the min-max band; tasks.png, the
accuracy matrices of the stream runs side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from rich.table import Table  # noqa: E402

from server.cli.report import heat_map  # noqa: E402
from server.runs.comparison import group_rows, metric_curve, run_row  # noqa: E402
from server.runs.store import MetricsStore  # noqa: E402
from server.runs.summary import build_summary  # noqa: E402

COLUMNS = (("final", "final", ".3f"), ("best", "best", ".3f"), ("rounds", "rounds", ".0f"),
           ("epsilon", "max ε", ".2f"), ("aa", "AA", ".3f"), ("bwt", "BWT", ".3f"),
           ("fwt", "FWT", ".3f"), ("seconds", "wall s", ".0f"))


def comparison(store: MetricsStore, run_ids: list[str], metric: str) -> dict[str, Any]:
    """{"metric", "runs": [row], "groups": [group], "summaries": {id: summary}}."""
    summaries = {run_id: build_summary(store, run_id) for run_id in run_ids}
    rows = [run_row(summaries[r], store.get_run(r)["scenario"], metric) for r in run_ids]
    return {"metric": metric, "runs": rows, "groups": group_rows(rows),
            "summaries": summaries}


def _cell(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def comparison_table(result: dict[str, Any]) -> Table:
    """One line per run; under each scenario run more than once, its mean +- std."""
    table = Table(title=f"{result['metric']}: runs side by side", title_justify="left")
    for header in ("run", "seed", "status", *(title for _, title, _ in COLUMNS)):
        table.add_column(header, justify="left" if header in ("run", "status") else "right")
    groups = {g["name"]: g for g in result["groups"]}
    for name, group in groups.items():
        members = [row for row in result["runs"] if row["name"] == name]
        for row in members:
            table.add_row(row["run_id"], _cell(row["seed"], "d"), row["status"],
                          *(_cell(row[key], spec) for key, _, spec in COLUMNS))
        if group["runs"] > 1:
            table.add_row(f"[bold]{name}: mean ± std[/]", f"{group['runs']} runs", "",
                          *(_spread(group, key, spec) for key, _, spec in COLUMNS),
                          end_section=True)
    return table


def _spread(group: dict[str, Any], key: str, spec: str) -> str:
    mean, std = group[f"{key}_mean"], group[f"{key}_std"]
    if mean is None:
        return "-"
    return format(mean, spec) + ("" if std is None else f" ± {format(std, spec)}")


def plot_curves(result: dict[str, Any], path: Path) -> None:
    """The metric per round of every run; a scenario with several runs as the mean over
    them (solid) within their min-max band, each run thin behind it."""
    fig, axis = plt.subplots(figsize=(7.5, 4.5))
    metric = result["metric"]
    for index, group in enumerate(result["groups"]):
        color = f"C{index % 10}"
        curves = [metric_curve(result["summaries"][row["run_id"]], metric)
                  for row in result["runs"] if row["name"] == group["name"]]
        if len(curves) == 1:
            rounds, values = zip(*curves[0], strict=True) if curves[0] else ((), ())
            axis.plot(rounds, values, "o-", color=color, label=group["name"])
            continue
        by_round: dict[int, list[float]] = {}
        for curve in curves:
            axis.plot(*zip(*curve, strict=True), color=color, alpha=0.25, linewidth=0.8)
            for round_, value in curve:
                by_round.setdefault(round_, []).append(value)
        rounds = sorted(by_round)
        axis.fill_between(rounds, [min(by_round[r]) for r in rounds],
                          [max(by_round[r]) for r in rounds], color=color, alpha=0.15)
        axis.plot(rounds, [sum(by_round[r]) / len(by_round[r]) for r in rounds], "o-",
                  color=color, label=f"{group['name']} (mean of {len(curves)}, min-max)")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole
    axis.set_xlabel("round")
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_matrices(result: dict[str, Any], path: Path) -> bool:
    """The accuracy matrices of the stream runs side by side; False when none is one."""
    streams = [(row["run_id"], result["summaries"][row["run_id"]]["tasks"])
               for row in result["runs"] if result["summaries"][row["run_id"]]["tasks"]]
    if not streams:
        return False
    width = max(1.2 * len(tasks["names"]) + 2 for _, tasks in streams)
    height = max(0.6 * len(tasks["matrix"]) + 2.1 for _, tasks in streams)
    fig, axes = plt.subplots(1, len(streams), figsize=(width * len(streams), height),
                             squeeze=False, layout="constrained")
    for axis, (run_id, tasks) in zip(axes[0], streams, strict=True):
        aa = f"  AA {tasks['aa']:.3f}" if tasks.get("aa") is not None else ""
        image = heat_map(axis, tasks["names"], tasks["initial"], tasks["matrix"],
                         f"{run_id}{aa}")
    fig.colorbar(image, ax=list(axes[0]), label="accuracy")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_comparison_plots(result: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "curves.png"]
    plot_curves(result, written[0])
    if plot_matrices(result, out / "tasks.png"):
        written.append(out / "tasks.png")
    return written
