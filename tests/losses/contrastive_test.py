"""Tests of lovt_keras.losses.contrastive against an independent loop-based numpy reference."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from lovt_keras.losses import contrastive
from lovt_keras.losses.contrastive import (
    GLOBAL_TEMPERATURE,
    LOCAL_TEMPERATURE,
    global_contrastive_loss,
    local_image_loss,
    local_report_loss,
    spatial_positive_weights,
)

RTOL = 1e-5
ATOL = 1e-5


# ---------------------------------------------------------------------------------------
# Independent numpy reference: explicit Python loops, float64, no library code.
# ---------------------------------------------------------------------------------------


def _ref_normalize(vector):
    vector = np.asarray(vector, dtype=np.float64)
    return vector / max(math.sqrt(float(vector @ vector)), 1e-12)


def _ref_logsumexp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _ref_spatial_weights(height, width, threshold, smooth_lambda, smooth):
    diagonal = math.hypot(height, width)
    n = height * width
    weights = np.zeros((n, n))
    for i in range(n):
        row_i, col_i = divmod(i, width)
        for k in range(n):
            row_k, col_k = divmod(k, width)
            distance = math.hypot(row_i - row_k, col_i - col_k) / diagonal
            # A tolerance instead of exact arithmetic: none of the grids used here has a
            # distance within 1e-9 of a threshold other than exactly on it.
            if distance <= threshold + 1e-9:
                weights[i, k] = math.exp(-smooth_lambda * distance) if smooth else 1.0
        weights[i] /= weights[i].sum()
    return weights


def _ref_global(image, report, temperature):
    batch = len(image)
    a = [_ref_normalize(v) for v in image]
    b = [_ref_normalize(v) for v in report]
    image_to_report, report_to_image = 0.0, 0.0
    for k in range(batch):
        row = [float(a[k] @ b[m]) / temperature for m in range(batch)]
        image_to_report += _ref_logsumexp(row) - row[k]
        column = [float(a[m] @ b[k]) / temperature for m in range(batch)]
        report_to_image += _ref_logsumexp(column) - column[k]
    return image_to_report / batch, report_to_image / batch


def _ref_local_image(regions, attended, weights, grid, temperature, threshold, lam, smooth):
    targets = _ref_spatial_weights(grid[0], grid[1], threshold, lam, smooth)
    batch, n, _ = regions.shape
    l2att_total, att2l_total = 0.0, 0.0
    for b in range(batch):
        z_image = [_ref_normalize(v) for v in regions[b]]
        z_attended = [_ref_normalize(v) for v in attended[b]]
        w = np.ones(n) if weights is None else np.asarray(weights[b], dtype=np.float64)
        w = w / w.sum()
        for i in range(n):
            row = [float(z_image[i] @ z_attended[k]) / temperature for k in range(n)]
            l2att = -sum(targets[i, k] * row[k] for k in range(n)) + _ref_logsumexp(row)
            row = [float(z_attended[i] @ z_image[k]) / temperature for k in range(n)]
            att2l = -sum(targets[i, k] * row[k] for k in range(n)) + _ref_logsumexp(row)
            l2att_total += w[i] * l2att
            att2l_total += w[i] * att2l
    return l2att_total / batch, att2l_total / batch


def _ref_local_report(sentences, attended, mask, weights, temperature):
    batch, num_slots, _ = sentences.shape
    l2att_total, att2l_total = 0.0, 0.0
    for b in range(batch):
        valid = [j for j in range(num_slots) if mask[b, j]]
        if not valid:
            continue
        w = {j: (1.0 if weights is None else float(weights[b, j])) for j in valid}
        total = sum(w.values())
        z_report = {j: _ref_normalize(sentences[b, j]) for j in valid}
        z_attended = {j: _ref_normalize(attended[b, j]) for j in valid}
        for j in valid:
            positive = float(z_report[j] @ z_attended[j]) / temperature
            row = [float(z_report[j] @ z_attended[k]) / temperature for k in valid]
            column = [float(z_attended[j] @ z_report[k]) / temperature for k in valid]
            l2att_total += w[j] / total * (_ref_logsumexp(row) - positive)
            att2l_total += w[j] / total * (_ref_logsumexp(column) - positive)
    return l2att_total / batch, att2l_total / batch


# ---------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _values(losses):
    return {name: float(_np(value)) for name, value in losses.items()}


def _gradients(fn, *arrays):
    """Gradients of the scalar ``fn(*tensors)`` w.r.t. each input, as numpy arrays.

    Autodiff is backend specific, so this test helper (not library code) dispatches on the
    backend; an unconnected input (stop_gradient) gets a zero gradient.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        grads = jax.grad(fn, argnums=tuple(range(len(arrays))))(*arrays)
        return [np.asarray(g) for g in grads]
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.convert_to_tensor(a) for a in arrays]
        with tf.GradientTape() as tape:
            for t in tensors:
                tape.watch(t)
            out = fn(*tensors)
        grads = tape.gradient(out, tensors)
    elif backend == "torch":
        import torch

        tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
        out = fn(*tensors)
        grads = torch.autograd.grad(out, tensors, allow_unused=True)
        grads = [None if g is None else g.detach().cpu() for g in grads]
    else:
        pytest.skip(f"no gradient helper for backend {backend}")
    return [np.zeros_like(a) if g is None else np.asarray(g) for g, a in zip(grads, arrays)]


