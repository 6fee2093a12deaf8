"""How long validation takes: `orthofed validate` as a fresh process, and each further
scenario checked in one process (what a sweep does with its expanded scenarios).

Measured side by side in one run:
  command      : wall seconds of `python -m server.cli validate scenarios/quick.yaml`, a
                 fresh process each time (median of --runs, after one warm-up run that
                 fills the OS file cache and Python's bytecode)
  per scenario : a fresh process checks the first variant of a scenario (imports, model
                 config, data files: reported as `first`), then --variants - 1 more with
                 clients.checks.check_scenarios (schema and disk checks, as a sweep calls
                 them); the mean per variant. A variant differs in seed (every one its own),
                 learning rate (5 values) and strategy (fedsvd, ffa-lora, fedavg-lora).
Goals: the command within 2 s, a further scenario within 50 ms; printed as measured /
goal (below 1 meets it). Every variant must validate, else this stops.
Usage: python bench/validate_speed.py [--runs 5] [--variants 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMMAND_GOAL_S, PER_SCENARIO_GOAL_S = 2.0, 0.050
SCENARIOS = ("scenarios/quick.yaml", "scenarios/glue-cached-lora-dp.yaml")
STRATEGIES = ("fedsvd", "ffa-lora", "fedavg-lora")


def command_seconds(runs: int) -> list[float]:
    """Wall seconds of each fresh `validate` process after one warm-up."""
    times = []
    for _ in range(runs + 1):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "server.cli", "validate", SCENARIOS[0]],
                              cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"validate failed: {done.stderr[-2000:]}")
    return times[1:]


def variants(document: dict, count: int) -> list[dict]:
    """`count` copies of `document`, each with its own seed, one of 5 learning rates and
    one of the three LoRA strategies."""
    lr = document["federation"]["optimizer"]["lr"]
    out = []
    for i in range(count):
        variant = yaml.safe_load(yaml.safe_dump(document))  # a deep copy
        variant["seed"] = i
        variant["federation"]["optimizer"]["lr"] = lr * 2.0 ** (i % 5 - 2)
        variant["strategy"] = {"name": STRATEGIES[i % len(STRATEGIES)]}
        out.append(variant)
    return out


def in_process(scenario: str, count: int) -> dict[str, float]:
    """(Run in a fresh child process.) Seconds for the first variant, then per variant."""
    started = time.perf_counter()
    from clients.checks import check_scenarios

    path = ROOT / scenario
    documents = variants(yaml.safe_load(path.read_text()), count)
    first = check_scenarios(documents[:1], base=path.parent)
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    rest = check_scenarios(documents[1:], base=path.parent)
    rest_s = time.perf_counter() - started
    problems = [errors for errors in first + rest if errors]
    if problems:
        raise SystemExit(f"{scenario}: {len(problems)} variants do not validate: {problems[0]}")
    return {"first": first_s, "per_scenario": rest_s / max(count - 1, 1)}


def measured_in_child(scenario: str, count: int) -> dict[str, float] | None:
    if not (ROOT / scenario).is_file():
        return None
    done = subprocess.run([sys.executable, __file__, "--child", scenario, "--variants",
                           str(count)], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        if "No such file or directory" in done.stderr or "no such folder" in done.stderr:
            return None  # its data (../shared/data) is not on this machine
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--variants", type=int, default=200)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.child:
        print(json.dumps(in_process(args.child, args.variants)))
        return
    times = command_seconds(args.runs)
    median = statistics.median(times)
    print(f"orthofed validate {SCENARIOS[0]} (fresh process, median of {args.runs}): "
          f"{median:.2f} s (min {min(times):.2f}, max {max(times):.2f}); "
          f"/ goal {COMMAND_GOAL_S:g} s = {median / COMMAND_GOAL_S:.2f}")
    for scenario in SCENARIOS:
        result = measured_in_child(scenario, args.variants)
        if result is None:
            print(f"{scenario}: skipped (its data is not on this machine)")
            continue
        per = result["per_scenario"]
        print(f"{scenario}: first {result['first']:.2f} s, then {per * 1e3:.2f} ms per scenario "
              f"over {args.variants - 1} variants; / goal {PER_SCENARIO_GOAL_S * 1e3:g} ms = "
              f"{per / PER_SCENARIO_GOAL_S:.3f}")


if __name__ == "__main__":
    main()
