"""What a private run's epsilon covers (scenarios.disclosure), and the fields that
decide it: each opt-in is named in the run's disclosure; clipping kinds do not mix."""

from __future__ import annotations

import pytest

from scenarios.disclosure import (
    IMPORTANCE_ROWS,
    SEEDED_NOISE,
    UNNOISED_METRICS,
    importance_data,
    privacy_disclosure,
    privacy_note,
)
from scenarios.loader import ScenarioError, load_scenario
from tests.conftest import ROOT


def stream_document(**privacy) -> dict:
    import yaml

    doc = yaml.safe_load((ROOT / "scenarios" / "quick-stream.yaml").read_text())
    if privacy:
        doc["privacy"] = {"target_epsilon": 4.0, **privacy}
    return doc


def disclosed(doc: dict) -> dict:
    """The disclosure of the validated scenario as the store keeps it (JSON)."""
    return privacy_disclosure(load_scenario(doc, base=ROOT / "scenarios").model_dump(mode="json"))


def test_a_private_run_by_default_discloses_nothing_outside_epsilon() -> None:
    assert disclosed(stream_document(target_epsilon=4.0)) == {"noise": "os-entropy",
                                                               "excludes": []}
    assert disclosed(stream_document()) == {}  # not private: nothing to disclose


@pytest.mark.parametrize("change, expected", [
    ({"privacy": {"report_unnoised_metrics": True}}, [UNNOISED_METRICS]),
    ({"privacy": {"reproducible_noise_voids_guarantee": True}}, [SEEDED_NOISE]),
    ({"strategy": {"importance_data": "train"}}, [IMPORTANCE_ROWS]),
    ({"strategy": {"name": "fedsvd-osft", "importance_data": "train"}}, [IMPORTANCE_ROWS]),
    ({"strategy": {"importance_data": "test"}}, []),
    ({"strategy": {"rank_rule": "schedule", "importance_data": "train"}}, []),  # not read
])
def test_each_opt_in_is_named(change, expected) -> None:
    doc = stream_document(target_epsilon=4.0)
    for section, fields in change.items():
        doc[section] = {**doc[section], **fields}
    found = disclosed(doc)
    assert found["excludes"] == expected
    assert found["noise"] == ("seeded" if SEEDED_NOISE in expected else "os-entropy")
    note = privacy_note(load_scenario(doc, base=ROOT / "scenarios").model_dump(mode="json"))
    assert note == ("; ".join(expected) or None)


def test_importance_rows_default_to_the_test_split_under_privacy() -> None:
    assert importance_data({"name": "osft"}, private=False) == "train"
    assert importance_data({"name": "osft"}, private=True) == "test"
    assert importance_data({"name": "osft", "importance_data": "train"}, private=True) == "train"


def test_the_server_measures_importance_on_test_rows_under_privacy() -> None:
    """server_app.importance_sample reads the previous task's test split under privacy
    (no client rows reach the server), its training rows otherwise."""
    import torch

    from clients.data.tasks import server_sample
    from server.serverapp.app import importance_sample

    for doc, split in ((stream_document(target_epsilon=4.0), "test"), (stream_document(), "train")):
        scenario = load_scenario(doc, base=ROOT / "scenarios")
        got = importance_sample(scenario, 0)
        want = server_sample(scenario, 0, scenario.strategy.importance_samples, split=split)
        assert all(torch.equal(a, b) for a, b in zip(got.tensors, want.tensors, strict=True))


def test_federation_clipping_and_private_clipping_do_not_mix() -> None:
    doc = stream_document(target_epsilon=4.0)
    doc["federation"]["max_grad_norm"] = 1.0
    with pytest.raises(ScenarioError, match=r"federation.max_grad_norm \(1.0\) clips non-private "
                                            r"steps only.*remove federation.max_grad_norm"):
        load_scenario(doc, base=ROOT / "scenarios")
    del doc["privacy"]
    assert load_scenario(doc, base=ROOT / "scenarios").federation.max_grad_norm == 1.0