def _random(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _report_batch(rng, num_slots=5, dim=8):
    """Batch of 4 reports with 5, 3, 1 and 0 valid sentences (padding at the end)."""
    sentences = _random(rng, 4, num_slots, dim)
    attended = _random(rng, 4, num_slots, dim)
    counts = [5, 3, 1, 0]
    mask = np.array([[j < c for j in range(num_slots)] for c in counts])
    weights = rng.uniform(0.1, 1.0, size=(4, num_slots)).astype(np.float32)
    return sentences, attended, mask, weights


# ---------------------------------------------------------------------------------------
# Spatial positive weights.
# ---------------------------------------------------------------------------------------


def test_spatial_weights_2x2_hand_computed():
    # diagonal^2 = 8, threshold 0.5 -> squared distance <= 2: every cell, including the
    # diagonal neighbour at relative distance exactly sqrt(2) / sqrt(8) = 0.5.
    weights = spatial_positive_weights(2, 2)
    adjacent = math.exp(-1 / math.sqrt(8))
    diagonal = math.exp(-0.5)
    expected_row0 = np.array([1.0, adjacent, adjacent, diagonal]) / (1 + 2 * adjacent + diagonal)
    assert weights.dtype == np.float32
    np.testing.assert_allclose(weights[0], expected_row0, rtol=1e-6)
    # Cell 3 = (1, 1): the mirror image of cell 0.
    np.testing.assert_allclose(weights[3], expected_row0[::-1], rtol=1e-6)
    np.testing.assert_allclose(spatial_positive_weights(2, 2, smooth=False), np.full((4, 4), 0.25))
    # Threshold below 1/sqrt(8): only the cell itself.
    np.testing.assert_array_equal(spatial_positive_weights(2, 2, distance_threshold=0.3), np.eye(4))


def test_spatial_weights_4x4_threshold_is_inclusive_and_exact():
    # diagonal^2 = 32, threshold 0.5 -> squared distance <= 8, so (dy, dx) = (2, 2) is a
    # positive and (0, 3) (squared distance 9) is not.
    weights = spatial_positive_weights(4, 4)
    corner = weights[0].reshape(4, 4)  # anchor cell (0, 0)
    support = corner > 0
    expected_support = np.zeros((4, 4), dtype=bool)
    expected_support[:3, :3] = True
    np.testing.assert_array_equal(support, expected_support)
    assert corner[2, 2] > 0 and corner[0, 3] == 0 and corner[3, 0] == 0
    unnormalized = np.array(
        [[math.exp(-math.hypot(dy, dx) / math.sqrt(32)) for dx in range(3)] for dy in range(3)]
    )
    np.testing.assert_allclose(corner[:3, :3], unnormalized / unnormalized.sum(), rtol=1e-6)
    # Uniform ablation: 1/9 on the 9 positives of the corner.
    uniform = spatial_positive_weights(4, 4, smooth=False)[0].reshape(4, 4)
    np.testing.assert_allclose(uniform, expected_support / 9.0, rtol=1e-6)
    # Centre-ish cell (1, 1): dy in [-1, 2], dx in [-1, 2] -> 16 positives, all of the grid.
    assert np.count_nonzero(weights[5]) == 16


@pytest.mark.parametrize(
    "grid, threshold, smooth",
    [
        ((4, 4), 0.5, True),
        ((4, 4), 0.5, False),
        ((7, 7), 0.5, True),
        ((7, 7), 0.3, False),
        ((3, 5), 0.25, True),
    ],
)
def test_spatial_weights_match_reference_and_invariants(grid, threshold, smooth):
    weights = spatial_positive_weights(*grid, distance_threshold=threshold, smooth=smooth)
    expected = _ref_spatial_weights(*grid, threshold, 1.0, smooth)
    np.testing.assert_allclose(weights, expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)
    # The anchor's own cell has the largest weight of its row (ties when uniform).
    assert np.all(np.diag(weights) >= weights.max(axis=1) - 1e-7)
    # Distance is symmetric, so the support is too.
    np.testing.assert_array_equal(weights > 0, (weights > 0).T)


def test_spatial_weights_7x7_lovt_numbers():
    weights = spatial_positive_weights(7, 7)
    centre = weights[24].reshape(7, 7)
    # Official src/models/objectives/local_alignment.py (smooth_lambda 1, distances over the
    # grid diagonal): adjacent regions have exp(-1/sqrt(98)) ~ 0.904 of the self weight.
    assert centre[3, 4] / centre[3, 3] == pytest.approx(math.exp(-1 / math.sqrt(98)), rel=1e-6)
    # Radius 0.5 * sqrt(98) ~ 4.95 cells covers the whole 7x7 grid from the centre.
    assert np.count_nonzero(centre) == 49
    # From a corner, (4, 3) at squared distance 25 > 24.5 is out, (4, 2) at 20 is in.
    corner = weights[0].reshape(7, 7)
    assert corner[4, 3] == 0 and corner[3, 4] == 0 and corner[4, 2] > 0


def test_spatial_weights_smoothing_lambda():
    sharp = spatial_positive_weights(7, 7, smooth_lambda=20.0)
    flat = spatial_positive_weights(7, 7, smooth_lambda=0.0)
    np.testing.assert_allclose(flat, spatial_positive_weights(7, 7, smooth=False), rtol=1e-6)
    assert np.all(np.diag(sharp) > np.diag(spatial_positive_weights(7, 7)))


def test_spatial_weights_returns_a_fresh_array():
    first = spatial_positive_weights(4, 4)
    first[:] = 0.0
    assert spatial_positive_weights(4, 4)[0, 0] > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"grid_height": 0, "grid_width": 7}, "grid_height"),
        ({"grid_height": 7, "grid_width": 2.5}, "grid_width"),
        ({"grid_height": 7, "grid_width": 7, "distance_threshold": -0.1}, "distance_threshold"),
    ],
)
def test_spatial_weights_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        spatial_positive_weights(**kwargs)


