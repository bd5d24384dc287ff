"""Downstream task models (encoder + head), their training modes and recipe: an index.

Official code: ``src/models/downstream/downstream_evaluation.py``. One concern per
module; this module re-exports them under their historical import path
(``from lovt_keras.models.downstream import SegmentationTask`` keeps working):

- :mod:`lovt_keras.models.downstream_task`: :class:`DownstreamTask`, encoder + head and
  the modes (frozen, fine-tuned, frozen on cached feature maps);
- :mod:`lovt_keras.models.segmentation_task`: :class:`SegmentationTask` (Dice loss,
  pooled Dice);
- :mod:`lovt_keras.models.detection_task`: :class:`DetectionTask` (YOLOv3 loss, box
  decoding) and :func:`predict_boxes`;
- :mod:`lovt_keras.models.detection_metrics_callback`: :class:`DetectionMetricsCallback`
  (validation mAP / FROC into the epoch logs) and :func:`iterate_batches`;
- :mod:`lovt_keras.models.downstream_recipe`: :func:`downstream_optimizer` (Adam, weight
  decay 1e-6) and :func:`downstream_callbacks` (reduce-on-plateau, early stopping
  restoring the best weights, optional best checkpoint);
- :mod:`lovt_keras.models.warmup`: :func:`fit_with_warmup` (fine-tuning after a frozen
  warm-up) and :class:`WarmupFitResult`.

The encoder is anything meeting :mod:`lovt_keras.models.encoder_contract`. Batch dicts
(keys from :mod:`lovt_keras.keys`; ``images`` is ``keys.IMAGES``):

- segmentation: ``images`` ``(B, H, W, 1)`` float32, ``masks`` ``(B, H, W, C)`` 0/1;
- detection: ``images``, ``boxes`` ``(B, M, 4)`` float32 ``(x, y, w, h)`` pixels,
  padded, ``box_classes`` ``(B, M)`` int32, ``box_mask`` ``(B, M)`` bool (True = real
  box).
"""

from lovt_keras.keys import BOX_CLASSES, BOX_MASK, BOXES, MASKS
from lovt_keras.models.detection_metrics_callback import (
    DetectionMetricsCallback,
    iterate_batches,
)
from lovt_keras.models.detection_task import DetectionTask, predict_boxes
from lovt_keras.models.downstream_recipe import downstream_callbacks, downstream_optimizer
from lovt_keras.models.downstream_task import DownstreamTask
from lovt_keras.models.segmentation_task import SegmentationTask
from lovt_keras.models.warmup import WarmupFitResult, fit_with_warmup

__all__ = [
    "BOXES",
    "BOX_CLASSES",
    "BOX_MASK",
    "MASKS",
    "DetectionMetricsCallback",
    "DetectionTask",
    "DownstreamTask",
    "SegmentationTask",
    "WarmupFitResult",
    "downstream_callbacks",
    "downstream_optimizer",
    "fit_with_warmup",
    "iterate_batches",
    "predict_boxes",
]
