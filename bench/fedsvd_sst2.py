"""FedSVD vs FFA-LoRA vs FedAvg-LoRA on the FedSVD paper's SST-2 split, non-private and
under DP-SGD at epsilon 6, over seeds.

Each setting has one scenario file, `scenarios/fedsvd-sst2[-paper][-dp].yaml` (MiniLM,
LoRA r = 8 on query and value, 6 pre-split clients with Dirichlet 0.5 label skew, 3 per
round, SGD 0.5; under DP: C = 2, PRV, delta 1e-5), and the three methods differ only in
`strategy`, so a seed gives each method the same clients, the same client sampling and
the same initial model: differences between methods at one seed are paired. Every run is
a real `orthofed run --json`; the accuracy is the final global model's on val.jsonl (872
rows; the majority class is 50.9 %).

It prints, per setting and method, the mean, sd and 95 % t-interval over seeds of the
accuracy over the last 4 rounds and of the final accuracy, the per-round mean curve, and
FedSVD's paired differences to each baseline. The last 4 rounds are two passes of the
balanced deck (each of the 6 clients trains in 2 of them): one round's accuracy swings
by several points with the label skew of its 3 clients, in every method alike, and a
whole pass averages that out; the same go to bench/results/fedsvd_sst2_<scale>.json
and .md, with the command and commit, rewritten after every run (`--resume` continues).
The paper (RoBERTa-large, 100 rounds, non-private): FedSVD 94.26 > FFA-LoRA 94.06 >
FedAvg-LoRA 85.89; under DP FedSVD stays best and the gap widens.

Usage: python bench/fedsvd_sst2.py [--settings non-private dp] [--seeds 0 1 2]
                                   [--scale cpu|paper] [--rounds N] [--resume]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scenarios.loader import load_scenario  # noqa: E402
from seeded import ResultsFile, mean_sd, pct, spread  # noqa: E402

METHODS = {"fedsvd": {"name": "fedsvd", "svd_period": 1}, "ffa-lora": {"name": "ffa-lora"},
           "fedavg-lora": {"name": "fedavg-lora"}}
SETTINGS = {"non-private": "", "dp": "-dp"}  # the scenario file's suffix
SCALES = {"cpu": "fedsvd-sst2{}.yaml", "paper": "fedsvd-sst2-paper{}.yaml",
          "smollm2": "smollm2-fedsvd-sst2{}.yaml"}  # {}: the setting's suffix
MAJORITY = 0.509  # val.jsonl's majority class (the CL benchmark's SST-2 test file: the same rows)
TAIL = 4  # rounds averaged: two passes of the balanced deck of 6 clients, 3 a round
PAPER_NON_PRIVATE = {"fedsvd": 94.26, "ffa-lora": 94.06, "fedavg-lora": 85.89}  # RoBERTa-large


def document_for(scale: str, setting: str, method: str, seed: int, rounds: int | None) -> dict:
    """The setting's scenario with the method's strategy and the seed (paths absolute)."""
    name = SCALES[scale].format(SETTINGS[setting])
    document = load_scenario(ROOT / "scenarios" / name).model_dump(mode="json")
    document.update(name=f"{method}-sst2-{scale}-{setting}", seed=seed, strategy=METHODS[method])
    if rounds is not None:
        document["federation"]["rounds"] = rounds
    return document


def record_of(summary: dict[str, Any]) -> dict[str, Any]:
    """What one run contributes: its accuracy curve (round 0 = the initial model), the
    most epsilon any client spent, refusals, failures, wall time."""
    curve = [r["eval"]["eval-acc"] for r in summary["rounds"] if r.get("eval")]
    epsilons = [c["epsilon"] for c in summary["clients"].values() if "epsilon" in c]
    return {"curve": curve, "max_epsilon": max(epsilons, default=None),
            "refusals": sum(c["refusals"] for c in summary["clients"].values()),
            "failures": sum(c["failures"] for c in summary["clients"].values()),
            "minutes": summary["wall_seconds"] / 60}


def tail(record: dict[str, Any]) -> float:
    """Mean accuracy over the run's last TAIL rounds."""
    return sum(record["curve"][-TAIL:]) / TAIL


