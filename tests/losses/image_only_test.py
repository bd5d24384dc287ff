"""The image-only baselines' losses against independent numpy implementations and hand
computed values."""

import math

import numpy as np
import pytest
from keras import ops

from lovt_keras.losses import image_only

RNG = np.random.default_rng(0)


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ------------------------------------------------------------------ NT-Xent


def _nt_xent_reference(z1, z2, temperature):
    """Spijkervet's NT_Xent, loop by loop: logits [positive, negatives], CE sum / 2B."""
    z = _normalize(np.concatenate([z1, z2]).astype(np.float64))
    n = len(z)
    b = n // 2
    total = 0.0
    for i in range(n):
        positive = (i + b) % n
        logits = [z[i] @ z[positive] / temperature]
        logits += [z[i] @ z[k] / temperature for k in range(n) if k not in (i, positive)]
        logits = np.array(logits)
        total += -logits[0] + np.log(np.exp(logits).sum())
    return total / n


def test_nt_xent_matches_numpy_reference():
    z1, z2 = RNG.normal(size=(2, 5, 7)).astype("float32")
    loss = image_only.nt_xent_loss(z1, z2, temperature=0.1)["global_image_nt_xent_loss"]
    np.testing.assert_allclose(_np(loss), _nt_xent_reference(z1, z2, 0.1), rtol=1e-5)
    # Scale invariance (cosine similarity) and the default temperature of the config.
    again = image_only.nt_xent_loss(3 * z1, 0.5 * z2)["global_image_nt_xent_loss"]
    assert image_only.SIMCLR_TEMPERATURE == 0.1
    np.testing.assert_allclose(_np(again), _np(loss), rtol=1e-5)


def test_nt_xent_hand_computed():
    # Two orthogonal images, identical views, tau 1: every query has its positive at
    # similarity 1 and two negatives at 0: log(e + 2) - 1.
    z = np.eye(2, dtype="float32")
    loss = image_only.nt_xent_loss(z, z, temperature=1.0)["global_image_nt_xent_loss"]
    np.testing.assert_allclose(_np(loss), math.log(math.e + 2) - 1, rtol=1e-6)
    # One image: the positive is the only candidate, the loss is 0.
    single = image_only.nt_xent_loss(z[:1], z[1:], temperature=0.1)
    np.testing.assert_allclose(_np(single["global_image_nt_xent_loss"]), 0.0, atol=1e-6)


# ------------------------------------------------------------------ BYOL


def test_byol_loss_matches_numpy_reference_and_hand_values():
    p1, p2, t1, t2 = RNG.normal(size=(4, 6, 8)).astype("float32")
    loss = image_only.byol_loss(p1, p2, t1, t2)
    expected_12 = np.mean(2 - 2 * np.sum(_normalize(p1) * _normalize(t2), axis=-1))
    expected_21 = np.mean(2 - 2 * np.sum(_normalize(p2) * _normalize(t1), axis=-1))
    np.testing.assert_allclose(_np(loss["global_view1_to_view2_loss"]), expected_12, rtol=1e-5)
    np.testing.assert_allclose(_np(loss["global_view2_to_view1_loss"]), expected_21, rtol=1e-5)
    # Hand values: aligned 0, orthogonal 2, opposite 4 (any scale).
    a = np.array([[2.0, 0.0]], "float32")
    for other, value in (([[5.0, 0.0]], 0.0), ([[0.0, 1.0]], 2.0), ([[-1.0, 0.0]], 4.0)):
        other = np.array(other, "float32")
        got = image_only.byol_loss(a, a, other, other)["global_view1_to_view2_loss"]
        np.testing.assert_allclose(_np(got), value, atol=1e-6)


# ------------------------------------------------------------------ PixelPro


def _centers_reference(matrix, grid, size):
    h, w = grid
    out = []
    for i in range(h):
        for j in range(w):
            x, y = (j + 0.5) * size / w, (i + 0.5) * size / h
            out.append(matrix @ np.array([x, y, 1.0]))
    return np.array(out)


def _mask_reference(c1, c2, grid, threshold):
    h, w = grid
    mask = np.zeros((len(c1), len(c2)), bool)
    for n, a in enumerate(c1):
        for m, b in enumerate(c2):
            dx, dy = (a[0] - b[0]) * w, (a[1] - b[1]) * h
            mask[n, m] = math.hypot(dx, dy) < threshold
    return mask


def _random_transforms(batch):
    """View -> source maps of random crops (scale, offset) and flips, / diagonal 64 sqrt 2."""
    out = np.zeros((batch, 2, 3), "float32")
    for b in range(batch):
        s = RNG.uniform(0.6, 1.0)
        flip = RNG.random() < 0.5
        out[b] = [[-s if flip else s, 0, RNG.uniform(0, 20) + (64 * s if flip else 0)],
                  [0, s, RNG.uniform(0, 20)]]
    return out / (64 * math.sqrt(2))


