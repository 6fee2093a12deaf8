"""A SuperNode whose ClientApp stays warm across the messages of a run.

Flower 1.42 runs every message in a fresh `flwr-clientapp` process, in both isolation
modes (`flwr/supercore/superexec/executor/subprocess_executor.py` starts one per task;
`flwr/supernode/runtime/run_clientapp.py` exits after one message), so every round
pays the imports of torch, transformers, PEFT and Opacus (9-12 s on 2 cores), the model
build and, on a GPU, CUDA initialisation. This module starts `flower-supernode
--isolation process` as its child (through clients.node.supernode_polling, which shortens the
SuperNode's fixed 3 s wait between pulls) and claims the node's tasks itself, the way
`flower-superexec` does (AcquireTask on the node's Runtime API), but runs each message
in this one long-lived process: the imports, the built model and the tokenized data
(the lru caches of clients.app and clients.data.tasks) stay warm for the whole run.
Each message still goes through Flower's own runtime calls (pull the task input and
the message, with shorter retry delays: see supernode_polling.retry_object_pulls_sooner;
heartbeats, push the reply
and the task's context), so the SuperNode, the
SuperLink and the ServerApp see what they see with Flower's own executor.

This is the only module that calls Flower's internal runtime API; flwr is pinned
exactly (pyproject.toml) and tests/clients/node/test_warm_node.py and
tests/integration/test_deployment.py run it against real SuperNodes.

A task of another app than the first this process loaded (another FAB hash) runs as
Flower runs it, in a fresh `flwr-clientapp` process: Python cannot unload the first
app's modules. If the SuperNode child exits, so does this process (with its code); if
this process is killed, the kernel kills the child (PR_SET_PDEATHSIG), so restarting
the one command restarts the node.

Usage: python -m clients.node.warm_node --superlink HOST:PORT [--port P] [--poll-interval S]
                                   [--pull-interval S] [any other flower-supernode flag]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from logging import ERROR, INFO

import httpx
from flwr.app import Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore import log
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from clients.node.supernode_polling import (
    DEFAULT_PULL_INTERVAL_S,
    pull_interval_error,
    retry_object_pulls_sooner,
)

DEFAULT_RUNTIME_PORT = 9094  # flower-supernode's own default for --port
DEFAULT_POLL_INTERVAL_S = 0.05  # Flower's superexec polls every 1 s (its default)
# flower-supernode flags this process decides (it claims the tasks) or cannot honour.
REFUSED_FLAGS = ("--isolation", "--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile",
                 "--superexec-auth-secret-file")
PR_SET_PDEATHSIG = 1


def runtime_client(address: str, *interceptors) -> RuntimeHttpClient:
    """A plain-HTTP client of the node's Runtime API (loopback: it never leaves the host)."""
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=list(interceptors), retry_invoker=make_simple_http_retry_invoker())