def summarise(runs: dict[str, dict]) -> dict[str, Any]:
    """Per setting and method: spread of the last-TAIL-rounds mean, the final and the best
    accuracy, the mean curve and its sd per round; per setting: FedSVD minus each
    baseline, paired by seed (last TAIL rounds and final)."""
    out: dict[str, Any] = {}
    for setting in SETTINGS:
        per_method = {m: {k.rsplit("seed", 1)[1]: r for k, r in runs.items()
                          if k.startswith(f"{setting}/{m}/")} for m in METHODS}
        if not any(per_method.values()):
            continue
        block: dict[str, Any] = {}
        for method, by_seed in per_method.items():
            if not by_seed:
                continue
            curves = list(zip(*[r["curve"] for r in by_seed.values()], strict=False))
            block[method] = {
                "seeds": sorted(int(s) for s in by_seed),
                "tail": spread(tail(r) for r in by_seed.values()),
                "final": spread(r["curve"][-1] for r in by_seed.values()),
                "best": spread(max(r["curve"][1:]) for r in by_seed.values()),
                "curve_mean": [spread(c)["mean"] for c in curves],
                "curve_sd": [spread(c)["sd"] for c in curves],
                "max_epsilon": max((r["max_epsilon"] or 0) for r in by_seed.values()) or None,
                "minutes": spread(r["minutes"] for r in by_seed.values())["mean"],
            }
        block["paired_fedsvd_minus"] = {
            other: {stat: spread(of(per_method["fedsvd"][s]) - of(per_method[other][s])
                                 for s in per_method["fedsvd"] if s in per_method[other])
                    for stat, of in (("tail", tail), ("final", lambda r: r["curve"][-1]))}
            for other in ("ffa-lora", "fedavg-lora")
            if set(per_method["fedsvd"]) & set(per_method[other])}
        out[setting] = block
    return out


def markdown(results: ResultsFile, summary: dict[str, Any], scale: str) -> str:
    lines = [results.header(f"FedSVD vs FFA-LoRA vs FedAvg-LoRA, SST-2 ({scale} scale)"),
             "Accuracy (%) of the global model on val.jsonl (872 rows; majority class "
             f"{100 * MAJORITY:.1f} %): mean over the last {TAIL} rounds (two passes of the "
             "balanced deck: each client trains in 2 of them; one round swings with its 3 "
             "clients' label skew), after the final round, and at the best round. Mean ± sd "
             "over seeds, and the 95 % t-interval's half width. "
             "Paper (RoBERTa-large, 100 rounds, non-private): FedSVD 94.26, FFA-LoRA 94.06, "
             "FedAvg-LoRA 85.89.", ""]
    for setting, block in summary.items():
        lines += [f"## {setting}", "",
                  f"| method | seeds | last {TAIL} rounds | ± 95 % CI | final | ± 95 % CI | best round "
                  "| max ε | min/run |", "|---|---|---|---|---|---|---|---|---|"]
        for method in METHODS:
            if method not in block:
                continue
            row = block[method]
            eps = "-" if row["max_epsilon"] is None else f"{row['max_epsilon']:.2f}"
            lines.append(f"| {method} | {len(row['seeds'])} | {mean_sd(row['tail'])} | "
                         f"{pct(row['tail'], 'ci95')} | {mean_sd(row['final'])} | "
                         f"{pct(row['final'], 'ci95')} | {mean_sd(row['best'])} | {eps} | "
                         f"{row['minutes']:.1f} |")
        lines += ["", "FedSVD minus baseline, paired by seed (points):", ""]
        for other, diffs in block["paired_fedsvd_minus"].items():
            lines.append(f"- {other}: last {TAIL} rounds {mean_sd(diffs['tail'])} "
                         f"(95 % CI ± {pct(diffs['tail'], 'ci95')}), final {mean_sd(diffs['final'])} "
                         f"(± {pct(diffs['final'], 'ci95')}), {diffs['tail']['n']} seeds")
        rounds = max(len(block[m]["curve_mean"]) for m in METHODS if m in block)
        lines += ["", "Mean accuracy per round (round 0: the initial model):", "",
                  "| method | " + " | ".join(str(r) for r in range(rounds)) + " |",
                  "|---|" + "---|" * rounds]
        for method in METHODS:
            if method in block:
                lines.append(f"| {method} | " + " | ".join(
                    f"{100 * a:.1f}" for a in block[method]["curve_mean"]) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--scale", choices=list(SCALES), default="cpu",
                        help="cpu: scenarios/fedsvd-sst2[-dp].yaml (MiniLM); paper: the -paper "
                        "files (a GPU); smollm2: scenarios/smollm2-fedsvd-sst2[-dp].yaml")
    parser.add_argument("--rounds", type=int, default=None, help="override the scenarios' rounds")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in the results file that ran the same scenario")
    parser.add_argument("--runs-dir", type=Path, default=None)
    args = parser.parse_args()
    suffix = "" if args.rounds is None else f"_{args.rounds}rounds"
    results = ResultsFile(f"fedsvd_sst2_{args.scale}{suffix}", resume=args.resume)

    def tables() -> tuple[dict[str, Any], str]:
        summary = summarise(results.runs)
        return summary, markdown(results, summary, args.scale)

    def describe(key: str, record: dict[str, Any]) -> str:
        return (f"{key:>28}: last {TAIL} {100 * tail(record):.2f}  curve "
                f"{[round(100 * a, 1) for a in record['curve']]}  {record['minutes']:.1f} min")

    jobs = ((f"{setting}/{method}/seed{seed}", document_for(args.scale, setting, method, seed, args.rounds))
            for setting in args.settings for seed in args.seeds
            for method in args.methods)  # methods interleaved: partial results stay paired
    results.run_and_tabulate(jobs, args.runs_dir, record_of, tables, describe)


if __name__ == "__main__":
    main()