def test_region_centers_and_positive_mask_match_numpy_reference():
    grid, size = (3, 4), 64
    t1, t2 = _random_transforms(5), _random_transforms(5)
    c1 = image_only.region_centers(t1, grid, (size, size))
    c2 = image_only.region_centers(t2, grid, (size, size))
    mask = _np(image_only.pixpro_positive_mask(c1, c2, grid, 0.7)).astype(bool)
    for b in range(5):
        r1, r2 = _centers_reference(t1[b], grid, size), _centers_reference(t2[b], grid, size)
        np.testing.assert_allclose(_np(c1)[b], r1, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(mask[b], _mask_reference(r1, r2, grid, 0.7))
    assert mask.any() and not mask.all()


def test_positive_mask_hand_computed():
    # Identical uncropped views, 2x2 grid at 64 px: neighbouring cell centres are 32 px
    # apart = 32 / (64 sqrt 2) * 2 = 0.707 bin diagonals > 0.7, so only each cell with
    # itself is positive; a threshold of 0.75 adds the 4-neighbours, 1.1 the diagonals.
    identity = np.array([[[1, 0, 0], [0, 1, 0]]], "float32") / (64 * math.sqrt(2))
    centers = image_only.region_centers(identity, (2, 2), (64, 64))
    np.testing.assert_allclose(_np(centers)[0] * 64 * math.sqrt(2),
                               [[16, 16], [48, 16], [16, 48], [48, 48]], atol=1e-4)
    mask = lambda t: _np(image_only.pixpro_positive_mask(centers, centers, (2, 2), t))[0]  # noqa: E731
    np.testing.assert_array_equal(mask(0.7), np.eye(4))
    np.testing.assert_array_equal(mask(0.75), [[1, 1, 1, 0], [1, 1, 0, 1], [1, 0, 1, 1],
                                               [0, 1, 1, 1]])
    np.testing.assert_array_equal(mask(1.1), np.ones((4, 4)))
    # View 2 mirrored: its cell (0, 0) shows the source's top-right cell.
    flipped = np.array([[[-1, 0, 64], [0, 1, 0]]], "float32") / (64 * math.sqrt(2))
    centers_2 = image_only.region_centers(flipped, (2, 2), (64, 64))
    got = _np(image_only.pixpro_positive_mask(centers, centers_2, (2, 2), 0.7))[0]
    np.testing.assert_array_equal(got, [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1],
                                        [0, 0, 1, 0]])


def test_pixel_propagation_matches_numpy_reference():
    x = RNG.normal(size=(2, 5, 4)).astype("float32")
    g = RNG.normal(size=(2, 5, 3)).astype("float32")
    got = _np(image_only.pixel_propagation(x, g, gamma=2))
    xn = _normalize(x.astype(np.float64))
    expected = np.zeros((2, 5, 3))
    for b in range(2):
        for i in range(5):
            for j in range(5):
                expected[b, i] += max(xn[b, i] @ xn[b, j], 0.0) ** 2 * g[b, j]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_pixpro_loss_matches_numpy_reference_and_hand_values():
    y1, y2, t1, t2 = RNG.normal(size=(4, 2, 3, 6)).astype("float32")
    mask = RNG.random((2, 3, 3)) < 0.5
    mask[0, 0, 0] = True
    loss = image_only.pixpro_loss(y1, y2, t1, t2, mask)

    def reference(y, t, m):
        cos = np.einsum("bnd,bmd->bnm", _normalize(y.astype(np.float64)),
                        _normalize(t.astype(np.float64)))
        return -cos[m].mean()

    np.testing.assert_allclose(_np(loss["local_view1_to_view2_loss"]),
                               reference(y1, t2, mask), rtol=1e-5)
    np.testing.assert_allclose(_np(loss["local_view2_to_view1_loss"]),
                               reference(y2, t1, mask.transpose(0, 2, 1)), rtol=1e-5)
    # Aligned positive cells give -1; no positive pair gives 0 (not NaN).
    same = np.ones((1, 2, 3), "float32")
    eye = np.eye(2, dtype=bool)[None]
    np.testing.assert_allclose(
        _np(image_only.pixpro_consistency(same, same, eye)), -1.0, atol=1e-6)
    np.testing.assert_allclose(
        _np(image_only.pixpro_consistency(same, same, np.zeros((1, 2, 2), bool))), 0.0)


@pytest.mark.parametrize("batch", [1, 3])
def test_nt_xent_gradient_is_finite_with_masked_self_similarity(batch):
    z = RNG.normal(size=(batch, 4)).astype("float32")
    loss = image_only.nt_xent_loss(z, z)["global_image_nt_xent_loss"]
    assert np.isfinite(_np(loss))
