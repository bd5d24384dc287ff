"""Detection mAP exactly as the official LoVT evaluation computes it.

The official code (``src/metrics/detection_metrics.py: BBoxMeanAPMetric``) wraps the
bes-dev ``mean_average_precision`` library (``MeanAveragePrecision2d``) and calls
``value(iou_thresholds=(0.4, 0.45, ..., 0.75), recall_thresholds=np.arange(0., 1.01,
0.01), mpolicy="soft")``. This module re-implements that library's semantics (read from
``mean_average_precision/mean_average_precision_2d.py`` and ``utils.py`` of
github bes-dev/mean_average_precision) in plain numpy:

- Boxes: the API takes ``(x, y, w, h)`` in pixels (top-left corner), converted as LoVT does
  to ``(x1, y1, x2, y2) = (x, y, x + w, y + h)``. IoU uses the VOC "+1 pixel" convention:
  ``area = (x2 - x1 + 1)(y2 - y1 + 1)``, intersection ``max(min x2 - max x1 + 1, 0) *
  (same for y)``; so touching boxes overlap by one pixel row.
- Per class, predictions of all images are sorted by confidence, descending. Ties keep the
  order in which they were added: the library sorts an object-dtype pandas column with an
  unstable quicksort, which is stable (insertion sort) up to 16 predictions per class and
  unspecified beyond, so with tied confidences the two can differ; without ties the
  results are bitwise equal (checked on 240 random cases against the PyPI release).
- "soft" matching (``check_box``): the prediction's GT boxes of the same image and class
  are visited by descending IoU (ties: higher GT index first); the first one with
  ``IoU > t`` (strict) that is not matched yet becomes a TP and is marked matched; an
  already matched one is skipped and the next is tried; reaching a GT with ``IoU <= t``,
  or running out of GTs, makes the prediction a FP. (The "greedy" policy would only try
  the best-IoU GT.) A prediction on an image without GT of its class is a FP. No
  difficult/crowd flags (LoVT sets them to 0), so nothing is ignored.
- Precision ``cumTP / max(cumTP + cumFP, eps)``, recall ``cumTP / max(num_GT, 1)`` with
  num_GT over all added images.
- AP: mean over the 101 recall thresholds ``np.arange(0., 1.01, 0.01)`` (float artefacts
  such as 0.29000000000000004 included) of ``max(precision[recall >= r])``, or 0 when no
  point reaches recall r. A class without predictions has AP 0.
- APs are stored in float32 (as the library does) in a ``(T, C)`` table; ``mAP`` is its
  mean over classes then over IoU thresholds; ``mAP@0.5`` / ``mAP@0.75`` the mean over
  classes at that threshold; ``<class>_mAP`` the mean over thresholds of one class.
- Images with neither GT nor predictions change nothing (they count neither for AP nor
  as GT).

The IoU thresholds default to the literal tuple of the official code
(0.4, 0.45, ..., 0.75), not ``np.arange(0.4, 0.76, 0.05)``, whose elements differ in the
last bits (e.g. 0.6499999999999999), which matters for the strict ``IoU > t`` test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

LOVT_IOU_THRESHOLDS = (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75)
LOVT_REPORTED_THRESHOLDS = (0.5, 0.75)


def lovt_recall_thresholds() -> np.ndarray:
    """The 101 recall thresholds of the official code, ``np.arange(0., 1.01, 0.01)``."""
    return np.arange(0.0, 1.01, 0.01)


def xywh_to_xyxy(boxes: Any) -> np.ndarray:
    """``(N, 4)`` boxes ``(x, y, w, h)`` -> ``(x1, y1, x2, y2) = (x, y, x + w, y + h)``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def iou_xywh(boxes_a: Any, boxes_b: Any) -> np.ndarray:
    """Pairwise IoU ``(A, B)`` of ``(x, y, w, h)`` boxes, with the "+1 pixel" convention.

    ``area = (x2 - x1 + 1)(y2 - y1 + 1)`` as in bes-dev ``compute_iou``; e.g. two unit
    boxes ``(0, 0, 1, 1)`` and ``(1, 0, 1, 1)`` share one pixel column: IoU = 2 / 6.
    """
    a = xywh_to_xyxy(boxes_a)[:, None, :]
    b = xywh_to_xyxy(boxes_b)[None, :, :]
    width = np.maximum(
        np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1.0, 0.0
    )
    height = np.maximum(
        np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1.0, 0.0
    )
    intersection = width * height

    def area(box: np.ndarray) -> np.ndarray:
        return (box[..., 2] - box[..., 0] + 1.0) * (box[..., 3] - box[..., 1] + 1.0)

    return intersection / (area(a) + area(b) - intersection)


