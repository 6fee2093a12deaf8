"""The only module that knows how to launch Flower.

A run gets its own FLWR_HOME and its own simulation SuperLink on free loopback ports
(so runs never share Flower state and tests can run side by side), then `flwr run`
submits the app with the scenario path and the run id as run-config scalars (`flwr`
starts beside the SuperLink and submits once it answers: their imports overlap).
Whatever this module starts it kills, with every descendant (flwr-simulation, Ray), on
success, failure and Ctrl-C alike, at once and without a grace period. With RAY_ADDRESS
set (a Ray cluster started beforehand), the simulation joins that Ray instead of starting
its own. Given the address of a SuperLink that already runs (a federation of
SuperNodes, e.g. compose.yaml's), it starts nothing but `flwr run` against it, and asks
that SuperLink to stop the run (`flwr stop`) when it is left unfinished.
"""

from __future__ import annotations

import importlib.util
import os
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from scenarios.schema import Scenario
from server.orchestration.processes import (  # noqa: F401 - free_port, stop_tree: its API
    bin_path_first,
    console_script,
    free_port,
    kill_trees,
    stop_tree,
)
from server.runs.layout import PROJECT_ROOT, RunFolder
from server.runs.status import TERMINAL, RunStatus
from server.runs.store import MetricsStore

CONNECTION = "orthofed"
SUPERLINK_CA_ENV = "ORTHOFED_SUPERLINK_CA"
STARTUP_TIMEOUT_S = 60.0
PRELOAD_ENV = "ORTHOFED_RAY_PRELOAD"  # 0: simulated clients import at their first message
# What `flwr run` prints once the SuperLink accepted the run (flwr 1.42, cli/run/run.py).
STARTED_RUN = re.compile(r"Successfully started run (\d+)")


def superlink_address(value: str) -> str:
    """`value` if it reads HOST:PORT (PORT in 1-65535; an IPv6 host in brackets), else a
    ValueError that names the constraint and the value."""
    host, _, port = value.strip().rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with PORT in 1-65535 (e.g. superlink:9200), "
                         f"got {value!r}")
    return value.strip()


def flower_env(paths: RunFolder) -> dict[str, str]:
    """The environment of every Flower process of a run."""
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(paths.flwr_home),
        # Flower reinstalls an app's dependencies for every run by default: a download
        # of torch per run. The environment already has them.
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        # Flower's processes find flower-superexec and flwr-simulation on PATH.
        "PATH": bin_path_first(env.get("PATH", "")),
    })
    # Every Flower process posts telemetry events (and waits up to 4 s for the last one
    # at exit); Ray's usage stats likewise. Off unless the user says otherwise.
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if env.get(PRELOAD_ENV, "1") != "0":  # simulated clients import while the server sets up
        env.setdefault("RAY_RUNTIME_ENV_HOOK", "server.orchestration.ray_preload.runtime_env")
    return env


def superlink_ca() -> Path | None:
    """The CA certificate a SuperLink's TLS is verified against (`--superlink-ca`, or
    ORTHOFED_SUPERLINK_CA); None: the SuperLink is insecure (plain gRPC and HTTP)."""
    value = os.environ.get(SUPERLINK_CA_ENV, "")
    return Path(value).resolve() if value else None


def write_connection(paths: RunFolder, address: str, ca: Path | None = None) -> None:
    """config.toml in the run's FLWR_HOME: one connection, to the run's SuperLink, over
    TLS verified against `ca` when given, else insecure."""
    write_flwr_config(paths.flwr_home, address, ca)


