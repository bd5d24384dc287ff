"""Pooled Dice metric and the Dice loss of the LoVT segmentation tasks.

Metric: the official code (``SegmentationEvaluator`` in
``src/models/downstream/downstream_evaluation.py``) logs, per target class,
torchmetrics ``F1(multiclass=False, average='micro')`` on sigmoid probabilities, i.e. a
pixel is positive when ``prob >= threshold`` (0.5, inclusive) and the counts TP/FP/FN are
pooled over ALL pixels of ALL test images before the ratio is taken::

    dice_c = 2 TP_c / (2 TP_c + FP_c + FN_c)

This is a dataset-level Dice, not the mean of per-image Dice scores. With several classes
(NIH, 8 classes) the reported "avg Dice" is the unweighted mean of the per-class pooled
Dice scores. A class with no positive pixel in the truth and none in the prediction gets
Dice 0: torchmetrics (0.5, the version of the official code) computes precision and recall
with a safe division (0/0 -> 0) and the harmonic mean of 0 and 0 as 0 (``zero_division``
0), so such a class pulls the class average down rather than being skipped.

Loss: the official code trains every segmentation head with segmentation_models_pytorch
``DiceLoss(mode='binary')`` (``from_logits=True, smooth=0.0, eps=1e-7``), see
:func:`dice_loss`.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

Tensor = Any

# Counts are kept exactly in int32 pairs (blocks of 2**24 pixels, remainder): a single
# int32 would overflow after 2**31 pixels (~43k images at 224x224), and float32 stops
# being exact at 2**24.
_BLOCK = 2**24


def _safe_dice(tp: Any, fp: Any, fn: Any) -> Any:
    """``2tp / (2tp + fp + fn)``, 0 where the denominator is 0 (numpy)."""
    denominator = 2.0 * tp + fp + fn
    return np.where(denominator > 0, 2.0 * tp / np.where(denominator > 0, denominator, 1.0), 0.0)


def _check_binary_truth(y_true: np.ndarray) -> None:
    values = np.unique(y_true)
    bad = values[(values != 0) & (values != 1)]
    if bad.size:
        raise ValueError(
            f"y_true must be a binary mask with values 0/1, found {bad[:5].tolist()}"
            f"{' ...' if bad.size > 5 else ''}"
        )


def pooled_dice(
    y_true: Any, y_pred: Any, threshold: float = 0.5, from_logits: bool = False
) -> float | np.ndarray:
    """Pooled (dataset-level) Dice of binary masks, in numpy.

    Args:
        y_true: binary masks, values 0/1, shape ``(B, H, W)`` (one class) or
            ``(B, H, W, C)`` (C classes, channels last).
        y_pred: probabilities (or logits when ``from_logits``), same shape as ``y_true``.
        threshold: a pixel is predicted positive when ``prob >= threshold``.
        from_logits: apply a sigmoid to ``y_pred`` first.

    Returns:
        For ``(B, H, W)`` inputs a float; for ``(B, H, W, C)`` an array ``(C,)`` of
        per-class Dice (average it for the NIH "avg Dice"). TP/FP/FN are summed over the
        batch and pixel axes before the ratio; a class empty in truth and prediction
        gives 0.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true shape {y_true.shape} != y_pred shape {y_pred.shape}")
    if y_true.ndim not in (3, 4):
        raise ValueError(f"masks must have shape (B, H, W) or (B, H, W, C), got {y_true.shape}")
    _check_binary_truth(y_true)
    if from_logits:
        y_pred = 1.0 / (1.0 + np.exp(-y_pred))
    truth = y_true.astype(bool)
    predicted = y_pred >= threshold
    axes = (0, 1, 2)
    tp = np.sum(truth & predicted, axis=axes, dtype=np.int64)
    fp = np.sum(~truth & predicted, axis=axes, dtype=np.int64)
    fn = np.sum(truth & ~predicted, axis=axes, dtype=np.int64)
    dice = _safe_dice(tp, fp, fn)
    return float(dice) if y_true.ndim == 3 else dice


