"""The GPU checks of the device kit, one after another, into one JSON and one Markdown
table (bench/device/run.sh runs this; see its header).

  site        what orthofed needs is importable here, at versions its ranges admit
  deployment  (a) deployment_check: 4 warm SuperNodes on one GPU vs a plain loop
  stream      (b) osft_stream_check: a private 2-task OSFT stream on the GPU, step costs
  aggregation (c) aggregation_check: FedSVD's aggregation on the GPU vs the plain mean
  gpu-tests   (d) `pytest -m gpu` over the test files that hold GPU tests

A check that raises is recorded as an error with its message and the others still run;
the exit status is 1 when any did (a target missed is reported, not an error).
`--smoke` runs every check at tiny shapes on the CPU (CI runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import aggregation_check  # noqa: E402
import check_site  # noqa: E402
import deployment_check  # noqa: E402
import osft_stream_check  # noqa: E402


def gpu_tests(work: Path, device: torch.device, smoke: bool) -> dict:
    """`pytest -m gpu` over the files with GPU tests (collecting the whole suite would
    import test tools the accelerator lacks); skipped tests are counted, not passed."""
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                   if "mark.gpu" in p.read_text())
    report = work / "gpu-tests.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p",
                           "no:cacheprovider", f"--junitxml={report}", *files], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    if done.returncode not in (0, 5) or counts["failures"] or counts["errors"]:
        raise RuntimeError(f"pytest -m gpu exited {done.returncode}: {done.stdout[-1500:]}")
    return {"files": files, **counts,
            "met": counts["passed"] > 0 and counts["skipped"] == 0 if device.type == "cuda"
            else None}


def site(work: Path, device: torch.device, smoke: bool) -> dict:
    kit = os.environ.get("ORTHOFED_KIT_SITE")
    found = check_site.report(Path(kit) if kit else None)
    if found["missing"]:
        raise RuntimeError(f"not importable here: {', '.join(found['missing'])}")
    return {**found, "kit_site": kit, "met": not found["out_of_range"]}


CHECKS = {"site": site, "deployment": deployment_check.run, "stream": osft_stream_check.run,
          "aggregation": aggregation_check.run, "gpu-tests": gpu_tests}


def machine() -> dict:
    import flwr
    import numpy
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "numpy": numpy.__version__, "flwr": flwr.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpus": os.cpu_count()}


def commit() -> str:
    """The commit the kit was made from (prepare.sh writes it: the tree travels without
    its .git), else this checkout's."""
    made = HERE / "kit" / "commit.txt"
    if made.is_file():
        return made.read_text().strip()
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def markdown(results: dict) -> str:
    rows = ["| check | measured | target | met | seconds |", "|---|---|---|---|---|"]
    for name, out in results["checks"].items():
        rows.append(f"| {name} | {measured(name, out)} | {TARGETS.get(name, '')} | "
                    f"{ {True: 'yes', False: 'no', None: 'n/a'}.get(out.get('met'), 'error')} "
                    f"| {out['seconds']:.0f} |")
    m = results["machine"]
    return (f"# Device checks{' (smoke, CPU)' if results['smoke'] else ''}\n\n"
            f"`{results['command']}` at commit {results['commit']}, {results['when']}; "
            f"{m['gpu'] or 'no GPU'}, Python {m['python']}, torch {m['torch']}, "
            f"transformers {m['transformers']}, numpy {m['numpy']}, flwr {m['flwr']}.\n\n"
            + "\n".join(rows) + "\n")


TARGETS = {"site": "nothing missing or out of range",
           "deployment": "round <= 1.3x plain loop",
           "stream": "cuda; invariant <= 1e-4; OSFT <= 1.15x, DP <= 2x plain step",
           "aggregation": "<= 1.5x mean (from host arrays); product <= 1e-6", "gpu-tests": "all pass, none skipped"}


def measured(name: str, out: dict) -> str:
    if "error" in out:
        return f"error: {out['error'][:160]}"
    if name == "site":
        return (f"{out['from_kit']} from the kit, {out['from_machine']} the machine's; "
                f"out of range: {', '.join(out['out_of_range']) or 'none'}")
    if name == "deployment":
        gpu = out["federated"]["gpu"]
        util = f", GPU {gpu['mean_util_pct']:.0f} % busy" if gpu.get("samples") else ""
        return (f"{out['model_parameters'] / 1e6:.0f}M params; federated "
                f"{out['federated']['later_round_s']:.2f} s, plain "
                f"{out['plain']['median_round_s']:.2f} s per round: {out['ratio']:.2f}x{util}")
    if name == "stream":
        s, c = out["stream"], out["steps"]
        return (f"{s['status']} on {'/'.join(s['client_devices'])}, triplet error "
                f"{s['max_triplet_error']:.1e} over {s['preserved_matrices']} matrices; "
                f"OSFT {c['osft_over_plain']['median']:.2f}x, DP {c['dp_over_plain']['median']:.2f}x"
                + (f" (peak {c['dp_peak_over_plain']:.2f}x)" if c["dp_peak_over_plain"] else ""))
    if name == "aggregation":
        return (f"{out['pairs']} pairs d={out['d']}, from host arrays "
                f"{out['from_host_ratio']['median']:.2f}x, resident "
                f"{out['resident_ratio']['median']:.2f}x, shipped strategies on the host "
                f"{out['shipped_on_host']['ratio']:.2f}x; error {out['max_product_error']:.1e}")
    return f"{out['passed']} passed, {out['skipped']} skipped of {out['tests']}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), default=list(CHECKS))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or
                                                         ROOT / "bench" / "results"))
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    if not args.smoke and not torch.cuda.is_available():
        print("checks.py: no CUDA device here; --smoke runs the checks on the CPU", file=sys.stderr)
        return 2
    results = {"command": " ".join(["bench/device/run.sh", *sys.argv[1:]]), "commit": commit(),
               "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "smoke": args.smoke,
               "machine": machine(), "checks": {}}
    with tempfile.TemporaryDirectory(prefix="device-checks-") as tmp:
        for name in args.only:
            start = time.perf_counter()
            print(f"== {name}", flush=True)
            try:
                out = CHECKS[name](Path(tmp), device, args.smoke)
            except Exception as exc:  # noqa: BLE001 - record it, run the other checks
                out = {"error": f"{type(exc).__name__}: {exc}"}
            out["seconds"] = time.perf_counter() - start
            results["checks"][name] = out
            print(f"   {measured(name, out)} ({out['seconds']:.0f} s)", flush=True)
    stem = "device_checks_smoke" if args.smoke else "device_checks"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(results))
    print(f"wrote {args.out / stem}.json and .md")
    return 1 if any("error" in out for out in results["checks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