def write_flwr_config(flwr_home: Path, address: str, ca: Path | None = None) -> None:
    """`flwr_home`/config.toml with one connection (named CONNECTION, the default) to
    `address`, over TLS verified against `ca` when given, else insecure."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    security = f'root-certificates = "{ca}"\n' if ca else "insecure = true\n"
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{address}"\n{security}'
    )


def health_problem(address: str, timeout_s: float, ca: Path | None = None) -> str | None:
    """None when a SuperLink answers GET /health at `address` (1.42 serves it on the one
    port of its Fleet, Control and runtime APIs; over HTTPS verified against `ca` when
    given), else what went wrong."""
    scheme, verify = ("https", ssl.create_default_context(cafile=str(ca))) if ca else ("http", True)
    try:
        if httpx.get(f"{scheme}://{address}/health", timeout=timeout_s,
                     verify=verify).is_success:
            return None
        return "it answered GET /health with an error"
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"


def check_superlink(address: str, timeout_s: float = 10.0, ca: Path | None = None) -> None:
    """A RuntimeError that says so unless a SuperLink answers at `address` (over TLS
    verified against `ca` when given)."""
    problem = health_problem(address, timeout_s, ca)
    if problem is not None:
        how = f"over TLS verified against {ca}" if ca else "insecure (no --superlink-ca)"
        raise RuntimeError(f"no SuperLink answers at {address}, {how} ({problem}); start "
                           "the federation first (compose.yaml), or give the CA of its TLS")


def stop_flower_run(paths: RunFolder) -> str:
    """Ask the run's SuperLink to stop the Flower run this run folder started (its id read
    off `flwr run`'s log); what Flower answered, for the runner log."""
    started = STARTED_RUN.findall(paths.flower_log.read_text(errors="replace")
                                  if paths.flower_log.is_file() else "")
    if not started:
        return "no Flower run had started"
    try:
        done = subprocess.run([console_script("flwr"), "stop", started[-1], CONNECTION],
                              env=flower_env(paths),
                              capture_output=True, text=True, timeout=60, cwd=paths.path)
    except subprocess.TimeoutExpired:
        return f"flwr stop {started[-1]}: no answer within 60 s"
    return f"flwr stop {started[-1]}: {(done.stdout + done.stderr).strip()[-300:]}"


def check_simulation_engine() -> None:
    """A RuntimeError that says how to install it unless Ray, which Flower's simulation
    engine runs ClientApps on, is importable (it is the `simulation` extra)."""
    if importlib.util.find_spec("ray") is None:
        raise RuntimeError("Flower's simulation engine needs Ray, which is not installed: "
                           "pip install 'orthofed[simulation]', or run on the deployment "
                           "engine (--deployment, or --superlink HOST:PORT)")


def start_superlink(paths: RunFolder, port: int, simulation: bool = True) -> subprocess.Popen:
    """A SuperLink on `port` (simulation engine, or deployment engine waiting for
    SuperNodes), its state in the run folder; returned once it answers."""
    process = spawn_superlink(paths, port, simulation)
    wait_for_superlink(process, paths, port)
    return process


def spawn_superlink(paths: RunFolder, port: int, simulation: bool = True) -> subprocess.Popen:
    """`start_superlink` without the wait: the SuperLink is still starting."""
    command = [
        console_script("flower-superlink"), "--insecure", *(["--simulation"] if simulation else []),
        "--isolation", "subprocess", "--host", "127.0.0.1", "--port", str(port),
        "--control-api-address", f"127.0.0.1:{free_port()}",
        # No --database: Flower's in-memory state. A SQLite file commits every message
        # object the ServerApp pushes and the SuperNodes pull, which cost warm deployment
        # rounds about 1 s of waiting per message (bench/deploy_vs_sim.py). This
        # SuperLink dies with its run; a resume starts a fresh one, which knows nothing
        # of the killed Flower run, so it cannot restart it.
        "--disable-runtime-dependency-installation",
    ]
    with paths.superlink_log.open("ab") as log:
        return subprocess.Popen(command, env=flower_env(paths), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=paths.path)


