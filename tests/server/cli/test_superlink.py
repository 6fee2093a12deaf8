"""`--superlink HOST:PORT` (orthofed run / resume) and ORTHOFED_SUPERLINK (orthofed
serve): malformed addresses are refused by name before anything is recorded; an
address nobody answers at fails the run with that reason, recorded in the store."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.api.settings import ServeSettings
from server.orchestration.launcher import free_port, superlink_address
from server.runs.store import MetricsStore
from tests.server.cli.test_cli import orthofed


@pytest.mark.parametrize("address", ["superlink:9200", "10.0.0.7:1", "[::1]:65535"])
def test_host_port_addresses_are_accepted(address) -> None:
    assert superlink_address(address) == address


@pytest.mark.parametrize("address", ["superlink", ":9200", "superlink:0", "host:65536",
                                     "host:port", ""])
def test_anything_else_is_refused_with_the_value(address) -> None:
    with pytest.raises(ValueError, match="HOST:PORT") as error:
        superlink_address(address)
    assert repr(address) in str(error.value)


def test_serve_settings_name_the_field(monkeypatch) -> None:
    monkeypatch.setenv("ORTHOFED_SUPERLINK", "superlink")
    with pytest.raises(ValidationError, match="superlink") as error:
        ServeSettings()
    assert "HOST:PORT" in str(error.value)
    monkeypatch.setenv("ORTHOFED_SUPERLINK", "")  # compose passes empty values when unset
    assert ServeSettings().superlink is None
    monkeypatch.setenv("ORTHOFED_SUPERLINK", "superlink:9200")
    assert ServeSettings().superlink == "superlink:9200"


def test_a_malformed_flag_records_nothing(tmp_path) -> None:
    done = orthofed("run", "scenarios/quick.yaml", "--runs-dir", str(tmp_path),
                    "--superlink", "superlink")
    assert done.returncode == 2 and "argument --superlink" in done.stderr
    assert "Traceback" not in done.stderr and not list(tmp_path.iterdir())
    both = orthofed("run", "scenarios/quick.yaml", "--runs-dir", str(tmp_path),
                    "--deployment", "--superlink", "superlink:9200")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_no_superlink_there_fails_the_run_with_the_reason(tmp_path) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    done = orthofed("run", "scenarios/quick.yaml", "--runs-dir", str(tmp_path),
                    "--superlink", address)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"no SuperLink answers at {address}" in " ".join(done.stderr.split())
    (run,) = MetricsStore.in_dir(tmp_path).list_runs()
    assert run["status"] == "failed" and f"no SuperLink answers at {address}" in run["message"]
