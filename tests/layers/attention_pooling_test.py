import keras
import numpy as np
import pytest

from lovt_keras.layers import AttentionPooling, masked_max, masked_mean, uniform_weights
from lovt_keras.testing.test_case import run_layer_test, to_numpy


def _numpy_attention_pooling(layer, x, mask):
    """Independent numpy multi-head attention with the mean as the query."""
    att = layer.attention
    wq, bq = (to_numpy(v) for v in (att.query_dense.kernel, att.query_dense.bias))
    wk, bk = (to_numpy(v) for v in (att.key_dense.kernel, att.key_dense.bias))
    wv, bv = (to_numpy(v) for v in (att.value_dense.kernel, att.value_dense.bias))
    wo, bo = (to_numpy(v) for v in (att.output_dense.kernel, att.output_dense.bias))
    B, N, D = x.shape
    pooled, weights = np.zeros((B, D)), np.zeros((B, N))
    for b in range(B):
        valid = mask[b]
        q = x[b][valid].mean(0)
        qh = np.einsum("d,dhk->hk", q, wq) + bq  # (heads, key_dim)
        kh = np.einsum("nd,dhk->nhk", x[b], wk) + bk
        vh = np.einsum("nd,dhk->nhk", x[b], wv) + bv
        logits = np.einsum("hk,nhk->hn", qh, kh) / np.sqrt(qh.shape[-1])
        logits[:, ~valid] = -np.inf
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        heads = np.einsum("hn,nhk->hk", p, vh)
        pooled[b] = np.einsum("hk,hkd->d", heads, wo) + bo
        weights[b] = p.mean(0)
    return pooled, weights


def test_attention_pooling_matches_numpy_and_weights_sum_to_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 8)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 1, 0, 1]], bool)
    # The key bias adds the same q.b to every score, which the softmax ignores: its
    # gradient is zero up to rounding.
    layer, (pooled, weights) = run_layer_test(
        AttentionPooling, {"num_heads": 2}, x, call_kwargs={"mask": mask},
        expected_output_shape=((3, 8), (3, 5)), allow_unchanged=("key/bias",))
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-5)
    assert np.all(weights[~mask] == 0)
    ref_pooled, ref_weights = _numpy_attention_pooling(layer, x, mask)
    np.testing.assert_allclose(pooled, ref_pooled, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(weights, ref_weights, atol=1e-5)


def test_attention_pooling_ignores_masked_values():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 8)).astype("float32")
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0]], bool)
    layer = AttentionPooling(num_heads=4)
    a = to_numpy(layer(x, mask=mask))
    x2 = x.copy()
    x2[~mask] = 1e3  # garbage in padded slots must not matter
    b = to_numpy(layer(x2, mask=mask))
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def test_attention_pooling_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="not divisible"):
        AttentionPooling(num_heads=3)(np.zeros((1, 2, 8), "float32"))


def test_masked_pooling_helpers():
    x = np.arange(2 * 3 * 2, dtype="float32").reshape(2, 3, 2)
    mask = np.array([[1, 0, 1], [0, 0, 0]], bool)
    np.testing.assert_allclose(to_numpy(masked_mean(x, mask)), [[2, 3], [0, 0]])
    np.testing.assert_allclose(to_numpy(masked_max(x, mask)), [[4, 5], [0, 0]])
    np.testing.assert_allclose(to_numpy(uniform_weights(x, mask)), [[0.5, 0, 0.5], [0, 0, 0]])
    np.testing.assert_allclose(to_numpy(uniform_weights(x)), np.full((2, 3), 1 / 3), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(masked_mean(x)), x.mean(1))
    assert keras.ops.convert_to_numpy(masked_max(x)).tolist() == x.max(1).tolist()
