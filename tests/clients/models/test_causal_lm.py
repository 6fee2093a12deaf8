"""Causal-LM classification on the tiny LLaMA: prompts, the target-token loss and rank
classification against independent oracles (Hugging Face's own full-sequence logits,
one example at a time), and DP-SGD's per-example clipping against one-sample-at-a-time
backward passes."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from clients.models.causal_lm import language_model, option_scores, target_loss
from clients.training.dp_training import dp_train_steps
from clients.models.factory import build_model, build_tokenizer, model_kind, trainable_state
from clients.data.prompts import PromptFormat, scoring_set, training_set
from clients.training.loop import evaluate, make_optimizer, train_loss
from scenarios.schema import ModelSpec, OptimizerSpec, PrivacySpec

CPU = torch.device("cpu")
SPEC = ModelSpec(name="tiny-llama", max_length=48)
FORMAT = PromptFormat("What is the topic of the text?",
                      ("World", "Sports", "Business", "Science or Technology"))
ROWS = [{"text": "the market rallied on strong earnings", "text_pair": None, "label": 2},
        {"text": "a late goal won the match", "text_pair": None, "label": 1},
        {"text": "word " * 80, "text_pair": None, "label": 3},  # truncated
        {"text": "rain", "text_pair": "floods in the north", "label": 0}]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(SPEC)


def model(trains: str = "lora") -> torch.nn.Module:
    """The tiny LLaMA with LoRA B made non-zero (so the adapters matter), dropout off."""
    net = build_model(SPEC, 4, 0, trains)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    for module in net.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return net


def full_sequence_logprobs(net, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token t | tokens < t) for t >= 1, from HF's own forward of one unpadded row."""
    logits = language_model(net)(input_ids=tokens[None]).logits[0]  # (T, V)
    return torch.log_softmax(logits[:-1], -1).gather(1, tokens[1:, None]).squeeze(1)


def test_a_causal_name_is_a_causal_lm_with_its_tied_embedding_frozen() -> None:
    assert model_kind(SPEC) == "causal-lm" and model_kind(ModelSpec(name="tiny-bert")) == "encoder"
    full = build_model(SPEC, 4, 0, "full")
    lm = language_model(full)
    assert lm.lm_head.weight is lm.model.embed_tokens.weight  # tied, as SmolLM2's
    frozen = [n for n, p in full.named_parameters() if not p.requires_grad]
    assert frozen == ["model.embed_tokens.weight"]
    lora = trainable_state(build_model(SPEC, 4, 0, "lora-b"))
    assert lora and all(".lora_B." in n and ("q_proj" in n or "v_proj" in n) for n in lora)


def test_the_training_prompt_targets_exactly_the_answer_and_keeps_it_when_truncating(tokenizer) -> None:
    data = training_set(ROWS, tokenizer, FORMAT, SPEC.max_length)
    ids, mask, target, labels = data.tensors
    assert labels.tolist() == [2, 1, 3, 0]
    for i, row in enumerate(ROWS):
        answer = tokenizer.decode(ids[i][target[i].bool()])
        assert answer == " " + FORMAT.label_names[row["label"]]
        text = tokenizer.decode(ids[i][mask[i].bool()])
        assert text.startswith(FORMAT.instruction + "\nOptions: World, Sports,")
        assert text.endswith("\nAnswer: " + FORMAT.label_names[row["label"]])
    assert int(mask[2].sum()) <= SPEC.max_length and "word word" in tokenizer.decode(ids[2])
    assert "Second text: floods" in tokenizer.decode(ids[3])
    with pytest.raises(ValueError, match=r"model.max_length: 20 tokens leave no room"):
        training_set(ROWS, tokenizer, FORMAT, 20)


def test_the_loss_is_each_examples_mean_over_its_answer_tokens(tokenizer) -> None:
    """Oracle: HF's full-sequence log-probabilities of each row alone, unpadded."""
    net = model().eval()
    data = training_set(ROWS, tokenizer, FORMAT, SPEC.max_length)
    with torch.no_grad():
        batched = target_loss(net, list(data.tensors))
        means = []
        for ids, mask, target, _ in zip(*data.tensors, strict=True):
            real = mask.bool()
            logp = full_sequence_logprobs(net, ids[real])
            means.append(-logp[target[real][1:].bool()].mean())
    torch.testing.assert_close(batched, torch.stack(means).mean(), rtol=1e-5, atol=1e-6)


