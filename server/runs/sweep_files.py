"""A sweep's report as files: report.json (everything sweep_results gives), report.md
(the tables a paper quotes) and two plots: validation score against each tuned axis per
method, and the report seeds' test curves per round (mean within the min-max band)."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any


def write_report(results: dict[str, Any], folder: Path, provenance: dict[str, Any]) -> list[Path]:
    """report.json, report.md and the plots in `folder`; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "report.json", folder / "report.md"
    json_path.write_text(json.dumps({**results, "provenance": provenance}, indent=1,
                                    default=str) + "\n")
    plots = plot_validation(results, folder / "validation.png")
    plots += plot_curves(results, folder / "test_curves.png")
    md_path.write_text(markdown(results, provenance, [p.name for p in plots]))
    return [json_path, md_path, *plots]


def fmt(value: float | None, scale: float = 100.0, digits: int = 2) -> str:
    return "-" if value is None else f"{scale * value:.{digits}f}"


def setting_text(setting: dict[str, Any] | None) -> str:
    if setting is None:
        return "-"
    return ", ".join(f"{k.rsplit('.', 1)[-1]} {v:.4g}" if isinstance(v, float) else
                     f"{k.rsplit('.', 1)[-1]} {v}" for k, v in setting.items()) or "(none tuned)"


def markdown(results: dict[str, Any], provenance: dict[str, Any], plots: list[str]) -> str:
    """The report's tables: chosen settings with test spread, paired differences with
    Holm p-values, and every tuned setting's validation score."""
    spec, table = results["spec"], results["table"]
    metrics = table["metrics"]
    lines = [f"# Sweep {results['id']}", "", spec.get("description") or "", "",
             f"Made by `{provenance.get('command', '-')}` at commit "
             f"`{str(provenance.get('commit', '-'))[:10]}`; status {results['status']}.",
             f"Selection: {spec['selection']['metric']} (mean of the last "
             f"{spec['selection']['last_rounds']} rounds) over tuning seeds "
             f"{spec['seeds']['tune']}; report: {', '.join(metrics)} (last "
             f"{spec['report']['last_rounds']} rounds) over fresh seeds {spec['seeds']['report']}."
             " Values in %: mean ± sd [95 % t half width].", "",
             "| cell | method | chosen setting | validation | "
             + " | ".join(metrics) + " | seeds |", "|---|---|---|---|" + "---|" * len(metrics) + "---|"]
    for row in table["rows"]:
        cells = [spread_text(row["spread"].get(m)) for m in metrics]
        seeds = max((len(v) for v in row["seeds"].values()), default=0)
        lines.append(f"| {row['cell']} | {row['method']} | {setting_text(row['setting'])} | "
                     f"{fmt(row['selection'])} | " + " | ".join(cells) + f" | {seeds} |")
    lines += noise_lines(table["rows"])
    lines += ["", f"Paired by seed against **{table['reference']}** (method − reference; "
              "p: paired t-test, Holm: adjusted across the table per metric):", "",
              "| cell | method | metric | difference | 95 % interval | p | p (Holm) |",
              "|---|---|---|---|---|---|---|"]
    for d in table["differences"]:
        interval = "-" if d["ci95"] is None else (f"[{fmt(d['mean'] - d['ci95'])}, "
                                                  f"{fmt(d['mean'] + d['ci95'])}]")
        lines.append(f"| {d['cell']} | {d['method']} | {d['metric']} | {fmt(d['mean'])} ± "
                     f"{fmt(d['sd'])} | {interval} | {pvalue(d['p_value'])} | "
                     f"{pvalue(d.get('p_holm'))} |")
    lines += ["", *tuning_lines(results), "", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)