def check_xywh_boxes(boxes: Any, name: str, where: str) -> np.ndarray:
    """float64 ``(N, 4)`` boxes ``(x, y, w, h)``; an empty input gives ``(0, 4)``.

    Raises:
        ValueError: another shape, non-finite values or a negative width/height (naming
            ``where``, ``name`` and the rows).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"{where}: {name} must have shape (N, 4) as (x, y, w, h), got {boxes.shape}"
        )
    if not np.all(np.isfinite(boxes)):
        raise ValueError(
            f"{where}: {name} has non-finite values: rows {np.where(~np.isfinite(boxes).all(1))[0].tolist()}"
        )
    bad = np.where((boxes[:, 2] < 0) | (boxes[:, 3] < 0))[0]
    if bad.size:
        raise ValueError(
            f"{where}: {name} rows {bad.tolist()} have negative width/height: {boxes[bad].tolist()}"
        )
    return boxes


def _check_vector(values: Any, length: int, name: str, where: str, dtype: Any) -> np.ndarray:
    values = np.asarray(values).reshape(-1) if np.ndim(values) else np.asarray(values).reshape(1)
    if values.shape[0] != length:
        raise ValueError(f"{where}: {name} has {values.shape[0]} entries for {length} boxes")
    if dtype is np.int64:
        if values.size and not np.all(np.equal(np.mod(values, 1), 0)):
            raise ValueError(f"{where}: {name} must be integer class ids, got {values.tolist()}")
        return values.astype(np.int64)
    values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{where}: {name} has non-finite values")
    return values


class DetectionMAP:
    """Accumulates detections image by image and computes the LoVT/RSNA-style mAP.

    Args:
        num_classes: number of object classes C (class ids 0..C-1).
        iou_thresholds: IoU thresholds averaged over (default: the official 0.4..0.75).
        recall_thresholds: recall points of the AP (default 101 points, 0..1 step 0.01).
        reported_thresholds: IoU thresholds also reported alone as ``mAP@<t>``; each must
            be one of ``iou_thresholds`` (up to float noise).
        class_names: names for the per-class ``<name>_mAP`` entries (default
            ``class_<c>``).

    Example::

        metric = DetectionMAP()
        for image in test_set:
            metric.add(pred_boxes, pred_scores, pred_classes, gt_boxes, gt_classes)
        metric.result()  # {"mAP": ..., "mAP@0.5": ..., "mAP@0.75": ..., "class_0_mAP": ...}
    """

    def __init__(
        self,
        num_classes: int = 1,
        iou_thresholds: Sequence[float] = LOVT_IOU_THRESHOLDS,
        recall_thresholds: Sequence[float] | None = None,
        reported_thresholds: Sequence[float] = LOVT_REPORTED_THRESHOLDS,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.iou_thresholds = np.atleast_1d(np.asarray(iou_thresholds, dtype=np.float64))
        self.recall_thresholds = (
            lovt_recall_thresholds()
            if recall_thresholds is None
            else np.atleast_1d(np.asarray(recall_thresholds, dtype=np.float64))
        )
        self.reported_thresholds = {}
        for nominal in reported_thresholds:
            close = np.where(np.isclose(self.iou_thresholds, nominal))[0]
            if close.size == 0:
                raise ValueError(
                    f"reported threshold {nominal} not in iou_thresholds {self.iou_thresholds.tolist()}"
                )
            self.reported_thresholds[f"mAP@{nominal}"] = int(close[0])
        if class_names is None:
            class_names = [f"class_{c}" for c in range(self.num_classes)]
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class_names for {self.num_classes} classes")
        self.class_names = list(class_names)
        self.reset()

    def reset(self) -> None:
        """Forget all added images."""
        self.num_images = 0
        self.num_gt = np.zeros(self.num_classes, dtype=np.int64)
        # Per class, one entry per image with predictions of that class:
        # (image index, scores (P,), IoU with that image's GT of the class (P, G)).
        self._detections: list[list[tuple[int, np.ndarray, np.ndarray]]] = [
            [] for _ in range(self.num_classes)
        ]

    def add(
        self,
        pred_boxes: Any,
        pred_scores: Any,
        pred_classes: Any,
        gt_boxes: Any,
        gt_classes: Any,
    ) -> None:
        """Adds one image.

        Args:
            pred_boxes: ``(P, 4)`` predicted boxes ``(x, y, w, h)`` in pixels.
            pred_scores: ``(P,)`` confidences.
            pred_classes: ``(P,)`` integer class ids, or None for all-zero (one class).
            gt_boxes: ``(G, 4)`` ground-truth boxes ``(x, y, w, h)``.
            gt_classes: ``(G,)`` integer class ids, or None for all-zero.
        """
        where = f"image {self.num_images}"
        pred_boxes = check_xywh_boxes(pred_boxes, "pred_boxes", where)
        gt_boxes = check_xywh_boxes(gt_boxes, "gt_boxes", where)
        num_pred, num_gt = len(pred_boxes), len(gt_boxes)
        pred_scores = _check_vector(pred_scores, num_pred, "pred_scores", where, np.float64)
        pred_classes = (
            np.zeros(num_pred, np.int64)
            if pred_classes is None
            else _check_vector(pred_classes, num_pred, "pred_classes", where, np.int64)
        )
        gt_classes = (
            np.zeros(num_gt, np.int64)
            if gt_classes is None
            else _check_vector(gt_classes, num_gt, "gt_classes", where, np.int64)
        )
        for name, classes in (("pred_classes", pred_classes), ("gt_classes", gt_classes)):
            bad = classes[(classes < 0) | (classes >= self.num_classes)]
            if bad.size:
                raise ValueError(
                    f"{where}: {name} has ids {np.unique(bad).tolist()} outside "
                    f"[0, {self.num_classes})"
                )
        for c in range(self.num_classes):
            gt_c = gt_boxes[gt_classes == c]
            self.num_gt[c] += len(gt_c)
            in_class = pred_classes == c
            if np.any(in_class):
                ious = iou_xywh(pred_boxes[in_class], gt_c)
                self._detections[c].append((self.num_images, pred_scores[in_class], ious))
        self.num_images += 1

    @staticmethod
    def _image_true_positives(scores: np.ndarray, ious: np.ndarray,
                              iou_threshold: float) -> np.ndarray:
        """1.0 for each prediction of one image (and class) that matches a free GT.

        Greedy in descending score order (stable: equal scores in prediction order,
        which is their order in the class-wide ranking too, since matching never
        crosses images). Only predictions with some IoU above the threshold can match,
        so only those are visited, and the visit ends when every GT is taken.
        """
        is_tp = np.zeros(len(scores), dtype=np.float64)
        if ious.shape[1] == 0:
            return is_tp
        above = ious > iou_threshold
        rows = np.flatnonzero(above.any(axis=1))
        if rows.size == 0:
            return is_tp
        rows = rows[np.argsort(-scores[rows], kind="stable")]
        taken = np.zeros(ious.shape[1], dtype=bool)
        for p in rows:
            candidates = above[p] & ~taken
            if candidates.any():
                # Best free GT above the threshold; on equal IoU the higher index, as the
                # library's reversed argsort visits it first.
                best = ious[p][candidates].max()
                gt_index = np.flatnonzero(candidates & (ious[p] == best))[-1]
                taken[gt_index] = True
                is_tp[p] = 1.0
                if taken.all():
                    break
        return is_tp

    def _class_average_precision(self, class_id: int, iou_threshold: float) -> float:
        entries = self._detections[class_id]
        if not entries:
            return 0.0
        scores = np.concatenate([s for _, s, _ in entries])
        matches = np.concatenate([
            self._image_true_positives(s, ious, iou_threshold) for _, s, ious in entries
        ])
        order = np.argsort(-scores, kind="stable")
        is_tp = matches[order]
        cum_tp = np.cumsum(is_tp)
        cum_fp = np.cumsum(1.0 - is_tp)
        recall = cum_tp / max(float(self.num_gt[class_id]), 1.0)
        precision = cum_tp / np.maximum(cum_tp + cum_fp, np.finfo(np.float64).eps)
        # max(precision[recall >= r]) for every r: recall never decreases, so it is the
        # running maximum from the end, read at the first rank reaching r.
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        first = np.searchsorted(recall, self.recall_thresholds, side="left")
        reached = first < recall.size
        interpolated = np.where(reached, envelope[np.minimum(first, recall.size - 1)], 0.0)
        average_precision = 0.0
        for p in interpolated:  # summed in threshold order, as before
            average_precision += float(p) / self.recall_thresholds.size
        return float(average_precision)

    def average_precisions(self) -> np.ndarray:
        """AP table ``(T, C)`` in float32: IoU thresholds x classes."""
        table = np.zeros((self.iou_thresholds.size, self.num_classes), dtype=np.float32)
        for t, threshold in enumerate(self.iou_thresholds):
            for c in range(self.num_classes):
                table[t, c] = self._class_average_precision(c, float(threshold))
        return table

    def result(self) -> dict[str, float]:
        """``{"mAP", "mAP@0.5", "mAP@0.75", "<class>_mAP" ...}`` as Python floats."""
        table = self.average_precisions()
        metrics = {"mAP": float(table.mean(axis=1).mean(axis=0))}
        for key, t in self.reported_thresholds.items():
            metrics[key] = float(table[t].mean())
        for c, name in enumerate(self.class_names):
            metrics[f"{name}_mAP"] = float(table[:, c].mean())
        return metrics


def mean_average_precision(
    predictions: Sequence[tuple[Any, Any, Any]],
    ground_truths: Sequence[tuple[Any, Any]],
    num_classes: int = 1,
    iou_thresholds: Sequence[float] = LOVT_IOU_THRESHOLDS,
    recall_thresholds: Sequence[float] | None = None,
    reported_thresholds: Sequence[float] = LOVT_REPORTED_THRESHOLDS,
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """Function form of :class:`DetectionMAP`.

    Args:
        predictions: per image ``(boxes (P, 4) xywh, scores (P,), classes (P,) or None)``.
        ground_truths: per image ``(boxes (G, 4) xywh, classes (G,) or None)``; same
            number of images as ``predictions``.
        Other arguments as :class:`DetectionMAP`.

    Returns:
        The dict of :meth:`DetectionMAP.result`.
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(
            f"{len(predictions)} prediction entries for {len(ground_truths)} ground-truth entries"
        )
    metric = DetectionMAP(
        num_classes, iou_thresholds, recall_thresholds, reported_thresholds, class_names
    )
    for (boxes, scores, classes), (gt_boxes, gt_classes) in zip(predictions, ground_truths):
        metric.add(boxes, scores, classes, gt_boxes, gt_classes)
    return metric.result()
