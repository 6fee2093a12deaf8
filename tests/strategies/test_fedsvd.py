"""FedSVD's re-factorization against a dense float64 SVD of B A, and the strategy
with hand-built replies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strategies import keys
from strategies import fedsvd
from strategies.fedsvd import FedSVD, refactorize, refactorize_state
from strategies.ffa_lora import FfaLora
from tests.strategies.replies import as_server, train_reply

SHAPES = [  # (d_out, r, d_in): square, non-square both ways, r above a dimension
    (64, 8, 64), (96, 8, 40), (40, 8, 96), (24, 16, 6), (5, 16, 30), (128, 1, 32),
]


def random_factors(d_out: int, r: int, d_in: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(d_out, r, generator=g, dtype=torch.float64),
            torch.randn(r, d_in, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("d_out, r, d_in", SHAPES)
def test_product_and_spectrum_match_the_dense_svd(d_out: int, r: int, d_in: int) -> None:
    b, a = random_factors(d_out, r, d_in)
    b_new, a_new = refactorize(b, a)
    assert b_new.shape == b.shape and a_new.shape == a.shape
    dense = b @ a                                                  # the oracle: d_out x d_in
    torch.testing.assert_close(b_new @ a_new, dense, rtol=0, atol=1e-10 * dense.abs().max())
    k = min(d_out, r, d_in)
    s_dense = torch.linalg.svdvals(dense)[:k]
    torch.testing.assert_close(b_new.norm(dim=0)[:k], s_dense, rtol=1e-10, atol=1e-12)
    # Rows of A are orthonormal (the first k; any others are zero padding).
    torch.testing.assert_close(a_new[:k] @ a_new[:k].T, torch.eye(k, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert torch.count_nonzero(a_new[k:]) == 0 and torch.count_nonzero(b_new[:, k:]) == 0
    # A spans the row space of B A: projecting the dense rows onto A's rows loses nothing.
    torch.testing.assert_close(dense @ a_new[:k].T @ a_new[:k], dense, rtol=0,
                               atol=1e-10 * dense.abs().max())


def test_zero_b_first_round_gives_orthonormal_a_and_zero_b() -> None:
    _, a = random_factors(32, 8, 48)
    b_new, a_new = refactorize(torch.zeros(32, 8, dtype=torch.float64), a)
    assert torch.isfinite(a_new).all() and torch.count_nonzero(b_new) == 0
    torch.testing.assert_close(a_new @ a_new.T, torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-12)


def test_rank_deficient_b() -> None:
    b, a = random_factors(50, 8, 40)
    b[:, 3:] = b[:, :1] * 2.0  # rank 3 at most... columns 3.. repeat column 0
    b_new, a_new = refactorize(b, a)
    torch.testing.assert_close(b_new @ a_new, b @ a, rtol=0, atol=1e-10 * (b @ a).abs().max())
    s = b_new.norm(dim=0)
    assert (s[4:] < 1e-10 * s[0]).all()  # the rank shows in the spectrum
    torch.testing.assert_close(a_new @ a_new.T, torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-10)


def test_well_conditioned_pairs_take_the_cholesky_form(monkeypatch) -> None:
    """The product and A's orthonormality of the Cholesky form against the dense oracle,
    with the Householder fallback made to fail: it must not be needed here."""
    def no_fallback(b, a):
        raise AssertionError("fell back to Householder on a well-conditioned pair")

    monkeypatch.setattr(fedsvd, "refactorize_householder", no_fallback)
    b, a = random_factors(300, 8, 200)
    b_new, a_new = fedsvd.refactorize(b, a)
    dense = b @ a
    torch.testing.assert_close(b_new @ a_new, dense, rtol=0, atol=1e-12 * dense.abs().max())
    torch.testing.assert_close(a_new @ a_new.T, torch.eye(8, dtype=torch.float64), rtol=0,
                               atol=1e-12)


def test_an_ill_conditioned_b_falls_back_and_stays_exact(monkeypatch) -> None:
    """Two columns of B parallel to 1e-8: full rank, and Cholesky of B^T B (cond ~1e16)
    succeeds, but its certificates fail and the Householder form answers."""
    calls = []

    def counted(b, a):
        calls.append(b.shape)
        return householder(b, a)

    householder = fedsvd.refactorize_householder
    monkeypatch.setattr(fedsvd, "refactorize_householder", counted)
    b, a = random_factors(120, 6, 90)
    b[:, 1] = b[:, 0] + 1e-8 * b[:, 1]
    b_new, a_new = fedsvd.refactorize(b, a)
    assert calls == [b.shape]
    dense = b @ a
    torch.testing.assert_close(b_new @ a_new, dense, rtol=0, atol=1e-10 * dense.abs().max())
    torch.testing.assert_close(a_new @ a_new.T, torch.eye(6, dtype=torch.float64), rtol=0,
                               atol=1e-10)


def test_float32_in_float32_out_with_small_error() -> None:
    b, a = random_factors(256, 16, 512)
    b_new, a_new = refactorize(b.float(), a.float())
    assert b_new.dtype == a_new.dtype == torch.float32
    rel = ((b_new.double() @ a_new.double() - b @ a).norm() / (b @ a).norm()).item()
    assert rel < 1e-6


def test_a_batch_of_pairs_matches_each_pair_against_the_dense_product() -> None:
    """Stacked pairs (what refactorize_state passes for layers of one shape) give each
    pair's product exactly, with orthonormal rows of A, as one pair at a time does."""
    pairs = [random_factors(48, 8, 40, seed=i) for i in range(5)]
    b_new, a_new = refactorize(torch.stack([b for b, _ in pairs]), torch.stack([a for _, a in pairs]))
    assert b_new.shape == (5, 48, 8) and a_new.shape == (5, 8, 40)
    for i, (b, a) in enumerate(pairs):
        dense = b @ a
        torch.testing.assert_close(b_new[i] @ a_new[i], dense, rtol=0, atol=1e-10 * dense.abs().max())
        torch.testing.assert_close(a_new[i] @ a_new[i].T, torch.eye(8, dtype=torch.float64),
                                   rtol=0, atol=1e-12)
        one_b, _ = refactorize(b, a)  # the same spectrum as the pair alone
        torch.testing.assert_close(b_new[i].norm(dim=0), one_b.norm(dim=0), rtol=1e-10, atol=1e-12)


