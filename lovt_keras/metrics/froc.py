"""FROC of the Object-CXR challenge, as the official LoVT evaluation computes it.

Source: ``froc.py`` of the object-CXR challenge (github hlk-1135/object-CXR, a copy of
jfhealthcare/object-CXR) and its port in the official LoVT code
(``src/metrics/detection_metrics.py: FrocMetric``), which produced the reported numbers:

- Each predicted box ``(x, y, w, h)`` is reduced to its centre ``(x + w/2, y + h/2)``; it
  hits a ground-truth box ``(x1, y1, x2, y2) = (x, y, x + w, y + h)`` of the same image
  when ``x1 <= cx <= x2`` and ``y1 <= cy <= y2`` (borders included).
- Predictions of all images are visited by probability, descending (ties keep the order in
  which they were given: image order, then order within the image).
- A prediction inside at least one GT box is not a false positive. Every GT box containing
  it that was not hit before becomes hit (one prediction may hit several overlapping GT
  boxes); a further hit on an already-hit GT is ignored: it is neither a new hit nor a
  false positive.
- A prediction inside no GT box is a false positive (FP).
- After each prediction, if ``FP / num_images >= fps[k]`` for the next pending operating
  point k, the current sensitivity ``hits / num_GT`` is recorded for k and k advances by
  ONE; so when one step jumps over several operating points (few images), the later ones
  are recorded at the following predictions, hits made in between included. This quirk
  of the challenge code is kept.
- Once all operating points are recorded the scan stops. Operating points never reached
  take the last recorded sensitivity; if none was reached, all take ``hits / num_GT`` at
  the end of the scan (the LoVT port; the challenge script would fail there).
- FROC = mean of the sensitivities at ``fps`` = (0.125, 0.25, 0.5, 1, 2, 4, 8).
- ``num_images`` counts every image given, with or without GT or predictions.

With no GT box at all the sensitivity is undefined; LoVT returns 1.0 when no operating
point is reached (and divides by zero otherwise); here every sensitivity is 1.0 then.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lovt_keras.metrics.detection import check_xywh_boxes

OBJECT_CXR_FPS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


class FROC:
    """Accumulates Object-CXR detections image by image; see the module docstring.

    Args:
        fps: false positives per image at which the sensitivity is read, ascending.
    """

    def __init__(self, fps: Sequence[float] = OBJECT_CXR_FPS) -> None:
        fps = [float(f) for f in fps]
        if not fps or any(f <= 0 for f in fps) or any(b < a for a, b in zip(fps, fps[1:])):
            raise ValueError(
                f"fps must be a non-empty ascending list of positive numbers, got {fps}"
            )
        self.fps = tuple(fps)
        self.reset()

    def reset(self) -> None:
        """Forget all added images."""
        self._centres: list[np.ndarray] = []  # per image (P, 2)
        self._scores: list[np.ndarray] = []  # per image (P,)
        self._gt_xyxy: list[np.ndarray] = []  # per image (G, 4)

    @property
    def num_images(self) -> int:
        return len(self._gt_xyxy)

    def add(self, pred_boxes: Any, pred_scores: Any, gt_boxes: Any) -> None:
        """Adds one image.

        Args:
            pred_boxes: ``(P, 4)`` predicted boxes ``(x, y, w, h)`` in pixels.
            pred_scores: ``(P,)`` probabilities.
            gt_boxes: ``(G, 4)`` ground-truth boxes ``(x, y, w, h)``.
        """
        where = f"image {self.num_images}"
        pred_boxes = check_xywh_boxes(pred_boxes, "pred_boxes", where)
        gt_boxes = check_xywh_boxes(gt_boxes, "gt_boxes", where)
        scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
        if scores.shape[0] != len(pred_boxes):
            raise ValueError(
                f"{where}: {scores.shape[0]} pred_scores for {len(pred_boxes)} pred_boxes"
            )
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"{where}: pred_scores has non-finite values")
        self._centres.append(pred_boxes[:, :2] + pred_boxes[:, 2:] / 2.0)
        self._scores.append(scores)
        self._gt_xyxy.append(
            np.concatenate([gt_boxes[:, :2], gt_boxes[:, :2] + gt_boxes[:, 2:]], 1)
        )

    def result(self) -> tuple[float, np.ndarray]:
        """Returns ``(FROC, sensitivities (len(fps),))``."""
        num_images = self.num_images
        if num_images == 0:
            raise ValueError("FROC of zero images is undefined: add() at least one image")
        num_gt = sum(len(g) for g in self._gt_xyxy)
        image_ids = np.concatenate(
            [np.full(len(s), i, dtype=np.int64) for i, s in enumerate(self._scores)]
        )
        centres = np.concatenate(self._centres, axis=0)
        order = np.argsort(-np.concatenate(self._scores), kind="stable")
        # GT boxes get one global id each so that "already hit" is one flag per box.
        first_gt_id = np.cumsum([0] + [len(g) for g in self._gt_xyxy])
        hit = np.zeros(num_gt, dtype=bool)

        def sensitivity() -> float:
            return float(np.sum(hit)) / num_gt if num_gt else 1.0

        false_positives = 0
        recorded: list[float] = []
        for d in order:
            image = int(image_ids[d])
            boxes = self._gt_xyxy[image]
            x, y = centres[d]
            inside = (
                (boxes[:, 0] <= x) & (x <= boxes[:, 2]) & (boxes[:, 1] <= y) & (y <= boxes[:, 3])
            )
            if np.any(inside):
                hit[first_gt_id[image] + np.where(inside)[0]] = True
            else:
                false_positives += 1
            if false_positives / num_images >= self.fps[len(recorded)]:
                recorded.append(sensitivity())
                if len(recorded) == len(self.fps):
                    break
        if not recorded:
            sensitivities = np.full(len(self.fps), sensitivity())
        else:
            sensitivities = np.array(recorded + [recorded[-1]] * (len(self.fps) - len(recorded)))
        return float(np.mean(sensitivities)), sensitivities


def froc(
    predictions_per_image: Sequence[tuple[Any, Any]],
    gt_boxes_per_image: Sequence[Any],
    fps: Sequence[float] = OBJECT_CXR_FPS,
) -> tuple[float, np.ndarray]:
    """Object-CXR FROC.

    Args:
        predictions_per_image: per image ``(boxes (P, 4) xywh, scores (P,))``.
        gt_boxes_per_image: per image ground-truth boxes ``(G, 4)`` xywh (may be empty).
        fps: false positives per image of the operating points, ascending.

    Returns:
        ``(mean sensitivity, sensitivities (len(fps),))``.
    """
    if len(predictions_per_image) != len(gt_boxes_per_image):
        raise ValueError(
            f"{len(predictions_per_image)} prediction entries for "
            f"{len(gt_boxes_per_image)} ground-truth entries"
        )
    metric = FROC(fps)
    for (boxes, scores), gt_boxes in zip(predictions_per_image, gt_boxes_per_image):
        metric.add(boxes, scores, gt_boxes)
    return metric.result()
