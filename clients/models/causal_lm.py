"""Classification with a causal language model: the loss on the label's tokens, and rank
classification.

A task's example is a prompt (clients.data.prompts: instruction, options, text, 'Answer:')
and its label text as the continuation. Training minimises, per example, the mean
negative log-likelihood of the label's tokens given what precedes them,

    loss_i = -(1 / |y_i|) sum_{t in y_i} log p(x_t | x_<t),    loss = mean_i loss_i,

one mean per example (never a mean over the tokens of the whole batch, which would
couple examples and break the DP-SGD analysis: PRIVACY_AND_MODELS.md). Evaluation ranks
the task's label options c by their log-likelihood given the prompt,

    score_c = sum_{t} log p(o_{c,t} | prompt, o_{c,<t}),    prediction = argmax_c score_c,

exactly and deterministically (no sampling), as lm-evaluation-harness's `acc`. The
prompt runs once; each option continues from its KV cache, which is cropped back
after it, so scoring C options costs one prompt pass plus C short ones.

Batches (clients.data.prompts): training (ids, mask, target mask, labels), right padded;
scoring (ids, mask, unused, labels, option ids (B, C, L), option mask), left padded, so
that every prompt ends in the last column. Position ids count each row's own tokens.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn


def language_model(model: nn.Module) -> nn.Module:
    """The *ForCausalLM, under a PEFT wrapper if there is one."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_causal_lm(model: nn.Module) -> bool:
    """A decoder LM of a family whose logits are lm_head(model(...))
    (clients.models.decoders.SUPPORTED_DECODERS); clients.checks refuses the others."""
    from clients.models.decoders import SUPPORTED_DECODERS

    lm = language_model(model)
    config = getattr(lm, "config", None)
    return hasattr(lm, "lm_head") and getattr(config, "model_type", None) in SUPPORTED_DECODERS


def positions(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) position ids: each row counts its own tokens from 0 (left padding sits at 0)."""
    return (mask.long().cumsum(1) - 1).clamp(min=0)


@functools.lru_cache(maxsize=8)
def cache_argument(decoder_class: type) -> str:
    """The name under which `decoder_class.forward` takes a KV cache: transformers
    renamed `past_key_values` to `cache` after 5.17, and a name the decoder does not
    know would vanish into its **kwargs, silently scoring every option without its
    prompt."""
    parameters = inspect.signature(decoder_class.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    raise TypeError(f"{decoder_class.__name__}.forward takes no KV cache (neither `cache` "
                    "nor `past_key_values`)")


def with_cache(decoder: nn.Module, cache) -> dict:
    """The keyword arguments that hand `cache` to `decoder` and ask it to fill it."""
    return {cache_argument(type(decoder)): cache, "use_cache": True}


def hidden_states(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                  cache=None) -> torch.Tensor:
    """The decoder's last hidden states (B, T, H), without the output projection;
    `cache` (a DynamicCache) is filled with the prompt's keys and values."""
    decoder = language_model(model).model
    kwargs = with_cache(decoder, cache) if cache is not None else {}
    return decoder(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                   **kwargs).last_hidden_state


def target_loss(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    """mean_i of example i's mean NLL over its target tokens (the module docstring)."""
    return target_losses(model, batch).mean()


def target_losses(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    """(B,) loss_i, example i's mean NLL over its target tokens (the module docstring):
    what ghost clipping reweights one example at a time."""
    ids, mask, target = batch[0], batch[1], batch[2].bool()
    states = hidden_states(model, ids, mask)                        # (B, T, H)
    width = int(target.sum(1).max())
    # Each row's target positions first, in order (a stable sort of "not a target").
    where = torch.argsort((~target).to(torch.int8), dim=1, stable=True)[:, :width]  # (B, W)
    real = target.gather(1, where)                                  # (B, W): a target token
    # Token t is predicted from the state at t - 1 (a prompt precedes every target).
    before = (where - 1).clamp(min=0).unsqueeze(-1).expand(-1, -1, states.shape[-1])
    logits = language_model(model).lm_head(states.gather(1, before))  # (B, W, V)
    nll = nn.functional.cross_entropy(logits.transpose(1, 2), ids.gather(1, where),
                                      reduction="none")            # (B, W)
    return (nll * real).sum(1) / real.sum(1).clamp(min=1)            # (B,)


def option_scores(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    """(B, C) log-likelihood of each label option given each prompt."""
    from transformers import DynamicCache

    ids, mask, options, option_mask = batch[0], batch[1], batch[4], batch[5]
    lm = language_model(model)
    cache = DynamicCache(config=lm.config)
    prompt = hidden_states(model, ids, mask, cache=cache)                   # (B, T, H)
    if cache.get_seq_length() != ids.shape[1]:
        raise RuntimeError(f"the decoder filled {cache.get_seq_length()} of the prompt's "
                           f"{ids.shape[1]} positions into the KV cache")
    first = torch.log_softmax(lm.lm_head(prompt[:, -1]), dim=-1)           # (B, V)
    length, end = ids.shape[1], positions(mask)[:, -1:]                    # (B, 1)
    scores, width = [], options.shape[2]  # options padded to the task's longest one
    for c in range(options.shape[1]):
        # Every option at the full width, its padding masked out of the sum: no
        # data-dependent shapes, no host sync to find an option's length.
        tokens, real = options[:, c], option_mask[:, c]                    # (B, L)
        score = first.gather(1, tokens[:, :1]).squeeze(1)
        if width > 1:  # the option's later tokens, continuing from the prompt's cache
            steps = torch.arange(1, width, device=ids.device)
            states = _continue(lm, tokens[:, :-1], torch.cat([mask, real[:, :-1]], 1),
                               end + steps, cache)                         # (B, L-1, H)
            logp = torch.log_softmax(lm.lm_head(states), dim=-1)           # (B, L-1, V)
            score = score + (logp.gather(2, tokens[:, 1:, None]).squeeze(2) * real[:, 1:]).sum(1)
            cache.crop(length - cache.get_seq_length())  # back to the prompt (negative: drop)
        scores.append(score)
    return torch.stack(scores, dim=1)


def _continue(lm: nn.Module, tokens: torch.Tensor, mask: torch.Tensor,
              position_ids: torch.Tensor, cache) -> torch.Tensor:
    """Hidden states of `tokens` after what `cache` holds (mask: the cached tokens' and
    these), at explicit positions."""
    return lm.model(input_ids=tokens, attention_mask=mask, position_ids=position_ids,
                    **with_cache(lm.model, cache)).last_hidden_state