def test_state_with_several_shapes_is_refactorized_per_pair() -> None:
    """Pairs are grouped by shape; each lands back under its own names."""
    state = {}
    for i, (d_out, r, d_in) in enumerate([(64, 8, 64), (96, 8, 40), (64, 8, 64), (40, 8, 96)]):
        b, a = random_factors(d_out, r, d_in, seed=i)
        state[f"l{i}.lora_A.default.weight"], state[f"l{i}.lora_B.default.weight"] = a, b
    state["head.weight"] = torch.ones(3, 4, dtype=torch.float64)
    new = refactorize_state(state)
    assert list(new) == list(state) and torch.equal(new["head.weight"], state["head.weight"])
    for i in range(4):
        b, a = state[f"l{i}.lora_B.default.weight"], state[f"l{i}.lora_A.default.weight"]
        nb, na = new[f"l{i}.lora_B.default.weight"], new[f"l{i}.lora_A.default.weight"]
        assert nb.shape == b.shape and na.shape == a.shape
        torch.testing.assert_close(nb @ na, b @ a, rtol=0, atol=1e-10 * (b @ a).abs().max())


@pytest.mark.parametrize("form", [refactorize, fedsvd.refactorize_householder])
def test_the_refactorization_stays_on_the_factors_device(form) -> None:
    """Every tensor either form makes (the identity it checks against, the zero-padded
    factors) is on the factors' device: on `meta` no op meets a host tensor, so on a GPU
    server none meets one either."""
    from tests.device_audit import DeviceAudit

    b, a = torch.randn(3, 48, 8, device="meta"), torch.randn(3, 8, 40, device="meta")
    audit = DeviceAudit()
    with audit:
        b_new, a_new = form(b, a)
    assert audit.mixed == [], audit.mixed[:5]
    assert audit.ops_on_meta > 20 and b_new.device.type == a_new.device.type == "meta"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("form", [refactorize, fedsvd.refactorize_householder])
def test_the_refactorization_on_a_gpu_matches_the_dense_product(form) -> None:
    pairs = [random_factors(256, 8, 192, seed=i) for i in range(4)]
    b = torch.stack([b for b, _ in pairs]).cuda()
    a = torch.stack([a for _, a in pairs]).cuda()
    b_new, a_new = form(b, a)
    assert b_new.is_cuda and a_new.is_cuda
    dense = b @ a
    torch.testing.assert_close(b_new @ a_new, dense, rtol=0, atol=1e-10 * dense.abs().max())


def test_mismatched_inner_dimensions_are_refused() -> None:
    with pytest.raises(ValueError, match="inner dims differ"):
        refactorize(torch.zeros(4, 3), torch.zeros(2, 5))


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama"])
def test_refactorization_leaves_the_model_outputs_unchanged(name: str) -> None:
    """Load re-factorized adapters into a real PEFT model (a BERT-style classifier, a
    LLaMA-style causal LM with adapters on q_proj and v_proj): the logits do not move."""
    from clients.models.factory import build_model, load_trainable
    from scenarios.schema import ModelSpec

    model = build_model(ModelSpec(name=name), 3, seed=0, trains="lora-b").eval()
    g = torch.Generator().manual_seed(1)
    state = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    for n in state:
        if ".lora_B." in n:
            state[n] = torch.randn(state[n].shape, generator=g) * 0.1
    load_trainable(model, state)
    inputs = torch.randint(1000, 2000, (4, 12), generator=g)
    before = model(input_ids=inputs).logits
    new = refactorize_state(state)
    for name_b in (n for n in state if ".lora_B." in n):  # every adapter's product, exactly
        name_a = name_b.replace(".lora_B.", ".lora_A.")
        product = state[name_b].double() @ state[name_a].double()
        error = (new[name_b].double() @ new[name_a].double() - product).norm() / product.norm()
        assert error < 1e-6, (name_b, float(error))
    load_trainable(model, new)
    after = model(input_ids=inputs).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    # Not vacuous: the adapters do move the outputs (B = 0 gives other logits).
    load_trainable(model, {n: torch.zeros_like(t) if ".lora_B." in n else t for n, t in state.items()})
    assert (model(input_ids=inputs).logits - before).abs().max() > 1e-3


