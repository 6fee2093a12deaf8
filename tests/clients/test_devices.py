"""Every tensor a client step uses lives on the model's device, proven without a GPU.

The ClientApp's round (train_round) runs with the model on PyTorch's `meta` device, a
second device type every CPU build has, under a dispatch mode that audits every aten
op: its tensor inputs must share one device (0-dim CPU tensors aside, which torch
accepts as scalars on any device; copies between devices are the point of `.to`). A
CPU basis or noise tensor meeting a GPU weight fails on CUDA; here it is a recorded
mix of 'cpu' and 'meta'. Meta tensors hold no values: reading one gives 0 and copying
one to the host gives zeros, the only liberty the audit takes.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

import clients.app as client_app
from clients.models.heads import activate_task
from clients.models.factory import global_state, osft_targets
from clients.training.osft import basis
from clients.training.osft_training import projected_updates
from clients.training.loop import make_optimizer
from scenarios.loader import load_scenario
from scenarios.schema import OptimizerSpec
from strategies import keys
from tests.conftest import ROOT
from tests.device_audit import DeviceAudit

def scenario_for(write_scenario, source: str, strategy: dict, privacy: dict | None,
                 model: dict | None = None, **federation):
    doc = yaml.safe_load((ROOT / "scenarios" / source).read_text())
    doc["name"] = f"device-{strategy['name']}{'-' + model['name'] if model else ''}"
    doc["model"] = model or doc["model"]
    doc["strategy"] = strategy
    doc["federation"].update(local_steps=2, batch_size=8, **federation)
    if privacy is not None:
        doc["privacy"] = privacy
    return load_scenario(write_scenario(doc, f"{doc['name']}.yaml"))


def osft_bases(scenario, task_id: int) -> ArrayRecord:
    """Preserved bases for every target weight, as the server sends them (host arrays)."""
    from server.serverapp.osft_plan import target_weights

    model = client_app.cached_model(scenario, "cpu")
    weights = target_weights(model, osft_targets(scenario.model, scenario.strategy.target_modules))
    arrays = {}
    for name, weight in weights.items():
        u, v = basis(weight.detach(), 4)
        arrays[name + keys.BASIS_U], arrays[name + keys.BASIS_V] = u.numpy(), v.numpy()
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


TINY_LLAMA = {"name": "tiny-llama", "max_length": 48}
CASES = {
    "osft-dp": ("quick-stream.yaml", {"name": "osft", "rank_rule": "schedule"},
                {"target_epsilon": 8.0}, {}),
    "fedsvd-dp": ("quick-stream.yaml", {"name": "fedsvd"}, {"target_epsilon": 8.0}, {}),
    "osft-clipped": ("quick-stream.yaml", {"name": "osft", "rank_rule": "schedule"}, None,
                     {"max_grad_norm": 1.0}),
    # The causal-LM path: the answer-token loss under DP, and rank classification (the
    # KV cache) in the non-private round's local evaluation.
    "llm-osft-dp": ("quick-stream.yaml", {"name": "osft", "rank_rule": "schedule"},
                    {"target_epsilon": 8.0}, {}, TINY_LLAMA),
    "llm-fedsvd": ("quick-stream.yaml", {"name": "fedsvd"}, None, {}, TINY_LLAMA),
}


def round_on(device: str, case: str, write_scenario, monkeypatch) -> RecordDict:
    """train_round of CASES[case] (task 1, round 1, partition 0) with the model on
    `device`, from host tensors as the server sends them."""
    source, strategy, privacy, federation, *model = CASES[case]
    scenario = scenario_for(write_scenario, source, strategy, privacy, *model, **federation)
    host = client_app.cached_model(scenario, "cpu")  # what the server sends: host tensors
    activate_task(host, 1)
    sent = {k: v for k, v in global_state(host).items() if ".heads.0." not in k}
    content = RecordDict({keys.ARRAYS: ArrayRecord(sent), keys.CONFIG: ConfigRecord(
        {keys.SERVER_ROUND: 1, keys.TASK_ID: 1})})
    if strategy["name"] == "osft":
        content[keys.OSFT_BASES] = osft_bases(scenario, 1)
    monkeypatch.setattr(client_app, "pick_device", lambda: torch.device(device))
    return client_app.train_round(scenario, 0, content, RecordDict())


@pytest.mark.parametrize("case", CASES)
def test_a_client_round_runs_on_the_models_device(case, write_scenario, monkeypatch) -> None:
    audit = DeviceAudit()
    with audit:
        reply = round_on("meta", case, write_scenario, monkeypatch)
    assert audit.mixed == [], audit.mixed[:5]
    assert audit.ops_on_meta > 100  # the round really ran on the second device
    assert reply[keys.CLIENT][keys.DEVICE] == "meta"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", CASES)
def test_a_client_round_runs_on_a_gpu(case, write_scenario, monkeypatch) -> None:
    """The same rounds on a real GPU (bench/device/run.sh runs this on the accelerator):
    there the generators count too (Opacus draws noise on the gradient's device)."""
    reply = round_on("cuda", case, write_scenario, monkeypatch)
    assert reply[keys.CLIENT][keys.DEVICE] == "cuda"
    assert all(torch.isfinite(t).all() for t in reply[keys.ARRAYS].to_torch_state_dict().values())


def test_the_audit_catches_what_meta_alone_lets_through() -> None:
    """The check can fail: some ops accept a host tensor against a meta one without a
    word (a matrix product does), which on CUDA would raise. The audit records them;
    the projection with host bases (the bug this replaces) torch refuses by itself."""
    weight, host = torch.randn(6, 5, device="meta"), torch.randn(5, 2)
    audit = DeviceAudit()
    with audit:
        weight @ host  # no error on meta
    assert audit.mixed == [("aten.mm.default", {"cpu", "meta"})]
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.randn(6, 5, device="meta"))
    optimizer = make_optimizer(module, OptimizerSpec(name="sgd"))
    bases = {"weight": (torch.randn(6, 2), torch.randn(2, 5))}  # left on the host
    with pytest.raises(RuntimeError, match="not on the expected device meta"), \
            projected_updates(module, optimizer, bases):
        module.weight.grad = torch.ones_like(module.weight)
        optimizer.step()
