"""The registry of downstream heads: one entry per head name of ``EvalTask.head``.

An entry says how to build the head, which task type it serves, which encoder feature
maps it reads and whether a frozen task may run it on cached features. The evaluation
(:mod:`lovt_keras.training.evaluation`) reads only this table, so adding a head is its
model module (a Keras layer mapping the feature dict to the task's outputs, e.g.
``lovt_keras/models/unet.py``) plus one :func:`register_downstream_head` call or entry
below. The task type decides the task model and the metrics: ``segmentation`` heads
return logits ``(B, H, W, C)`` for
:class:`~lovt_keras.models.segmentation_task.SegmentationTask`, ``detection`` heads the
YOLO outputs of :class:`~lovt_keras.models.detection_task.DetectionTask`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras

from lovt_keras import keys
from lovt_keras.data.downstream_batches import DETECTION, SEGMENTATION
from lovt_keras.models.linear_segmentation import LinearSegmentationHead
from lovt_keras.models.unet import UNetHead
from lovt_keras.models.yolov3 import YOLOv3Head

TASK_TYPES = (SEGMENTATION, DETECTION)


@dataclasses.dataclass(frozen=True)
class DownstreamHead:
    """One head of the registry.

    Attributes:
        build: ``build(num_classes, image_size, **options) -> keras.layers.Layer``: a new
            head for ``num_classes`` classes and square images of side ``image_size``;
            ``options`` are the task's ``head_options``.
        task_type: ``"segmentation"`` or ``"detection"``.
        feature_layers: ``feature_layers(head) -> tuple`` of the encoder feature maps the
            built head reads (checked against the encoder, and the maps cached).
        cacheable: a frozen task may train this head on cached encoder features (the
            ``feature_layers``, plus the images where ``reads_images``), computed once
            per image instead of once per image and epoch.
        reads_images: ``reads_images(head) -> bool``: the built head also reads the
            images (the U-Net's last skip), which are then cached with the maps.
        cache_on_disk: the cache may spill to memory-mapped files when it exceeds the
            feature store's memory budget; False: cache only what fits in memory (the
            U-Net's maps, 9 MB per 224 px image for a ResNet-50, would fill tens of GB
            of disk for a SIIM split).
    """

    build: Callable[..., keras.layers.Layer]
    task_type: str
    feature_layers: Callable[[keras.layers.Layer], tuple[str, ...]]
    cacheable: bool = False
    reads_images: Callable[[keras.layers.Layer], bool] = lambda head: False
    cache_on_disk: bool = True

    def __post_init__(self):
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"task_type must be one of {TASK_TYPES}, got {self.task_type!r}")


def _linear(num_classes: int, image_size: int, **options) -> keras.layers.Layer:
    # The output size is explicit so the head also works on cached features.
    options.setdefault("output_size", (image_size, image_size))
    return LinearSegmentationHead(num_classes=num_classes, **options)


def _unet(num_classes: int, image_size: int, **options) -> keras.layers.Layer:
    return UNetHead(num_classes=num_classes, **options)


def _yolov3(num_classes: int, image_size: int, **options) -> keras.layers.Layer:
    return YOLOv3Head(num_classes=num_classes, **options)


DOWNSTREAM_HEADS: dict[str, DownstreamHead] = {
    "linear": DownstreamHead(
        build=_linear, task_type=SEGMENTATION,
        feature_layers=lambda head: (head.feature_layer,), cacheable=True,
    ),
    # Also reads the images (its last skip) and the large conv1 / conv2 maps.
    "unet": DownstreamHead(
        build=_unet, task_type=SEGMENTATION,
        feature_layers=lambda head: ("conv5", *(n for n in head.skip_layers if n != keys.IMAGES)),
        cacheable=True, reads_images=lambda head: keys.IMAGES in head.skip_layers,
        cache_on_disk=False,
    ),
    "yolov3": DownstreamHead(
        build=_yolov3, task_type=DETECTION,
        feature_layers=lambda head: tuple(head.feature_layers), cacheable=True,
    ),
}


def downstream_head(name: str) -> DownstreamHead:
    """The registry entry of head ``name`` (a ``ValueError`` lists the names)."""
    try:
        return DOWNSTREAM_HEADS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"no downstream head {name!r}; the heads are {sorted(DOWNSTREAM_HEADS)}"
        ) from None


def register_downstream_head(name: str, head: DownstreamHead) -> None:
    """Adds head ``name`` to :data:`DOWNSTREAM_HEADS` (an existing name is an error)."""
    if name in DOWNSTREAM_HEADS:
        raise ValueError(f"a downstream head named {name!r} is already registered")
    if not isinstance(head, DownstreamHead):
        raise TypeError(f"register a DownstreamHead, got {type(head).__name__}")
    DOWNSTREAM_HEADS[name] = head
