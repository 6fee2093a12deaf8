"""OSFT at a task start, on the server: which matrices, how much of each to preserve,
and their preserved bases (clients.training.osft), packed for the train messages.

Task 0 preserves nothing (no earlier task of the stream relies on anything). Task t > 0
preserves, per target matrix, the rank the scenario's rule gives: the adaptive rule
measures layer importance on `importance_samples` examples of task t - 1, run through
the global model as it is at the start of task t (see `importance_by_layer`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from flwr.app import Array, ArrayRecord
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clients.training.osft import adaptive_ranks, basis, layer_importance, scheduled_rank
from clients.training.loop import forward_hidden, trim_padding
from scenarios.schema import PreservedRanksSpec
from strategies import keys


@dataclass(frozen=True)
class TaskBases:
    """The bases of one task start, as sent to clients, and what they cost."""

    record: ArrayRecord
    ranks: dict[str, int]
    shapes: dict[str, tuple[int, int]]
    seconds: float


def target_weights(model: nn.Module, targets: tuple[str, ...]) -> dict[str, nn.Parameter]:
    """{parameter name: weight} of every Linear whose module name ends with a target."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t)
                                                 for t in targets):
            found[f"{name}.weight"] = module.weight
    if not found:
        raise ValueError(f"strategy.target_modules: none of {list(targets)} is a Linear layer "
                         "of the model")
    return found


def blocks_of(model: nn.Module, weights: dict[str, nn.Parameter]) -> dict[str, nn.Module]:
    """{weight name: the transformer block (an item of the model's layer list) it is in}."""
    owners = {}
    for list_name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList):
            continue
        for index, block in enumerate(module):
            prefix = f"{list_name}.{index}."
            owners.update({n: block for n in weights if n.startswith(prefix)})
    missing = sorted(set(weights) - set(owners))
    if missing:
        raise ValueError(f"strategy.target_modules: {missing[:3]} are not inside a layer list "
                         "of the model; use rank_rule 'schedule' for such models")
    return owners


@torch.no_grad()
def importance_by_layer(model: nn.Module, weights: dict[str, nn.Parameter],
                        sample: TensorDataset, device: torch.device) -> dict[str, float]:
    """Layer importance for each target weight: mean cos(x_i, f_l(x_i)) between the
    hidden state x_i entering its transformer block l and the one leaving it, over the
    (non-padding) tokens of `sample`.

    Measured per block, as AdaSVD (Li et al. 2025), where this rule comes from, does:
    per matrix, cos(x, W x) compares unrelated coordinates (a query projection's output
    is not in its input's basis) and on MiniLM it is -0.04..0.03, mean about 0, which
    would make the mean-normalised importance meaningless (ranks 0 or full).
    """
    owners = blocks_of(model, weights)
    blocks = {id(b): b for b in owners.values()}
    sums = dict.fromkeys(blocks, 0.0)
    counts = dict.fromkeys(blocks, 0)
    keep: list[torch.Tensor] = []  # the current batch's attention mask, as a boolean index

    def hook_for(key: int):
        def hook(_module, inputs, output) -> None:
            hidden_out = output[0] if isinstance(output, tuple) else output
            x, y = inputs[0][keep[0]], hidden_out[keep[0]]       # (tokens, d_model)
            sums[key] += layer_importance(x, y) * len(x)
            counts[key] += len(x)
        return hook

    handles = [b.register_forward_hook(hook_for(k)) for k, b in blocks.items()]
    model.eval()
    try:
        for batch in DataLoader(sample, batch_size=32):
            batch = [t.to(device) for t in trim_padding(batch)]
            keep[:] = [batch[1].bool()]
            forward_hidden(model, batch)  # the previous task's rows
    finally:
        for handle in handles:
            handle.remove()
    return {n: sums[id(b)] / max(counts[id(b)], 1) for n, b in owners.items()}


def task_bases(model: nn.Module, strategy: PreservedRanksSpec, targets: tuple[str, ...],
               task_id: int, previous_sample: TensorDataset | None, device: torch.device,
               room: int = 0) -> TaskBases:
    """The preserved bases of every target weight (`targets`: strategy.target_modules, or
    the model's default, clients.models.factory.osft_targets) at the start of task `task_id`.
    `room`: directions every matrix keeps free to learn in, k <= min(d_out, d_in) - room
    (fedsvd-osft: the LoRA rank, so A's rows fit in the complement of V_h)."""
    started = time.perf_counter()
    weights = target_weights(model, targets)
    shapes = {n: tuple(w.shape) for n, w in weights.items()}
    if task_id == 0:
        ranks = dict.fromkeys(weights, 0)
    elif strategy.rank_rule == "schedule":
        ranks = {n: scheduled_rank(shapes[n], task_id, strategy.schedule_fraction)
                 for n in weights}
    else:
        if previous_sample is None:
            raise ValueError("the adaptive rank rule needs a sample of the previous task")
        importance = importance_by_layer(model, weights, previous_sample, device)
        ranks = adaptive_ranks(importance, shapes, strategy.mrr, strategy.trr)
    ranks = {n: max(0, min(k, min(shapes[n]) - room)) for n, k in ranks.items()}
    arrays = {}
    for name, weight in weights.items():
        if ranks[name] == 0:
            continue  # nothing preserved: the client leaves this weight unconstrained
        u_high, v_high = basis(weight.detach().cpu(), ranks[name])
        arrays[name + keys.BASIS_U] = Array(u_high.numpy())
        arrays[name + keys.BASIS_V] = Array(v_high.numpy())
    return TaskBases(ArrayRecord(arrays), ranks, shapes, time.perf_counter() - started)
