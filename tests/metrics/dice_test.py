"""Tests of the pooled Dice metric and the smp-style Dice loss."""

import keras
import numpy as np
import pytest
from keras import ops

from lovt_keras.metrics import PooledDice, dice_loss, pooled_dice


def _f1_micro_reference(y_true, probs, threshold=0.5):
    """torchmetrics-0.5 style F1 'micro' on one class: via precision and recall, safe division.

    Written with per-image loops and F1 = 2PR / (P + R), a different route from the
    2TP / (2TP + FP + FN) of the library.
    """
    tp = fp = fn = 0
    for truth_image, prob_image in zip(y_true, probs):
        for t, p in zip(truth_image.ravel().tolist(), prob_image.ravel().tolist()):
            positive = p >= threshold
            tp += int(t == 1 and positive)
            fp += int(t == 0 and positive)
            fn += int(t == 1 and not positive)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _random_masks(rng, shape, positive_rate=0.3):
    y_true = (rng.random(shape) < positive_rate).astype("float32")
    # Probabilities correlated with the truth, so Dice is neither 0 nor 1.
    probs = np.clip(0.35 * y_true + 0.65 * rng.random(shape), 0.0, 1.0).astype("float32")
    return y_true, probs


def test_pooled_dice_hand_case_differs_from_per_image_mean():
    y_true = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], dtype="float32")
    probs = np.array([[[0.9, 0.2], [0.1, 0.0]], [[0.0, 0.7], [0.3, 0.1]]], dtype="float32")
    # image 1: TP 1, FN 1 -> Dice 2/3; image 2: FP 1 -> Dice 0; per-image mean 1/3.
    # pooled: TP 1, FP 1, FN 1 -> 2 / (2 + 1 + 1) = 0.5.
    assert pooled_dice(y_true, probs) == pytest.approx(0.5)
    per_image = [pooled_dice(y_true[i : i + 1], probs[i : i + 1]) for i in range(2)]
    np.testing.assert_allclose(per_image, [2 / 3, 0.0])
    assert np.mean(per_image) == pytest.approx(1 / 3)

    metric = PooledDice()
    metric.update_state(y_true, probs)
    assert float(metric.result()) == pytest.approx(0.5)


def test_threshold_is_inclusive_and_empty_class_gives_zero():
    y_true = np.array([[[1, 0]]], dtype="float32")
    assert pooled_dice(y_true, np.array([[[0.5, 0.4999]]])) == pytest.approx(1.0)
    assert pooled_dice(y_true, np.array([[[0.4999, 0.5]]])) == pytest.approx(0.0)
    # Nothing positive in truth or prediction: 0/0 -> 0 (torchmetrics zero_division=0).
    empty = np.zeros((2, 3, 3), dtype="float32")
    assert pooled_dice(empty, empty + 0.1) == 0.0
    metric = PooledDice()
    metric.update_state(empty, empty + 0.1)
    assert float(metric.result()) == 0.0


def test_pooled_dice_matches_precision_recall_reference_on_random_masks():
    rng = np.random.default_rng(0)
    for positive_rate in (0.05, 0.3, 0.7):
        y_true, probs = _random_masks(rng, (3, 9, 7), positive_rate)
        expected = _f1_micro_reference(y_true, probs)
        assert pooled_dice(y_true, probs) == pytest.approx(expected, abs=1e-12)


def test_multiclass_returns_per_class_pooled_dice():
    rng = np.random.default_rng(1)
    y_true, probs = _random_masks(rng, (4, 6, 5, 3))
    y_true[..., 2] = 0.0
    probs[..., 2] = 0.0  # class 2 empty everywhere -> 0
    per_class = pooled_dice(y_true, probs)
    assert per_class.shape == (3,)
    expected = [_f1_micro_reference(y_true[..., c], probs[..., c]) for c in range(3)]
    np.testing.assert_allclose(per_class, expected, atol=1e-12)
    assert expected[2] == 0.0

    metric = PooledDice(num_classes=3)
    metric.update_state(y_true, probs)
    np.testing.assert_allclose(ops.convert_to_numpy(metric.per_class_result()), expected, atol=1e-6)
    assert float(metric.result()) == pytest.approx(np.mean(expected), abs=1e-6)


