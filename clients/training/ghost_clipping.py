"""Ghost clipping with book-keeping: DP-SGD's clipped gradient sum from ONE backward pass.

DP-SGD needs S = sum_i clip_C(g_i) = sum_i c_i g_i, c_i = min(1, C / (||g_i|| + 1e-6))
(Opacus's factor), g_i the gradient of example i's loss. Per-sample modes (hooks,
functorch) form every g_i: B copies of the weights. Ghost clipping (Li et al. 2022,
"Large language models can be strong differentially private learners", sec. 4) gets the
norms without them: a linear layer with inputs a_i (T, d_in) and output gradients
b_i (T, d_out) has g_i = b_i^T a_i and ||g_i||_F^2 = <a_i a_i^T, b_i b_i^T> (Opacus's norm
samplers; embeddings likewise, `embedding_norms`). Opacus then runs a second backward pass, of
sum_i c_i loss_i. Book-keeping (Bu, Wang, Zha, Karypis 2023, "Differentially private
optimization on large model at small cost", ICML) keeps a and b from the first pass
instead: the second pass's output gradients would be c_i b_i (no layer mixes examples),
so for each layer

    S_W = sum_i c_i b_i^T a_i = (c * b)^T a,      S_bias = sum_i c_i sum_t b_it,
    S_E[v] = sum_i c_i sum_{t: x_it = v} b_it      (embedding row v, token ids x),

one weight-gradient product, the cost of the weight half of a plain backward pass.
Layers without a norm sampler (LayerNorm, RMSNorm: Opacus's grad samplers or functorch)
have per-sample gradients as small as their weights: S = sum_i c_i g_i from those.

The one backward pass needs every hooked layer's output gradient, never a weight
gradient: asked (torch.autograd.grad) only for the gradient of the `sources`, the
outputs of the layers that took no gradient-carrying input (the embeddings, where the
backward pass ends; their hooks fire on the output side), autograd walks the whole
network and forms no weight gradient.
"""

from __future__ import annotations

import torch
from opacus.grad_sample import GradSampleHooksFastGradientClipping
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient
from opacus.utils.module_utils import trainable_parameters
from torch import nn

from clients.training.loop import train_losses


def ghost_unsupported(model: nn.Module) -> list[str]:
    """Why ghost clipping cannot clip this model's trainable set (empty: it can)."""
    shared: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if param.requires_grad:
            shared.setdefault(id(param), []).append(name)
    tied = [" = ".join(names) for names in shared.values() if len(names) > 1]
    odd = [name for name, m in model.named_modules() if isinstance(m, nn.Embedding)
           and m.weight.requires_grad and (m.sparse or m.scale_grad_by_freq or m.max_norm)]
    return ([f"a trainable parameter shared by two modules ({t})" for t in tied[:2]]
            + [f"embedding {n} with sparse, scale_grad_by_freq or max_norm" for n in odd[:2]])