@keras.saving.register_keras_serializable(package="lovt_keras")
class PooledDice(keras.metrics.Metric):
    """Streaming pooled Dice over all pixels seen, per class, averaged over classes.

    Keeps exact integer TP/FP/FN counts per class, so the value after streaming a test set
    batch by batch equals :func:`pooled_dice` on the whole set.

    Args:
        num_classes: number of mask channels C.
        threshold: a pixel is predicted positive when ``prob >= threshold``.
        from_logits: ``y_pred`` holds logits; a sigmoid is applied before thresholding.
        name: metric name.
        dtype: dtype of the result.

    ``update_state(y_true, y_pred, sample_weight=None)``:
        ``y_true`` binary masks ``(B, H, W, C)``, or ``(B, H, W)`` when C = 1; values > 0.5
        count as positive. ``y_pred`` probabilities or logits of the same shape.
        ``sample_weight`` is a MASK, not a weight, because counts stay integers: any shape
        broadcastable to ``(B, H, W, C)`` after adding trailing axes (e.g. ``(B,)`` to drop
        padded samples, or ``(B, H, W)``); pixels with weight > 0 are counted once, those
        with weight <= 0 are ignored.

    ``result()``: scalar, mean over classes of the per-class pooled Dice;
    ``per_class_result()``: ``(C,)``.
    """

    def __init__(
        self,
        num_classes: int = 1,
        threshold: float = 0.5,
        from_logits: bool = False,
        name: str = "dice",
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name, dtype=dtype)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.threshold = float(threshold)
        self.from_logits = bool(from_logits)
        # Row 0: number of full blocks of _BLOCK pixels, row 1: remainder (< _BLOCK).
        self.true_positives = self.add_variable(
            shape=(2, self.num_classes), initializer="zeros", dtype="int32", name="tp"
        )
        self.false_positives = self.add_variable(
            shape=(2, self.num_classes), initializer="zeros", dtype="int32", name="fp"
        )
        self.false_negatives = self.add_variable(
            shape=(2, self.num_classes), initializer="zeros", dtype="int32", name="fn"
        )

    def _as_channels_last(self, x: Tensor, name: str) -> Tensor:
        if len(x.shape) == 3 and self.num_classes == 1:
            return ops.expand_dims(x, -1)
        if len(x.shape) != 4:
            raise ValueError(
                f"{name} must have shape (B, H, W, {self.num_classes})"
                + (" or (B, H, W)" if self.num_classes == 1 else "")
                + f", got {tuple(x.shape)}"
            )
        if x.shape[-1] is not None and x.shape[-1] != self.num_classes:
            raise ValueError(
                f"{name} has {x.shape[-1]} channels, PooledDice(num_classes="
                f"{self.num_classes}) expects {self.num_classes}; shape {tuple(x.shape)}"
            )
        return x

    @staticmethod
    def _accumulate(variable: keras.Variable, batch_count: Tensor) -> None:
        remainder = variable[1] + batch_count
        carry = ops.floor_divide(remainder, _BLOCK)
        variable.assign(ops.stack([variable[0] + carry, remainder - carry * _BLOCK]))

    def update_state(self, y_true: Tensor, y_pred: Tensor, sample_weight: Tensor = None) -> None:
        y_true = self._as_channels_last(ops.convert_to_tensor(y_true), "y_true")
        y_pred = self._as_channels_last(ops.convert_to_tensor(y_pred), "y_pred")
        for true_dim, pred_dim in zip(y_true.shape, y_pred.shape):
            if true_dim is not None and pred_dim is not None and true_dim != pred_dim:
                raise ValueError(
                    f"y_true shape {tuple(y_true.shape)} != y_pred shape {tuple(y_pred.shape)}"
                )
        y_pred = ops.cast(y_pred, "float32")
        if self.from_logits:
            y_pred = ops.sigmoid(y_pred)
        truth = ops.greater(ops.cast(y_true, "float32"), 0.5)
        predicted = ops.greater_equal(y_pred, self.threshold)
        if sample_weight is not None:
            weight = ops.convert_to_tensor(sample_weight)
            while len(weight.shape) < 4:
                weight = ops.expand_dims(weight, -1)
            counted = ops.broadcast_to(ops.greater(weight, 0), ops.shape(truth))
            truth = ops.logical_and(truth, counted)
            predicted = ops.logical_and(predicted, counted)

        def count(mask: Tensor) -> Tensor:
            return ops.sum(ops.cast(mask, "int32"), axis=(0, 1, 2))

        self._accumulate(self.true_positives, count(ops.logical_and(truth, predicted)))
        self._accumulate(
            self.false_positives, count(ops.logical_and(ops.logical_not(truth), predicted))
        )
        self._accumulate(
            self.false_negatives, count(ops.logical_and(truth, ops.logical_not(predicted)))
        )

    @staticmethod
    def _total(variable: keras.Variable) -> Tensor:
        counts = ops.cast(ops.convert_to_tensor(variable), "float32")
        return counts[0] * float(_BLOCK) + counts[1]

    def per_class_result(self) -> Tensor:
        """Per-class pooled Dice, shape ``(C,)``; 0 for a class with no positive pixel."""
        tp = self._total(self.true_positives)
        denominator = (
            2.0 * tp + self._total(self.false_positives) + self._total(self.false_negatives)
        )
        dice = ops.where(denominator > 0, 2.0 * tp / ops.maximum(denominator, 1.0), 0.0)
        return ops.cast(dice, self.dtype)

    def result(self) -> Tensor:
        return ops.mean(self.per_class_result())

    def reset_state(self) -> None:
        for variable in (self.true_positives, self.false_positives, self.false_negatives):
            variable.assign(ops.zeros((2, self.num_classes), dtype="int32"))

    def get_config(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "threshold": self.threshold,
            "from_logits": self.from_logits,
            "name": self.name,
            "dtype": self.dtype,
        }