def wait_for_superlink(process: subprocess.Popen, paths: RunFolder, port: int) -> None:
    """Return once the SuperLink `process` answers on `port`; a RuntimeError that points
    to its log when it exits first or does not answer within STARTUP_TIMEOUT_S."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with {process.returncode}; "
                               f"see {paths.superlink_log}")
        if health_problem(f"127.0.0.1:{port}", timeout_s=0.5) is None:
            return
        time.sleep(0.05)
    kill_trees([process])
    raise RuntimeError(f"flower-superlink did not answer within {STARTUP_TIMEOUT_S:.0f} s; "
                       f"see {paths.superlink_log}")


def supernode_command(superlink: str, partition: int, count: int, port: int,
                      warm: bool = True) -> list[str]:
    """A SuperNode for one partition: warm (clients.node.warm_node: one ClientApp process
    serves every message of the run) or, `warm` False, Flower's own (a fresh
    flwr-clientapp process per message)."""
    flags = ["--insecure", "--superlink", superlink, "--port", str(port),
             "--node-config", f"partition-id={partition} num-partitions={count}"]
    if warm:
        return [sys.executable, "-m", "clients.node.warm_node", *flags]
    return ["flower-supernode", *flags, "--isolation", "subprocess"]


def start_supernodes(paths: RunFolder, superlink_port: int, scenario: Scenario,
                     ) -> list[subprocess.Popen]:
    """One SuperNode per client partition, each with its partition in --node-config,
    its own port, and CUDA_VISIBLE_DEVICES from resources.devices (round-robin).
    Warm (see supernode_command) unless ORTHOFED_COLD_CLIENTS=1 (for comparisons)."""
    nodes = []
    count = scenario.federation.num_clients
    devices = scenario.resources.devices
    warm = os.environ.get("ORTHOFED_COLD_CLIENTS", "0") != "1"
    for partition in range(count):
        env = flower_env(paths)
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = str(devices[partition % len(devices)])
        command = supernode_command(f"127.0.0.1:{superlink_port}", partition, count,
                                    free_port(), warm)
        with (paths.supernode_log(partition)).open("ab") as log:
            nodes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True, cwd=paths.path))
    return nodes


def submit(paths: RunFolder, scenario: Scenario, scenario_path: Path, run_id: str,
           runs_dir: Path, deployment: bool = False, resume: bool = False,
           app_dir: Path = PROJECT_ROOT, wait_for: str | None = None) -> subprocess.Popen:
    """`flwr run` of the Flower app in `app_dir` (this project; the fault tests' app
    wraps its ClientApp) against the run's SuperLink, following its logs. `wait_for`:
    the address of that SuperLink, still starting; `flwr` imports meanwhile and submits
    once it answers (server.orchestration.flwr_when_up)."""
    run_config = (f"scenario='{scenario_path}' run-id='{run_id}' runs-dir='{runs_dir}' "
                  f"resume={'true' if resume else 'false'}")
    federation_config = (
        f"num-supernodes={scenario.federation.num_clients} "
        f"client-resources-num-cpus={scenario.resources.num_cpus} "
        f"client-resources-num-gpus={scenario.resources.num_gpus}"
    )
    flwr = ([sys.executable, "-m", "server.orchestration.flwr_when_up", wait_for,
             str(STARTUP_TIMEOUT_S)] if wait_for else [console_script("flwr")])
    command = [*flwr, "run", str(app_dir), CONNECTION, "--stream",
               "--run-config", run_config,
               *([] if deployment else ["--federation-config", federation_config])]
    with paths.flower_log.open("ab") as log:
        return subprocess.Popen(command, env=flower_env(paths), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=PROJECT_ROOT)


def log_tail(path: Path, lines: int = 6) -> str:
    """The last lines of a Flower log that say something, box drawing stripped."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    kept = [ln.strip(" │╭╮╰╯─\t") for ln in text]
    return " | ".join([ln for ln in kept if ln][-lines:])


