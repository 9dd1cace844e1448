"""Attention scores: invariants of methods-spec §12 and goldens against independent numpy loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mimlab.explain import scores


def _logits(b=3, h=4, n=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, n, n, generator=g, dtype=torch.float64) * 3


def test_raw_golden():
    logits = _logits()
    attn = logits.softmax(-1)
    a = attn.numpy()
    # independent: explicit loops over heads and patch columns
    ref = np.zeros((3, 16))
    for b in range(3):
        for j in range(1, 17):
            ref[b, j - 1] = sum(a[b, h, 0, j] for h in range(4)) / 4
    np.testing.assert_allclose(scores.raw(attn).numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(scores.head(attn, 2).numpy(), a[:, 2, 0, 1:], rtol=1e-12)


def test_raw_log_equals_raw_star_after_minmax():
    logits = _logits()
    torch.testing.assert_close(scores.minmax(scores.raw_log(logits)), scores.minmax(scores.raw_star(logits)),
                               atol=1e-6, rtol=0)
    # and raw_log really is the mean log-softmax (finite even where softmax underflows)
    big = logits * 200
    assert torch.isfinite(scores.raw_log(big)).all()


def test_pow_one_is_raw_and_small_p_ranks_like_raw_star():
    logits = _logits()
    attn = logits.softmax(-1)
    torch.testing.assert_close(scores.raw_pow(attn, 1.0), scores.raw(attn))
    from scipy.stats import spearmanr

    small = scores.raw_pow(attn, 1e-4)
    star = scores.raw_star(logits)
    for b in range(3):
        assert spearmanr(small[b].numpy(), star[b].numpy()).statistic > 0.999


def _rollout_numpy(attns, order):
    """Independent rollout: (mean_h A + I) / row-sum, explicit product order, row 0 patch columns."""
    mats = []
    for a in attns:
        m = a.numpy().mean(1)[0] + np.eye(a.shape[-1])
        mats.append(m / m.sum(-1, keepdims=True))
    seq = mats[::-1] if order == "descending" else mats
    out = np.eye(mats[0].shape[0])
    for m in seq:
        out = out @ m
    return out[0, 1:]


@pytest.mark.parametrize("order", ["descending", "ascending"])
def test_rollout_golden(order):
    attns = [_logits(b=1, seed=s).softmax(-1) for s in range(3)]
    np.testing.assert_allclose(scores.rollout(attns, order)[0].numpy(), _rollout_numpy(attns, order), rtol=1e-10)


@pytest.mark.parametrize("order", ["descending", "ascending"])
def test_rollout_golden_when_rows_do_not_sum_to_one(order):
    """Half-precision (or dropped-out) attention rows do not sum to exactly 1; the row normalisation of
    ``mean_h A + I`` must then use the actual sums, as the NumPy chain does."""
    g = torch.Generator().manual_seed(3)
    attns = [torch.rand(1, 3, 7, 7, generator=g, dtype=torch.float64) * 0.5 for _ in range(4)]
    np.testing.assert_allclose(scores.rollout(attns, order)[0].numpy(), _rollout_numpy(attns, order), rtol=1e-10)
    half = scores.rollout([a.to(torch.bfloat16) for a in attns], order)
    assert half.dtype == torch.float32
    np.testing.assert_allclose(half[0].numpy(), _rollout_numpy(attns, order), rtol=2e-2)


def test_rollout_single_layer_is_raw_and_order_matters():
    attns = [_logits(seed=s).softmax(-1) for s in range(3)]
    torch.testing.assert_close(scores.minmax(scores.rollout(attns[1:2])), scores.minmax(scores.raw(attns[1])))
    asc, desc = scores.rollout(attns, "ascending"), scores.rollout(attns, "descending")
    assert (asc - desc).abs().max() > 1e-4
    with pytest.raises(ValueError):
        scores.rollout(attns, "sideways")


def test_keys_norm_golden_variants():
    g = torch.Generator().manual_seed(1)
    keys = torch.randn(2, 3, 10, 5, generator=g, dtype=torch.float64)
    k = keys.numpy()
    # independent: per token loops
    mean_key = np.array([[np.sqrt(sum((k[b, :, n, d].mean()) ** 2 for d in range(5))) for n in range(1, 10)]
                         for b in range(2)])
    concat = np.array([[np.sqrt((k[b, :, n, :] ** 2).sum()) for n in range(1, 10)] for b in range(2)])
    mean_norm = np.array([[np.mean([np.linalg.norm(k[b, h, n]) for h in range(3)]) for n in range(1, 10)]
                          for b in range(2)])
    np.testing.assert_allclose(scores.keys_norm(keys).numpy(), mean_key, rtol=1e-12)
    np.testing.assert_allclose(scores.keys_norm(keys, "concat").numpy(), concat, rtol=1e-12)
    np.testing.assert_allclose(scores.keys_norm(keys, "mean-norm").numpy(), mean_norm, rtol=1e-12)
    # two prefix tokens are dropped
    assert scores.keys_norm(keys, num_prefix=2).shape == (2, 8)


def test_raw_star_x_keys_norm_is_nonnegative_product():
    logits = _logits(b=2, h=3, n=10)
    keys = torch.randn(2, 3, 10, 5, dtype=torch.float64)
    prod = scores.raw_star_x_keys_norm(logits, keys)
    assert (prod >= 0).all() and (prod <= 1).all()
    torch.testing.assert_close(prod, scores.minmax(scores.raw_star(logits)) * scores.minmax(scores.keys_norm(keys)))


def _rollout_matrix_numpy(attns, order, b):
    """Independent full rollout matrix of image ``b``: explicit rownorm(mean_h A + I) factors and product order."""
    mats = []
    for a in attns:
        m = a.numpy()[b].mean(0) + np.eye(a.shape[-1])
        mats.append(m / m.sum(-1, keepdims=True))
    out = np.eye(mats[0].shape[0])
    for m in (mats[::-1] if order == "descending" else mats):
        out = out @ m
    return out


@pytest.mark.parametrize("order", ["descending", "ascending"])
def test_rollout_matrix_golden_and_its_cls_row_is_rollout(order):
    g = torch.Generator().manual_seed(4)
    attns = [torch.rand(2, 3, 6, 6, generator=g, dtype=torch.float64) for _ in range(3)]  # rows do not sum to 1
    mat = scores.rollout_matrix(attns, order)
    assert mat.shape == (2, 6, 6)
    for b in range(2):
        np.testing.assert_allclose(mat[b].numpy(), _rollout_matrix_numpy(attns, order, b), rtol=1e-10)
    torch.testing.assert_close(mat[:, 0, 1:], scores.rollout(attns, order))
    half = scores.rollout_matrix([a.to(torch.bfloat16) for a in attns], order)
    assert half.dtype == torch.float32
    np.testing.assert_allclose(half[1].numpy(), _rollout_matrix_numpy(attns, order, 1), rtol=3e-2)


def test_rollout_default_order_is_descending_and_images_are_normalised_separately():
    g = torch.Generator().manual_seed(5)
    attns = [torch.rand(3, 2, 5, 5, generator=g, dtype=torch.float64) * (1 + s) for s in range(2)]
    got = scores.rollout(attns)
    for b in range(3):  # independent per-image chain (batch of 3: a batch-wide normalisation would show)
        np.testing.assert_allclose(got[b].numpy(), _rollout_matrix_numpy(attns, "descending", b)[0, 1:], rtol=1e-10)
    torch.testing.assert_close(scores.rollout_matrix(attns), scores.rollout_matrix(attns, "descending"))


def test_raw_log_is_the_head_mean_log_softmax():
    logits = _logits()
    # independent: log of the float64 softmax over all columns, head mean, patch columns
    ref = np.log(logits.softmax(-1).numpy()[:, :, 0, :]).mean(1)[:, 1:]
    np.testing.assert_allclose(scores.raw_log(logits).numpy(), ref, rtol=1e-10)


def test_raw_product_mode_and_prefix_are_passed_to_both_factors():
    logits = _logits(b=2, h=3, n=10)
    keys = torch.randn(2, 3, 10, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    k = keys.numpy()
    # independent loops: head-mean cls logit x ‖mean_h k‖, patch tokens after 2 prefix tokens
    star = logits.numpy()[:, :, 0, 2:].mean(1)
    norms = np.array([[np.linalg.norm(k[b, :, n, :].mean(0)) for n in range(2, 10)] for b in range(2)])
    np.testing.assert_allclose(scores.raw_star_x_keys_norm(logits, keys, mode="raw", num_prefix=2).numpy(),
                               star * norms, rtol=1e-12)
    mm = scores.raw_star_x_keys_norm(logits, keys, num_prefix=2)
    assert mm.shape == (2, 8)
    torch.testing.assert_close(mm, scores.minmax(torch.from_numpy(star)) * scores.minmax(torch.from_numpy(norms)))


@pytest.mark.parametrize(("call", "message"), [
    (lambda a, k, lg: scores.rollout(a, "sideways"),
     "rollout order must be one of ('descending', 'ascending'), got 'sideways'"),
    (lambda a, k, lg: scores.rollout_matrix([], "descending"), "rollout needs at least one attention tensor"),
    (lambda a, k, lg: scores.rollout([]), "rollout needs at least one attention tensor"),
    (lambda a, k, lg: scores.keys_norm(k, "max"),
     "keys_norm variant must be one of ('mean-key', 'concat', 'mean-norm'), got 'max'"),
    (lambda a, k, lg: scores.raw_star_x_keys_norm(lg, k, mode="rank"),
     "raw_star_x_keys_norm mode must be one of ('minmax', 'raw'), got 'rank'"),
])
def test_bad_arguments_name_the_value_and_the_choices(call, message):
    logits = _logits(b=1, h=2, n=5)
    keys = torch.randn(1, 2, 5, 4, dtype=torch.float64)
    with pytest.raises(ValueError) as err:
        call([logits.softmax(-1)], keys, logits)
    assert str(err.value) == message
