import numpy as np

from lovt_keras.layers import CrossModalAlignment
from lovt_keras.testing.test_case import run_layer_test, run_serialization_test, to_numpy


def _numpy_alignment(layer, zi, zr, mask):
    def dense(d, x):
        return x @ to_numpy(d.kernel) + to_numpy(d.bias)

    B, N, D = zi.shape
    S = zr.shape[1]
    r2i = np.zeros((B, N, D))
    i2r = np.zeros((B, S, D))
    for b in range(B):
        ki, kr = dense(layer.key_projection, zi[b]), dense(layer.key_projection, zr[b])
        vi, vr = dense(layer.value_projection, zi[b]), dense(layer.value_projection, zr[b])
        score = ki @ kr.T / np.sqrt(D)  # (N, S)
        valid = mask[b]
        for i in range(N):
            s = score[i, valid]
            a = np.exp(s - s.max())
            a /= a.sum()
            r2i[b, i] = dense(layer.output_projection, a @ vr[valid])
        for j in range(S):
            if not valid[j]:
                continue
            s = score[:, j]
            p = np.exp(s - s.max())
            p /= p.sum()
            i2r[b, j] = dense(layer.output_projection, p @ vi)
    return r2i, i2r


def test_alignment_matches_numpy_in_inference_mode():
    rng = np.random.default_rng(0)
    zi = rng.normal(size=(2, 4, 8)).astype("float32")
    zr = rng.normal(size=(2, 3, 8)).astype("float32")
    mask = np.array([[1, 1, 0], [1, 1, 1]], bool)
    layer, (r2i, i2r) = run_layer_test(CrossModalAlignment, {"batch_norm": False}, (zi, zr, mask),
                                       expected_output_shape=((2, 4, 8), (2, 3, 8)))
    ref_r2i, ref_i2r = _numpy_alignment(layer, zi, zr, mask)
    np.testing.assert_allclose(r2i, ref_r2i, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(i2r, ref_i2r, atol=1e-4, rtol=1e-4)
    assert np.all(i2r[0, 2] == 0)  # padded sentence rows are zero


def test_alignment_padded_sentences_do_not_leak():
    rng = np.random.default_rng(1)
    zi = rng.normal(size=(1, 4, 8)).astype("float32")
    zr = rng.normal(size=(1, 3, 8)).astype("float32")
    mask = np.array([[1, 0, 1]], bool)
    # In training mode the BatchNorm subtracts the batch mean, which removes the biases
    # before it (the values' bias passes through the attention average unchanged).
    layer, a = run_layer_test(CrossModalAlignment, {}, (zi, zr, mask),
                              allow_unchanged=("value_projection/bias", "output_projection/bias"))
    zr2 = zr.copy()
    zr2[0, 1] = 50.0
    b = to_numpy(layer(zi, zr2, mask))
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    np.testing.assert_allclose(a[1], b[1], atol=1e-5)


def test_alignment_batch_norm_training_statistics_over_valid_sentences():
    rng = np.random.default_rng(2)
    zi = rng.normal(size=(2, 4, 8)).astype("float32")
    zr = rng.normal(size=(2, 3, 8)).astype("float32")
    mask = np.array([[1, 1, 0], [1, 1, 1]], bool)
    layer = CrossModalAlignment()
    r2i, i2r = to_numpy(layer(zi, zr, mask, training=True))
    # With gamma=1, beta=0 the training-mode outputs are standardized per channel.
    np.testing.assert_allclose(r2i.reshape(-1, 8).mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(i2r[mask].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(i2r[mask].std(0), 1, atol=1e-2)
    run_serialization_test(layer)
