"""Copy a sweep's report into bench/results, where the research results are committed.

The research benchmarks are sweep files (bench/sweeps/*.yaml): `python -m server.cli
sweep bench/sweeps/X.yaml --runs-dir DIR` runs one and writes its report to
DIR/sweeps/NAME/ (report.md, report.json, plots), which already names the command and
commit that made it. This copies them to bench/results/NAME_sweep.md, NAME_sweep.json
and NAME_sweep_<plot>.png (the .md's plot links renamed to match; the .json's floats
rounded to 5 significant digits: people read it, the tables show 2 decimals). Rewrite
the report first with `python -m server.cli sweep report NAME --runs-dir DIR` to include
runs that finished since.

Usage: python bench/sweep_results.py NAME [--runs-dir runs]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def significant(value: Any, digits: int = 5) -> Any:
    """`value` with every float rounded to `digits` significant digits."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, list):
        return [significant(item, digits) for item in value]
    if isinstance(value, dict):
        return {key: significant(item, digits) for key, item in value.items()}
    return value


def copy_report(name: str, runs_dir: Path, results: Path = RESULTS) -> list[Path]:
    """RUNS_DIR/sweeps/NAME's report and plots into `results` as NAME_sweep*; the paths
    written. SystemExit when the sweep has no report yet."""
    folder = runs_dir / "sweeps" / name
    if not (folder / "report.md").is_file() or not (folder / "report.json").is_file():
        raise SystemExit(f"sweep_results: no report in {folder}: run `python -m server.cli "
                         f"sweep report {name} --runs-dir {runs_dir}` first")
    stem = f"{name}_sweep"
    plots = {p.name: results / f"{stem}_{p.name}" for p in sorted(folder.glob("*.png"))}
    text = (folder / "report.md").read_text()
    for old, new in plots.items():
        text = text.replace(f"({old})", f"({new.name})")
    report = json.loads((folder / "report.json").read_text())
    results.mkdir(parents=True, exist_ok=True)
    md_path, json_path = results / f"{stem}.md", results / f"{stem}.json"
    md_path.write_text(text)
    json_path.write_text(json.dumps(significant(report), indent=1) + "\n")
    for old, new in plots.items():
        shutil.copyfile(folder / old, new)
    return [md_path, json_path, *plots.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the sweep's name (its file's `name:`)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"),
                        help="the runs folder the sweep ran in (default: runs)")
    args = parser.parse_args()
    written = copy_report(args.name, args.runs_dir.resolve())
    report = json.loads(written[1].read_text())
    made = report.get("provenance", {})
    print(f"sweep {args.name}: status {report.get('status')}, made by "
          f"`{made.get('command')}` at commit {str(made.get('commit'))[:10]}")
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