def stop_flower(paths: RunFolder, store: MetricsStore, run_id: str, superlink: str | None,
                processes: list[subprocess.Popen | None]) -> None:
    """Stop what `launch` started (flwr, the SuperNodes, the SuperLink, in that order), and
    an unfinished run on a SuperLink that is not ours to stop."""
    stopping = time.monotonic()
    if superlink is not None and store.get_run(run_id)["status"] != RunStatus.COMPLETED:
        # The SuperLink is not ours to stop: the run on it is (Ctrl-C, cancelled over
        # HTTP, a failure here), or its ServerApp would go on training.
        with (paths.runner_log).open("a") as log:
            log.write(stop_flower_run(paths) + "\n")
    # No grace: the ServerApp has already recorded everything that matters (or the run
    # is being cancelled), and a SIGTERM only makes Ray linger (processes.kill_trees).
    kill_trees(processes)
    with (paths.runner_log).open("a") as log:
        log.write(f"stopped Flower processes in {time.monotonic() - stopping:.1f} s\n")


def launch(scenario: Scenario, scenario_path: Path, run_id: str, runs_dir: Path,
           on_tick: Callable[[], None] = lambda: None, tick_s: float = 0.5,
           deployment: bool = False, resume: bool = False,
           app_dir: Path = PROJECT_ROOT, superlink: str | None = None) -> str:
    """Run a scenario to the end through Flower's simulation engine (or, `deployment`,
    its deployment engine: a SuperLink and one SuperNode per client on this host; or,
    `superlink` HOST:PORT, the SuperLink of a federation that already runs, whose
    ServerApp and SuperNodes must see `runs_dir` and the data at the same paths);
    return its status. `resume`: the ServerApp continues from the run's newest checkpoint.

    The run's row must exist in the store (pending). The ServerApp marks it running and
    then completed or failed; if Flower ends without the ServerApp saying so (it could
    not start, it was killed), the run is marked failed here with the log to read.
    """
    store = MetricsStore.in_dir(runs_dir)
    paths = RunFolder.of(runs_dir, run_id)
    paths.path.mkdir(parents=True, exist_ok=True)
    superlink_process = flwr = None
    supernodes: list[subprocess.Popen] = []
    try:
        if superlink is not None:
            ca = superlink_ca()
            check_superlink(superlink, ca=ca)
            write_connection(paths, superlink, ca)
        else:
            if not deployment:
                check_simulation_engine()
            port = free_port()
            write_connection(paths, f"127.0.0.1:{port}")
            superlink_process = spawn_superlink(paths, port, simulation=not deployment)
            if not deployment:  # `flwr` starts beside the SuperLink, and waits for it
                flwr = submit(paths, scenario, scenario_path.resolve(), run_id,
                              runs_dir.resolve(), False, resume, app_dir,
                              wait_for=f"127.0.0.1:{port}")
            wait_for_superlink(superlink_process, paths, port)
            if deployment:
                supernodes = start_supernodes(paths, port, scenario)
        if flwr is None:
            flwr = submit(paths, scenario, scenario_path.resolve(), run_id, runs_dir.resolve(),
                          True, resume, app_dir)
        while flwr.poll() is None:
            on_tick()
            time.sleep(tick_s)
            if store.get_run(run_id)["status"] in TERMINAL:
                break  # done (or cancelled over HTTP); `flwr run --stream` may still be draining
        on_tick()
    except KeyboardInterrupt:
        store.set_status(run_id, RunStatus.CANCELLED, "interrupted by the user (Ctrl-C)")
        raise
    except Exception as exc:
        store.set_status(run_id, RunStatus.FAILED, f"launch failed: {exc}")
        raise
    finally:
        stop_flower(paths, store, run_id, superlink, [flwr, *supernodes, superlink_process])
    status = store.get_run(run_id)["status"]
    if status not in TERMINAL:
        store.set_status(run_id, RunStatus.FAILED, "Flower ended without the ServerApp finishing: "
                         f"{log_tail(paths.flower_log)} (full log: {paths.flower_log})")
    return store.get_run(run_id)["status"]
