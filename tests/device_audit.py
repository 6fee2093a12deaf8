"""An audit of device mixing without a GPU: every aten op whose tensor inputs sit on more
than one device type is recorded, with the model on PyTorch's `meta` device, a second
device type every CPU build has. A CPU basis or noise tensor meeting a GPU weight fails
on CUDA; here it is a recorded mix of 'cpu' and 'meta'. Meta tensors hold no values:
reading one gives 0 and copying one to the host gives zeros, the only liberty the
audit takes.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
CROSS_DEVICE = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default,
                aten.lift_fresh.default}


class DeviceAudit(TorchDispatchMode):
    """Records every op whose tensor inputs are on more than one device type."""

    def __init__(self) -> None:
        super().__init__()
        self.mixed: list[tuple[str, set[str]]] = []
        self.ops_on_meta = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func is aten._local_scalar_dense.default and tensors[0].is_meta:
            return False if tensors[0].dtype == torch.bool else 0  # no values on meta
        if func is aten._to_copy.default and tensors[0].is_meta and \
                kwargs.get("device", torch.device("meta")).type == "cpu":
            return torch.zeros(tensors[0].shape, dtype=kwargs.get("dtype") or tensors[0].dtype)
        devices = {t.device.type for t in tensors if not (t.dim() == 0 and not t.is_meta)}
        if func not in CROSS_DEVICE and len(devices) > 1:
            self.mixed.append((str(func), devices))
        self.ops_on_meta += "meta" in devices
        return func(*args, **kwargs)
