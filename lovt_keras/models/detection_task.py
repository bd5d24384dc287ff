"""Detection downstream task: image encoder + YOLOv3 head, its loss and box decoding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from lovt_keras import keys
from lovt_keras.keys import BOX_CLASSES, BOX_MASK, BOXES
from lovt_keras.models import yolov3
from lovt_keras.models.downstream_task import DownstreamTask, images_of, require_keys


@keras.saving.register_keras_serializable(package="lovt_keras")
class DetectionTask(DownstreamTask):
    """Detection: encoder + :class:`~lovt_keras.models.yolov3.YOLOv3Head`.

    ``y_pred`` is the head's dict ``yolo_conv5/yolo_conv4/yolo_conv3`` -> ``(B, H, W, A,
    5 + C)``. ``compute_loss`` reads ``boxes`` ``(B, M, 4)`` float32 ``(x, y, w, h)``
    pixels (padded), ``box_classes`` ``(B, M)`` int32 and ``box_mask`` ``(B, M)`` bool
    (True = real box) from the batch dict and returns
    :func:`~lovt_keras.models.yolov3.yolo_loss` (plus layer losses); each named component
    (``yolo_x_loss`` ...) has a ``keras.metrics.Mean`` tracker of the same name. The image
    size for the anchor strides is the static size of ``images`` (or ``image_size``, which
    a task on cached feature maps needs). Boxes come from :meth:`predict_boxes`.

    Args:
        encoder: an image encoder (see :mod:`lovt_keras.models.encoder_contract`).
        head: a ``YOLOv3Head``.
        frozen: frozen (True) or fine-tuned (False) encoder.
        anchors: ``(3, A, 2)`` anchors ``(w, h)`` in pixels, coarse scale first
            (default: the official nine).
        matching: ``"lovt"`` (official target assignment) or ``"yolov3"``, see
            :mod:`lovt_keras.models.yolov3`.
        ignore_threshold: 0.5.
        lambda_xy, lambda_wh: 2.5 and 2.5.
        image_size: ``(H, W)`` used when the images have no static size, and on cached
            feature maps.
        feature_inputs: cached feature maps read instead of the images (frozen only;
            the head's ``feature_layers``), see
            :class:`~lovt_keras.models.downstream_task.DownstreamTask`.
    """

    def __init__(
        self,
        encoder: keras.Model,
        head: keras.layers.Layer,
        frozen: bool = True,
        anchors: Sequence = yolov3.LOVT_ANCHORS,
        matching: str = "lovt",
        ignore_threshold: float = 0.5,
        lambda_xy: float = 2.5,
        lambda_wh: float = 2.5,
        image_size: Sequence[int] | None = None,
        feature_inputs: Sequence[str] | None = None,
        **kwargs,
    ):
        super().__init__(encoder, head, frozen=frozen, feature_inputs=feature_inputs, **kwargs)
        if matching not in yolov3.MATCHINGS:
            raise ValueError(f"matching={matching!r} is not one of {yolov3.MATCHINGS}.")
        if self.feature_inputs is not None and image_size is None:
            raise ValueError(
                "DetectionTask on cached feature maps needs image_size=(H, W) for the anchor "
                "strides."
            )
        anchors = np.asarray(anchors, dtype="float64")
        if anchors.shape != (3, self.head.num_anchors, 2):
            raise ValueError(
                f"anchors must have shape (3, {self.head.num_anchors}, 2), got {anchors.shape}."
            )
        self.anchors = tuple(tuple(tuple(float(v) for v in a) for a in s) for s in anchors)
        self.matching = matching
        self.ignore_threshold = float(ignore_threshold)
        self.lambda_xy = float(lambda_xy)
        self.lambda_wh = float(lambda_wh)
        self.image_size = None if image_size is None else tuple(int(s) for s in image_size)
        self.loss_trackers = {
            name: keras.metrics.Mean(name=name) for name in yolov3.LOSS_COMPONENTS
        }

    def _image_size(self, images: Any) -> tuple[int, int]:
        shape = () if images is None else tuple(images.shape)
        if len(shape) == 4 and shape[1] is not None and shape[2] is not None:
            return int(shape[1]), int(shape[2])
        if self.image_size is not None:
            return self.image_size
        raise ValueError(
            f"DetectionTask needs the image size for the anchor strides: images have shape "
            f"{shape}; pass image_size=(H, W)."
        )

    def image_size_of(self, batch: dict) -> tuple[int, int]:
        """``(H, W)`` of the images of ``batch`` (``image_size`` on cached feature maps)."""
        if self.feature_inputs is not None:
            return self.image_size
        return self._image_size(batch[keys.IMAGES])

    def loss_components(self, x: dict, y_pred: dict) -> dict:
        """The named, unweighted YOLO loss terms (float32 scalars) of a forward pass."""
        require_keys(x, (*self.input_keys, BOXES, BOX_CLASSES, BOX_MASK), "DetectionTask")
        return yolov3.yolo_loss_components(
            y_pred,
            x[BOXES],
            x[BOX_CLASSES],
            x[BOX_MASK],
            anchors=self.anchors,
            image_size=self.image_size_of(x),
            feature_layers=self.head.feature_layers,
            matching=self.matching,
            ignore_threshold=self.ignore_threshold,
        )

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        components = self.loss_components(x, y_pred)
        for name, value in components.items():
            self.loss_trackers[name].update_state(value)
        loss = yolov3.weighted_yolo_loss(components, self.lambda_xy, self.lambda_wh)
        if self.losses:
            loss = loss + ops.cast(ops.sum(self.losses), "float32")
        return loss

    def boxes_from_outputs(
        self, outputs: dict, image_size: Sequence[int], conf_threshold: float = 0.2,
        nms_iou: float = 0.4,
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Decoded + NMS detections from raw head outputs (numpy), one tuple per image."""
        detections = yolov3.decode_predictions(
            outputs, self.anchors, tuple(image_size), self.head.feature_layers
        )
        return yolov3.non_max_suppression(detections, conf_threshold, nms_iou)

    def predict_boxes(
        self, images: Any, conf_threshold: float = 0.2, nms_iou: float = 0.4,
        batch_size: int = 32,
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Detections per image: ``(boxes (P, 4) xywh pixels, scores (P,), classes (P,))``.

        Args:
            images: ``(N, H, W, 1)`` array (or a batch dict holding ``images``).
            conf_threshold: objectness threshold (0.2).
            nms_iou: NMS IoU threshold (0.4).
            batch_size: inference batch size.
        """
        if self.feature_inputs is not None:
            raise ValueError(
                "predict_boxes runs on images; this task reads cached feature maps: use "
                "DetectionTask(task.encoder, task.head, ...) or boxes_from_outputs."
            )
        images = np.asarray(keras.ops.convert_to_numpy(images_of(images)))
        outputs = self.predict(images, batch_size=batch_size, verbose=0)
        return self.boxes_from_outputs(outputs, images.shape[1:3], conf_threshold, nms_iou)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            anchors=self.anchors,
            matching=self.matching,
            ignore_threshold=self.ignore_threshold,
            lambda_xy=self.lambda_xy,
            lambda_wh=self.lambda_wh,
            image_size=self.image_size,
        )
        return config


def predict_boxes(
    task: DetectionTask, images: Any, conf_threshold: float = 0.2, nms_iou: float = 0.4,
    batch_size: int = 32,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Function form of :meth:`DetectionTask.predict_boxes`."""
    return task.predict_boxes(images, conf_threshold, nms_iou, batch_size)
