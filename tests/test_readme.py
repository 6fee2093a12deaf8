"""The README tells the truth: CI runs its test command, its reference matches the schema."""

from __future__ import annotations

from scenarios.reference import render
from tests.conftest import ROOT


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert "pytest" in command
    assert f"```bash\n{command}\n```" in readme


def test_scenario_reference_is_up_to_date() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- reference:start -->\n")[1].split("\n<!-- reference:end -->")[0]
    assert table == render(), "run `python -m scenarios.reference --update README.md`"