def _global(a: np.ndarray, b: np.ndarray):
    from flwr.app import Array, ArrayRecord
    return ArrayRecord(array_dict={"m.lora_A.default.weight": Array(a),
                                   "m.lora_B.default.weight": Array(b)})


def _replies(bs: list[np.ndarray], ns: list[int]):
    return [train_reply(k + 1, k, {"m.lora_B.default.weight": b}, n, **{keys.TRAIN_LOSS: 0.0})
            for k, (b, n) in enumerate(zip(bs, ns))]


def test_ffa_lora_averages_b_and_keeps_a() -> None:
    as_server()
    rng = np.random.default_rng(0)
    a, bs, ns = rng.normal(size=(4, 10)), [rng.normal(size=(6, 4)) for _ in range(2)], [1, 3]
    strategy = FfaLora()
    strategy.global_arrays = _global(a, np.zeros((6, 4)))  # as configure_train sets it
    arrays, _ = strategy.aggregate_train(1, _replies(bs, ns))
    np.testing.assert_array_equal(arrays["m.lora_A.default.weight"].numpy(), a)
    np.testing.assert_allclose(arrays["m.lora_B.default.weight"].numpy(), (bs[0] + 3 * bs[1]) / 4)
    assert list(arrays) == ["m.lora_A.default.weight", "m.lora_B.default.weight"]


@pytest.mark.parametrize("server_round, refactorized", [(1, False), (2, True)])
def test_fedsvd_refactorizes_the_weighted_mean_every_svd_period(server_round, refactorized) -> None:
    as_server()
    rng = np.random.default_rng(1)
    a, bs, ns = rng.normal(size=(4, 10)), [rng.normal(size=(6, 4)) for _ in range(3)], [2, 2, 4]
    strategy = FedSVD(svd_period=2)
    strategy.global_arrays = _global(a, np.zeros((6, 4)))
    arrays, _ = strategy.aggregate_train(server_round, _replies(bs, ns))
    a_new = arrays["m.lora_A.default.weight"].numpy()
    b_new = arrays["m.lora_B.default.weight"].numpy()
    b_bar = (2 * bs[0] + 2 * bs[1] + 4 * bs[2]) / 8                # oracle: weighted mean
    np.testing.assert_allclose(b_new @ a_new, b_bar @ a, rtol=1e-10, atol=1e-12)
    orthonormal = np.allclose(a_new @ a_new.T, np.eye(4), atol=1e-10)
    assert orthonormal == refactorized
    assert np.array_equal(a_new, a) != refactorized


def test_fedsvd_osft_keeps_both_factors_off_the_preserved_subspaces() -> None:
    """Hand-built replies as orthogonal FedSVD's clients send them (each B with no
    component along U_h) over a global A in the complement of V_h: the mean and the
    re-factorization keep B_new orthogonal to U_h and A_new to V_h, product exact."""
    from clients.training.orthogonal_lora import complement_rows
    from strategies.fedsvd_osft import FedSvdOsft

    as_server()
    rng = np.random.default_rng(2)
    d_out, r, d_in, k = 12, 3, 10, 4
    u_high = np.linalg.qr(rng.normal(size=(d_out, k)))[0]           # oracle bases
    v_high = np.linalg.qr(rng.normal(size=(d_in, k)))[0].T
    a = complement_rows(torch.from_numpy(v_high), r, d_in, torch.Generator().manual_seed(0))
    a = a.numpy()
    bs = [(np.eye(d_out) - u_high @ u_high.T) @ rng.normal(size=(d_out, r)) for _ in range(3)]
    strategy = FedSvdOsft(rank_rule="schedule")
    strategy.global_arrays = _global(a, np.zeros((d_out, r)))
    arrays, _ = strategy.aggregate_train(1, _replies(bs, [1, 2, 5]))
    a_new = arrays["m.lora_A.default.weight"].numpy()
    b_new = arrays["m.lora_B.default.weight"].numpy()
    np.testing.assert_allclose(b_new @ a_new, (bs[0] + 2 * bs[1] + 5 * bs[2]) / 8 @ a,
                               rtol=1e-10, atol=1e-12)
    assert np.abs(u_high.T @ b_new).max() < 1e-10 and np.abs(a_new @ v_high.T).max() < 1e-10
    np.testing.assert_allclose(a_new @ a_new.T, np.eye(r), atol=1e-10)