def dice_loss(
    y_true: Tensor,
    y_pred: Tensor,
    from_logits: bool = True,
    smooth: float = 0.0,
    eps: float = 1e-7,
    mode: str = "binary",
) -> Tensor:
    """Soft Dice loss with segmentation_models_pytorch ``DiceLoss`` semantics.

    ``mode='binary'`` is what the official code uses for every segmentation task: smp
    reshapes both tensors to ``(B, 1, -1)``, so ALL channels (all 8 NIH classes too) and
    all pixels of the batch are pooled into ONE soft Dice. ``mode='multilabel'`` keeps one
    soft Dice per channel and averages the per-channel losses. In both modes, per
    (pooled) class::

        dice = (2 sum(p * y) + smooth) / max(sum(p + y) + smooth, eps)
        loss = (1 - dice) * [sum(y) > 0]

    the sums running over batch and pixels. smp zeroes the loss of a class with no true
    pixel in the batch (Dice is undefined there) and still counts it in the mean over
    classes; an all-negative batch therefore gives loss 0 and no gradient.

    Args:
        y_true: binary masks ``(B, H, W)`` or ``(B, H, W, C)``.
        y_pred: logits (``from_logits=True``, smp's default) or probabilities, same shape.
        from_logits: apply a sigmoid to ``y_pred``.
        smooth: added to numerator and denominator (smp default 0).
        eps: lower clamp of the denominator (smp default 1e-7).
        mode: ``'binary'`` or ``'multilabel'``.

    Returns:
        Scalar float32 loss (already reduced over the batch).
    """
    if mode not in ("binary", "multilabel"):
        raise ValueError(f"mode must be 'binary' or 'multilabel', got {mode!r}")
    y_true = ops.cast(ops.convert_to_tensor(y_true), "float32")
    y_pred = ops.cast(ops.convert_to_tensor(y_pred), "float32")
    if len(y_true.shape) not in (3, 4) or len(y_pred.shape) != len(y_true.shape):
        raise ValueError(
            "y_true and y_pred must both have shape (B, H, W) or (B, H, W, C), got "
            f"{tuple(y_true.shape)} and {tuple(y_pred.shape)}"
        )
    if from_logits:
        y_pred = ops.sigmoid(y_pred)
    if len(y_true.shape) == 3:
        y_true = ops.expand_dims(y_true, -1)
        y_pred = ops.expand_dims(y_pred, -1)
    num_channels = y_true.shape[-1] if mode == "multilabel" else 1
    # Channels last: (B, H, W, C) -> (B, H*W, C), or (B, H*W*C, 1) when all are pooled.
    y_true = ops.reshape(y_true, (ops.shape(y_true)[0], -1, num_channels))
    y_pred = ops.reshape(y_pred, (ops.shape(y_pred)[0], -1, num_channels))
    intersection = ops.sum(y_pred * y_true, axis=(0, 1))
    cardinality = ops.sum(y_pred + y_true, axis=(0, 1))
    dice = (2.0 * intersection + smooth) / ops.maximum(cardinality + smooth, eps)
    present = ops.cast(ops.sum(y_true, axis=(0, 1)) > 0, "float32")
    return ops.mean((1.0 - dice) * present)
