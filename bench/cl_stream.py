"""OSFT vs sequential full fine-tuning vs sequential LoRA vs FedSVD-LoRA per task vs
orthogonal FedSVD on a continual-learning stream, over seeds.

Runs scenarios/{osft,seqft,seqlora,fedsvd-osft}-cl-4task.yaml (MiniLM, dbpedia -> amazon -> yelp ->
agnews from ../shared/data/cl_benchmark, 4 IID clients, 2 per round, a head per task;
fedsvd: the LoRA file with strategy fedsvd), or with --suite smollm2
scenarios/smollm2-{osft,seqft,seqlora}-cl.yaml (SmolLM2-135M answering each task in text,
dbpedia -> amazon -> agnews), through `orthofed run --json` for each seed,
methods interleaved so that each seed's runs share the data split and client sampling.
Prints and writes to bench/results/cl_stream.json and .md (with the command and commit,
after every run; `--resume` continues): per method AA, BWT, FWT (linear probes) and mean
forgetting as mean +- sd with a 95 % t-interval over seeds, OSFT's paired differences to
each baseline, and the accuracy matrix averaged over seeds.
What the papers found (T5-large / LLaMA-2, generative): OSFT keeps backward transfer
near zero while sequential fine-tuning forgets.

The long stream: --order long-7 (MNLI -> QQP -> yelp -> amazon -> SST-2 -> dbpedia ->
agnews, the OSFT paper's long sequence kept to the tasks ../shared/data has) with
--methods osft seqft seqlora fedsvd-osft osft-dp writes bench/results/cl_stream_long.*.

Usage: python bench/cl_stream.py [--suite minilm|smollm2] [--order long-7]
                                 [--methods osft seqft seqlora fedsvd fedsvd-osft osft-dp]
                                 [--seeds 0 1 2] [--rounds N] [--steps N] [--resume]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import fmean
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scenarios.data_spec import NAMED_ORDERS  # noqa: E402
from scenarios.loader import load_scenario  # noqa: E402
from seeded import ResultsFile, mean_sd, pct, spread  # noqa: E402
from strategies import keys  # noqa: E402

# <method>-dp: that method's file under DP-SGD (each client's noise sized for its whole stream)
PRIVACY = {"target_epsilon": 6.0, "delta": 1.0e-5, "max_grad_norm": 1.0, "accountant": "prv"}
NON_PRIVATE = {"osft": "OSFT", "seqft": "sequential full FT", "seqlora": "sequential LoRA",
               "fedsvd": "FedSVD-LoRA per task", "fedsvd-osft": "orthogonal FedSVD"}
METHODS = {**NON_PRIVATE, **{f"{m}-dp": f"{label} under DP (epsilon {PRIVACY['target_epsilon']:g})"
                             for m, label in NON_PRIVATE.items()}}
DEFAULT_METHODS = tuple(NON_PRIVATE)
METRICS = ("aa", "bwt", "fwt", "forgetting")
PAIRED = ("osft", "fedsvd-osft")  # methods whose paired differences to the others are shown


SUITES = {"minilm": "{}-cl-4task", "smollm2": "smollm2-{}-cl"}  # scenario file per method


def document_for(suite: str, method: str, seed: int, rounds: int | None,
                 steps: int | None, order: str | None = None) -> dict:
    """The suite's scenario of the method (fedsvd: the LoRA one with strategy fedsvd;
    <method>-dp: that method's one under DP) with the seed, and the stream's named order,
    rounds per task and local steps when given; paths absolute."""
    base = method.removesuffix("-dp")
    source = SUITES[suite].format({"fedsvd": "seqlora"}.get(base, base))
    if suite != "minilm" and base == "fedsvd-osft":
        raise SystemExit("fedsvd-osft ships a scenario for the minilm suite only")
    document = load_scenario(ROOT / "scenarios" / f"{source}.yaml").model_dump(mode="json")
    document["seed"] = seed
    if base == "fedsvd":
        document.update(name=SUITES[suite].format("fedsvd"),
                        strategy={"name": "fedsvd", "svd_period": 1})
    if method.endswith("-dp"):
        document.update(name=document["name"] + "-dp", privacy=PRIVACY)
    if order is not None:
        stream = document["stream"]
        root = Path(stream["tasks"][0]["source"]["path"]).parent
        document["stream"] = {"order": order, "benchmark_dir": str(root),
                              "test_fraction": stream["test_fraction"]}
        document["name"] = document["name"].replace("-4task", "") + f"-{order}"
    for key, value in (("rounds", rounds), ("local_steps", steps)):
        if value is not None:
            document["federation"][key] = value
    return document


def record_of(summary: dict[str, Any]) -> dict[str, Any]:
    tasks = summary["tasks"]
    return {"names": tasks["names"], "initial": tasks["initial"], "matrix": tasks["matrix"],
            "probe_initial": tasks["probe_initial"], "probe_matrix": tasks["probe_matrix"],
            "aa": tasks["aa"], "bwt": tasks["bwt"], "fwt": tasks["fwt"],
            "forgetting": fmean(tasks["forgetting"]), "forgetting_per_task": tasks["forgetting"],
            "minutes": summary["wall_seconds"] / 60, **wire_bytes(summary["rounds"])}


def wire_bytes(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """Mean bytes per client per round, each way, as the server measured them from the
    messages (strategies.message_size); absent for runs recorded before it did."""
    trained = [r["train"] for r in rounds if keys.BYTES_UP in r.get("train", {})]
    if not trained:
        return {}
    return {"bytes_up": fmean(t[keys.BYTES_UP] for t in trained),
            "bytes_down": fmean(t[keys.BYTES_DOWN] for t in trained)}


def summarise(runs: dict[str, dict]) -> dict[str, Any]:
    """Per method: spread of each metric and the seed-mean matrix; OSFT minus each
    baseline, paired by seed."""
    by_method = {m: {k.rsplit("seed", 1)[1]: r for k, r in runs.items() if k.startswith(f"{m}/")}
                 for m in METHODS}
    out: dict[str, Any] = {}
    for method, by_seed in by_method.items():
        if not by_seed:
            continue
        rows = list(by_seed.values())
        out[method] = {"seeds": sorted(int(s) for s in by_seed), "names": rows[0]["names"],
                       **{m: spread(r[m] for r in rows) for m in METRICS},
                       "matrix_mean": [[fmean(col) for col in zip(*cells, strict=True)]
                                       for cells in zip(*[r["matrix"] for r in rows], strict=True)],
                       "initial_mean": [fmean(c) for c in zip(*[r["initial"] for r in rows],
                                                              strict=True)],
                       "minutes": fmean(r["minutes"] for r in rows),
                       **{k: fmean(r[k] for r in rows) for k in ("bytes_up", "bytes_down")
                          if all(k in r for r in rows)}}
    for base in PAIRED:  # the method minus each other one, on the seeds both ran
        out[f"paired_{base}_minus"] = {
            other: {m: spread(by_method[base][s][m] - by_method[other][s][m]
                              for s in by_method[base] if s in by_method[other]) for m in METRICS}
            for other in METHODS if other != base and set(by_method[base]) & set(by_method[other])}
    return out


def markdown(results: ResultsFile, summary: dict[str, Any], suite: str) -> str:
    methods = [m for m in METHODS if m in summary]
    # The stream's own length, read off its runs (4 by default, 7 for --order long-7).
    stream = f"a {len(summary[methods[0]]['names'])}-task stream" if methods else "a stream"
    model = {"minilm": "MiniLM", "smollm2": "SmolLM2-135M"}[suite]
    lines = [results.header(f"OSFT vs its baselines on {stream} ({model})"),
             "Accuracy in %, mean ± sd over seeds (95 % t-interval half width in brackets). "
             "AA: mean final accuracy over tasks; BWT: mean (final - just after training) over "
             "all tasks but the last; FWT: " + ("through linear probes" if suite == "minilm" else
             "on the accuracy matrix (zero-shot before each task)") + "; forgetting: mean over "
             "all tasks but the last of (best earlier - final).", "",
             "| method | seeds | AA | BWT | FWT | forgetting | min/run |", "|---|---|---|---|---|---|---|"]
    for method in methods:
        row = summary[method]
        cells = " | ".join(f"{mean_sd(row[m])} [{pct(row[m], 'ci95')}]" for m in METRICS)
        lines.append(f"| {METHODS[method]} | {len(row['seeds'])} | {cells} | {row['minutes']:.1f} |")
    wire = [m for m in methods if "bytes_up" in summary[m]]
    if wire:
        lines += ["", "Bytes per client per round, measured by the server from the messages' "
                  "arrays (mean over rounds and seeds):", "",
                  "| method | client -> server | server -> client |", "|---|---|---|"]
        lines += [f"| {METHODS[m]} | {summary[m]['bytes_up'] / 1e6:.3f} MB | "
                  f"{summary[m]['bytes_down'] / 1e6:.3f} MB |" for m in wire]
    for base in PAIRED:
        if not summary[f"paired_{base}_minus"]:
            continue
        lines += ["", f"{METHODS[base]} minus each other method, paired by seed (points):", ""]
        for other, diffs in summary[f"paired_{base}_minus"].items():
            lines.append(f"- {METHODS[other]}: " + ", ".join(
                f"{m.upper() if m != 'forgetting' else m} {mean_sd(d)} [± {pct(d, 'ci95')}]"
                for m, d in diffs.items()))
    if methods:
        oldest = summary[methods[0]]["names"][0]
        lines += ["", f"Accuracy on the oldest task ({oldest}) after each task, mean over seeds:",
                  "", "| method | " + " | ".join(summary[methods[0]]["names"]) + " |",
                  "|---|" + "---|" * len(summary[methods[0]]["names"])]
        lines += [f"| {METHODS[m]} | " + " | ".join(f"{100 * cells[0]:.1f}" for cells in
                                                   summary[m]["matrix_mean"]) + " |" for m in methods]
    for method in methods:
        row = summary[method]
        lines += ["", f"{METHODS[method]}: accuracy on each task (columns) after each task "
                  "(rows), mean over seeds", "",
                  "| after | " + " | ".join(row["names"]) + " |", "|---|" + "---|" * len(row["names"]),
                  "| init | " + " | ".join(f"{100 * a:.1f}" for a in row["initial_mean"]) + " |"]
        lines += [f"| {name} | " + " | ".join(f"{100 * a:.1f}" for a in cells) + " |"
                  for name, cells in zip(row["names"], row["matrix_mean"], strict=False)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--suite", choices=list(SUITES), default="minilm",
                        help="minilm: scenarios/*-cl-4task.yaml; smollm2: scenarios/smollm2-*-cl.yaml")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS))
    parser.add_argument("--order", default=None, choices=list(NAMED_ORDERS),
                        help="the stream's named order instead of the files' (long-7: the OSFT "
                        "paper's long sequence within ../shared/data; results: cl_stream_long...)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=None, help="rounds per task")
    parser.add_argument("--steps", type=int, default=None, help="local steps per round")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in the results file that ran the same scenario")
    parser.add_argument("--runs-dir", type=Path, default=None)
    args = parser.parse_args()
    custom = "" if (args.rounds, args.steps) == (None, None) else f"_r{args.rounds}_s{args.steps}"
    suite = "" if args.suite == "minilm" else f"_{args.suite}"
    order = "" if args.order is None else f"_{args.order.replace('-7', '')}"
    results = ResultsFile(f"cl_stream{suite}{order}{custom}", resume=args.resume)

    def tables() -> tuple[dict[str, Any], str]:
        summary = summarise(results.runs)
        return summary, markdown(results, summary, args.suite)

    def describe(key: str, record: dict[str, Any]) -> str:
        return (f"{key:>14}: AA {100 * record['aa']:.1f}  BWT {100 * record['bwt']:.1f}  "
                f"FWT {100 * (record['fwt'] or 0):.1f}  {record['minutes']:.1f} min")

    jobs = ((f"{method}/seed{seed}", document_for(args.suite, method, seed, args.rounds, args.steps,
                                                  args.order))
            for seed in args.seeds for method in args.methods)  # methods interleaved per seed
    results.run_and_tabulate(jobs, args.runs_dir, record_of, tables, describe)


if __name__ == "__main__":
    main()
