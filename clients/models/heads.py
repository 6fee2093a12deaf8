"""One classifier head per task of a stream, behind the model's own head slot.

`TaskHeads` replaces the model's `classifier` Linear: it holds a Linear per task and
applies the active one, so the rest of the model (PEFT, Opacus, the state dicts) sees an
ordinary module. Only the active head trains: DP-SGD adds noise to every parameter it
trains, and noise on the heads of earlier tasks would erase them.
"""

from __future__ import annotations

import torch
from torch import nn

from clients.models.causal_lm import is_causal_lm

HEADS = ".heads."  # parameter names: ...classifier.heads.<task>.weight


class TaskHeads(nn.Module):
    """Linear heads (in_features -> labels of task t), one per task; `active` picks one."""

    def __init__(self, in_features: int, label_counts: tuple[int, ...], init_std: float) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(in_features, n) for n in label_counts)
        for head in self.heads:  # the transformers init for classifier heads
            nn.init.normal_(head.weight, std=init_std)
            nn.init.zeros_(head.bias)
        self.active = 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.heads[self.active](hidden)


def install_task_heads(model: nn.Module, label_counts: tuple[int, ...]) -> TaskHeads:
    """Replace `model.classifier` (a sequence classifier's head) with task heads, drawn
    from the current torch seed."""
    old = model.classifier
    if not isinstance(old, nn.Linear):
        raise TypeError(f"task heads need a Linear `classifier`, found {type(old).__name__}")
    std = getattr(model.config, "initializer_range", 0.02)
    model.classifier = TaskHeads(old.in_features, label_counts, std).to(old.weight.device)
    return model.classifier


def task_heads(model: nn.Module) -> TaskHeads | None:
    """The model's TaskHeads, also under a PEFT wrapper; None for a single-head model."""
    return next((m for m in model.modules() if isinstance(m, TaskHeads)), None)


def activate_task(model: nn.Module, task_id: int) -> None:
    """Route the head slot to task `task_id`'s head; freeze every other head. The
    active head trains if any head parameter of the model trained before."""
    heads = task_heads(model)
    if heads is None:
        # A causal LM has no heads: each task's prompts carry its instruction and options.
        if task_id != 0 and not is_causal_lm(model):
            raise ValueError(f"task-id {task_id} sent to a model with a single head")
        return
    if not 0 <= task_id < len(heads.heads):
        raise ValueError(f"task-id {task_id}: the model has {len(heads.heads)} task heads")
    trains = any(p.requires_grad for p in heads.parameters())
    heads.active = task_id
    for index, head in enumerate(heads.heads):
        head.requires_grad_(trains and index == task_id)