# ---------------------------------------------------------------------------------------
# Global loss.
# ---------------------------------------------------------------------------------------


def test_global_loss_hand_computed_batch_of_two():
    image = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    report = np.array([[2.0, 0.0], [1.0, 1.0]], dtype=np.float32)  # normalized inside
    # cos = [[1, 1/sqrt2], [0, 1/sqrt2]]; logits = 10 * cos.
    c = 10 / math.sqrt(2)
    image_to_report = (math.log1p(math.exp(c - 10)) + math.log1p(math.exp(-c))) / 2
    report_to_image = (math.log1p(math.exp(-10)) + math.log(2)) / 2
    losses = _values(global_contrastive_loss(image, report))
    assert losses["global_image_to_report_loss"] == pytest.approx(image_to_report, rel=1e-5)
    assert losses["global_report_to_image_loss"] == pytest.approx(report_to_image, rel=1e-5)
    # Rounded hand values: log1p(e^-2.929) / 2 + log1p(e^-7.071) / 2 and (e^-10 + log 2) / 2.
    assert image_to_report == pytest.approx(0.02646, abs=1e-5)
    assert report_to_image == pytest.approx(0.34660, abs=1e-5)


@pytest.mark.parametrize("temperature", [GLOBAL_TEMPERATURE, 0.5])
def test_global_loss_matches_reference(temperature):
    rng = np.random.default_rng(0)
    image, report = _random(rng, 6, 16), _random(rng, 6, 16)
    report[2] = image[2] + 0.1 * report[2]  # one near-aligned pair for large logits
    losses = global_contrastive_loss(image, report, temperature=temperature)
    assert set(losses) == {"global_image_to_report_loss", "global_report_to_image_loss"}
    for value in losses.values():
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
        assert tuple(value.shape) == ()
    expected = _ref_global(image, report, temperature)
    values = _values(losses)
    np.testing.assert_allclose(
        [values["global_image_to_report_loss"], values["global_report_to_image_loss"]],
        expected,
        rtol=RTOL,
        atol=ATOL,
    )
    # The two directions are transposes of each other.
    swapped = _values(global_contrastive_loss(report, image, temperature=temperature))
    assert swapped["global_image_to_report_loss"] == pytest.approx(
        values["global_report_to_image_loss"], rel=1e-6
    )


