"""What the API tests send: the token the test server wants, a valid scenario."""

from __future__ import annotations

import yaml

from tests.conftest import ROOT

TOKEN = {"Authorization": "Bearer s3cret"}  # the settings fixture's token (conftest)


def quick() -> dict:
    return yaml.safe_load((ROOT / "scenarios" / "quick.yaml").read_text())
