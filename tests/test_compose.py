"""compose.yaml parses, pins one GPU per SuperNode, is secure by default (TLS everywhere,
SuperNode authentication, credentials made and keys registered before any SuperNode
starts), and every command and flag in it is accepted by the installed Flower 1.42
executables and by orthofed (docker itself does not run here; the commands run together
on loopback in tests/integration/test_compose_stack.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
CREDENTIALS = "/credentials"


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
    assert set(SERVICES) == {"credentials", "superlink", "register", "api",
                             *(f"supernode-{i}" for i in range(4))}
    seen = set()
    for i in range(4):
        node = SERVICES[f"supernode-{i}"]
        command = node["command"]
        assert command[command.index("--node-config") + 1] == f"partition-id={i} num-partitions=4"
        (device,) = node["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["device_ids"] == [str(i)]
        seen.add(device["device_ids"][0])
        assert node["depends_on"] == {"register": {"condition": "service_completed_successfully"}}
        assert "runs:/runs" in node["volumes"] and "./credentials:/credentials:ro" in node["volumes"]
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
        assert not parsed.insecure and parsed.superlink == "superlink:9200"
        assert parsed.root_certificates == f"{CREDENTIALS}/ca.crt"
        assert parsed.auth_supernode_private_key == f"{CREDENTIALS}/node-{i}"


@pytest.mark.parametrize("service", ["superlink"])
def test_flower_accepts_every_flag(service: str) -> None:
    executable, *args = SERVICES[service]["command"]
    help_text = subprocess.run([executable, "--help"], capture_output=True, text=True,
                               check=True).stdout
    for flag in (a for a in args if a.startswith("--")):
        assert flag in help_text, f"{service}: {executable} has no {flag}"
    parsed = flower_parser(executable).parse_args(args)  # exits on a bad flag or value
    assert not parsed.insecure and parsed.isolation == "subprocess"
    assert parsed.enable_supernode_auth  # only registered keys join
    assert (parsed.ssl_ca_certfile, parsed.ssl_certfile, parsed.ssl_keyfile) == tuple(
        f"{CREDENTIALS}/{name}" for name in ("ca.crt", "superlink.crt", "superlink.key"))
    # Registered keys live in Flower's state: on a file in the runs volume, they survive
    # a restart of the container.
    assert parsed.database.startswith("/runs/")
    assert SERVICES[service]["depends_on"] == {
        "credentials": {"condition": "service_completed_successfully"}}


@pytest.mark.parametrize("service", ["credentials", "register", "api"])
def test_orthofed_accepts_every_flag(service: str) -> None:
    executable, command, *args = SERVICES[service]["command"]
    assert executable == "orthofed"
    help_text = subprocess.run([sys.executable, "-m", "server.cli", command, "--help"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for flag in (a for a in args if a.startswith("--")):
        assert flag in help_text, f"{service}: orthofed {command} has no {flag}"


def test_credentials_are_made_for_the_services_and_every_node_is_registered() -> None:
    from server.security.credentials import credential_files

    made = SERVICES["credentials"]["command"]
    assert made[2] == CREDENTIALS and "--keep-existing" in made
    assert SERVICES["credentials"]["volumes"] == [f"./credentials:{CREDENTIALS}"]
    hosts = {made[i + 1] for i, arg in enumerate(made) if arg == "--host"}
    assert {"superlink", "api", "localhost"} <= hosts
    nodes = int(made[made.index("--nodes") + 1])
    assert nodes == 4
    registered = SERVICES["register"]["command"]
    keys = [a for a in registered if a.endswith(".pub")]
    assert keys == [f"{CREDENTIALS}/{name}" for name in credential_files(nodes)
                    if name.endswith(".pub")]
    assert registered[registered.index("--superlink") + 1] == "superlink:9200"
    assert registered[registered.index("--superlink-ca") + 1] == f"{CREDENTIALS}/ca.crt"
    serve = SERVICES["api"]["command"]
    assert serve[serve.index("--ssl-certfile") + 1] == f"{CREDENTIALS}/api.crt"
    assert serve[serve.index("--ssl-keyfile") + 1] == f"{CREDENTIALS}/api.key"
    assert SERVICES["api"]["environment"]["ORTHOFED_SUPERLINK_CA"] == f"{CREDENTIALS}/ca.crt"


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
