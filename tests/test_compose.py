"""compose.yaml parses, pins one GPU per SuperNode, and every command and flag in it is
accepted by the installed Flower 1.42 executables and by orthofed (docker itself does
not run here)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def flower_parser(executable: str):
    """The argparse parser behind a Flower executable (private, but it is exactly what
    the executable parses its argv with)."""
    if executable == "flower-superlink":
        from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink
        return _parse_args_run_superlink()
    if executable == "flower-supernode":
        from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode
        return _parse_args_run_supernode()
    raise AssertionError(f"unexpected executable {executable}")


def test_services_and_gpu_pinning() -> None:
    assert set(SERVICES) == {"superlink", "api", *(f"supernode-{i}" for i in range(4))}
    seen = set()
    for i in range(4):
        node = SERVICES[f"supernode-{i}"]
        command = node["command"]
        assert command[command.index("--node-config") + 1] == f"partition-id={i} num-partitions=4"
        (device,) = node["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["device_ids"] == [str(i)]
        seen.add(device["device_ids"][0])
        assert node["depends_on"] == ["superlink"] and "runs:/runs" in node["volumes"]
    assert seen == {"0", "1", "2", "3"}
    assert "runs" in COMPOSE["volumes"] and "runs:/runs" in SERVICES["api"]["volumes"]


def test_supernodes_are_warm_and_flower_accepts_what_they_pass_on() -> None:
    """clients.node.warm_node takes its own flags and passes the rest to flower-supernode
    with --isolation process (it claims the node's tasks itself)."""
    from clients.node.warm_node import split_arguments

    for i in range(4):
        python, dash_m, module, *args = SERVICES[f"supernode-{i}"]["command"]
        assert (python, dash_m, module) == ("python", "-m", "clients.node.warm_node")
        ours, rest = split_arguments(args)  # exits on a bad flag or value
        assert ours.port == 9094
        parsed = flower_parser("flower-supernode").parse_args(
            [*rest, "--isolation", "process", "--port", str(ours.port)])
        assert parsed.insecure and parsed.superlink == "superlink:9200"


@pytest.mark.parametrize("service", ["superlink"])
def test_flower_accepts_every_flag(service: str) -> None:
    executable, *args = SERVICES[service]["command"]
    help_text = subprocess.run([executable, "--help"], capture_output=True, text=True,
                               check=True).stdout
    for flag in (a for a in args if a.startswith("--")):
        assert flag in help_text, f"{service}: {executable} has no {flag}"
    parsed = flower_parser(executable).parse_args(args)  # exits on a bad flag or value
    assert parsed.insecure and parsed.isolation == "subprocess"


def test_orthofed_serve_accepts_its_flags() -> None:
    executable, *args = SERVICES["api"]["command"]
    assert executable == "orthofed" and args[0] == "serve"
    help_text = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--help"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for flag in (a for a in args if a.startswith("--")):
        assert flag in help_text


def test_the_image_installs_the_pinned_stack() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM nvidia/cuda:" in dockerfile
    assert "pip install torch==2.13.0 -c constraints.txt" in dockerfile
    assert "pip install -e . -c constraints.txt" in dockerfile
    assert "constraints.txt" in dockerfile.split("COPY pyproject.toml")[1].splitlines()[0]


def test_the_api_sends_posted_runs_to_the_compose_superlink() -> None:
    """POST /runs in compose trains on the GPU SuperNodes: the API's superlink setting is
    the superlink service's address and port, and ServeSettings accepts it."""
    from server.api.settings import ServeSettings

    api = SERVICES["api"]
    address = api["environment"]["ORTHOFED_SUPERLINK"]
    superlink = SERVICES["superlink"]["command"]
    assert address == f"superlink:{superlink[superlink.index('--port') + 1]}"
    assert api["depends_on"] == ["superlink"]
    assert ServeSettings(superlink=address).superlink == address