class WarmClientApp:
    """Runs ClientApp tasks of one node in this process, one at a time."""

    def __init__(self, runtime_api_address: str) -> None:
        self.address = runtime_api_address
        self.app_hash: str | None = None  # the FAB whose modules this process imported
        self.app: ClientApp | None = None
        self.load_app = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        self.served = 0

    def acquire(self, acquirer: RuntimeHttpClient) -> tuple[str, str] | None:
        """Claim the node's next ClientApp task: (token, FAB hash), or None."""
        reply = acquirer.AcquireTask(AcquireTaskRequest(
            supported_task_types=[TaskType.CLIENT_APP], agentapp_fab_hashes=[]))
        if reply.HasField("task") and reply.token:
            return reply.token, reply.task.fab_hash
        return None

    def serve(self, token: str, fab_hash: str) -> None:
        """Run the task's message through the app; another app's task in a fresh
        flwr-clientapp process, as Flower's subprocess executor would."""
        if self.app_hash is not None and fab_hash and fab_hash != self.app_hash:
            log(INFO, "[warm-node] task of another app (FAB %s): fresh flwr-clientapp", fab_hash[:8])
            subprocess.Popen(["flwr-clientapp", "--runtime-api-address", self.address,
                              "--token", token, "--insecure"])
            return
        self.run_in_process(token)

    def run_in_process(self, token: str) -> None:
        """run_clientapp's steps, without leaving the process at the end."""
        started = time.perf_counter()
        client = runtime_client(self.address, RuntimeVersionHttpInterceptor(
            component_name="flwr-clientapp"), RuntimeTokenHttpInterceptor(token))
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        message = reply = context = None
        sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        pulled_at = applied_at = started
        try:
            message, context, run, fab = pull_task_input(client)
            pulled_at = time.perf_counter()
            if self.app is None:
                install_from_fab(fab.content, skip_prompt=True)
                self.app = self.load_app(run.fab_id, run.fab_version, fab.hash_str)
                self.app_hash = fab.hash_str
            reply = self.app(message=message, context=context)
            applied_at = time.perf_counter()
            sub_status, details = SubStatus.COMPLETED, ""
        except Exception as exc:  # noqa: BLE001 - the task fails, the node keeps serving
            log(ERROR, "[warm-node] ClientApp raised an exception", exc_info=exc)
            code = (ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(exc, LoadClientAppError)
                    else ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
            details = f"{type(exc)}:<'{exc}'>"
            if message is not None:
                reply = Message(Error(code=code, reason=details), reply_to=message)
        finally:
            self.served += 1
            # Logged before the reply goes: once the last one is pushed the run may end
            # and its processes be killed at once, before a later line could be written.
            log(INFO, "[warm-node] message %d served in this process: %s (pull %.2f s, app "
                "%.2f s)", self.served, sub_status, pulled_at - started,
                max(applied_at - pulled_at, 0.0))
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception as exc:  # noqa: BLE001
                log(ERROR, "[warm-node] failed to push the reply", exc_info=exc)
            push_task_output(client, context, sub_status, details)
            heartbeat.stop()
            client.close()
            done_at = time.perf_counter()
            log(INFO, "[warm-node] message %d: %.2f s in all, push %.2f s", self.served,
                done_at - started, done_at - max(applied_at, pulled_at))


def split_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This module's flags, and the rest for flower-supernode (with its --port)."""
    parser = argparse.ArgumentParser(prog="python -m clients.node.warm_node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=DEFAULT_RUNTIME_PORT,
                        help="the SuperNode's Runtime API port (flower-supernode --port)")
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL_S,
                        help="seconds between task polls (default %(default)s)")
    parser.add_argument("--pull-interval", type=float, default=DEFAULT_PULL_INTERVAL_S,
                        help="the SuperNode's longest wait between pulls from the SuperLink "
                             "(clients.node.supernode_polling; default %(default)s)")
    ours, rest = parser.parse_known_args(argv)
    for flag in rest:
        if flag.split("=", 1)[0] in REFUSED_FLAGS:
            parser.error(f"{flag.split('=', 1)[0]}: not accepted here: this process claims the "
                         "node's tasks itself (--isolation process) over plain HTTP on loopback")
    if not 0.001 <= ours.poll_interval <= 60:
        parser.error(f"--poll-interval: must be between 0.001 and 60 seconds, got {ours.poll_interval}")
    if (error := pull_interval_error(ours.pull_interval)) is not None:
        parser.error(error)
    return ours, rest


def die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when this process dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: the child outlives a SIGKILLed parent (SIGTERM still stops both)


def start_supernode(port: int, pull_interval_s: float, flags: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "clients.node.supernode_polling", "--pull-interval",
               str(pull_interval_s), *flags, "--isolation", "process", "--port", str(port)]
    return subprocess.Popen(command, preexec_fn=die_with_parent)


def exit_with_supernode(node: subprocess.Popen, stopping: threading.Event) -> None:
    """When the SuperNode exits on its own (refused by the SuperLink: an unregistered
    key, exit 305), exit with its code: the task loop may be deep in Flower's retries
    against the dead node's Runtime API, which never give up."""
    code = node.wait()
    # A signal's exit (code < 0) or a clean one is a stop this process is told of too
    # (the launcher signals the whole family): only an error exit is the node's own.
    if code > 0 and not stopping.wait(timeout=1.0):
        log(ERROR, "[warm-node] the SuperNode exited with %s; so does this process", code)
        os._exit(code or 1)


def warm_imports() -> None:
    """Import what every ClientApp message needs while the SuperNode connects."""
    import torch  # noqa: F401
    import transformers  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    ours, supernode_flags = split_arguments(sys.argv[1:] if argv is None else argv)
    retry_object_pulls_sooner()
    node = start_supernode(ours.port, ours.pull_interval, supernode_flags)
    stopping = threading.Event()

    def stop(signum, _frame) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=exit_with_supernode, args=(node, stopping), daemon=True).start()
    worker = WarmClientApp(f"127.0.0.1:{ours.port}")
    acquirer = runtime_client(worker.address, RuntimeVersionHttpInterceptor(
        component_name="SuperExec"))
    try:
        warm_imports()
        while not stopping.is_set() and node.poll() is None:
            try:
                task = worker.acquire(acquirer)
            except httpx.HTTPError:  # the SuperNode's Runtime API is not up yet
                task = None
            if task is not None:
                worker.serve(*task)
            else:
                stopping.wait(ours.poll_interval)
    finally:
        # Said before the SuperNode is stopped: the launcher gives this family a short
        # grace (1 s) before SIGKILL, and the SuperNode's own shutdown can take longer.
        log(INFO, "[warm-node] served %d messages in this process", worker.served)
        acquirer.close()
        if node.poll() is None:
            node.terminate()
            try:
                node.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.kill()
    return node.returncode if node.returncode and not stopping.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
