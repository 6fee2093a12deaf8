"""DP noise the server cannot predict, through the ClientApp's own round (train_round).

The guarantee holds against the server only if nobody holding the scenario can
regenerate the noise. Each test replays one client's round from the same global
tensors, with the noise much larger than the clipped gradients (a tiny target
epsilon), so the change of LoRA B it releases is essentially its noise."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from clients.app import cached_model, train_round
from clients.models.heads import activate_task
from clients.models.factory import global_state
from scenarios.disclosure import DP_DIAGNOSTICS, privacy_disclosure
from scenarios.loader import load_scenario
from strategies import keys
from tests.conftest import ROOT


def private_stream(write_scenario, seeded: bool):
    """quick-stream as a private FedSVD-LoRA stream; sigma is large (epsilon 0.5)."""
    import yaml

    doc = yaml.safe_load((ROOT / "scenarios" / "quick-stream.yaml").read_text())
    doc["name"] = f"noise-{'seeded' if seeded else 'fresh'}"
    doc["strategy"] = {"name": "fedsvd"}
    doc["federation"].update(local_steps=3, batch_size=16)
    doc["federation"]["optimizer"] = {"name": "sgd", "lr": 0.5}
    doc["privacy"] = {"target_epsilon": 0.5, "max_grad_norm": 1.0,
                      "reproducible_noise_voids_guarantee": seeded}
    return load_scenario(write_scenario(doc, f"{doc['name']}.yaml"))


def released_b(scenario, task_id: int, server_round: int, start: dict) -> torch.Tensor:
    """The change of every LoRA B one client (partition 0) releases in one round, from
    the global tensors `start`, with a fresh node state (its ledger starts empty)."""
    model = cached_model(scenario, "cpu")
    activate_task(model, task_id)
    sent = {k: v for k, v in start.items() if ".heads." not in k or f".heads.{task_id}." in k}
    content = RecordDict({keys.ARRAYS: ArrayRecord(sent), keys.CONFIG: ConfigRecord(
        {keys.SERVER_ROUND: server_round, keys.TASK_ID: task_id})})
    reply = train_round(scenario, 0, content, RecordDict())
    assert reply[keys.METRICS][keys.SEEDED_NOISE] == int(
        scenario.privacy.reproducible_noise_voids_guarantee)
    after = reply[keys.ARRAYS].to_torch_state_dict()
    names = sorted(n for n in after if ".lora_B." in n)
    return torch.cat([(after[n] - start[n]).flatten() for n in names])


def correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([x, y]).double())[0, 1])


@pytest.fixture
def start_of(write_scenario):
    def start(scenario) -> dict:
        model = cached_model(scenario, "cpu")
        activate_task(model, 0)
        return {k: v.clone() for k, v in global_state(model).items()}
    return start


def test_fresh_noise_by_default_two_releases_are_uncorrelated(write_scenario, start_of) -> None:
    """The same client, from the same global tensors: round 1 of task 0 and round 1 of
    task 1 (which shared their noise before), and round 1 of task 0 twice (two runs of
    one seed). Fresh noise: the releases are uncorrelated (|r| ~ 1/sqrt(#B entries))."""
    scenario = private_stream(write_scenario, seeded=False)
    start = start_of(scenario)
    task0 = released_b(scenario, 0, 1, start)
    task1 = released_b(scenario, 1, 1, start)
    again = released_b(scenario, 0, 1, start)
    assert task0.abs().max() > 0  # the rounds did release something
    assert abs(correlation(task0, task1)) < 0.1
    assert abs(correlation(task0, again)) < 0.1
    assert not torch.equal(task0, again)


def test_the_debug_flag_reproduces_the_noise_and_still_varies_it_by_task(
        write_scenario, start_of) -> None:
    """privacy.reproducible_noise_voids_guarantee: two runs of one seed release the same
    bits (what the resume and engine-parity tests need); round r of task 1 still draws
    other noise than round r of task 0 (the task is part of the seed)."""
    scenario = private_stream(write_scenario, seeded=True)
    start = start_of(scenario)
    task0 = released_b(scenario, 0, 1, start)
    assert torch.equal(task0, released_b(scenario, 0, 1, start))
    assert abs(correlation(task0, released_b(scenario, 1, 1, start))) < 0.1


def test_a_private_client_releases_no_unnoised_metrics_unless_the_scenario_says_so(
        write_scenario, start_of, quick_document) -> None:
    """By default the reply's metrics are the partition size, the ledger's figures and
    which noise it used; with privacy.report_unnoised_metrics the loss and local eval
    come too, with privacy.report_dp_diagnostics the clipped fraction and noise-to-signal
    ratio (either way the run is marked: scenarios.disclosure)."""
    quick_document["privacy"] = {"target_epsilon": 8.0}
    quiet = load_scenario(write_scenario(quick_document, "quiet.yaml"))
    quick_document["privacy"]["report_unnoised_metrics"] = True
    chatty = load_scenario(write_scenario(quick_document, "chatty.yaml"))
    quick_document["privacy"] = {"target_epsilon": 8.0, "report_dp_diagnostics": True}
    diagnosed = load_scenario(write_scenario(quick_document, "diagnosed.yaml"))
    assert DP_DIAGNOSTICS in privacy_disclosure(quick_document)["excludes"]
    for scenario, extra in ((quiet, set()), (chatty, {keys.TRAIN_LOSS, keys.LOCAL_EVAL_ACC,
                                                      keys.LOCAL_EVAL_LOSS}),
                            (diagnosed, {keys.UNNOISED_CLIPPED_FRACTION,
                                         keys.UNNOISED_NOISE_TO_SIGNAL})):
        model = cached_model(scenario, "cpu")
        content = RecordDict({keys.ARRAYS: ArrayRecord(global_state(model)),
                              keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: 1})})
        reply = train_round(scenario, 0, content, RecordDict())
        assert set(reply[keys.METRICS]) == {keys.NUM_EXAMPLES, keys.EPSILON,
                                            keys.NOISE_MULTIPLIER, keys.SAMPLE_RATE,
                                            keys.DP_STEPS, keys.SEEDED_NOISE} | extra
