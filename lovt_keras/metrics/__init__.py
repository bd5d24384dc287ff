"""Localized-evaluation metrics: pooled Dice (+ Dice loss), detection mAP, Object-CXR FROC."""

from lovt_keras.metrics.detection import (
    LOVT_IOU_THRESHOLDS,
    LOVT_REPORTED_THRESHOLDS,
    DetectionMAP,
    iou_xywh,
    lovt_recall_thresholds,
    mean_average_precision,
    xywh_to_xyxy,
)
from lovt_keras.metrics.dice import PooledDice, dice_loss, pooled_dice
from lovt_keras.metrics.froc import FROC, OBJECT_CXR_FPS, froc

__all__ = [
    "FROC",
    "LOVT_IOU_THRESHOLDS",
    "LOVT_REPORTED_THRESHOLDS",
    "OBJECT_CXR_FPS",
    "DetectionMAP",
    "PooledDice",
    "dice_loss",
    "froc",
    "iou_xywh",
    "lovt_recall_thresholds",
    "mean_average_precision",
    "pooled_dice",
    "xywh_to_xyxy",
]
