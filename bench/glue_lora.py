"""FedSVD against every reference baseline (FFA-LoRA, FedAvg-LoRA, FLoRA, FedEx-LoRA) on
SST-2, QQP and MNLI, non-private and under DP-SGD at epsilon 6, over seeds, in the cheap
regime of scenarios/glue-cached-lora[-dp].yaml (MiniLM, bottom 5 layers cached, LoRA on
the top layer, 50 rounds; its comments say what differs from the paper).

Every run is a real `orthofed run --json` of that file with the method's strategy, the
task's CL-benchmark folder and the seed swapped in: at one seed every method gets the
same clients, client sampling and initial model, so differences are paired by seed.
The runs go task by task, setting by setting, seed by seed, the five methods side by
side, and bench/results/glue_lora.json and .md are rewritten after each one
(`--resume` continues an interrupted benchmark; it may span several sessions).

Reported per task, setting and method: the accuracy of the global model on the task's
test rows (the first 1000), mean over the last TAIL rounds (five passes of the balanced
deck), final and best; mean +- sd and the 95 % t-interval over seeds; FedSVD minus each
baseline paired by seed; and the diagnostics the scenarios record per round
(strategies.diagnostics: the largest principal angle between A at round t and at round
0, the norm of the aggregated update), plotted to bench/results/glue_lora_diagnostics.png.
Paper (FedSVD, RoBERTa-large, non-private): SST-2 FedSVD 94.26 > FFA-LoRA 94.06 >
FedAvg-LoRA 85.89 > FLoRA 58.99; QQP 88.98 / 86.61 / 71.40 / 62.16; MNLI 85.70 / 82.54 /
84.16 / 62.17.

Usage: python bench/glue_lora.py [--tasks SST-2 QQP MNLI] [--settings non-private dp]
                                 [--seeds 0 1 2 3 4] [--methods ...] [--rounds N] [--resume]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scenarios.loader import load_scenario  # noqa: E402
from seeded import RESULTS, ResultsFile, mean_sd, pct, spread  # noqa: E402

METHODS = {"fedsvd": {"name": "fedsvd", "svd_period": 1}, "ffa-lora": {"name": "ffa-lora"},
           "fedavg-lora": {"name": "fedavg-lora"}, "flora": {"name": "flora"},
           "fedex-lora": {"name": "fedex-lora"}}
TASKS = ("SST-2", "QQP", "MNLI")
SETTINGS = {"non-private": "glue-cached-lora.yaml", "dp": "glue-cached-lora-dp.yaml"}
BENCHMARK = ROOT.parent / "shared" / "data" / "cl_benchmark"
TAIL = 10  # rounds averaged: five passes of the balanced deck (6 clients, 3 a round)
# The strategy's (server side, every setting), then the private clients' own (un-noised,
# averaged over the round's clients by num-examples; privacy.report_dp_diagnostics).
DIAGNOSTICS = ("diag-a-angle-max-deg", "diag-a-row-rotation-deg", "diag-update-norm",
               "unnoised-clipped-fraction", "unnoised-noise-to-signal")
PAPER = {"SST-2": {"fedsvd": 94.26, "ffa-lora": 94.06, "fedavg-lora": 85.89, "flora": 58.99},
         "QQP": {"fedsvd": 88.98, "ffa-lora": 86.61, "fedavg-lora": 71.40, "flora": 62.16},
         "MNLI": {"fedsvd": 85.70, "ffa-lora": 82.54, "fedavg-lora": 84.16, "flora": 62.17}}


def document_for(task: str, setting: str, method: str, seed: int, rounds: int | None) -> dict:
    """The setting's scenario with the task folder, the method's strategy and the seed."""
    document = load_scenario(ROOT / "scenarios" / SETTINGS[setting]).model_dump(mode="json")
    document["data"]["source"]["path"] = str(BENCHMARK / task)
    document.update(name=f"{method}-{task.lower()}-{setting}", seed=seed, strategy=METHODS[method])
    if rounds is not None:
        document["federation"]["rounds"] = rounds
    return document


def record_of(summary: dict[str, Any]) -> dict[str, Any]:
    """One run: its accuracy curve (round 0: the initial model), its diagnostics per
    round, the most epsilon any client spent, refusals, failures, traffic, wall time."""
    rounds = summary["rounds"]
    epsilons = [c["epsilon"] for c in summary["clients"].values() if "epsilon" in c]
    trained = [r["train"] for r in rounds if r.get("train")]
    return {"curve": [r["eval"]["eval-acc"] for r in rounds if r.get("eval")],
            **{name: [t.get(name) for t in trained] for name in DIAGNOSTICS},
            "max_epsilon": max(epsilons, default=None),
            "refusals": sum(c["refusals"] for c in summary["clients"].values()),
            "failures": sum(c["failures"] for c in summary["clients"].values()),
            "mib_down_per_round": trained[-1].get("bytes-down-per-client", 0) / 2 ** 20 if trained else None,
            "minutes": summary["wall_seconds"] / 60}


def tail(record: dict[str, Any]) -> float:
    """Mean accuracy over the run's last TAIL rounds (all of them in a shorter run)."""
    values = record["curve"][1:][-TAIL:]
    return sum(values) / len(values)


