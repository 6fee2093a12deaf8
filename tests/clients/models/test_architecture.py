"""Module names from a config alone: the named models' written-out names are exactly
those of transformers' own models (built on the meta device), and any other folder is
built by transformers, again whenever its config.json changes."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
)

from clients.models.architecture import (
    TINY_BERT,
    minilm_path,
    module_names,
    named_module_names,
    pretrained_path,
)
from clients.models.decoders import decoder_config
from scenarios.schema import ModelSpec


def transformers_names(factory, config) -> set[str]:
    with torch.device("meta"):
        return {name for name, _ in factory.from_config(config).named_modules()}


@pytest.mark.parametrize("name, factory, config", [
    ("tiny-bert", AutoModelForSequenceClassification, lambda: BertConfig(**TINY_BERT)),
    ("minilm", AutoModelForSequenceClassification, lambda: AutoConfig.from_pretrained(minilm_path())),
    ("tiny-llama", AutoModelForCausalLM, lambda: decoder_config("tiny-llama")),
])
def test_named_models_names_are_transformers_own(name, factory, config) -> None:
    """If transformers renames a module, this fails: the written-out names follow it."""
    written = named_module_names(name, pretrained_path(name))
    assert written is not None and written == transformers_names(factory, config())
    assert module_names(ModelSpec(name=name)) == written


def test_a_folder_is_built_by_transformers_again_when_its_config_changes(tmp_path) -> None:
    folder = tmp_path / "bert-like"
    BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
               intermediate_size=64).save_pretrained(folder)
    spec = ModelSpec(name=str(folder), kind="encoder")
    one = module_names(spec)
    assert "bert.encoder.layer.0.attention.self.query" in one
    assert not any(n.startswith("bert.encoder.layer.1") for n in one)
    before = (folder / "config.json").stat().st_mtime_ns
    BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
               intermediate_size=64).save_pretrained(folder)
    # Same size: told apart by mtime, which a clock tick may not have moved yet.
    os.utime(folder / "config.json", ns=(before + 10**9, before + 10**9))
    assert "bert.encoder.layer.1.attention.self.query" in module_names(spec)
