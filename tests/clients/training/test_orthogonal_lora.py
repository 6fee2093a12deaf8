"""Orthogonal FedSVD (fedsvd-osft) against a dense SVD: the complement-started A, and the
preserved triplets of every LoRA target after several private federated rounds of real
client training (clients.app.train_round) and FedSVD's aggregation, on the tiny
BERT and the tiny LLaMA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from clients.app import train_round
from clients.models.factory import build_model, global_state, load_trainable, merge_adapters
from clients.training.orthogonal_lora import complement_rows
from scenarios.loader import load_scenario
from server.serverapp.orthogonal_lora_plan import lora_targets_of, task_start
from strategies import keys
from strategies.fedsvd_osft import FedSvdOsft
from tests.strategies.replies import train_reply

CPU = torch.device("cpu")


def test_complement_rows_are_orthonormal_and_orthogonal_to_the_preserved_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(30, 40, generator=gen, dtype=torch.float64)
    vh = np.linalg.svd(w.numpy(), full_matrices=False)[2]       # the oracle's right vectors
    v_high = torch.from_numpy(vh[:25]).float()
    a = complement_rows(v_high, 6, 40, gen)
    assert a.shape == (6, 40) and a.dtype == torch.float32
    torch.testing.assert_close(a @ a.T, torch.eye(6), atol=1e-6, rtol=0)
    assert (a.double() @ torch.from_numpy(vh[:25]).T).abs().max() < 1e-6
    # The same seed gives the same A (a resumed run recomputes it).
    twice = [complement_rows(v_high, 6, 40, torch.Generator().manual_seed(5)) for _ in "ab"]
    assert torch.equal(*twice)
    # Exactly d_in - k rows fit; one more names the bound.
    assert complement_rows(v_high, 15, 40, gen).shape == (15, 40)
    with pytest.raises(ValueError, match=r"d_in - k = 40 - 25 = 15"):
        complement_rows(v_high, 16, 40, gen)
    # Nothing preserved: any orthonormal rows.
    free = complement_rows(torch.zeros(0, 40), 4, 40, gen)
    torch.testing.assert_close(free @ free.T, torch.eye(4), atol=1e-6, rtol=0)


def scenario_for(model_name: str):
    """3 clients under DP (seeded noise: a repeatable check), LoRA rank 4 on q and v,
    the schedule rule preserving floor(max(d) * 0.25) directions at task 1."""
    targets = ["query", "value"] if model_name == "tiny-bert" else ["q_proj", "v_proj"]
    return load_scenario({
        "name": "fedsvd-osft-unit", "seed": 0,
        "model": {"name": model_name, "max_length": 24 if model_name == "tiny-bert" else 48,
                  "lora": {"rank": 4, "alpha": 8, "target_modules": targets}},
        "data": {"source": {"kind": "generated", "num_labels": 3, "train_size": 300,
                            "test_size": 30}},
        "federation": {"num_clients": 3, "clients_per_round": 3, "rounds": 3,
                       "local_steps": 6, "batch_size": 16,
                       "optimizer": {"name": "adamw", "lr": 0.02, "weight_decay": 0.01}},
        "strategy": {"name": "fedsvd-osft", "rank_rule": "schedule", "schedule_fraction": 0.25},
        "privacy": {"target_epsilon": 50.0, "delta": 1e-5, "max_grad_norm": 1.0,
                    "reproducible_noise_voids_guarantee": True},
    })


@pytest.mark.parametrize("model_name", ["tiny-bert", "tiny-llama"])
def test_preserved_triplets_survive_private_federated_fedsvd_osft(model_name) -> None:
    """The server's task start (as at task 1: the schedule rule preserves k > 0
    directions), three rounds of three DP-SGD clients sending B, FedSVD-OSFT's mean and
    re-factorization, then the task end's merge W + s B A: each preserved triplet of the
    task-start W (numpy's dense SVD in float64) is a singular triplet of the merged W to
    1e-4 relative, while W moved. Every reply's B and the global A are checked too."""
    scenario = scenario_for(model_name)
    server = build_model(scenario.model, 3, scenario.seed, "lora-b")
    targets = lora_targets_of(server)
    params = dict(server.named_parameters())
    start_w = {t.base: params[t.base].detach().double().clone() for t in targets}
    svds = {n: np.linalg.svd(w.numpy(), full_matrices=False) for n, w in start_w.items()}

    start = task_start(server, scenario.strategy, 1, None, CPU, scenario.seed)
    load_trainable(server, start.a_start.to_torch_state_dict())
    ks = {t.base: start.bases.ranks[t.base] for t in targets}
    assert all(0 < k <= min(start_w[n].shape) - 4 for n, k in ks.items()), ks

    strategy, states = FedSvdOsft(), {}
    for server_round in (1, 2, 3):
        arrays = ArrayRecord(global_state(server))
        replies = []
        for partition in range(3):
            content = RecordDict({
                keys.ARRAYS: arrays, keys.OSFT_BASES: start.b_bases,
                keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: server_round, keys.TASK_ID: 0})})
            reply = train_round(scenario, partition, content,
                                states.setdefault(partition, RecordDict()))
            sent = reply[keys.ARRAYS].to_torch_state_dict()
            assert not any(".lora_A." in n for n in sent)  # only B (and the head) travel
            for t in targets:  # each client's B has no component along U_h
                u_high = torch.from_numpy(svds[t.base][0][:, :ks[t.base]])
                assert (u_high.T @ sent[t.b].double()).abs().max() < 1e-5
            replies.append(train_reply(partition, partition,
                                       {k: v.numpy() for k, v in sent.items()},
                                       int(reply[keys.METRICS][keys.NUM_EXAMPLES])))
        strategy.global_arrays = arrays
        new, _ = strategy.aggregate_train(server_round, replies)
        load_trainable(server, new.to_torch_state_dict())

    for t in targets:  # the re-factorized A stays in the complement of V_h
        v_high = torch.from_numpy(svds[t.base][2][:ks[t.base]])
        assert (params[t.a].detach().double() @ v_high.T).abs().max() < 1e-5
    merged = merge_adapters(server)
    for name, (u, s, vh) in svds.items():
        k, w = ks[name], merged[name].double()
        right = np.linalg.norm(w.numpy() @ vh[:k].T - u[:, :k] * s[:k]) / np.linalg.norm(s[:k])
        left = np.linalg.norm(u[:, :k].T @ w.numpy() - s[:k, None] * vh[:k]) / np.linalg.norm(s[:k])
        assert right < 1e-4 and left < 1e-4, (name, right, left)
        assert (w - start_w[name]).norm() / start_w[name].norm() > 1e-4, f"{name} did not move"