def summarise(runs: dict[str, dict]) -> dict[str, Any]:
    """Per task and setting: each method's spread over seeds (last TAIL rounds, final,
    best), its mean curves, and FedSVD minus each baseline paired by seed."""
    out: dict[str, Any] = {}
    for task in TASKS:
        for setting in SETTINGS:
            per_method = {m: {k.rsplit("seed", 1)[1]: r for k, r in runs.items()
                              if k.startswith(f"{task}/{setting}/{m}/")} for m in METHODS}
            if not any(per_method.values()):
                continue
            block: dict[str, Any] = {}
            for method, by_seed in per_method.items():
                if not by_seed:
                    continue
                block[method] = {
                    "seeds": sorted(int(s) for s in by_seed),
                    "tail": spread(tail(r) for r in by_seed.values()),
                    "final": spread(r["curve"][-1] for r in by_seed.values()),
                    "best": spread(max(r["curve"][1:]) for r in by_seed.values()),
                    "curve_mean": mean_curve([r["curve"] for r in by_seed.values()]),
                    **{f"{name}_mean": mean_curve([r.get(name, []) for r in by_seed.values()])
                       for name in DIAGNOSTICS},
                    "max_epsilon": max((r["max_epsilon"] or 0) for r in by_seed.values()) or None,
                    "mib_down_per_round": next(iter(by_seed.values()))["mib_down_per_round"],
                    "minutes": spread(r["minutes"] for r in by_seed.values())["mean"]}
            fedsvd = per_method["fedsvd"]
            block["paired_fedsvd_minus"] = {
                other: spread(tail(fedsvd[s]) - tail(per_method[other][s])
                              for s in fedsvd if s in per_method[other])
                for other in METHODS if other != "fedsvd" and set(fedsvd) & set(per_method[other])}
            out[f"{task}/{setting}"] = block
    return out


def mean_curve(curves: list[list[float | None]]) -> list[float | None]:
    """The per-round mean over seeds (None where a round has no value)."""
    out = []
    for values in zip(*curves, strict=False):
        present = [v for v in values if v is not None]
        out.append(sum(present) / len(present) if present else None)
    return out


def tail_mean(values: list[float | None]) -> float | None:
    """The mean of a per-round curve's last TAIL values (None: never recorded)."""
    present = [v for v in values[-TAIL:] if v is not None]
    return sum(present) / len(present) if present else None