def noise_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The private rows' DP noise against the FedSVD reference's (sigma C / B 0.008-0.012)."""
    private = [r for r in rows if r.get("noise")]
    if not private:
        return []
    lines = ["", "DP noise of the reported runs: sigma (noise multiplier), C, expected batch B, "
             "and sigma C / B, the noise's sd per coordinate of the mean clipped gradient "
             "(the FedSVD reference: 0.008-0.012):", "",
             "| cell | method | sigma | C | B | sigma C / B | max epsilon |", "|---|---|---|---|---|---|---|"]
    for r in private:
        n = r["noise"]
        eps = "-" if n["max_epsilon"] is None else f"{n['max_epsilon']:.2f}"
        lines.append(f"| {r['cell']} | {r['method']} | {n['sigma_min']:.3f}-{n['sigma_max']:.3f} | "
                     f"{n['clip']:g} | {n['batch']} | {n['noise_per_coordinate_min']:.4f}-"
                     f"{n['noise_per_coordinate_max']:.4f} | {eps} |")
    return lines


def spread_text(s: dict[str, Any] | None) -> str:
    if not s:
        return "-"
    if s["sd"] is None:
        return fmt(s["mean"])
    return f"{fmt(s['mean'])} ± {fmt(s['sd'])} [{fmt(s['ci95'])}]"


def pvalue(p: float | None) -> str:
    return "-" if p is None else (f"{p:.2g}" if p < 0.01 else f"{p:.3f}")


def tuning_lines(results: dict[str, Any]) -> list[str]:
    """Every tuned setting's mean validation score per study."""
    lines = ["Tuning (validation score per setting, mean over tuning seeds; * chosen):", "",
             "| study | setting | validation | per seed |", "|---|---|---|---|"]
    for study in results["studies"]:
        for cand in study["tuned"]:
            mark = " *" if cand["setting"] == study["setting"] else ""
            state = " (pruned)" if cand["pruned"] else ""
            lines.append(f"| {study['study']} | {setting_text(cand['setting'])}{mark} | "
                         f"{fmt(cand['mean'])}{state} | "
                         + ", ".join(fmt(s) for s in cand["scores"]) + " |")
    return lines


def plot_validation(results: dict[str, Any], path: Path) -> list[Path]:
    """Per tuned axis (a subplot per cell and axis): the best mean validation score
    over the other axes at each value of this one, a line per method."""
    from matplotlib.figure import Figure

    by_cell: dict[str, dict[str, dict[str, dict[Any, float]]]] = defaultdict(lambda: defaultdict(dict))
    for study in results["studies"]:
        for cand in study["tuned"]:
            for axis, value in cand["setting"].items():
                if cand["mean"] is not None:
                    best = by_cell[study["cell"]][axis].setdefault(study["method"], {})
                    best[value] = max(best.get(value, float("-inf")), cand["mean"])
    panels = [(cell, axis, lines) for cell, axes in by_cell.items() for axis, lines in axes.items()]
    if not panels:
        return []
    figure = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
    for ax, (cell, axis, lines) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for method, points in sorted(lines.items()):
            xs = sorted(points, key=float)
            ax.plot(xs, [points[x] for x in xs], marker="o", label=method)
        if all(isinstance(x, float) and x > 0 for line in lines.values() for x in line):
            ax.set_xscale("log")
        ax.set(title=cell, xlabel=axis, ylabel=results["spec"]["selection"]["metric"])
        ax.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return [path]


def plot_curves(results: dict[str, Any], path: Path) -> list[Path]:
    """Per cell: each method's report metric per round, mean over its report seeds
    within their min-max band."""
    from matplotlib.figure import Figure

    cells = sorted({s["cell"] for s in results["studies"]})
    drawn = [(s, curves) for s in results["studies"] if (curves := results["curves"].get(s["study"]))]
    if not drawn:
        return []
    figure = Figure(figsize=(4.2 * len(cells), 3.4), layout="constrained")
    axes = dict(zip(cells, figure.subplots(1, len(cells), squeeze=False)[0]))
    for study, curves in drawn:
        by_round: dict[int, list[float]] = defaultdict(list)
        for curve in curves.values():
            for round_, value in curve:
                by_round[round_].append(value)
        rounds = sorted(by_round)
        ax = axes[study["cell"]]
        ax.plot(rounds, [statistics.fmean(by_round[r]) for r in rounds], label=study["method"])
        ax.fill_between(rounds, [min(by_round[r]) for r in rounds],
                        [max(by_round[r]) for r in rounds], alpha=0.2)
        ax.set(title=study["cell"], xlabel="round", ylabel=results["table"]["metrics"][0])
        ax.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return [path]
