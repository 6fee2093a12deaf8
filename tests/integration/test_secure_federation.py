"""A secure federation across hosts: a SuperLink on one host (a network namespace),
warm SuperNodes on two others, TLS on every Flower API (certificates made by
`orthofed credentials`), and Flower 1.42's SuperNode authentication: only SuperNodes
whose public key an operator registered (`flwr supernode register`) join.

Checked: a run posted to the REST API over HTTPS (with its token) trains on the remote
SuperNodes to the end over TLS, its event stream and the store hold every round, and its
numbers equal the same scenario's on loopback; a SuperNode with an unregistered key is
refused while the registered ones stay; a client without the CA, with a wrong CA, or
speaking plaintext to the TLS port is refused; a wrong or missing API token is refused;
a host whose link is cut mid-run fails that round, is recorded, and rejoins when the
link is back. Skipped, saying why, where network namespaces cannot be made.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
import yaml

from server.orchestration.launcher import health_problem
from server.runs.store import MetricsStore
from server.security.credentials import make_ca, make_credentials
from tests.conftest import ROOT
from tests.integration.helpers import (
    follow,
    kill_tree_now,
    last_json_line,
    run_orthofed,
    wait_for,
)
from tests.integration.netns import Hosts, namespaces_problem
from tests.integration.test_deployment import small_scenario
from tests.integration.test_streams import without_timings

pytestmark = [pytest.mark.integration, pytest.mark.long,
              pytest.mark.xdist_group("secure-federation")]
PORT, API_PORT, TOKEN = 9200, 8443, "secure-token"


@dataclass
class Federation:
    hosts: Hosts
    root: Path
    creds: Path
    superlink: str  # HOST:PORT on the link host's address
    cli_env: dict[str, str]  # FLWR_HOME with a TLS connection named "fed"
    started: int = 0  # SuperNodes started: each gets its own Runtime API port
    superlink_process: subprocess.Popen | None = None

    def start_superlink(self) -> subprocess.Popen:
        """The SuperLink on the link host: TLS on every API, SuperNode authentication,
        its state in a SQLite file (a restart after SIGKILL finds its nodes and runs)."""
        creds = self.creds
        env = dict(os.environ, FLWR_HOME=str(self.root / "link-home"), HF_HUB_OFFLINE="1",
                   FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
        return self.hosts.start("link", [
            "flower-superlink", "--ssl-ca-certfile", str(creds / "ca.crt"),
            "--ssl-certfile", str(creds / "superlink.crt"),
            "--ssl-keyfile", str(creds / "superlink.key"), "--enable-supernode-auth",
            "--isolation", "subprocess", "--host", "0.0.0.0", "--port", str(PORT),
            "--database", str(self.root / "superlink.db"),
            "--disable-runtime-dependency-installation"],
            (self.root / "superlink.log").open("ab"), env=env, cwd=self.root)

    def wait_superlink(self) -> None:
        wait_for(lambda: self.hosts.call("n1", health_problem, self.superlink, 1.0,
                                         self.creds / "ca.crt") is None, 90,
                 "the SuperLink over TLS")

    def flwr(self, *args: str, timeout: float = 60):
        return self.hosts.run("link", ["flwr", *args], timeout=timeout, env=self.cli_env,
                              cwd=self.root)

    def online_nodes(self) -> list[dict]:
        listed = self.flwr("supernode", "ls", "fed", "--format", "json")
        assert listed.returncode == 0, listed.stdout[-1500:] + listed.stderr[-1500:]
        return [n for n in json.loads(listed.stdout)["nodes"] if n["status"] == "online"]

    def supernode(self, host: str, key: str, partition: int, log_name: str,
                  tls: list[str] | None = None):
        """A warm SuperNode on `host` authenticating with `key` (tls: its TLS flags)."""
        home = self.root / f"home-{log_name}"
        env = dict(os.environ, FLWR_HOME=str(home), HF_HUB_OFFLINE="1")
        tls = ["--root-certificates", str(self.creds / "ca.crt")] if tls is None else tls
        self.started += 1
        return self.hosts.start(host, [
            sys.executable, "-m", "clients.node.warm_node", "--superlink", self.superlink,
            "--port", str(9100 + self.started), *tls, "--auth-supernode-private-key", str(self.creds / key),
            "--node-config", f"partition-id={partition} num-partitions=2"],
            (self.root / f"{log_name}.log").open("wb"), env=env, cwd=self.root)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    problem = namespaces_problem()
    if problem:
        pytest.skip(problem)
    root = tmp_path_factory.mktemp("secure")
    hosts = Hosts(["link", "n1", "n2"])
    creds = root / "creds"
    make_credentials(creds, [hosts.address["link"]], nodes=3)
    cli_home = root / "cli-home"
    cli_home.mkdir()
    superlink = f"{hosts.address['link']}:{PORT}"
    (cli_home / "config.toml").write_text(
        f'[superlink]\ndefault = "fed"\n\n[superlink.fed]\naddress = "{superlink}"\n'
        f'root-certificates = "{creds / "ca.crt"}"\n')
    fed = Federation(hosts, root, creds, superlink, dict(os.environ, FLWR_HOME=str(cli_home)))
    hosts.up()
    try:
        fed.superlink_process = fed.start_superlink()
        fed.wait_superlink()
        for key in ("node-0.pub", "node-1.pub"):  # node-2 stays unregistered
            done = fed.flwr("supernode", "register", str(creds / key), "fed")
            assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]
        fed.supernode("n1", "node-0", 0, "node-0")
        fed.supernode("n2", "node-1", 1, "node-1")
        wait_for(lambda: len(fed.online_nodes()) == 2, 120, "both registered SuperNodes online")
        yield fed
    finally:
        hosts.down()


def https_client(fed: Federation, ca: Path | None = None) -> httpx.Client:
    verify = ssl.create_default_context(cafile=str(ca or fed.creds / "ca.crt"))
    return httpx.Client(base_url=f"https://{fed.hosts.address['link']}:{API_PORT}",
                        verify=verify, timeout=60)


def test_a_run_posted_over_https_trains_over_tls_as_on_loopback(federation, tmp_path) -> None:
    fed = federation
    runs_dir = fed.root / "runs"
    fed.hosts.start("link", [
        sys.executable, "-m", "server.cli", "serve", "--host", fed.hosts.address["link"],
        "--port", str(API_PORT), "--runs-dir", str(runs_dir), "--token", TOKEN,
        "--ssl-certfile", str(fed.creds / "api.crt"), "--ssl-keyfile", str(fed.creds / "api.key"),
        "--superlink", fed.superlink, "--superlink-ca", str(fed.creds / "ca.crt")],
        (fed.root / "serve.log").open("wb"), env=dict(os.environ, HF_HUB_OFFLINE="1"), cwd=ROOT)
    scenario = small_scenario(tmp_path, rounds=2, name="secure")
    body = json.dumps(yaml.safe_load(Path(scenario).read_text()))
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def post_and_follow() -> tuple[list[int], str, list[tuple[str, dict]]]:
        with https_client(fed) as client:
            wait_for(lambda: _answers(client), 60, "orthofed serve over HTTPS")
            refused = [client.post("/runs", content=body, headers=headers).status_code
                       for headers in ({**auth, "Authorization": "Bearer wrong"},
                                       {"Content-Type": "application/json"})]
            posted = client.post("/runs", content=body, headers=auth)
            assert posted.status_code == 202, posted.text[:500]
            run_id = posted.json()["id"]
            return refused, run_id, follow(client, run_id, timeout=600)

    refused, run_id, events = fed.hosts.call("n1", post_and_follow)
    assert refused == [401, 401]
    statuses = [d["status"] for e, d in events if e == "status"]
    log = (runs_dir / run_id / "orthofed.log")
    assert statuses[-1] == "completed", log.read_text()[-3000:] if log.exists() else statuses
    store = MetricsStore.in_dir(runs_dir)
    rounds = store.rounds(run_id)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert [d for e, d in events if e == "round"] == rounds
    assert sorted((c["round"], c["partition_id"]) for c in store.client_rounds(run_id)) == [
        (1, 0), (1, 1), (2, 0), (2, 1)]
    # The same scenario on loopback (a local deployment, no TLS): the same numbers.
    done = run_orthofed("run", scenario, "--runs-dir", str(tmp_path / "loopback"), "--json",
                        "--deployment", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for remote, local in zip(rounds, last_json_line(done.stdout)["rounds"], strict=True):
        assert remote["eval"]["eval-acc"] == local["eval"]["eval-acc"]
        assert remote["eval"]["eval-loss"] == pytest.approx(local["eval"]["eval-loss"], rel=1e-5)


def _answers(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def test_an_unregistered_supernode_is_refused_and_the_registered_ones_stay(federation) -> None:
    fed = federation
    intruder = fed.supernode("n2", "node-2", 0, "intruder")
    assert intruder.wait(timeout=180) != 0  # Flower exits once activation is refused
    log = (fed.root / "intruder.log").read_text()
    assert "Failed to activate SuperNode" in log, log[-2000:]
    assert len(fed.online_nodes()) == 2


@pytest.mark.parametrize("case", ["no-ca", "wrong-ca", "plaintext"])
def test_a_client_without_the_ca_with_a_wrong_ca_or_in_plaintext_is_refused(
        federation, case) -> None:
    fed = federation
    wrong = fed.root / "wrong-ca"
    if not (wrong / "ca.crt").exists():
        wrong.mkdir(exist_ok=True)
        make_ca(wrong, "an impostor CA")
    target = f"{fed.superlink}"
    if case == "plaintext":
        problem = fed.hosts.call("n1", health_problem, target, 5.0)  # http:// to the TLS port
    else:
        problem = fed.hosts.call("n1", _https_problem, target,
                                 None if case == "no-ca" else wrong / "ca.crt")
    assert problem is not None
    if case != "plaintext":
        assert "CERTIFICATE_VERIFY_FAILED" in problem, problem
    # A SuperNode (a registered key) configured so never comes online, and says why.
    tls = {"no-ca": [], "wrong-ca": ["--root-certificates", str(wrong / "ca.crt")],
           "plaintext": ["--insecure"]}[case]
    node = fed.supernode("n1", "node-0", 0, f"bad-{case}", tls=tls)
    try:
        time.sleep(10)
        assert len(fed.online_nodes()) == 2  # still only the two good ones
    finally:
        node.kill()
        node.wait()
    # orthofed run against the TLS SuperLink without its CA: refused before submitting.
    if case == "no-ca":
        done = fed.hosts.run("link", [sys.executable, "-m", "server.cli", "run",
                                      str(ROOT / "scenarios" / "quick.yaml"), "--runs-dir",
                                      str(fed.root / "runs-no-ca"), "--superlink", target],
                             timeout=120, cwd=ROOT)
        assert done.returncode == 1 and "no SuperLink answers" in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr


def _https_problem(address: str, ca: Path | None) -> str | None:
    verify = ssl.create_default_context(cafile=str(ca)) if ca else True
    try:
        httpx.get(f"https://{address}/health", timeout=10, verify=verify)
        return None
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"


def test_a_cut_link_fails_that_client_for_the_round_and_it_rejoins(federation, tmp_path) -> None:
    """Host n2's link goes down mid-run: the round completes with n1's reply (min_replies
    1) after the round timeout, the failure is recorded for partition 1; the link comes
    back, n2's SuperNode is online again and partition 1 trains in later rounds."""
    fed = federation
    doc = yaml.safe_load(Path(small_scenario(tmp_path, rounds=6, name="cut")).read_text())
    doc["federation"].update(min_replies=1, round_timeout=20.0, local_steps=5)
    scenario = tmp_path / "cut.yaml"
    scenario.write_text(yaml.safe_dump(doc))
    runs_dir = fed.root / "runs-cut"
    run = fed.hosts.start("link", [
        sys.executable, "-m", "server.cli", "run", str(scenario), "--runs-dir", str(runs_dir),
        "--superlink", fed.superlink, "--superlink-ca", str(fed.creds / "ca.crt"), "--json"],
        (tmp_path / "cut-run.log").open("wb"), env=dict(os.environ, HF_HUB_OFFLINE="1"),
        cwd=ROOT)
    try:
        store = wait_for(lambda: (runs_dir / "orthofed.sqlite").exists()
                         and MetricsStore.in_dir(runs_dir), 120, "the run's store")
        run_id = wait_for(lambda: (store.list_runs(limit=1) or [{}])[0].get("id"), 60, "the run")
        wait_for(lambda: len(store.rounds(run_id)) >= 2, 300, "round 1 recorded")
        fed.hosts.set_link("n2", up=False)
        cut_after = len(store.rounds(run_id)) - 1  # the last round recorded before the cut
        wait_for(lambda: store.failures(run_id), 120, "the cut client's failure recorded")
        fed.hosts.set_link("n2", up=True)
        assert run.wait(timeout=600) == 0, (tmp_path / "cut-run.log").read_text()[-3000:]
    finally:
        fed.hosts.set_link("n2", up=True)
        if run.poll() is None:
            run.kill()
            run.wait()
    assert store.get_run(run_id)["status"] == "completed"
    failures = store.failures(run_id)
    assert {f["partition_id"] for f in failures} == {1}, failures
    failed_rounds = {f["round"] for f in failures}
    assert min(failed_rounds) > cut_after
    trained = {(r["round"], r["partition_id"]) for r in store.client_rounds(run_id)}
    assert all((r, 0) in trained for r in range(1, 7))  # n1 trained every round
    assert any(r > max(failed_rounds) and (r, 1) in trained for r in range(1, 7)), trained
    wait_for(lambda: len(fed.online_nodes()) == 2, 120, "n2's SuperNode online again")