def test_global_loss_per_device_groups_are_independent_batches():
    # negative_groups=G: the mean over the G blocks of each block's own loss (numpy loop).
    rng = np.random.default_rng(1)
    image, report = _random(rng, 8, 16), _random(rng, 8, 16)
    values = _values(global_contrastive_loss(image, report, negative_groups=2))
    blocks = [_ref_global(image[k:k + 4], report[k:k + 4], GLOBAL_TEMPERATURE) for k in (0, 4)]
    np.testing.assert_allclose(
        [values["global_image_to_report_loss"], values["global_report_to_image_loss"]],
        np.mean(blocks, axis=0), rtol=RTOL, atol=ATOL)
    whole = _values(global_contrastive_loss(image, report))
    # Fewer negatives: a different (here lower) value than the whole batch's.
    assert values["global_image_to_report_loss"] < whole["global_image_to_report_loss"]


def test_global_loss_of_gathered_candidates_averages_to_the_whole_batch():
    # Each of 2 devices computes its rows against all 8 gathered samples; the mean of
    # the two values is the loss of the whole batch (data-parallel "global" negatives).
    rng = np.random.default_rng(2)
    image, report = _random(rng, 8, 16), _random(rng, 8, 16)
    parts = [_values(global_contrastive_loss(image[k:k + 4], report[k:k + 4],
                                             image_candidates=image,
                                             report_candidates=report)) for k in (0, 4)]
    whole = _ref_global(image, report, GLOBAL_TEMPERATURE)
    for name, expected in zip(("global_image_to_report_loss", "global_report_to_image_loss"),
                              whole):
        assert np.mean([p[name] for p in parts]) == pytest.approx(expected, rel=1e-5)


def test_global_loss_negative_options_are_checked():
    image = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="both image_candidates and report_candidates"):
        global_contrastive_loss(image, image, image_candidates=image)
    with pytest.raises(ValueError, match="exclude each other"):
        global_contrastive_loss(image, image, negative_groups=2, image_candidates=image,
                                report_candidates=image)
    with pytest.raises(ValueError, match="does not split into 3"):
        global_contrastive_loss(image, image, negative_groups=3)


