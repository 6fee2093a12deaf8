"""Separate hosts on one machine: Linux network namespaces joined by veth pairs to a
bridge in a hub namespace, each host with its own address in 10.213.0.0/24 (a private
subnet that exists only inside these namespaces) and a link a test can cut.

Processes start in a host with `ip netns exec`; they share this machine's files, so a
runs folder and the data are at the same paths on every host, as a shared filesystem
would give. The test process itself talks to a host from a thread that joined the
host's namespace (setns is per thread). Everything is torn down by `Hosts.down`, also
when a test fails: every process of each namespace killed, then the namespaces deleted.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
SUBNET = "10.213.0"
CLONE_NEWNET = 0x40000000


def namespaces_problem() -> str | None:
    """Why network namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns); this user is not"
    probe = f"ofprobe{os.getpid()}"
    try:
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    except FileNotFoundError:
        return "the ip command (iproute2) is not installed"
    if made.returncode != 0:
        return f"ip netns add is not allowed here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Hosts:
    """Named hosts (`names`), host i at SUBNET.(i+1)."""

    def __init__(self, names: list[str]) -> None:
        self.tag = f"of{os.getpid()}"
        self.names = names
        self.hub = f"{self.tag}-hub"
        self.address = {name: f"{SUBNET}.{i + 1}" for i, name in enumerate(names)}
        self._pools: dict[str, ThreadPoolExecutor] = {}

    def namespace(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def up(self) -> Hosts:
        ip("netns", "add", self.hub)
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "link", "set", "br0", "up")
        for i, name in enumerate(self.names):
            ns, outer = self.namespace(name), f"v{os.getpid()}x{i}"[-15:]
            ip("netns", "add", ns)
            ip("link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("link", "set", outer, "netns", self.hub)
            ip("-n", self.hub, "link", "set", outer, "master", "br0")
            ip("-n", self.hub, "link", "set", outer, "up")
            ip("-n", ns, "addr", "add", f"{self.address[name]}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        return self

    def set_link(self, name: str, up: bool) -> None:
        """Cut (or restore) host `name`'s link: its eth0 goes down (up)."""
        ip("-n", self.namespace(name), "link", "set", "eth0", "up" if up else "down")

    def start(self, name: str, argv: list[str], log, env: dict[str, str] | None = None,
              cwd=None) -> subprocess.Popen:
        """`argv` on host `name`, its output to the open file `log`."""
        return subprocess.Popen(["ip", "netns", "exec", self.namespace(name), *argv],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)

    def run(self, name: str, argv: list[str], timeout: float, env: dict[str, str] | None = None,
            cwd=None) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.namespace(name), *argv],
                              capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)

    def call(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs) from a thread inside host `name`'s network namespace."""
        if name not in self._pools:
            self._pools[name] = ThreadPoolExecutor(
                max_workers=1, initializer=_join, initargs=(self.namespace(name),))
        return self._pools[name].submit(fn, *args, **kwargs).result()

    def pids(self, name: str) -> list[int]:
        listed = subprocess.run(["ip", "netns", "pids", self.namespace(name)],
                                capture_output=True, text=True)
        return [int(pid) for pid in listed.stdout.split()]

    def down(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        namespaces = [self.namespace(name) for name in self.names]
        for _ in range(50):  # bounded: a killed process may take a moment to go
            alive = [pid for name in self.names for pid in self.pids(name)]
            if not alive:
                break
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for ns in [*namespaces, self.hub]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _join(namespace: str) -> None:
    """Move the calling thread into `namespace`'s network namespace."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    with open(f"/run/netns/{namespace}") as handle:
        if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace}")
