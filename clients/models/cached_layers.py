"""Frozen bottom layers computed once per example: each step runs only the layers above.

A research regime, not the paper's: with `model.cached_layers: N`, the encoder's bottom
N transformer layers are frozen features. The first time an example (its token ids and
token types) passes, their output is computed in eval mode (no dropout) and kept; later
passes read it back, pad it to the batch's length and run only layers N.. on it. For the
real tokens this equals the uncached forward in eval mode exactly (right padding: a
padded position is a key no real token attends to, so what it holds never reaches them);
in train mode the bottom layers lose their dropout. The adapters (model.lora) go on the
top layers only, since nothing below may change: the bottom layers are not submodules of
the model at all, so PEFT, the optimizer, the checkpoints and the frozen fingerprint never
see them (server and clients build them from the same pretrained weights). Memory: one
float32 (tokens x hidden) tensor per distinct example seen, on the model's device; with
`model.feature_cache: disk` also on disk, shared by processes and runs
(clients.models.feature_store).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from clients.models.feature_store import FeatureStore


class CachedBottomEncoder(nn.Module):
    """Takes the place of a BERT-style encoder (`.layer`, a ModuleList): the bottom
    `count` layers through the per-example cache, the rest as the encoder runs them."""

    def __init__(self, encoder: nn.Module, count: int) -> None:
        super().__init__()
        layers = list(encoder.layer)
        if not 0 < count < len(layers):
            raise ValueError(f"model.cached_layers: must be between 1 and {len(layers) - 1} "
                             f"(the encoder has {len(layers)} layers), got {count}")
        bottom = copy.copy(encoder)
        bottom._modules = dict(encoder._modules)  # its own module table: layers below only
        bottom.layer = nn.ModuleList(layers[:count]).eval()
        bottom.requires_grad_(False)
        encoder.layer = nn.ModuleList(layers[count:])
        self.top = encoder
        # Not registered: invisible to named_parameters, PEFT's targeting and state_dict.
        object.__setattr__(self, "bottom", bottom)
        self.cache: dict[bytes, torch.Tensor] = {}
        self.store: FeatureStore | None = None  # model.feature_cache: disk
        self.batch_keys: list[bytes] | None = None  # set by the model's pre-hook
        self.batch_lengths: list[int] = []

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, **kwargs):
        keys, lengths = self.batch_keys, self.batch_lengths
        if keys is None or len(keys) != hidden_states.shape[0]:
            raise RuntimeError("the cached encoder was called without its model's token ids")
        self.batch_keys = None
        missing = [i for i, key in enumerate(keys) if key not in self.cache]
        if missing and self.store is not None:
            stored = self.store.load(list({keys[i] for i in missing}))
            self.cache.update({k: v.to(hidden_states.device) for k, v in stored.items()})
            missing = [i for i in missing if keys[i] not in self.cache]
        if missing:
            computed = self.fill(hidden_states, attention_mask, missing, keys, lengths, kwargs)
            if self.store is not None:
                self.store.save(computed)
        features = hidden_states.new_zeros(hidden_states.shape)
        for i, (key, length) in enumerate(zip(keys, lengths)):
            features[i, :length] = self.cache[key]
        return self.top(features, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def fill(self, hidden_states, attention_mask, rows, keys, lengths,
             kwargs) -> dict[bytes, torch.Tensor]:
        """Run the bottom layers on the batch's uncached rows, keep their outputs and
        return them."""
        index = torch.tensor(rows, device=hidden_states.device)
        mask = attention_mask.index_select(0, index) if torch.is_tensor(attention_mask) else attention_mask
        extra = {k: v.index_select(0, index) if torch.is_tensor(v) and v.dim() > 0
                 and v.shape[0] == hidden_states.shape[0] else v for k, v in kwargs.items()}
        out = self.bottom(hidden_states.index_select(0, index), attention_mask=mask, **extra)
        computed = {keys[i]: out.last_hidden_state[j, :lengths[i]].detach().clone()
                    for j, i in enumerate(rows)}
        self.cache.update(computed)
        return computed


def example_keys(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 token_type_ids: torch.Tensor | None) -> tuple[list[bytes], list[int]]:
    """Per row: the bytes of its real tokens (ids and types) and their count. Real tokens
    must come first (right padding), else the cache cannot tell what a row holds."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    lengths = attention_mask.sum(dim=1)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    if bool(((positions < lengths[:, None]) != attention_mask.bool()).any()):
        raise ValueError("model.cached_layers needs right padding: a row's real tokens first")
    types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
    ids, types = input_ids.cpu(), types.cpu()
    keys = [ids[i, :n].numpy().tobytes() + b"|" + types[i, :n].numpy().tobytes()
            for i, n in enumerate(lengths.tolist())]
    return keys, lengths.tolist()


def cache_bottom_layers(model: nn.Module, count: int, on_disk: bool = False) -> CachedBottomEncoder:
    """Replace the encoder of a BERT-style classifier by a CachedBottomEncoder over its
    bottom `count` layers; a pre-hook hands it each forward's token ids. `on_disk`: the
    features also go to (and come from) the shared FeatureStore of those layers."""
    backbone = next((m for m in model.modules() if hasattr(m, "encoder") and hasattr(m, "embeddings")),
                    None)
    if backbone is None or not hasattr(backbone.encoder, "layer"):
        raise ValueError("model.cached_layers: the model has no BERT-style encoder")
    cached = CachedBottomEncoder(backbone.encoder, count)
    backbone.encoder = cached
    if on_disk:
        cached.store = FeatureStore.for_bottom(cached.bottom, count, model.config.hidden_size)

    def hand_token_ids(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise ValueError("model.cached_layers needs token ids (not inputs_embeds)")
        cached.batch_keys, cached.batch_lengths = example_keys(
            input_ids, kwargs.get("attention_mask"), kwargs.get("token_type_ids"))

    backbone.register_forward_pre_hook(hand_token_ids, with_kwargs=True)
    return cached
