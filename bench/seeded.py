"""What the benchmarks that answer a research question share: scenarios run through
`orthofed run --json` for several seeds, spread across seeds, and a results file.

A results file (bench/results/<name>.json) holds the command and commit that made it and
every run's record; it is rewritten after each run, with its Markdown table beside it,
so an interrupted benchmark keeps what it measured and `--resume` runs only the rest.
Spread across seeds is the sample standard deviation and a 95 % Student-t interval of
the mean, mean +- t(0.975, n - 1) sd / sqrt(n) (scipy), as the papers report over seeds.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from rich.progress import MofNCompleteColumn, Progress
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from server.cli.commands import cmd_compare  # noqa: E402


def run_document(document: dict[str, Any], runs_dir: Path, folder: Path) -> dict[str, Any]:
    """`orthofed run --json` of a scenario mapping (written to `folder` first); the run's
    summary, with `wall_seconds`. A failed run stops the benchmark, saying why."""
    path = folder / f"{document['name']}-seed{document['seed']}.yaml"
    path.write_text(yaml.safe_dump(document))
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "server.cli", "run", str(path), "--runs-dir",
                           str(runs_dir), "--json"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{path.name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    summary["wall_seconds"] = time.time() - started
    return summary


def spread(values: Iterable[float]) -> dict[str, float | int | None]:
    """n, mean, sd (n - 1), the 95 % t-interval's half width, min and max."""
    values = [float(v) for v in values]
    n = len(values)
    sd = statistics.stdev(values) if n > 1 else None
    half = float(stats.t.ppf(0.975, n - 1)) * sd / n ** 0.5 if sd is not None else None
    return {"n": n, "mean": statistics.fmean(values) if values else None, "sd": sd,
            "ci95": half, "min": min(values, default=None), "max": max(values, default=None)}


def pct(summary: dict[str, Any], key: str = "mean") -> str:
    """A spread's value in percent points, '-' when absent."""
    value = summary.get(key)
    return "-" if value is None else f"{100 * value:.2f}"


def mean_sd(summary: dict[str, Any]) -> str:
    """'mean +- sd' in percent points (the sd left out for one seed)."""
    if summary["sd"] is None:
        return pct(summary)
    return f"{pct(summary)} ± {pct(summary, 'sd')}"


def digest(document: dict[str, Any]) -> str:
    """A short hash of a scenario mapping: a resumed benchmark reuses a run only if the
    scenario it would run now is the one that was run."""
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def provenance() -> dict[str, Any]:
    """The command (as typed, from the repository root) and the commit that made a result."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    return {"command": " ".join(["python", str(shown), *sys.argv[1:]]),
            "commit": git("rev-parse", "HEAD"),
            # The results files themselves change as a benchmark runs: not code.
            "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no",
                                            "--", ".", ":!bench/results")),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count()}


def significant(value: Any, digits: int = 5) -> Any:
    """`value` with every float rounded to `digits` significant digits (a results file is
    read by people and tables to 2 decimals; full floats tripled its size)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, list):
        return [significant(item, digits) for item in value]
    if isinstance(value, dict):
        return {key: significant(item, digits) for key, item in value.items()}
    return value


def results_json(history: list, summary: dict[str, Any], runs: dict[str, Any]) -> str:
    """The results file's text: compact JSON, floats to 5 significant digits, one run per
    line (a resumed benchmark's diff shows the runs it added)."""
    def compact(value: Any) -> str:
        return json.dumps(significant(value), separators=(",", ":"))

    lines = ",\n".join(f"{json.dumps(key)}:{compact(record)}" for key, record in runs.items())
    return (f'{{"history":{compact(history)},\n"summary":{compact(summary)},\n'
            f'"runs":{{\n{lines}\n}}}}\n')


class ResultsFile:
    """bench/results/<name>.json (+ .md): the provenance and a record per run, keyed by
    what the run was (e.g. 'non-private/fedsvd/seed0'), saved after every run."""

    def __init__(self, name: str, resume: bool) -> None:
        self.json_path, self.md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
        previous = json.loads(self.json_path.read_text()) if resume and self.json_path.exists() else {}
        self.runs: dict[str, dict[str, Any]] = previous.get("runs", {})
        # A resumed file keeps the command and commit of every invocation that added runs.
        self.history: list[dict[str, Any]] = previous.get("history", [])
        self.provenance = provenance()

    def done(self, key: str, scenario_digest: str) -> dict[str, Any] | None:
        """The recorded run under `key`, if it ran the same scenario."""
        record = self.runs.get(key)
        return record if record and record.get("scenario_digest") == scenario_digest else None

    def add(self, key: str, record: dict[str, Any], scenario_digest: str) -> None:
        """A run's record (made by this invocation: its provenance joins the history)."""
        if self.provenance not in self.history:
            self.history.append(self.provenance)
        self.runs[key] = {**record, "scenario_digest": scenario_digest,
                          "commit": self.provenance["commit"]}

    def run_and_tabulate(self, jobs: Iterable[tuple[str, dict[str, Any]]],
                         runs_dir: Path | None,
                         record_of: Callable[[dict[str, Any]], dict[str, Any]],
                         tables: Callable[[], tuple[dict[str, Any], str]],
                         describe: Callable[[str, dict[str, Any]], str],
                         metric: str = "eval-acc") -> None:
        """Run each (key, scenario mapping) not recorded yet for that scenario (its runs
        under `runs_dir`, else a temporary folder), record it, rewrite both files from
        `tables()` (summary, Markdown) and print `describe(key, record)`: an interrupted
        benchmark keeps every run that finished; a progress bar counts the runs. At the
        end, `orthofed compare` of this invocation's runs prints their table (mean and
        std per scenario over its seeds) and writes their curves and accuracy matrices
        to bench/results/<name>-compare/; the files are rewritten from every recorded
        run (printed as Markdown when nothing new ran)."""
        with tempfile.TemporaryDirectory() as tmp:
            runs = (runs_dir or Path(tmp) / "runs").resolve()
            todo = [(key, document) for key, document in jobs
                    if not self.done(key, digest(document))]
            made: list[str] = []
            with Progress(*Progress.get_default_columns(), MofNCompleteColumn()) as progress:
                bar = progress.add_task(f"{self.json_path.stem}: runs", total=len(todo))
                for key, document in todo:
                    summary = run_document(document, runs, Path(tmp))
                    made.append(summary["run_id"])
                    record = record_of(summary)
                    self.add(key, record, digest(document))
                    self.write(*tables())
                    progress.console.print(describe(key, record), highlight=False)
                    progress.advance(bar)
            if self.runs:
                self.write(*tables())
            if made:  # this invocation's runs, side by side, by `orthofed compare`
                cmd_compare(made, runs, metric, RESULTS / f"{self.json_path.stem}-compare",
                            as_json=False)
        print(f"every recorded run (with 95 % intervals): {self.md_path}")
        if not made and self.runs:
            print(self.md_path.read_text())

    def write(self, summary: dict[str, Any], markdown: str) -> None:
        """Both files, as they stand (after every run)."""
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.json_path.write_text(results_json(self.history, summary, self.runs))
        self.md_path.write_text(markdown)

    def header(self, title: str) -> str:
        """The Markdown file's title and how to make it again."""
        lines = [f"# {title}", "", "Made by (newest last; a resumed benchmark adds a line):", ""]
        lines += [f"- `{p['command']}` at commit `{p['commit'][:10]}`"
                  f"{' (with uncommitted changes)' if p['uncommitted_changes'] else ''}, "
                  f"{p['started']}, {p['cpus']} CPUs" for p in self.history]
        return "\n".join(lines) + "\n"