def test_one_examples_gradient_does_not_depend_on_its_batch(tokenizer) -> None:
    """What DP-SGD needs (PRIVACY_AND_MODELS.md: HF's token-mean loss couples samples):
    example 0's gradient alone equals B x (its share of the batch's gradient), where the
    other rows differ in length and padding."""
    data = training_set(ROWS, tokenizer, FORMAT, SPEC.max_length)
    grads = []
    for rows in (slice(0, 1), slice(0, 4)):
        net = model("lora-b").train()
        batch = [t[rows] for t in data.tensors]
        if rows.stop > 1:  # weight the other rows out, keep their padding in the batch
            loss = target_loss(net, batch) * len(ROWS) - sum(
                target_loss(net, [t[i:i + 1] for t in batch]) for i in range(1, len(ROWS)))
        else:
            loss = target_loss(net, batch)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters() if p.requires_grad]))
    # float32, and the batch's loss scaled by B: agreement to 1e-4 of the largest entry
    # (coupled examples, as HF's token-mean loss couples them, differ by tens of percent).
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-4 * grads[0].abs().max())


def test_rank_classification_is_the_full_sequence_log_likelihood_of_each_option(tokenizer) -> None:
    """Oracle: prompt + option through HF's forward, row by row, no padding, no cache;
    options of 1 to 3 tokens, prompts of different lengths (left padded)."""
    net = model().eval()
    data = scoring_set(ROWS, tokenizer, FORMAT, SPEC.max_length)
    assert len({int(m.sum()) for m in data.tensors[1]}) > 1  # padding does happen
    with torch.no_grad():
        scores = option_scores(net, list(data.tensors))
        for i in range(len(ROWS)):
            prompt = data.tensors[0][i][data.tensors[1][i].bool()]
            for c in range(len(FORMAT.label_names)):
                option = data.tensors[4][i, c][data.tensors[5][i, c].bool()]
                logp = full_sequence_logprobs(net, torch.cat([prompt, option]))
                torch.testing.assert_close(scores[i, c], logp[-len(option):].sum(),
                                           rtol=1e-5, atol=1e-5)
    assert {len(tokenizer(" " + n, add_special_tokens=False)["input_ids"])
            for n in FORMAT.label_names} >= {1, 3}


def test_evaluation_accuracy_is_the_argmax_of_the_option_scores(tokenizer) -> None:
    net = model().eval()
    data = scoring_set(ROWS * 3, tokenizer, FORMAT, SPEC.max_length)
    with torch.no_grad():
        scores = option_scores(net, list(data.tensors))
    result = evaluate(net, data, CPU, batch_size=5)
    want = (scores.argmax(1) == data.tensors[3]).float().mean().item()
    assert result.accuracy == pytest.approx(want) and result.num_examples == len(ROWS) * 3
    assert result.loss == pytest.approx(
        torch.nn.functional.cross_entropy(scores, data.tensors[3]).item(), rel=1e-5)


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
@pytest.mark.parametrize("trains, clip", [("lora-b", 1e-3), ("full", 5.0)])
def test_per_example_clipping_matches_one_example_at_a_time(tokenizer, trains, clip,
                                                            mode) -> None:
    """sigma = 0, q = 1, small C: Opacus's update is -lr mean_i clip_C(g_i), g_i from the
    example's own backward pass; 'full' covers the decoder's RMSNorm weights (functorch's
    per-sample gradients under ghost) and the frozen tied embedding."""
    data = training_set(ROWS, tokenizer, FORMAT, SPEC.max_length)
    # C below every example's gradient norm (LoRA B about 1, full 10-20 here); full: steps
    # large enough to be resolved in float32 on weights of size 1 (the RMSNorm weights).
    lr = 1.0
    oracle = model(trains).train()
    params = {n: p for n, p in oracle.named_parameters() if p.requires_grad}
    update = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(len(ROWS)):
        oracle.zero_grad()
        train_loss(oracle, [t[i:i + 1] for t in data.tensors]).backward()
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in params.values()))
        assert norm > clip
        for n, p in params.items():
            update[n] -= lr * p.grad * min(1.0, clip / norm.item()) / len(ROWS)
    private = model(trains)
    start = trainable_state(private)
    dp_train_steps(private, TensorDataset(*data.tensors), 1, len(ROWS),
                   make_optimizer(private, OptimizerSpec(name="sgd", lr=lr)),
                   PrivacySpec(target_epsilon=1.0, max_grad_norm=clip, grad_sample_mode=mode),
                   0.0, [], CPU)
    scale = max(u.abs().max().item() for u in update.values())
    assert scale > 1e-6 and any("norm" in n for n in update) == (trains == "full")
    for name, value in trainable_state(private).items():
        torch.testing.assert_close(value - start[name], update[name], rtol=1e-3,
                                   atol=1e-4 * scale, msg=lambda m, n=name: f"{n}: {m}")
