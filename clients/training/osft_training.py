"""OSFT plumbing: keep every optimizer step of the target weights in the allowed subspace.

The projection P (clients.training.osft) applies to each step's UPDATE of a target weight,
W <- W_before + P(W_after - W_before), not to its gradient: under Adam the step is the
gradient rescaled coordinate by coordinate, which leaves the allowed subspace even when
the gradient is in it. For plain SGD both forms are the same. P is linear and
idempotent, so that update equals

    W <- F + P(W_after),   F = W_0 - P(W_0)   (W_0: the weight when the block starts),

because W_before - P(W_before) = F after every such step: F, the part of W in the
preserved directions, is computed once per round, and a step costs one projection and
no copy of the old weights. Hooked on the optimizer's step, it also runs after Opacus
has clipped and noised the gradient (Opacus calls the wrapped optimizer's step):
projecting a private update is post-processing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from clients.training.osft import Projector
from strategies import keys

Bases = dict[str, tuple[torch.Tensor, torch.Tensor]]  # parameter name -> (u_high, v_high)


@contextmanager
def projected_updates(model: nn.Module, optimizer: torch.optim.Optimizer,
                      bases: Bases) -> Iterator[None]:
    """Inside the block, every `optimizer.step()` moves each parameter named in `bases`
    only orthogonally to its preserved subspace. Parameters with an empty basis (k = 0)
    are left alone."""
    params = dict(model.named_parameters())
    unknown = sorted(set(bases) - set(params))
    if unknown:
        raise KeyError(f"OSFT bases for parameters the model does not have: {unknown[:5]}")
    # Complements and the frozen parts are built once per block (a round), not per step.
    guarded = {name: (params[name], Projector(u, v))
               for name, (u, v) in bases.items() if u.shape[1] > 0}
    with torch.no_grad():
        frozen = {name: param - projector(param) for name, (param, projector) in guarded.items()}

    @torch.no_grad()
    def constrain(*_) -> None:
        for name, (param, projector) in guarded.items():
            param.copy_(projector(param).add_(frozen[name]))

    post = optimizer.register_step_post_hook(constrain)
    try:
        yield
    finally:
        post.remove()


def unpack_bases(record, device: torch.device) -> Bases:
    """{parameter name: (u_high, v_high)} from a train message's keys.OSFT_BASES record,
    on `device` (the parameters'): messages carry host arrays, and a projection that
    mixed a CPU basis with a GPU weight would fail at the first step."""
    out = {}
    for key, array in record.items():
        if key.endswith(keys.BASIS_U):
            name = key[: -len(keys.BASIS_U)]
            out[name] = (torch.from_numpy(array.numpy()).to(device),
                         torch.from_numpy(record[name + keys.BASIS_V].numpy()).to(device))
    return out
