import numpy as np

from lovt_keras.layers import ProjectionHead
from lovt_keras.testing.test_case import run_layer_test, run_serialization_test, to_numpy


def _numpy_head(layer, x, mask=None, training=False):
    w1 = to_numpy(layer.hidden.kernel)
    h = x @ w1
    if layer.hidden.use_bias:
        h = h + to_numpy(layer.hidden.bias)
    if layer.norm is not None:
        gamma, beta = to_numpy(layer.norm.gamma), to_numpy(layer.norm.beta)
        if training:
            sel = h.reshape(-1, h.shape[-1])
            if mask is not None:
                sel = h[mask]
            mean, var = sel.mean(0), sel.var(0)
        else:
            mean, var = to_numpy(layer.norm.moving_mean), to_numpy(layer.norm.moving_variance)
        h = (h - mean) / np.sqrt(var + 1e-5) * gamma + beta
    h = np.maximum(h, 0)
    return h @ to_numpy(layer.output_dense.kernel) + to_numpy(layer.output_dense.bias)


def test_projection_head_global_and_local_shapes_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6)).astype("float32")
    layer, y = run_layer_test(ProjectionHead, {"hidden_dim": 16, "output_dim": 8}, x,
                              expected_output_shape=(4, 8))
    np.testing.assert_allclose(y, _numpy_head(layer, x), atol=1e-4, rtol=1e-4)
    seq = rng.normal(size=(3, 5, 6)).astype("float32")
    local = ProjectionHead(hidden_dim=16, output_dim=8)  # a head is either global or local
    y_seq = to_numpy(local(seq))
    assert y_seq.shape == (3, 5, 8)
    np.testing.assert_allclose(y_seq, _numpy_head(local, seq), atol=1e-4, rtol=1e-4)


def test_masked_batch_norm_uses_only_valid_elements():
    rng = np.random.default_rng(1)
    layer = ProjectionHead(hidden_dim=16, output_dim=8)
    x = rng.normal(size=(2, 4, 6)).astype("float32")
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0]], bool)
    y = to_numpy(layer(x, mask=mask, training=True))
    ref = _numpy_head(layer, x, mask=mask, training=True)
    np.testing.assert_allclose(y[mask], ref[mask], atol=1e-4, rtol=1e-4)
    x2 = x.copy()
    x2[~mask] = 100.0  # padded values must not change the statistics
    y2 = to_numpy(layer(x2, mask=mask, training=True))
    np.testing.assert_allclose(y2[mask], y[mask], atol=1e-4, rtol=1e-4)


def test_projection_head_without_batch_norm_and_init():
    layer = ProjectionHead(hidden_dim=2048, output_dim=512, batch_norm=False)
    x = np.zeros((2, 64), "float32")
    layer(x)
    assert layer.norm is None and layer.hidden.use_bias
    # Kaiming normal with fan_out: std = sqrt(2 / fan_out).
    std = to_numpy(layer.hidden.kernel).std()
    np.testing.assert_allclose(std, np.sqrt(2 / 2048), rtol=0.05)
    np.testing.assert_array_equal(to_numpy(layer.output_dense.bias), 0)
    run_serialization_test(layer)


def test_local_projection_head_with_mask_round_trip_and_fit_step():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 5, 6)).astype("float32")
    mask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
    # The fit step normalizes over the valid elements only; every weight still moves.
    layer, y = run_layer_test(ProjectionHead, {"hidden_dim": 8, "output_dim": 4}, x,
                              call_kwargs={"mask": mask}, expected_output_shape=(3, 5, 4))
    np.testing.assert_allclose(y, _numpy_head(layer, x), atol=1e-4, rtol=1e-4)