def test_a_superlink_sigkilled_mid_run_restarts_on_its_database_and_resume_equals(
        federation, tmp_path) -> None:
    """The SuperLink (with its ServerApp) SIGKILLed after round 1's checkpoint, restarted
    on its SQLite file: the registered SuperNodes come back online, and `orthofed
    resume` over TLS finishes the run with the rounds and the final model of an
    uninterrupted run, bit for bit; nothing recorded before the kill is lost."""
    fed = federation
    scenario = small_scenario(tmp_path, rounds=3, name="restart")
    tls = ["--superlink", fed.superlink, "--superlink-ca", str(fed.creds / "ca.crt")]
    env = dict(os.environ, HF_HUB_OFFLINE="1")

    def orthofed(*args: str, timeout: float = 600):
        return fed.hosts.run("link", [sys.executable, "-m", "server.cli", *args, *tls],
                             timeout=timeout, env=env, cwd=ROOT)

    reference_dir = tmp_path / "reference"
    done = orthofed("run", scenario, "--runs-dir", str(reference_dir), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    reference = last_json_line(done.stdout)
    runs_dir = tmp_path / "victim"
    victim = fed.hosts.start("link", [sys.executable, "-m", "server.cli", "run", scenario,
                                      "--runs-dir", str(runs_dir), *tls],
                             (tmp_path / "victim.log").open("wb"), env=env, cwd=ROOT)
    try:
        wait_for(lambda: list(runs_dir.glob("*/checkpoints/round-000001-task-0000.pt")),
                 300, "round 1's checkpoint", poll=0.05)
        kill_tree_now(fed.superlink_process.pid)  # the SuperLink, its SuperExec, the ServerApp
        assert victim.wait(timeout=300) != 0  # its flwr run lost the SuperLink
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    store = MetricsStore.in_dir(runs_dir)
    (run,) = store.list_runs()
    kept = store.rounds(run["id"])
    assert len(kept) >= 2  # rounds 0 and 1 were recorded before the kill
    fed.superlink_process = fed.start_superlink()
    fed.wait_superlink()
    wait_for(lambda: len(fed.online_nodes()) == 2, 180, "the SuperNodes back online")
    done = orthofed("resume", run["id"], "--runs-dir", str(runs_dir), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = last_json_line(done.stdout)
    assert resumed["status"] == "completed"
    assert [r["round"] for r in resumed["rounds"]] == [0, 1, 2, 3]
    assert without_timings(resumed["rounds"]) == without_timings(reference["rounds"])
    assert without_timings(resumed["rounds"][:len(kept)]) == without_timings(kept)
    final = torch.load(runs_dir / run["id"] / "global-final.pt")
    expected = torch.load(reference_dir / reference["run_id"] / "global-final.pt")
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[k], expected[k]) for k in expected)