def test_without_the_projection_b_leaves_the_preserved_subspace() -> None:
    """The control: the same clients without B's bases send a B with a component along
    U_h, so the check above can fail."""
    scenario = scenario_for("tiny-bert")
    server = build_model(scenario.model, 3, scenario.seed, "lora-b")
    (target, *_) = lora_targets_of(server)
    w = dict(server.named_parameters())[target.base].detach().double().numpy()
    start = task_start(server, scenario.strategy, 1, None, CPU, scenario.seed)
    load_trainable(server, start.a_start.to_torch_state_dict())
    content = RecordDict({keys.ARRAYS: ArrayRecord(global_state(server)),
                          keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: 1, keys.TASK_ID: 0})})
    sent = train_round(scenario, 0, content, RecordDict())[keys.ARRAYS].to_torch_state_dict()
    u_high = torch.from_numpy(np.linalg.svd(w, full_matrices=False)[0][:, :start.bases.ranks[target.base]])
    assert (u_high.T @ sent[target.b].double()).abs().max() > 1e-3


def test_a_rank_with_no_room_beside_the_preserved_directions_names_the_field() -> None:
    document = scenario_for("tiny-bert").model_dump(mode="json")
    document["model"]["lora"]["rank"] = 128  # tiny BERT's q and v are 128 x 128
    scenario = load_scenario(document)
    server = build_model(scenario.model, 3, scenario.seed, "lora-b")
    with pytest.raises(ValueError, match=r"model.lora.rank: 128 must be below min\(d_out, d_in\) = 128"):
        task_start(server, scenario.strategy, 1, None, CPU, scenario.seed)