def embedding_norms(ids: torch.Tensor, b: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
    """(B,) ||g_i|| of an embedding's weight, ids (B, T) and output gradients b (B, T, d):
    g_i[v] = sum_{t: x_it = v} b_it, so

        ||g_i||^2 = sum_{t, t'} [x_it = x_it'] <b_it, b_it'>,

    positions holding padding_idx left out (autograd never updates that row). Opacus's
    own sampler groups ids with torch.unique, which has no `meta` kernel and ignores
    padding_idx; this is one (B, T, T) Gram product."""
    ids = ids.reshape(len(ids), -1)                               # (B, T)
    b = b.reshape(len(ids), ids.shape[1], -1)                     # (B, T, d)
    same = ids[:, :, None] == ids[:, None, :]                     # (B, T, T)
    if padding_idx is not None:
        real = ids != padding_idx
        same = same & real[:, :, None] & real[:, None, :]
    gram = b @ b.transpose(1, 2)                                  # (B, T, T)
    return (gram * same).sum((1, 2)).clamp(min=0).sqrt()


class BookKeepingHooks(GradSampleHooksFastGradientClipping):
    """Opacus's ghost-clipping hooks (per-sample norms in p._norm_sample) that also keep
    what `clipped_sum` needs: (layer, a, b) of linear and embedding layers, per-sample
    gradients of the others, and the sources of the forward pass (module docstring)."""

    def __init__(self, module: nn.Module, max_grad_norm: float) -> None:
        super().__init__(module, batch_first=True, loss_reduction="mean",
                         max_grad_norm=max_grad_norm, use_ghost_clipping=True)
        self.kept: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []  # layer, a, b
        self.samples: list[tuple[nn.Parameter, torch.Tensor]] = []  # param, (B, *shape)
        self.sources: list[torch.Tensor] = []  # outputs of layers fed no gradient

    def new_batch(self) -> None:
        """Forget the last batch's state (before a forward pass)."""
        self.sources.clear()
        self.kept.clear()
        self.samples.clear()
        for param in self.trainable_parameters:
            param._norm_sample = None  # filled by the backward pass's hooks
            param._forward_counter = 0  # a forward never walked back must not look tied

    def capture_activations_hook(self, module, forward_input, _forward_output) -> None:
        super().capture_activations_hook(module, forward_input, _forward_output)
        if self.hooks_enabled and module.training and torch.is_grad_enabled() and not any(
                isinstance(t, torch.Tensor) and t.requires_grad for t in forward_input):
            outputs = _forward_output if isinstance(_forward_output, tuple) else (_forward_output,)
            self.sources += [t for t in outputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def capture_backprops_hook(self, module, _forward_input, forward_output,
                               loss_reduction: str, batch_first: bool) -> None:
        if not self.hooks_enabled:
            return
        # b scaled by B (mean reduction): each row is d loss_i / d output_i.
        activations, backprops = self.rearrange_grad_samples(
            module=module, backprops=forward_output[0].detach(),
            loss_reduction=loss_reduction, batch_first=batch_first)
        if module.activations:  # one popped, more left: the layer ran twice
            raise NotImplementedError(
                f"a {type(module).__name__} ran twice in one forward pass; ghost clipping "
                "needs each layer once: set privacy.grad_sample_mode: hooks")
        del module.max_batch_len  # per batch, as Opacus's own hook does
        if type(module) is nn.Embedding:
            module.weight._norm_sample = embedding_norms(activations[0], backprops,
                                                         module.padding_idx)
            self.kept.append((module, activations[0], backprops))
        elif type(module) is nn.Linear:
            for param, norm in self.NORM_SAMPLERS[nn.Linear](
                    module, activations, backprops).items():
                param._norm_sample = norm  # (B,)
            self.kept.append((module, activations[0], backprops))
        else:
            sampler = self.GRAD_SAMPLERS.get(type(module), ft_compute_per_sample_gradient)
            for param, sample in sampler(module, activations, backprops).items():
                if param.requires_grad:
                    param._norm_sample = sample.reshape(len(sample), -1).norm(2, dim=-1)
                    self.samples.append((param, sample))
        for _, param in trainable_parameters(module):
            param._forward_counter -= 1  # Opacus counts forward calls to catch tying

    def clipped_sum(self, coef: torch.Tensor) -> None:
        """p.grad = S_p = sum_i coef_i g_i for every trainable p (the module docstring);
        coef (B,). Empties what the pass kept."""
        for module, a, b in self.kept:
            cb = b * coef.view(-1, *[1] * (b.dim() - 1))            # (B, ..., d_out)
            flat = cb.reshape(-1, cb.shape[-1])                     # (B T, d_out)
            if isinstance(module, nn.Embedding):
                grad = torch.zeros_like(module.weight).index_add_(0, a.reshape(-1), flat)
                if module.padding_idx is not None:
                    grad[module.padding_idx] = 0  # autograd never updates the padding row
                module.weight.grad = grad
                continue
            if module.weight.requires_grad:                         # (d_out, d_in)
                module.weight.grad = flat.T @ a.reshape(-1, a.shape[-1]).to(flat.dtype)
            if module.bias is not None and module.bias.requires_grad:
                module.bias.grad = flat.sum(0)
        for param, sample in self.samples:
            param.grad = torch.einsum("n,n...->...", coef.to(sample.dtype), sample)
        self.kept.clear()
        self.samples.clear()


class GhostClippedLoss:
    """A batch's per-example losses (B,) whose `.backward()` leaves p.grad = S_p, the
    clipped sum, for the DP optimizer to noise (Opacus's ghost-clipping optimizer)."""

    def __init__(self, hooks: BookKeepingHooks, losses: torch.Tensor) -> None:
        self.hooks, self.losses = hooks, losses

    def detach(self) -> torch.Tensor:
        return self.losses.detach().mean()

    def backward(self) -> None:
        params = self.hooks.trainable_parameters
        if not self.hooks.sources:
            raise RuntimeError("ghost clipping found no layer fed by inputs that carry no "
                               "gradient; set privacy.grad_sample_mode: hooks")
        # The one pass, down to the sources' outputs: their layers' hooks still fire
        # (on the output side), and autograd forms no weight gradient at all.
        torch.autograd.grad(self.losses.mean(), self.hooks.sources, allow_unused=True)
        self.hooks.sources.clear()
        # A layer Opacus's norm samplers skip (e.g. a linear layer fed 4-D input) would
        # otherwise be clipped with the previous step's norm.
        missing = sum(p._norm_sample is None for p in params)
        if missing:
            raise RuntimeError(f"ghost clipping got no per-sample norm for {missing} trainable "
                               "parameters; set privacy.grad_sample_mode: hooks")
        self.hooks.clipped_sum(self.hooks.get_clipping_coef().detach())


def ghost_loss(hooks: BookKeepingHooks):
    """run_steps's loss_fn under ghost clipping: fresh per-batch state, then the losses."""
    def loss(model: nn.Module, batch: list[torch.Tensor]) -> GhostClippedLoss:
        hooks.new_batch()
        return GhostClippedLoss(hooks, train_losses(model, batch))  # (B,)
    return loss