# ---------------------------------------------------------------------------------------
# Local image loss.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "grid, smooth, threshold, use_weights",
    [
        ((4, 4), True, 0.5, True),
        ((4, 4), False, 0.5, False),
        ((7, 7), True, 0.5, True),
        ((7, 7), False, 0.3, True),
        ((3, 5), True, 0.5, False),
    ],
)
def test_local_image_loss_matches_reference(grid, smooth, threshold, use_weights):
    rng = np.random.default_rng(1)
    n = grid[0] * grid[1]
    regions, attended = _random(rng, 3, n, 8), _random(rng, 3, n, 8)
    attended[0] = regions[0] + 0.3 * attended[0]  # one roughly aligned sample
    weights = rng.uniform(0.0, 1.0, size=(3, n)).astype(np.float32) if use_weights else None
    losses = local_image_loss(
        regions,
        attended,
        weights,
        grid_shape=grid,
        distance_threshold=threshold,
        spatial_smoothing=smooth,
    )
    assert set(losses) == {"local_image_l2att_loss", "local_image_att2l_loss"}
    expected = _ref_local_image(
        regions, attended, weights, grid, LOCAL_TEMPERATURE, threshold, 1.0, smooth
    )
    values = _values(losses)
    np.testing.assert_allclose(
        [values["local_image_l2att_loss"], values["local_image_att2l_loss"]],
        expected,
        rtol=RTOL,
        atol=ATOL,
    )


def test_local_image_loss_swapping_inputs_swaps_directions():
    rng = np.random.default_rng(2)
    regions, attended = _random(rng, 2, 16, 8), _random(rng, 2, 16, 8)
    forward = _values(local_image_loss(regions, attended, grid_shape=(4, 4)))
    swapped = _values(local_image_loss(attended, regions, grid_shape=(4, 4)))
    assert forward["local_image_l2att_loss"] == pytest.approx(
        swapped["local_image_att2l_loss"], rel=1e-6
    )
    assert forward["local_image_att2l_loss"] == pytest.approx(
        swapped["local_image_l2att_loss"], rel=1e-6
    )


def test_local_image_loss_weights_are_renormalized():
    rng = np.random.default_rng(3)
    regions, attended = _random(rng, 2, 16, 8), _random(rng, 2, 16, 8)
    weights = rng.uniform(0.1, 1.0, size=(2, 16)).astype(np.float32)
    a = _values(local_image_loss(regions, attended, weights, grid_shape=(4, 4)))
    b = _values(local_image_loss(regions, attended, 7.0 * weights, grid_shape=(4, 4)))
    for name in a:
        assert a[name] == pytest.approx(b[name], rel=1e-6)
    # One-hot weights select the loss of a single anchor region (checked against the
    # reference restricted to that anchor).
    one_hot = np.zeros((2, 16), dtype=np.float32)
    one_hot[:, 5] = 1.0
    selected = _values(local_image_loss(regions, attended, one_hot, grid_shape=(4, 4)))
    expected = _ref_local_image(regions, attended, one_hot, (4, 4), 0.3, 0.5, 1.0, True)
    assert selected["local_image_l2att_loss"] == pytest.approx(expected[0], rel=RTOL)


def _entropy(rows):
    return np.array([-sum(p * math.log(p) for p in row if p > 0) for row in rows])


