"""Segmentation downstream task: image encoder + a head producing per-pixel logits."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from lovt_keras.keys import MASKS
from lovt_keras.metrics import PooledDice, dice_loss
from lovt_keras.models.downstream_task import DownstreamTask, require_keys


@keras.saving.register_keras_serializable(package="lovt_keras")
class SegmentationTask(DownstreamTask):
    """Segmentation: encoder + a head producing logits ``(B, H, W, C)``.

    Loss: :func:`lovt_keras.metrics.dice_loss` (smp ``DiceLoss(mode='binary')``: one soft
    Dice over all classes and pixels of the batch) plus any layer losses. Metric:
    ``dice``, the pooled Dice of :class:`lovt_keras.metrics.PooledDice` (mean over the
    classes; per-class values from ``task.dice.per_class_result()``), reset every epoch,
    so ``val_dice`` / ``evaluate(...)["dice"]`` is the dataset-level Dice.

    Inputs: ``images`` ``(B, H, W, 1)`` (a tensor or the batch dict), or with
    ``feature_inputs`` the batch dict of cached feature maps (then the head must know its
    output size: ``LinearSegmentationHead(output_size=(H, W))``); ``compute_loss`` reads
    ``masks`` ``(B, H, W, C)`` 0/1 (or ``(B, H, W)`` with one class) from the batch dict.

    Args:
        encoder: an image encoder (dict of feature maps ``conv1..conv5``, see
            :mod:`lovt_keras.models.encoder_contract`).
        head: :class:`~lovt_keras.models.linear_segmentation.LinearSegmentationHead` or
            :class:`~lovt_keras.models.unet.UNetHead` (anything with ``num_classes``
            mapping the feature dict to logits).
        frozen: frozen (True) or fine-tuned (False) encoder.
        feature_inputs: cached feature maps read instead of the images (frozen only),
            see :class:`~lovt_keras.models.downstream_task.DownstreamTask`.
    """

    def __init__(self, encoder: keras.Model, head: keras.layers.Layer, frozen: bool = True,
                 feature_inputs: Sequence[str] | None = None, **kwargs):
        super().__init__(encoder, head, frozen=frozen, feature_inputs=feature_inputs, **kwargs)
        self.dice = PooledDice(num_classes=self.head.num_classes, from_logits=True, name="dice")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        require_keys(x, (*self.input_keys, MASKS), "SegmentationTask")
        masks = x[MASKS]
        if len(masks.shape) == 3:  # (B, H, W) masks of a one-class task
            masks = ops.expand_dims(masks, -1)
        loss = dice_loss(masks, y_pred, from_logits=True, mode="binary")
        self.dice.update_state(masks, y_pred)
        if self.losses:
            loss = loss + ops.cast(ops.sum(self.losses), "float32")
        return loss
