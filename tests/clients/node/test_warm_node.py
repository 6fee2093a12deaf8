"""The warm SuperNode's plumbing: its flags, the capped SuperNode waits, and the Flower
internals it relies on (flwr is pinned; these fail first if an upgrade moves them).
tests/integration/test_deployment.py runs it against a real SuperLink."""

from __future__ import annotations

import inspect
import time

import flwr.superlink.grid.http_grid as http_grid
import flwr.supernode.start_client_internal as supernode_loop
import pytest
from flwr.supercore.inflatable.inflatable_utils import (
    pull_and_inflate_object_from_tree,
    pull_objects,
)
from flwr.supernode.runtime import run_clientapp

from clients.node import supernode_polling, warm_node


def test_flags_are_split_between_this_process_and_the_supernode() -> None:
    ours, rest = warm_node.split_arguments(
        ["--superlink", "h:9092", "--port", "9111", "--poll-interval", "0.2", "--insecure"])
    assert (ours.port, ours.poll_interval, ours.pull_interval) == (
        9111, 0.2, supernode_polling.DEFAULT_PULL_INTERVAL_S)
    assert rest == ["--superlink", "h:9092", "--insecure"]


@pytest.mark.parametrize("argv, named", [
    (["--isolation", "subprocess"], "--isolation: not accepted here"),
    (["--isolation=process"], "--isolation: not accepted here"),
    (["--ssl-certfile", "c.pem"], "--ssl-certfile: not accepted here"),
    (["--poll-interval", "0"], "--poll-interval: must be between 0.001 and 60 seconds, got 0.0"),
    (["--pull-interval", "5"], "--pull-interval: must be between 0.01 and 3 seconds"),
])
def test_bad_flags_are_refused_by_name(argv, named, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        warm_node.split_arguments(argv)
    assert exited.value.code == 2 and named in capsys.readouterr().err


class RecordingTime:
    def __init__(self) -> None:
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def monotonic(self) -> float:
        return 42.0


def test_capped_sleeps_wait_at_most_the_cap_and_pass_the_rest_through() -> None:
    recording = RecordingTime()
    capped = supernode_polling.CappedSleeps(recording, cap_s=0.1)
    capped.sleep(3)
    capped.sleep(0.5)
    capped.sleep(0.05)
    assert recording.slept == [0.1, 0.1, 0.05]
    assert capped.monotonic() == 42.0


def test_the_supernode_loop_waits_through_its_module_time_and_pulls_through_pull_objects(
        monkeypatch) -> None:
    """What the patches replace is what Flower calls: the SuperNode loop's `time.sleep(3)`
    and `time.sleep(0.5)` on its module's `time` and its module's `pull_objects`, and
    pull_task_input's module-level `pull_and_inflate_object_from_tree`."""
    source = inspect.getsource(supernode_loop)
    assert "time.sleep(3)" in source and "time.sleep(0.5)" in source
    assert "obj_contents = pull_objects(" in source
    assert "pull_and_inflate_object_from_tree(" in inspect.getsource(run_clientapp.pull_task_input)
    assert "all_object_contents = pull_objects(" in inspect.getsource(http_grid.HttpGrid.pull_messages)
    assert supernode_loop.time is time or isinstance(supernode_loop.time,
                                                       supernode_polling.CappedSleeps)
    monkeypatch.setattr(supernode_loop, "time", time)
    monkeypatch.setattr(supernode_loop, "pull_objects", pull_objects)
    monkeypatch.setattr(http_grid, "pull_objects", pull_objects)
    monkeypatch.setattr(run_clientapp, "pull_and_inflate_object_from_tree",
                        pull_and_inflate_object_from_tree)
    supernode_polling.cap_supernode_waits(0.25)
    supernode_polling.retry_object_pulls_sooner()
    assert isinstance(supernode_loop.time, supernode_polling.CappedSleeps)
    assert supernode_loop.time.cap_s == 0.25
    started = time.monotonic()
    supernode_loop.time.sleep(3)
    assert time.monotonic() - started < 2  # capped at 0.25 s, with room for a busy machine
    delays = {"initial_backoff": supernode_polling.OBJECT_RETRY_FIRST_S,
              "backoff_cap": supernode_polling.OBJECT_RETRY_CAP_S}
    for patched, original in ((supernode_loop.pull_objects, pull_objects),
                              (http_grid.pull_objects, pull_objects),
                              (run_clientapp.pull_and_inflate_object_from_tree,
                               pull_and_inflate_object_from_tree)):
        assert patched.func is original and patched.keywords == delays
        assert set(delays) <= set(inspect.signature(original).parameters)


def test_the_runtime_calls_the_warm_node_makes_keep_their_parameters() -> None:
    assert list(inspect.signature(run_clientapp.pull_task_input).parameters) == ["client"]
    assert list(inspect.signature(run_clientapp.push_message).parameters) == [
        "client", "message", "context"]
    assert list(inspect.signature(run_clientapp.push_task_output).parameters) == [
        "client", "context", "sub_status", "details"]
