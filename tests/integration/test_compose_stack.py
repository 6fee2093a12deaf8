"""compose.yaml's own commands, run together on loopback (docker does not run here): the
`credentials` service writes the set and keeps it on a second start, the SuperLink comes
up with TLS and SuperNode authentication on its SQLite state, `register` registers the
node keys (and, after a SuperLink restart, finds them still registered), the SuperNodes
authenticate and come online, and the API answers over HTTPS only.

Each command is compose's, with only what a container provides swapped for this host's:
/credentials and /runs for temporary folders, the service names and fixed ports for
loopback and free ports, `orthofed` and `python` for this interpreter.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from server.orchestration.launcher import free_port, health_problem, stop_tree
from tests.conftest import ROOT
from tests.integration.helpers import wait_for

SERVICES = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
pytestmark = [pytest.mark.long, pytest.mark.xdist_group("compose-stack")]


class Loopback:
    """compose's command lines, moved from containers to this host."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.credentials, self.runs = root / "credentials", root / "runs"
        self.runs.mkdir()
        self.superlink_port, self.api_port = free_port(), free_port()
        self.superlink = f"127.0.0.1:{self.superlink_port}"
        self.processes: list[subprocess.Popen] = []

    def value(self, previous: str, arg: str) -> str:
        if previous == "--port":
            return str({"9200": self.superlink_port, "8000": self.api_port}.get(arg, free_port()))
        if previous == "--host" and arg == "0.0.0.0":
            return "127.0.0.1"
        return (arg.replace("superlink:9200", self.superlink)
                .replace("/credentials", str(self.credentials)).replace("/runs", str(self.runs)))

    def command(self, service: str) -> list[str]:
        executable, *args = SERVICES[service]["command"]
        head = {"orthofed": [sys.executable, "-m", "server.cli"],
                "python": [sys.executable]}.get(executable, [executable])
        return head + [self.value(prev, arg) for prev, arg in zip(["", *args], args)]

    def environment(self, service: str) -> dict[str, str]:
        env = {k: self.value("", str(v)) for k, v in
               SERVICES[service].get("environment", {}).items()}
        return dict(os.environ, HF_HUB_OFFLINE="1", FLWR_HOME=str(self.root / f"home-{service}"),
                    **env)

    def run(self, service: str, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(service), cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env={**self.environment(service), **extra_env})

    def start(self, service: str, **extra_env: str) -> subprocess.Popen:
        log = (self.root / f"{service}.log").open("ab")
        process = subprocess.Popen(self.command(service), cwd=ROOT, stdout=log, stderr=log,
                                   env={**self.environment(service), **extra_env},
                                   start_new_session=True)
        self.processes.append(process)
        return process

    def online_nodes(self) -> int:
        home = self.root / "cli-home"
        home.mkdir(exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "c"\n\n[superlink.c]\naddress = "{self.superlink}"\n'
            f'root-certificates = "{self.credentials / "ca.crt"}"\n')
        listed = subprocess.run(["flwr", "supernode", "ls", "c", "--format", "json"],
                                capture_output=True, text=True, timeout=60,
                                env=dict(os.environ, FLWR_HOME=str(home)))
        nodes = json.loads(listed.stdout).get("nodes", [])
        return sum(node["status"] == "online" for node in nodes)


@pytest.fixture()
def stack(tmp_path):
    loopback = Loopback(tmp_path)
    try:
        yield loopback
    finally:
        for process in reversed(loopback.processes):
            stop_tree(process, grace_s=3.0)


def test_compose_commands_make_a_secure_federation_together(stack: Loopback) -> None:
    made = stack.run("credentials")
    assert made.returncode == 0, made.stderr
    keys = {p.name: p.read_bytes() for p in stack.credentials.iterdir()}
    assert {"ca.crt", "superlink.key", "api.crt", "node-3", "node-3.pub"} <= set(keys)
    again = stack.run("credentials")  # compose runs it on every start: nothing replaced
    assert again.returncode == 0 and "kept" in again.stdout, again.stderr
    assert {p.name: p.read_bytes() for p in stack.credentials.iterdir()} == keys

    ca = stack.credentials / "ca.crt"
    superlink = stack.start("superlink")
    wait_for(lambda: health_problem(stack.superlink, 2.0, ca) is None, 60, "the TLS SuperLink")
    assert health_problem(stack.superlink, 2.0) is not None  # plain HTTP is refused
    registered = stack.run("register")
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.count(": registered (node ") == 4, registered.stdout

    # A restart on its SQLite state keeps the keys: register says so instead of failing.
    stop_tree(superlink, grace_s=5.0)
    stack.start("superlink")
    again = stack.run("register")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(": already registered") == 4, again.stdout
    not_a_key = subprocess.run(
        [sys.executable, "-m", "server.cli", "register", str(ca), "--superlink", stack.superlink,
         "--superlink-ca", str(ca)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert not_a_key.returncode == 1 and f"register: {ca}: " in not_a_key.stderr
    assert "Unsupported key type" in not_a_key.stderr and "\x1b[" not in not_a_key.stderr

    stack.start("supernode-0")
    stack.start("supernode-1")
    wait_for(lambda: stack.online_nodes() == 2, 180, "compose's SuperNodes authenticated")

    stack.start("api", ORTHOFED_TOKEN="compose-token")
    context = ssl.create_default_context(cafile=str(ca))
    api = f"127.0.0.1:{stack.api_port}"
    healthy = wait_for(lambda: _get(f"https://{api}/healthz", context), 60, "the HTTPS API")
    assert healthy.status_code == 200
    assert _get(f"http://{api}/healthz", True) is None  # no plain HTTP beside it


def _get(url: str, verify) -> httpx.Response | None:
    try:
        return httpx.get(url, verify=verify, timeout=5.0)
    except httpx.HTTPError:
        return None