@pytest.mark.parametrize("smooth", [True, False])
def test_local_image_loss_is_bounded_by_the_target_entropy(smooth):
    """Gibbs: lse(s) - p.s >= H(p) per anchor, with equality iff softmax(s) = p."""
    grid = (7, 7)
    n = 49
    targets = _ref_spatial_weights(*grid, 0.5, 1.0, smooth)
    floor = float(np.mean(_entropy(targets)))
    rng = np.random.default_rng(4)
    for _ in range(3):
        regions, attended = _random(rng, 2, n, 8), _random(rng, 2, n, 8)
        values = _values(
            local_image_loss(regions, attended, grid_shape=grid, spatial_smoothing=smooth)
        )
        assert min(values.values()) > floor

    # Attain the floor: choose unit vectors with cos(a_i, b_k) = T_ik, where
    # T_ik = -tau * lambda * d_ik on the support (so softmax_k(T_ik / tau) = p_ik exactly,
    # since p_ik is proportional to exp(-lambda d_ik)) and -0.05 off the support (logit -50,
    # i.e. a vanishing probability at tau = 1e-3). a_i = e_i; b_k carries column k of T
    # and the rest of its unit norm on a private axis.
    tau = 1e-3
    diagonal = math.hypot(*grid)
    gram = np.full((n, n), -0.05)
    for i in range(n):
        for k in range(n):
            if targets[i, k] > 0:
                d = math.hypot(i // 7 - k // 7, i % 7 - k % 7) / diagonal
                gram[i, k] = -tau * d if smooth else 0.0
    a = np.zeros((n, 2 * n))
    a[:, :n] = np.eye(n)
    b = np.zeros((n, 2 * n))
    b[:, :n] = gram.T
    b[np.arange(n), n + np.arange(n)] = np.sqrt(1.0 - (gram**2).sum(axis=0))
    a, b = a[None].astype(np.float32), b[None].astype(np.float32)
    attained = _values(
        local_image_loss(a, b, grid_shape=grid, temperature=tau, spatial_smoothing=smooth)
    )
    assert attained["local_image_l2att_loss"] == pytest.approx(floor, rel=1e-4)
    # The transposed construction attains the floor of the other direction.
    attained = _values(
        local_image_loss(b, a, grid_shape=grid, temperature=tau, spatial_smoothing=smooth)
    )
    assert attained["local_image_att2l_loss"] == pytest.approx(floor, rel=1e-4)


def test_local_image_loss_rejects_bad_shapes():
    x = np.zeros((2, 16, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"16 regions.*grid_shape=\(7, 7\)"):
        local_image_loss(x, x)
    with pytest.raises(ValueError, match="same shape"):
        local_image_loss(x, np.zeros((2, 16, 5), dtype=np.float32), grid_shape=(4, 4))
    with pytest.raises(ValueError, match="region_weights"):
        local_image_loss(x, x, np.ones((2, 16, 1)), grid_shape=(4, 4))
    with pytest.raises(ValueError, match="temperature"):
        local_image_loss(x, x, grid_shape=(4, 4), temperature=0.0)


# ---------------------------------------------------------------------------------------
# Local report loss.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_weights", [True, False])
@pytest.mark.parametrize("temperature", [LOCAL_TEMPERATURE, 0.05])
def test_local_report_loss_matches_reference(use_weights, temperature):
    rng = np.random.default_rng(5)
    sentences, attended, mask, weights = _report_batch(rng)
    attended[0, 1] = sentences[0, 1]  # one perfectly aligned pair
    weights = weights if use_weights else None
    losses = local_report_loss(sentences, attended, mask, weights, temperature=temperature)
    assert set(losses) == {"local_report_l2att_loss", "local_report_att2l_loss"}
    expected = _ref_local_report(sentences, attended, mask, weights, temperature)
    values = _values(losses)
    np.testing.assert_allclose(
        [values["local_report_l2att_loss"], values["local_report_att2l_loss"]],
        expected,
        rtol=RTOL,
        atol=ATOL,
    )


def test_local_report_loss_ignores_padding_content():
    rng = np.random.default_rng(6)
    sentences, attended, mask, weights = _report_batch(rng)
    base = _values(local_report_loss(sentences, attended, mask, weights))
    garbage_s, garbage_a, garbage_w = sentences.copy(), attended.copy(), weights.copy()
    garbage_s[~mask] = 1e4 * _random(rng, int((~mask).sum()), 8)
    garbage_a[~mask] = 0.0
    garbage_w[~mask] = 1e3
    changed = _values(local_report_loss(garbage_s, garbage_a, mask, garbage_w))
    for name in base:
        assert changed[name] == pytest.approx(base[name], rel=1e-6)


def test_one_sentence_report_contributes_zero_but_counts_in_the_mean():
    rng = np.random.default_rng(7)
    sentences, attended = _random(rng, 2, 3, 8), _random(rng, 2, 3, 8)
    mask = np.array([[True, False, False], [True, True, True]])
    both = _values(local_report_loss(sentences, attended, mask))
    alone = _values(local_report_loss(sentences[1:], attended[1:], mask[1:]))
    single = _values(local_report_loss(sentences[:1], attended[:1], mask[:1]))
    for name in both:
        # 0 up to float32 rounding of s_jj computed two ways (logits vs row dot product).
        assert abs(single[name]) < 1e-6
        assert both[name] == pytest.approx(alone[name] / 2, rel=1e-5)


def test_zero_sentence_batch_is_zero_not_nan():
    x = np.ones((2, 3, 4), dtype=np.float32)
    values = _values(local_report_loss(x, x, np.zeros((2, 3), dtype=bool), np.ones((2, 3))))
    assert values == {"local_report_l2att_loss": 0.0, "local_report_att2l_loss": 0.0}


def test_local_report_loss_gradients_are_finite_and_skip_padding():
    rng = np.random.default_rng(8)
    sentences, attended, mask, weights = _report_batch(rng)

    def total(s, a, w):
        losses = local_report_loss(s, a, mask, w)
        return losses["local_report_l2att_loss"] + losses["local_report_att2l_loss"]

    grad_s, grad_a, grad_w = _gradients(total, sentences, attended, weights)
    for grad in (grad_s, grad_a):
        assert np.all(np.isfinite(grad))
        # Padded sentences, the one-sentence report (sample 2) and the empty report
        # (sample 3) get no gradient.
        np.testing.assert_array_equal(grad[~mask], 0.0)
        np.testing.assert_allclose(grad[2], 0.0, atol=1e-7)
        assert np.abs(grad[:2][mask[:2]]).sum() > 1e-3
    # The local weights are detached: the loss depends on them, their gradient is zero.
    np.testing.assert_array_equal(grad_w, 0.0)
    other = weights.copy()
    other[0] = np.linspace(0.1, 2.0, 5)
    assert _np(total(sentences, attended, other)) != pytest.approx(
        float(_np(total(sentences, attended, weights))), rel=1e-4
    )


def test_local_image_loss_weights_get_no_gradient():
    rng = np.random.default_rng(9)
    regions, attended = _random(rng, 2, 16, 8), _random(rng, 2, 16, 8)
    weights = rng.uniform(0.1, 1.0, size=(2, 16)).astype(np.float32)

    def total(r, a, w):
        losses = local_image_loss(r, a, w, grid_shape=(4, 4))
        return losses["local_image_l2att_loss"] + losses["local_image_att2l_loss"]

    grad_r, grad_a, grad_w = _gradients(total, regions, attended, weights)
    assert np.all(np.isfinite(grad_r)) and np.abs(grad_r).sum() > 1e-3
    assert np.all(np.isfinite(grad_a)) and np.abs(grad_a).sum() > 1e-3
    np.testing.assert_array_equal(grad_w, 0.0)


def test_local_report_loss_rejects_bad_shapes():
    x = np.zeros((2, 3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="sentence_mask"):
        local_report_loss(x, x, np.ones((2, 3, 1), dtype=bool))
    with pytest.raises(ValueError, match="same shape"):
        local_report_loss(x, np.zeros((2, 4, 4), dtype=np.float32), np.ones((2, 3), dtype=bool))
    with pytest.raises(ValueError, match="sentence_embeddings"):
        local_report_loss(x[0], x[0], np.ones((2, 3), dtype=bool))


# ---------------------------------------------------------------------------------------
# Invariants shared by all losses.
# ---------------------------------------------------------------------------------------


def test_aligned_pairs_score_lower_than_shuffled():
    rng = np.random.default_rng(10)
    dim = 512  # the LoVT projection size: unrelated embeddings are nearly orthogonal
    image = _random(rng, 8, dim)
    shuffled = np.roll(image, 1, axis=0)
    aligned_g = _values(global_contrastive_loss(image, image))
    shuffled_g = _values(global_contrastive_loss(image, shuffled))
    for name in aligned_g:
        assert aligned_g[name] + 1.0 < shuffled_g[name]

    regions = _random(rng, 4, 49, dim)
    # A derangement of the regions: the same vectors, attached to the wrong places.
    permutation = np.roll(rng.permutation(49), 1)
    permutation = np.where(permutation == np.arange(49), (permutation + 1) % 49, permutation)
    aligned_i = _values(local_image_loss(regions, regions))
    shuffled_i = _values(local_image_loss(regions, regions[:, permutation]))
    for name in aligned_i:
        # The margin is sum_i w_i (p_ii - p_i,pi(i)) / tau ~ 0.03: self-weight is the
        # largest but the LoVT soft positives spread over most of the grid.
        assert aligned_i[name] + 0.01 < shuffled_i[name]

    sentences = _random(rng, 3, 6, dim)
    mask = np.array([[True] * 6, [True] * 4 + [False] * 2, [True] * 2 + [False] * 4])
    aligned_r = _values(local_report_loss(sentences, sentences, mask))
    shuffled_r = _values(local_report_loss(sentences, np.roll(sentences, 1, axis=1), mask))
    for name in aligned_r:
        assert aligned_r[name] + 1.0 < shuffled_r[name]


@pytest.mark.parametrize("fill", [0.0, 0.7])
def test_all_equal_embeddings_give_log_of_candidate_count(fill):
    # With all logits equal, every anchor's loss is log(#candidates), whatever the targets.
    # fill = 0 also exercises the epsilon of the L2 normalization (zero vectors).
    x = np.full((4, 49, 8), fill, dtype=np.float32)
    for value in _values(global_contrastive_loss(x[:, 0], x[:, 0])).values():
        assert value == pytest.approx(math.log(4), rel=1e-6)
    for value in _values(local_image_loss(x, x)).values():
        assert value == pytest.approx(math.log(49), rel=1e-6)
    mask = np.array([[j < c for j in range(6)] for c in (6, 3, 1, 0)])
    expected = (math.log(6) + math.log(3) + 0.0 + 0.0) / 4
    weights = np.random.default_rng(0).uniform(0.1, 1, size=(4, 6)).astype(np.float32)
    for value in _values(local_report_loss(x[:, :6], x[:, :6], mask, weights)).values():
        assert value == pytest.approx(expected, rel=1e-6)

    def total(s, a):
        losses = local_report_loss(s, a, mask)
        return losses["local_report_l2att_loss"] + losses["local_report_att2l_loss"]

    for grad in _gradients(total, x[:, :6].copy(), x[:, :6].copy()):
        assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_inputs_give_float32_outputs(dtype):
    rng = np.random.default_rng(11)
    regions, attended = _random(rng, 2, 16, 8), _random(rng, 2, 16, 8)
    region_weights = rng.uniform(0.1, 1.0, size=(2, 16)).astype(np.float32)
    sentences, attended_s, mask, weights = _report_batch(rng)

    def low(x):
        return ops.convert_to_tensor(x, dtype=dtype)

    def rounded(x):  # the float32 values the low-precision inputs actually hold
        return _np(ops.cast(low(x), "float32"))

    cases = [
        (global_contrastive_loss, (regions[:, 0], attended[:, 0]), {}),
        (local_image_loss, (regions, attended, region_weights), {"grid_shape": (4, 4)}),
    ]
    for fn, args, kwargs in cases:
        result = fn(*[low(a) for a in args], **kwargs)
        exact = _values(fn(*[rounded(a) for a in args], **kwargs))
        original = _values(fn(*args, **kwargs))
        for name, value in result.items():
            assert keras.backend.standardize_dtype(value.dtype) == "float32"
            assert float(_np(value)) == pytest.approx(exact[name], rel=1e-5)
            assert float(_np(value)) == pytest.approx(original[name], rel=3e-2)

    result = local_report_loss(low(sentences), low(attended_s), mask, low(weights))
    exact = _values(
        local_report_loss(rounded(sentences), rounded(attended_s), mask, rounded(weights))
    )
    original = _values(local_report_loss(sentences, attended_s, mask, weights))
    for name, value in result.items():
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
        assert float(_np(value)) == pytest.approx(exact[name], rel=1e-5)
        assert float(_np(value)) == pytest.approx(original[name], rel=3e-2)


def test_module_constants():
    assert contrastive.GLOBAL_TEMPERATURE == 0.1
    assert contrastive.LOCAL_TEMPERATURE == 0.3
    with pytest.raises(ValueError, match="temperature"):
        global_contrastive_loss(np.ones((2, 3)), np.ones((2, 3)), temperature=-1.0)
