"""Orthogonal FedSVD at a task start, on the server: the preserved bases of every LoRA
target's base weight (OSFT's rank rules, server.serverapp.osft_plan), the left bases
clients project each update of B with, and A restarted in the complement of the right
ones (clients.training.orthogonal_lora has the math and why it keeps the triplets).

Each matrix keeps `r` directions free (k <= min(d_out, d_in) - r, r the LoRA rank): A's
r rows must fit in the complement of V_h, and the adaptive rule can otherwise ask for
every direction. The plan file (osft-task-T.json) records the ranks after that cap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import Array, ArrayRecord
from torch import nn
from torch.utils.data import TensorDataset

from clients.training.orthogonal_lora import complement_rows, left_basis_only
from scenarios.schema import FedSvdOsftSpec
from server.serverapp.osft_plan import TaskBases, task_bases
from strategies import keys


@dataclass(frozen=True)
class LoraTarget:
    """One LoRA-wrapped linear layer, by the names of its three weights."""

    base: str  # "<module>.base_layer.weight", the merged W (d_out x d_in)
    a: str     # "<module>.lora_A.<adapter>.weight" (r x d_in)
    b: str     # "<module>.lora_B.<adapter>.weight" (d_out x r)


@dataclass(frozen=True)
class OrthogonalStart:
    """What a task start gives: B's bases for the train messages, A's new values for the
    global model, and the preserved bases they came from (with their cost)."""

    b_bases: ArrayRecord   # keys: target.b + keys.BASIS_U / keys.BASIS_V (empty)
    a_start: ArrayRecord   # keys: target.a
    bases: TaskBases       # of the base weights, as OSFT computes them


def lora_targets_of(model: nn.Module) -> list[LoraTarget]:
    """Every LoRA layer of the model (its active adapter), in module order."""
    from peft.tuners.lora import LoraLayer

    found = []
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            (adapter,) = module.active_adapters
            found.append(LoraTarget(f"{name}.base_layer.weight",
                                    f"{name}.lora_A.{adapter}.weight",
                                    f"{name}.lora_B.{adapter}.weight"))
    if not found:
        raise ValueError("strategy.name: 'fedsvd-osft' needs LoRA layers (model.lora)")
    return found


def task_start(model: nn.Module, strategy: FedSvdOsftSpec, task_id: int,
               previous_sample: TensorDataset | None, device: torch.device,
               seed: int) -> OrthogonalStart:
    """The start of task `task_id` from the model as it is now (earlier adapters merged,
    B = 0). A's Gaussian is drawn from `seed` and the task index, target by target in
    module order, so a run recomputes the same A."""
    targets = lora_targets_of(model)
    params = dict(model.named_parameters())
    rank = params[targets[0].a].shape[0]
    for target in targets:
        if rank >= min(params[target.base].shape):
            raise ValueError(
                f"model.lora.rank: {rank} must be below min(d_out, d_in) = "
                f"{min(params[target.base].shape)} of {target.base} for fedsvd-osft (A's rows "
                "must fit beside at least one preserved direction)")
    modules = tuple(t.base.removesuffix(".weight") for t in targets)
    bases = task_bases(model, strategy, modules, task_id, previous_sample, device, room=rank)
    generator = torch.Generator().manual_seed(seed * 1009 + task_id)
    b_bases, a_start = {}, {}
    for target in targets:
        d_out, d_in = bases.shapes[target.base]
        if target.base + keys.BASIS_U in bases.record:
            u_high = torch.from_numpy(bases.record[target.base + keys.BASIS_U].numpy())
            v_high = torch.from_numpy(bases.record[target.base + keys.BASIS_V].numpy())
            u, empty = left_basis_only(u_high, rank)
            b_bases[target.b + keys.BASIS_U] = Array(u.numpy())
            b_bases[target.b + keys.BASIS_V] = Array(empty.numpy())
        else:  # nothing preserved (task 0): A is still restarted orthonormal
            v_high = torch.zeros(0, d_in)
        a = complement_rows(v_high, rank, d_in, generator)
        a_start[target.a] = Array(a.to(params[target.a].dtype).contiguous().numpy())
    return OrthogonalStart(ArrayRecord(b_bases), ArrayRecord(a_start), bases)
