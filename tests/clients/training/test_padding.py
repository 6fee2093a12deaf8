"""Batches trimmed to their longest example give what the padded batch gives.

`trim_padding` drops the token columns every example pads, and `by_length` orders the
server's test split so that its evaluation batches trim well. The oracle is the padded
batch itself, through the same model: logits, loss gradients and evaluation must agree.
"""

from __future__ import annotations

import pytest
import torch

from clients.data.tasks import by_length, tokenize
from clients.models.factory import build_model, build_tokenizer
from clients.training.loop import evaluate, forward_logits, forward_loss, trim_padding
from scenarios.loader import load_scenario

CPU = torch.device("cpu")
TEXTS = ["rain", "the market rallied on strong earnings", "a goal", "late penalties decided a "
         "long and tense final between the two best teams of the season", "ok", "stocks fell"]


def batch_of(scenario, texts: list[str]) -> list[torch.Tensor]:
    rows = [{"text": t, "text_pair": None, "label": i % 3} for i, t in enumerate(texts)]
    return list(tokenize(rows, build_tokenizer(scenario.model), scenario.model.max_length).tensors)


@pytest.fixture(params=["cls", "mean"])
def scenario(request, quick_document, write_scenario):
    """The quick scenario's tiny BERT with max_length 32, pooling by CLS or by the mean."""
    quick_document["model"] = {"name": "tiny-bert", "max_length": 32, "pooling": request.param}
    return load_scenario(write_scenario(quick_document))


def test_trim_drops_exactly_the_columns_every_example_pads(scenario) -> None:
    padded = batch_of(scenario, TEXTS)
    longest = int(padded[1].sum(dim=1).max())
    trimmed = trim_padding(padded)
    assert longest < padded[0].shape[1]  # the fixture has padding to drop
    assert [tuple(t.shape) for t in trimmed[:3]] == [(len(TEXTS), longest)] * 3
    for full, cut in zip(padded[:3], trimmed[:3], strict=True):
        assert torch.equal(full[:, :longest], cut) and not full[:, longest:][padded[1][:, longest:] == 1].numel()
    assert torch.equal(trimmed[3], padded[3])  # labels untouched
    short = batch_of(scenario, ["rain", "ok"])
    no_padding = [t[:, : int(short[1].sum(dim=1).max())] if t.dim() == 2 else t for t in short]
    assert all(a is b for a, b in zip(trim_padding(no_padding), no_padding, strict=True))
    empty = [t[:0] for t in padded]  # an empty Poisson batch passes through
    assert all(a is b for a, b in zip(trim_padding(empty), empty, strict=True))


def test_trimmed_batches_give_the_padded_logits_and_gradients(scenario) -> None:
    model = build_model(scenario.model, 3, 0, "full")
    model.eval()  # no dropout: the two passes must see the same network
    padded = batch_of(scenario, TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(forward_logits(model, trim_padding(padded)),
                                   forward_logits(model, padded), rtol=1e-5, atol=1e-6)
    grads = []
    for batch in (padded, trim_padding(padded)):
        model.zero_grad()
        forward_loss(model, batch)[0].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    # Position embeddings past the longest example get no gradient either way.
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_ordering_by_length_changes_no_evaluation(scenario) -> None:
    model = build_model(scenario.model, 3, 0, "lora")
    data = torch.utils.data.TensorDataset(*batch_of(scenario, TEXTS * 5))
    ordered = by_length(data)
    lengths = ordered.tensors[1].sum(dim=1)
    assert torch.all(lengths[1:] >= lengths[:-1])
    assert sorted(ordered.tensors[3].tolist()) == sorted(data.tensors[3].tolist())
    plain, sorted_ = evaluate(model, data, CPU, batch_size=4), evaluate(model, ordered, CPU, batch_size=4)
    assert plain.accuracy == sorted_.accuracy and plain.num_examples == sorted_.num_examples
    assert plain.loss == pytest.approx(sorted_.loss, rel=1e-5)
