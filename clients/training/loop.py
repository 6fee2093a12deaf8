"""The local loop: a fixed number of optimizer steps, and evaluation.

Pure torch: no Flower here. The ClientApp calls `train_steps` and `evaluate`; later
wrappers (DP-SGD, OSFT projection) hook into the same loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from clients.models.causal_lm import hidden_states, is_causal_lm, option_scores, target_losses
from scenarios.schema import OptimizerSpec


def round_seed(seed: int, task_id: int, server_round: int, partition_id: int) -> int:
    """A distinct, reproducible seed per (scenario seed, task, round within the task,
    client), collision-free (numpy's SeedSequence hashes the tuple), for batches and
    dropout. The task is part of it: round r of every task would otherwise repeat the
    same batches. DP noise is drawn from OS entropy instead (clients.training.dp_training), except
    under privacy.reproducible_noise_voids_guarantee (debugging: no guarantee)."""
    return int(np.random.SeedSequence([seed, task_id, server_round, partition_id])
               .generate_state(1)[0])


def make_optimizer(model: nn.Module, spec: OptimizerSpec) -> torch.optim.Optimizer:
    """A fresh optimizer over the trainable parameters (fresh every round, as in FedSVD)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                               weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)


def forward_loss(model: nn.Module, batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean cross-entropy and the logits, for a batch of tokenized tensors.

    The loss is a mean over samples (never over tokens of the whole batch), which the
    DP-SGD analysis needs: each sample's gradient depends on that sample only.
    """
    logits = forward_logits(model, batch)  # (B, C)
    return nn.functional.cross_entropy(logits, batch[3]), logits


def trim_padding(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    """The batch without the token columns that are padding in every example: the token
    tensors (B, T) become (B, T'), T' the longest example's length; labels are kept.

    Exact, up to float summation order, for a model that masks padding (BERT's attention
    gives padded keys zero weight; mean pooling averages over the mask; the CLS pooler
    reads token 0), as Hugging Face's DataCollatorWithPadding pads each batch to its own
    longest row. Tokenized sets pad to max_length; SST-2 phrases have a median of 10 of
    64 tokens, so the untrimmed batch spends most of its matmuls on padding.
    """
    if len(batch[0]) == 0:
        return batch  # an empty Poisson batch: nothing to trim
    used = batch[1].bool().any(dim=0)  # (T,): a column some example attends to
    if bool(used.all()):
        return batch
    return [t[:, used] if t.dim() == 2 else t for t in batch]


def train_loss(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    """What a training step minimises, loss = (1/B) sum_i loss_i, a mean over the batch's
    examples of `train_losses`."""
    return train_losses(model, batch).mean()


def train_losses(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    """(B,) loss_i of each example, each depending on example i alone: the cross-entropy
    of an encoder's head, a causal LM's mean NLL of the example's label tokens
    (clients.models.causal_lm.target_losses)."""
    if is_causal_lm(model):
        return target_losses(model, batch)
    return nn.functional.cross_entropy(forward_logits(model, batch), batch[3], reduction="none")


def forward_hidden(model: nn.Module, batch: list[torch.Tensor]) -> None:
    """Run the network over the batch's inputs (for hooks that read its hidden states):
    an encoder through its head, a causal LM over its prompts."""
    if is_causal_lm(model):
        hidden_states(model, batch[0], batch[1])
    else:
        forward_logits(model, batch)


def forward_logits(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    """The model's class scores (B, C) for a batch of tokenized tensors (labels unused):
    an encoder's logits; a causal LM's log-likelihood of each label option
    (clients.models.causal_lm.option_scores, on a scoring batch)."""
    if is_causal_lm(model):
        return option_scores(model, batch)
    input_ids, attention_mask, token_type_ids = batch[:3]
    # Explicit position ids: per-sample-gradient code needs (B, T) position tensors.
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return model(input_ids=input_ids, attention_mask=attention_mask,
                 token_type_ids=token_type_ids, position_ids=positions).logits


@dataclass(frozen=True)
class TrainResult:
    mean_loss: float
    steps: int
    examples_seen: int
    # DP-SGD's un-noised diagnostics when asked (clients.training.dp_diagnostics), else empty
    dp_diagnostics: dict[str, float] = field(default_factory=dict)


def train_steps(model: nn.Module, data: TensorDataset, steps: int, batch_size: int,
                optimizer: torch.optim.Optimizer, generator: torch.Generator,
                device: torch.device, max_grad_norm: float | None = None) -> TrainResult:
    """Run exactly `steps` optimizer steps on batches drawn without replacement, epoch
    after epoch (RandomSampler with num_samples = steps * batch_size). `max_grad_norm`:
    clip each step's gradient to that global L2 norm first (the FedSVD reference: 1.0)."""
    sampler = RandomSampler(data, replacement=False, num_samples=steps * batch_size,
                            generator=generator)
    return run_steps(model, iter(DataLoader(data, batch_size=batch_size, sampler=sampler)),
                     steps, optimizer, device, max_grad_norm=max_grad_norm)


def run_steps(model: nn.Module, batches: Iterator[list[torch.Tensor]], steps: int,
              optimizer: torch.optim.Optimizer, device: torch.device,
              empty_step: Callable[[torch.optim.Optimizer], None] | None = None,
              max_grad_norm: float | None = None,
              loss_fn: Callable[[nn.Module, list[torch.Tensor]], Any] = train_loss,
              ) -> TrainResult:
    """The loop every trainer shares: `steps` times, forward, backward, (clip,) step.

    `empty_step` handles a batch with no examples (Poisson sampling makes them; DP-SGD
    must still take, and count, a step). `loss_fn(model, batch)` returns the batch's
    mean loss as anything with `.backward()` and `.detach()` (ghost clipping's loss forms
    the clipped gradient sum in its `.backward()`). The loss is summed on the model's device
    and read once at the end: no host sync per step.
    """
    model.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    total, seen = torch.zeros((), device=device), 0
    for _ in range(steps):
        # Trimmed on the host, before the copy: no device sync to find the length.
        batch = [t.to(device) for t in trim_padding(next(batches))]
        optimizer.zero_grad(set_to_none=True)
        if len(batch[0]) == 0:
            if empty_step is None:
                raise ValueError("an empty batch, and no way to step on one")
            empty_step(optimizer)
            continue
        loss = loss_fn(model, batch)
        loss.backward()
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        total += loss.detach() * len(batch[0])
        seen += len(batch[0])
    return TrainResult(mean_loss=float(total) / max(seen, 1), steps=steps, examples_seen=seen)


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    num_examples: int


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, device: torch.device,
             batch_size: int = 128) -> EvalResult:
    """Accuracy of `model` on `data`, and the mean cross-entropy of its class scores (a
    causal LM: of the softmax over its options' log-likelihoods)."""
    model.eval()
    loss_sum, correct, n = torch.zeros((), device=device), torch.zeros((), device=device), 0
    for batch in DataLoader(data, batch_size=batch_size):
        batch = [t.to(device) for t in trim_padding(batch)]
        logits = forward_logits(model, batch)  # (B, C)
        loss = nn.functional.cross_entropy(logits, batch[3])
        loss_sum += loss * len(batch[0])
        correct += (logits.argmax(-1) == batch[3]).sum()
        n += len(batch[0])
    return EvalResult(loss=float(loss_sum) / max(n, 1), accuracy=int(correct) / max(n, 1),
                      num_examples=n)
