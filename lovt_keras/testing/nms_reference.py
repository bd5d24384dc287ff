"""Reference implementations that tests and benchmarks compare the library with."""

from __future__ import annotations

import numpy as np

from lovt_keras.metrics import iou_xywh


def reference_nms(
    detections: np.ndarray, conf_threshold: float = 0.2, nms_iou: float = 0.4
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Greedy per-class NMS, one IoU call per kept box: the earlier
    ``lovt_keras.models.yolov3.non_max_suppression``, kept as the reference its block-wise
    version must equal (tests, ``tools.bench_nms``)."""
    results = []
    for image in np.asarray(detections):
        image = image[image[:, 4] >= conf_threshold]
        corner = np.concatenate([image[:, :2] - image[:, 2:4] / 2.0, image[:, 2:4]], axis=1)
        classes = np.argmax(image[:, 5:], axis=1) if len(image) else np.zeros(0, np.int64)
        kept = []
        for c in np.unique(classes):
            candidates = np.where(classes == c)[0]
            candidates = candidates[np.argsort(-image[candidates, 4], kind="stable")]
            while candidates.size:
                best, candidates = candidates[0], candidates[1:]
                kept.append(best)
                if candidates.size:
                    iou = iou_xywh(corner[best : best + 1], corner[candidates])[0]
                    candidates = candidates[iou < nms_iou]
        kept = np.asarray(kept, dtype=np.int64)
        results.append(
            (
                corner[kept].astype(np.float32).reshape(-1, 4),
                image[kept, 4].astype(np.float32),
                classes[kept].astype(np.int64),
            )
        )
    return results
