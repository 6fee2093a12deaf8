"""The shipped SST-2 scenarios follow the FedSVD reference code, and differ from each
other only where they say (issue 15): the method files in `strategy` alone (so
bench/sweeps/fedsvd_sst2_cpu.yaml's comparison is paired), the private files in their
clipping."""

from __future__ import annotations

import pytest

from scenarios.loader import load_scenario
from tests.conftest import ROOT, needs_shared_data

pytestmark = needs_shared_data("fedsvd_sst2")

CPU_FILES = ("fedsvd-sst2", "ffa-lora-sst2", "fedavg-lora-sst2", "fedsvd-sst2-dp")
PAPER_FILES = ("fedsvd-sst2-paper", "fedsvd-sst2-paper-dp")


def document(name: str) -> dict:
    return load_scenario(ROOT / "scenarios" / f"{name}.yaml").model_dump(mode="json")


def without(doc: dict, *paths: str) -> dict:
    """The mapping with the dotted paths removed."""
    doc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in doc.items()}
    for path in paths:
        *parents, leaf = path.split(".")
        node = doc
        for part in parents:
            node = node[part]
        node.pop(leaf)
    return doc


@pytest.mark.parametrize("name", CPU_FILES + PAPER_FILES)
def test_every_sst2_scenario_has_the_reference_settings(name: str) -> None:
    doc = document(name)
    assert doc["model"]["lora"] == {"rank": 8, "alpha": 8.0, "dropout": 0.05,
                                    "target_modules": ["query", "value"], "init": "default"}
    fed = doc["federation"]
    assert (fed["num_clients"], fed["clients_per_round"], fed["local_steps"]) == (6, 3, 10)
    assert fed["optimizer"]["name"] == "sgd" and fed["optimizer"]["lr"] == 0.5
    assert doc["data"]["partitioning"] == {"kind": "presplit"}
    assert fed["sampling"] == "balanced"  # the expected share the reference's accounting assumes
    if name.endswith("-dp"):
        assert fed["max_grad_norm"] is None
        privacy = doc["privacy"]
        assert (privacy["target_epsilon"], privacy["delta"], privacy["max_grad_norm"],
                privacy["accountant"]) == (6.0, 1e-5, 2.0, "prv")
        assert not privacy["reproducible_noise_voids_guarantee"]
    else:
        assert doc["privacy"] is None and fed["max_grad_norm"] == 1.0
    if name in PAPER_FILES:  # the paper's own scale: its rounds, batch and frozen head
        assert (fed["rounds"], fed["batch_size"], doc["model"]["train_head"],
                doc["model"]["max_length"]) == (100, 128, False, 128)


@pytest.mark.parametrize("method", ["ffa-lora", "fedavg-lora"])
def test_the_method_files_differ_from_fedsvd_in_the_strategy_only(method: str) -> None:
    ours, fedsvd = document(f"{method}-sst2"), document("fedsvd-sst2")
    assert ours["strategy"]["name"] == method
    assert without(ours, "name", "description", "strategy") == \
        without(fedsvd, "name", "description", "strategy")


@pytest.mark.parametrize("scale", ["", "-paper"])
def test_the_private_files_differ_in_clipping_and_privacy_only(scale: str) -> None:
    private, plain = document(f"fedsvd-sst2{scale}-dp"), document(f"fedsvd-sst2{scale}")
    varying = ("name", "description", "privacy", "federation.max_grad_norm")
    assert without(private, *varying) == without(plain, *varying)
