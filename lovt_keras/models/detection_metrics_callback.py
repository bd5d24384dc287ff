"""Validation mAP / FROC of a detection task, computed at each epoch end."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import keras
import numpy as np

from lovt_keras.keys import BOX_CLASSES, BOX_MASK, BOXES
from lovt_keras.metrics import FROC, DetectionMAP
from lovt_keras.models.detection_task import DetectionTask
from lovt_keras.models.downstream_task import require_keys


def iterate_batches(data: Any, batch_size: int = 32) -> Iterator[dict]:
    """Batch dicts of ``data``: a dict of arrays (cut into ``batch_size`` slices) or a
    finite re-iterable of batch dicts (list, ``keras.utils.PyDataset``,
    ``tf.data.Dataset``, ...); ``(x, y)`` tuples yield their ``x``."""
    if isinstance(data, dict):
        sizes = {name: len(value) for name, value in data.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Arrays of the batch dict have different lengths: {sizes}.")
        total = next(iter(sizes.values()))
        for start in range(0, total, batch_size):
            yield {name: value[start : start + batch_size] for name, value in data.items()}
        return
    if not isinstance(data, Iterable):
        raise TypeError(f"Cannot iterate batches of {type(data)}.")
    for item in data:
        yield item[0] if isinstance(item, tuple) else item


def _ground_truth(batch: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    require_keys(batch, (BOXES, BOX_CLASSES, BOX_MASK), "DetectionMetricsCallback")
    boxes = np.asarray(keras.ops.convert_to_numpy(batch[BOXES]))
    classes = np.asarray(keras.ops.convert_to_numpy(batch[BOX_CLASSES]))
    valid = np.asarray(keras.ops.convert_to_numpy(batch[BOX_MASK])).astype(bool)
    return [(b[v].reshape(-1, 4), c[v].reshape(-1)) for b, c, v in zip(boxes, classes, valid)]


class DetectionMetricsCallback(keras.callbacks.Callback):
    """Validation mAP or FROC of a :class:`DetectionTask`, written into the epoch logs.

    At each epoch end the model predicts the validation batches, decodes and NMS-es the
    boxes (confidence 0.2, IoU 0.4) and adds ``<prefix>mAP``, ``<prefix>mAP@0.5``,
    ``<prefix>mAP@0.75`` and the per-class ``<prefix><class>_mAP`` (``metric="map"``)
    or ``<prefix>froc`` (``metric="froc"``) to the logs. Place it before the callbacks
    that monitor these keys (:func:`~lovt_keras.models.downstream_recipe.
    downstream_callbacks` does). A task on cached feature maps is scored on batches of
    those maps (e.g. :class:`~lovt_keras.training.cached_feature_batches.
    CachedFeatureBatches`): the model reads the entries it needs
    (:meth:`~lovt_keras.models.downstream_task.DownstreamTask.model_inputs`).

    Args:
        validation_data: a dict of arrays or a finite re-iterable of batch dicts with
            the model's inputs (``images`` or the cached maps), ``boxes``,
            ``box_classes``, ``box_mask``.
        metric: ``"map"`` or ``"froc"``.
        batch_size: slice size when ``validation_data`` is a dict of arrays.
        conf_threshold, nms_iou: inference thresholds (0.2, 0.4).
        class_names: names of the per-class mAP entries.
        prefix: key prefix (``"val_"``).
    """

    def __init__(self, validation_data: Any, metric: str = "map", batch_size: int = 32,
                 conf_threshold: float = 0.2, nms_iou: float = 0.4,
                 class_names: Sequence[str] | None = None, prefix: str = "val_"):
        super().__init__()
        if metric not in ("map", "froc"):
            raise ValueError(f"metric must be 'map' or 'froc', got {metric!r}.")
        self.validation_data = validation_data
        self.metric = metric
        self.batch_size = batch_size
        self.conf_threshold = conf_threshold
        self.nms_iou = nms_iou
        self.class_names = class_names
        self.prefix = prefix

    def compute(self, model: DetectionTask) -> dict[str, float]:
        """The metric dict (without prefix) of ``model`` on the validation data."""
        num_classes = model.head.num_classes
        scorer = (
            DetectionMAP(num_classes, class_names=self.class_names)
            if self.metric == "map"
            else FROC()
        )
        for batch in iterate_batches(self.validation_data, self.batch_size):
            outputs = model.predict_on_batch(model.model_inputs(batch))
            detections = model.boxes_from_outputs(
                outputs, model.image_size_of(batch), self.conf_threshold, self.nms_iou
            )
            for (boxes, scores, classes), (gt_boxes, gt_classes) in zip(
                detections, _ground_truth(batch)
            ):
                if self.metric == "map":
                    scorer.add(boxes, scores, classes, gt_boxes, gt_classes)
                else:
                    scorer.add(boxes, scores, gt_boxes)
        if self.metric == "map":
            return scorer.result()
        return {"froc": scorer.result()[0]}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        for name, value in self.compute(self.model).items():
            logs[self.prefix + name] = value