def markdown(results: ResultsFile, summary: dict[str, Any], name: str) -> str:
    lines = [results.header("FedSVD vs FFA-LoRA, FedAvg-LoRA, FLoRA, FedEx-LoRA: SST-2, QQP, "
                            "MNLI, cheap regime"),
             "Accuracy (%) of the global model on each task's first 1000 test rows "
             f"(cl_benchmark), mean over the last {TAIL} rounds, after the final round and at "
             "the best round: mean ± sd over seeds and the 95 % t-interval's half width. "
             "Regime: scenarios/glue-cached-lora[-dp].yaml (MiniLM, bottom 5 of 6 layers "
             "cached, LoRA r = 8 on the top layer's query and value, 6 clients with Dirichlet "
             "0.5 label skew, 3 per round, 50 rounds of 5 steps, batch 16, SGD 0.5; DP: "
             "epsilon 6, C = 2, PRV). Angle: the largest principal angle (degrees) between A "
             "and its round-0 value, mean over layers, at the final round (0: A's row space "
             "never moved); rotation: the mean angle (degrees) between each row of A and the "
             "same row at round 0, at the final round (the basis change within the row "
             "space, strategies.diagnostics); update: the norm of "
             "the last round's aggregated change of W + s B A; clipped, noise/signal (DP "
             "only, un-noised, reported by the clients because the DP scenario asks: "
             "privacy.report_dp_diagnostics): the share of examples whose gradient norm "
             "exceeded C and the mean ||noise|| / ||clipped sum|| of B's step, over the "
             f"last {TAIL} rounds.", ""]
    for cell, block in summary.items():
        task = cell.split("/")[0]
        lines += [f"## {cell}", "",
                  f"| method | seeds | last {TAIL} rounds | ± 95 % CI | final | best | angle | rotation | "
                  "update | clipped | noise/signal | max ε | MiB down/round | min/run | paper |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for method in METHODS:
            if method not in block:
                continue
            row = block[method]
            eps = "-" if row["max_epsilon"] is None else f"{row['max_epsilon']:.2f}"
            angle, rotation, update = (row[f"{n}_mean"][-1] if row[f"{n}_mean"] else None
                                       for n in DIAGNOSTICS[:3])
            clipped, ratio = (tail_mean(row[f"{n}_mean"]) for n in DIAGNOSTICS[3:])
            lines.append(
                f"| {method} | {len(row['seeds'])} | {mean_sd(row['tail'])} | "
                f"{pct(row['tail'], 'ci95')} | {mean_sd(row['final'])} | {mean_sd(row['best'])} | "
                f"{'-' if angle is None else f'{angle:.1f}'} | "
                f"{'-' if rotation is None else f'{rotation:.1f}'} | "
                f"{'-' if update is None else f'{update:.3g}'} | "
                f"{'-' if clipped is None else f'{clipped:.2f}'} | "
                f"{'-' if ratio is None else f'{ratio:.3g}'} | {eps} | "
                f"{row['mib_down_per_round']:.2f} | {row['minutes']:.1f} | "
                f"{PAPER[task].get(method, '-') if 'dp' not in cell else '-'} |")
        lines += ["", f"FedSVD minus baseline, last {TAIL} rounds, paired by seed (points):", ""]
        for other, diff in block["paired_fedsvd_minus"].items():
            half = "-" if diff["ci95"] is None else f"± {pct(diff, 'ci95')}"
            lines.append(f"- {other}: {mean_sd(diff)} (95 % CI {half}), {diff['n']} seeds")
        lines.append("")
    lines.append(f"Diagnostics per round: bench/results/{name}_diagnostics.png.")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    """Accuracy, A's largest principal angle to round 0, the update norm and (private
    rows) the clipped fraction and noise-to-signal ratio per round: one row per task and
    setting, one line per method (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(summary)
    if not cells:
        return
    fig, axes = plt.subplots(len(cells), 6, figsize=(25, 2.8 * len(cells)), squeeze=False)
    for row, cell in zip(axes, cells):
        for method in METHODS:
            if method not in summary[cell]:
                continue
            data = summary[cell][method]
            for ax, values in zip(row, (data["curve_mean"],
                                        *(data.get(f"{n}_mean", []) for n in DIAGNOSTICS))):
                start = 0 if values is data["curve_mean"] else 1
                ax.plot(range(start, start + len(values)),
                        [float("nan") if v is None else v for v in values], label=method)
        for ax, title in zip(row, ("accuracy", "A: largest angle to round 0 (deg)",
                                   "A: row rotation from round 0 (deg)", "||aggregated update||", "clipped fraction (un-noised)",
                                   "||noise|| / ||clipped sum|| of B (un-noised)")):
            ax.set_title(f"{cell}: {title}", fontsize=9)
            ax.set_xlabel("round", fontsize=8)
        row[3].set_yscale("log")
        if "dp" in cell:
            row[5].set_yscale("log")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--rounds", type=int, default=None, help="override the scenarios' rounds")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in the results file that ran the same scenario")
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("--name", default="glue_lora", help="results file name")
    args = parser.parse_args()
    results = ResultsFile(args.name, resume=args.resume)

    def tables() -> tuple[dict[str, Any], str]:
        summary = summarise(results.runs)
        plot(summary, RESULTS / f"{args.name}_diagnostics.png")
        return summary, markdown(results, summary, args.name)

    def describe(key: str, record: dict[str, Any]) -> str:
        return (f"{key:>36}: last {TAIL} {100 * tail(record):.2f}  final "
                f"{100 * record['curve'][-1]:.2f}  {record['minutes']:.1f} min")

    jobs = ((f"{task}/{setting}/{method}/seed{seed}",
             document_for(task, setting, method, seed, args.rounds))
            for seed in args.seeds for task in args.tasks for setting in args.settings
            for method in args.methods)  # methods side by side: partial results stay paired
    results.run_and_tabulate(jobs, args.runs_dir, record_of, tables, describe)


if __name__ == "__main__":
    main()