def test_streaming_over_batches_equals_numpy_pooled_dice():
    rng = np.random.default_rng(2)
    y_true, probs = _random_masks(rng, (10, 8, 8, 2))
    metric = PooledDice(num_classes=2, name="val_dice")
    for start, stop in ((0, 3), (3, 4), (4, 10)):
        metric.update_state(y_true[start:stop], probs[start:stop])
    expected = pooled_dice(y_true, probs)
    np.testing.assert_allclose(ops.convert_to_numpy(metric.per_class_result()), expected, atol=1e-6)
    assert float(metric.result()) == pytest.approx(expected.mean(), abs=1e-6)
    # Not the per-batch mean.
    per_batch = [pooled_dice(y_true[a:b], probs[a:b]).mean() for a, b in ((0, 3), (3, 4), (4, 10))]
    assert abs(np.mean(per_batch) - expected.mean()) > 1e-3
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_from_logits_applies_sigmoid_before_threshold():
    rng = np.random.default_rng(3)
    y_true, probs = _random_masks(rng, (2, 5, 5))
    logits = np.log(probs + 1e-6) - np.log1p(-probs + 1e-6)
    metric = PooledDice(from_logits=True)
    metric.update_state(y_true, logits)
    expected = _f1_micro_reference(y_true, 1 / (1 + np.exp(-logits)))
    assert float(metric.result()) == pytest.approx(expected, abs=1e-6)
    assert pooled_dice(y_true, logits, from_logits=True) == pytest.approx(expected, abs=1e-12)


def test_sample_weight_masks_samples_and_pixels():
    rng = np.random.default_rng(4)
    y_true, probs = _random_masks(rng, (4, 6, 6))
    metric = PooledDice()
    metric.update_state(y_true, probs, sample_weight=np.array([1.0, 0.0, 2.0, 1.0]))
    expected = pooled_dice(y_true[[0, 2, 3]], probs[[0, 2, 3]])
    assert float(metric.result()) == pytest.approx(expected, abs=1e-6)

    pixel_mask = np.zeros((4, 6, 6), dtype="float32")
    pixel_mask[:, :3] = 1.0  # keep the top half of every image
    metric = PooledDice()
    metric.update_state(y_true, probs, sample_weight=pixel_mask)
    assert float(metric.result()) == pytest.approx(
        pooled_dice(y_true[:, :3], probs[:, :3]), abs=1e-6
    )


def test_counts_stay_exact_beyond_float32_integer_range():
    # Start just below one block of 2**24 true positives, then add 3 more: the remainder
    # carries into the block row and the total is exactly 2**24 + 2.
    metric = PooledDice()
    metric.true_positives.assign(np.array([[0], [2**24 - 1]], dtype="int32"))
    metric.update_state(np.ones((1, 1, 3), "float32"), np.ones((1, 1, 3), "float32"))
    np.testing.assert_array_equal(ops.convert_to_numpy(metric.true_positives), [[1], [2]])
    metric.false_negatives.assign(np.array([[1], [2]], dtype="int32"))
    # tp = fn = 2**24 + 2 -> Dice 2tp / (2tp + fn) = 2/3.
    assert float(metric.result()) == pytest.approx(2 / 3, rel=1e-6)


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="2 channels"):
        PooledDice(num_classes=3).update_state(np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 2, 2)))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        PooledDice(num_classes=3).update_state(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match=r"y_true shape \(1, 2, 2, 1\) != y_pred shape"):
        PooledDice().update_state(np.zeros((1, 2, 2)), np.zeros((1, 3, 2)))
    with pytest.raises(ValueError, match="binary mask"):
        pooled_dice(np.full((1, 2, 2), 0.5), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="shape"):
        pooled_dice(np.zeros((1, 2, 2)), np.zeros((1, 2, 3)))


def test_get_config_round_trip():
    metric = PooledDice(num_classes=4, threshold=0.3, from_logits=True, name="nih_dice")
    config = metric.get_config()
    assert {k: config[k] for k in ("num_classes", "threshold", "from_logits", "name")} == {
        "num_classes": 4,
        "threshold": 0.3,
        "from_logits": True,
        "name": "nih_dice",
    }
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert isinstance(restored, PooledDice)
    assert restored.get_config() == config
    rng = np.random.default_rng(5)
    y_true, probs = _random_masks(rng, (2, 4, 4, 4))
    logits = np.log(probs + 1e-3) - np.log1p(-probs + 1e-3)
    for m in (metric, restored):
        m.update_state(y_true, logits)
    np.testing.assert_allclose(
        ops.convert_to_numpy(restored.per_class_result()),
        ops.convert_to_numpy(metric.per_class_result()),
    )
    expected = pooled_dice(y_true, logits, threshold=0.3, from_logits=True)
    np.testing.assert_allclose(ops.convert_to_numpy(metric.per_class_result()), expected, atol=1e-6)


def test_metric_in_compiled_model_evaluate():
    rng = np.random.default_rng(6)
    y_true, probs = _random_masks(rng, (6, 4, 4, 1))
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    model.compile(loss="mse", metrics=[PooledDice()])
    results = model.evaluate(probs, y_true, batch_size=4, verbose=0, return_dict=True)
    assert results["dice"] == pytest.approx(pooled_dice(y_true, probs)[0], abs=1e-6)


# ---------------------------------------------------------------- Dice loss


def _smp_dice_loss_reference(y_true, logits, mode, smooth=0.0, eps=1e-7, from_logits=True):
    """segmentation_models_pytorch DiceLoss in numpy, on channels-first views as smp does."""
    probs = 1 / (1 + np.exp(-logits)) if from_logits else logits
    if y_true.ndim == 3:
        y_true, probs = y_true[..., None], probs[..., None]
    batch, channels = y_true.shape[0], y_true.shape[-1]
    y_true = np.moveaxis(y_true, -1, 1).astype(np.float64)  # (B, C, H, W) as in torch
    probs = np.moveaxis(probs, -1, 1).astype(np.float64)
    if mode == "binary":
        y_true, probs = y_true.reshape(batch, 1, -1), probs.reshape(batch, 1, -1)
    else:
        y_true, probs = y_true.reshape(batch, channels, -1), probs.reshape(batch, channels, -1)
    losses = []
    for c in range(y_true.shape[1]):
        intersection = sum(float(np.sum(probs[b, c] * y_true[b, c])) for b in range(batch))
        cardinality = sum(float(np.sum(probs[b, c] + y_true[b, c])) for b in range(batch))
        score = (2 * intersection + smooth) / max(cardinality + smooth, eps)
        losses.append((1 - score) if y_true[:, c].sum() > 0 else 0.0)
    return float(np.mean(losses))


def test_dice_loss_hand_values():
    y_true = np.array([[[1.0, 0.0]]])
    # p = [0.5, 0.5]: intersection 0.5, cardinality 2 -> dice 0.5, loss 0.5.
    loss = dice_loss(y_true, np.array([[[0.5, 0.5]]]), from_logits=False)
    assert float(loss) == pytest.approx(0.5, abs=1e-6)
    # Perfect probabilities: loss 0; all-negative truth: zeroed by smp's mask.
    assert float(dice_loss(y_true, y_true, from_logits=False)) == pytest.approx(0.0, abs=1e-6)
    assert float(dice_loss(np.zeros((2, 3, 3)), np.ones((2, 3, 3)))) == 0.0
    # smooth = 1: (2 * 0.5 + 1) / (2 + 1) = 2/3 -> loss 1/3.
    loss = dice_loss(y_true, np.array([[[0.5, 0.5]]]), from_logits=False, smooth=1.0)
    assert float(loss) == pytest.approx(1 / 3, abs=1e-6)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_dice_loss_matches_smp_reference(mode):
    rng = np.random.default_rng(7)
    y_true = (rng.random((3, 6, 5, 4)) < 0.3).astype("float32")
    y_true[..., 1] = 0.0  # an absent class: zeroed but still in the multilabel mean
    logits = rng.normal(size=(3, 6, 5, 4)).astype("float32") * 2
    expected = _smp_dice_loss_reference(y_true, logits, mode)
    assert float(dice_loss(y_true, logits, mode=mode)) == pytest.approx(expected, abs=1e-5)
    # Single-channel masks without channel axis.
    expected = _smp_dice_loss_reference(y_true[..., 0], logits[..., 0], mode)
    assert float(dice_loss(y_true[..., 0], logits[..., 0], mode=mode)) == pytest.approx(
        expected, abs=1e-5
    )


def test_binary_mode_pools_channels_unlike_multilabel():
    y_true = np.zeros((1, 2, 2, 2), "float32")
    y_true[..., 0] = 1.0
    probs = np.full((1, 2, 2, 2), 0.5, "float32")
    # binary: intersection 2, cardinality 4 + 4 = 8 -> dice 0.5 -> loss 0.5.
    assert float(dice_loss(y_true, probs, from_logits=False)) == pytest.approx(0.5, abs=1e-6)
    # multilabel: class 0 dice 2*2/(2+4) = 2/3 -> loss 1/3; class 1 absent -> 0; mean 1/6.
    loss = dice_loss(y_true, probs, from_logits=False, mode="multilabel")
    assert float(loss) == pytest.approx(1 / 6, abs=1e-6)


def test_dice_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="mode"):
        dice_loss(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), mode="multiclass")
    with pytest.raises(ValueError, match="shape"):
        dice_loss(np.zeros((1, 2)), np.zeros((1, 2)))


def test_dice_loss_trains_a_model():
    rng = np.random.default_rng(8)
    images = rng.normal(size=(8, 6, 6, 2)).astype("float32")
    masks = (images[..., :1] > 0).astype("float32")  # learnable from channel 0
    inputs = keras.Input((6, 6, 2))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=dice_loss)
    kernel_before = ops.convert_to_numpy(model.layers[-1].kernel).copy()
    history = model.fit(images, masks, batch_size=8, epochs=5, verbose=0)
    losses = history.history["loss"]
    assert not np.allclose(ops.convert_to_numpy(model.layers[-1].kernel), kernel_before)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    # The compiled loss is dice_loss on the whole batch.
    logits = ops.convert_to_numpy(model(images))
    assert model.evaluate(images, masks, batch_size=8, verbose=0) == pytest.approx(
        _smp_dice_loss_reference(masks, logits, "binary"), abs=1e-5
    )
