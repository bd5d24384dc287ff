"""Fast path of frozen tasks: encoder features computed once and cached.

In the frozen linear tasks (paper tasks 7-9, 12, 17, 18) the encoder runs in inference
mode (BatchNorm statistics frozen, no gradient) on images without augmentation, so its
conv5 features of a given image never change during training: computing them once per
image and training the 1x1-conv head on the cached maps gives the same batches, the same
loss and the same updates as :class:`~lovt_keras.models.downstream.SegmentationTask` on
the images, at the cost of one forward pass per image instead of one per image and
epoch (tested in ``tests/training/linear_probe_test.py``). Only floating-point round-off
can differ (a backend may pick another convolution algorithm for another batch size).
The same holds for the frozen YOLOv3 tasks (4-6, 16), whose head reads conv3-conv5:
:class:`CachedDetectionTask` and :class:`CachedDetectionMetrics`. (The frozen U-Net also
reads conv1, conv2 and the images, too large to cache: 5 MB per 224 px image.)

Pieces:

- :class:`FeatureStore`: feature maps of a frozen encoder for every row of a split,
  in row order, kept in memory up to a byte budget and in memory-mapped ``.npy`` files
  in a temporary folder beyond it; several runs (learning rates, seeds, tasks) of one
  encoder share it.
- :class:`CachedFeatureBatches`: the batches of a
  :class:`~lovt_keras.data.downstream_batches.DownstreamBatches` (same rows, same order
  per ``(seed, epoch)``) with the cached feature maps instead of the images.
- :class:`CachedSegmentationTask` / :class:`CachedDetectionTask`: frozen task models
  whose encoder outputs come from the batch dict;
- :class:`CachedDetectionMetrics`: validation mAP / FROC of a ``CachedDetectionTask``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Hashable, Sequence
from typing import Any

import keras
import numpy as np

from lovt_keras import keys
from lovt_keras.data.downstream_batches import BOX_CLASSES, BOX_MASK, BOXES, DownstreamBatches
from lovt_keras.data.epochs import EpochTracking
from lovt_keras.metrics import FROC, DetectionMAP
from lovt_keras.models.downstream import DetectionMetricsCallback, DetectionTask, SegmentationTask

DEFAULT_MEMORY_BYTES = 2 * 1024**3
DEFAULT_DISK_BYTES = 32 * 1024**3


class FeatureStore:
    """Cached encoder feature maps, keyed by the caller (split, encoder, layers).

    Args:
        max_memory_bytes: features beyond this total go to ``.npy`` memory maps in a
            temporary folder (deleted by :meth:`close` or when the store is garbage
            collected).
        max_disk_bytes: the most bytes of memory maps (see :meth:`can_hold`).
        cache_dir: parent folder of that temporary folder (default: the system's).
        chunk_size: images per encoder call while computing.
    """

    def __init__(self, max_memory_bytes: int = DEFAULT_MEMORY_BYTES,
                 max_disk_bytes: int = DEFAULT_DISK_BYTES,
                 cache_dir: str | os.PathLike | None = None, chunk_size: int = 32):
        self.max_memory_bytes = int(max_memory_bytes)
        self.max_disk_bytes = int(max_disk_bytes)
        self.cache_dir = cache_dir
        self.chunk_size = int(chunk_size)
        self.memory_bytes = 0
        self.disk_bytes = 0
        self._entries: dict[Hashable, dict[str, np.ndarray]] = {}
        self._folder: str | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def can_hold(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more fit the memory and disk budgets."""
        used = self.memory_bytes + self.disk_bytes
        return used + int(nbytes) <= self.max_memory_bytes + self.max_disk_bytes

    def get(self, key: Hashable, encoder: keras.Model, batches: DownstreamBatches,
            layers: Sequence[str]) -> dict[str, np.ndarray]:
        """Feature maps ``layer -> float32 (N, h, w, d)`` of every row of ``batches``
        (in row order), computed with ``encoder`` (inference mode) on first use of
        ``key``. The caller guarantees that ``key`` identifies the encoder's weights,
        the rows and the layers."""
        with self._lock:
            cached = self._entries.get(key)
            if cached is None:
                cached = self._compute(encoder, batches, tuple(layers))
                self._entries[key] = cached
        return cached

    def _allocate(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        size = int(np.prod(shape)) * 4
        if self.memory_bytes + size <= self.max_memory_bytes:
            self.memory_bytes += size
            return np.empty(shape, np.float32)
        if self._folder is None:
            self._folder = tempfile.mkdtemp(prefix="lovt-features-", dir=self.cache_dir)
        self.disk_bytes += size
        path = os.path.join(self._folder, f"{len(os.listdir(self._folder))}-{name}.npy")
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)

    def _compute(self, encoder: keras.Model, batches: DownstreamBatches,
                 layers: tuple[str, ...]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for start in range(0, batches.num_rows, self.chunk_size):
            rows = np.arange(start, min(start + self.chunk_size, batches.num_rows))
            features = encoder.predict_on_batch(batches.images(rows))
            missing = [name for name in layers if name not in features]
            if missing:
                raise KeyError(f"the encoder has no feature map(s) {missing}; it has {sorted(features)}")
            for name in layers:
                value = np.asarray(keras.ops.convert_to_numpy(features[name]), np.float32)
                if name not in out:
                    out[name] = self._allocate(name, (batches.num_rows, *value.shape[1:]))
                out[name][rows] = value
        return out

    def close(self) -> None:
        """Forgets every entry and deletes the memory-mapped files."""
        with self._lock:
            self._entries.clear()
            self.memory_bytes = self.disk_bytes = 0
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)
                self._folder = None

    def __del__(self):
        folder = getattr(self, "_folder", None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


class CachedFeatureBatches(EpochTracking, keras.utils.PyDataset):
    """``base``'s batches with cached feature maps in place of the images.

    Batch ``i`` of epoch ``e`` holds the rows ``base.batch_rows(i, e)``: ``{layer:
    float32 (B, h, w, d), **base.targets(rows)}``. Epochs advance like ``base``'s
    (``on_epoch_end`` after a complete epoch, or ``set_epoch``).

    Args:
        base: the image batches (its shuffling, fraction and targets are used).
        features: ``layer -> (base.num_rows, h, w, d)`` in row order.
    """

    def __init__(self, base: DownstreamBatches, features: dict[str, np.ndarray]):
        super().__init__(workers=1, use_multiprocessing=False)
        for name, value in features.items():
            if len(value) != base.num_rows:
                raise ValueError(
                    f"feature map {name!r} has {len(value)} rows, the batches {base.num_rows}"
                )
        self.base = base
        self.features = features
        self._init_epochs()

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        epoch = self._epoch
        rows = self.base.batch_rows(index, epoch)
        batch = {name: np.asarray(value[rows]) for name, value in self.features.items()}
        batch.update(self.base.targets(rows))
        self._mark_served(index, epoch)
        return batch


@keras.saving.register_keras_serializable(package="lovt_keras")
class CachedSegmentationTask(SegmentationTask):
    """A frozen :class:`SegmentationTask` fed with precomputed encoder feature maps.

    Inputs are batch dicts holding the maps named ``feature_layers`` (e.g. ``conv5``
    ``(B, h, w, d)``) instead of ``images``; the head must know its output size
    (``LinearSegmentationHead(output_size=(H, W))``). Loss and metric are the parent's.
    ``encoder`` is kept only so that the head can be put back on it:
    ``SegmentationTask(encoder, task.head, frozen=True)`` is the same model on images.
    """

    def __init__(self, encoder: keras.Model, head: keras.layers.Layer,
                 feature_layers: Sequence[str] = ("conv5",), **kwargs):
        kwargs.pop("frozen", None)
        super().__init__(encoder, head, frozen=True, **kwargs)
        self.feature_layers = tuple(feature_layers)

    def encode(self, inputs: Any, training=None) -> dict:
        missing = [name for name in self.feature_layers if name not in inputs]
        if missing:
            raise KeyError(
                f"CachedSegmentationTask: the batch has no feature map(s) {missing}; "
                f"keys present: {sorted(inputs)}"
            )
        return {name: keras.ops.stop_gradient(inputs[name]) for name in self.feature_layers}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # The parent checks for ``images``; the cached maps stand in for them.
        x = dict(x)
        x.setdefault(keys.IMAGES, x[self.feature_layers[0]])
        return super().compute_loss(x, y, y_pred, sample_weight, training)

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("frozen", None)
        config["feature_layers"] = self.feature_layers
        return config


@keras.saving.register_keras_serializable(package="lovt_keras")
class CachedDetectionTask(DetectionTask):
    """A frozen :class:`DetectionTask` fed with precomputed encoder feature maps.

    Inputs are batch dicts holding the head's maps (``conv3``, ``conv4``, ``conv5``)
    instead of ``images``, plus the box entries for the loss; ``image_size`` (needed for
    the anchor strides) must be given. Loss and decoding are the parent's.
    """

    def __init__(self, encoder: keras.Model, head: keras.layers.Layer,
                 image_size: Sequence[int] | None = None, **kwargs):
        if image_size is None:
            raise ValueError("CachedDetectionTask needs image_size=(H, W) for the anchor strides")
        kwargs.pop("frozen", None)
        super().__init__(encoder, head, frozen=True, image_size=image_size, **kwargs)

    @property
    def feature_layers(self) -> tuple[str, ...]:
        return tuple(self.head.feature_layers)

    def encode(self, inputs: Any, training=None) -> dict:
        missing = [name for name in self.feature_layers if name not in inputs]
        if missing:
            raise KeyError(
                f"CachedDetectionTask: the batch has no feature map(s) {missing}; keys "
                f"present: {sorted(inputs)}"
            )
        return {name: keras.ops.stop_gradient(inputs[name]) for name in self.feature_layers}

    def _image_size(self, images: Any) -> tuple[int, int]:
        # The batch has no images; the strides come from the configured size.
        return self.image_size

    def loss_components(self, x: dict, y_pred: dict) -> dict:
        x = dict(x)
        x.setdefault(keys.IMAGES, x[self.feature_layers[0]])  # only checked for presence
        return super().loss_components(x, y_pred)

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("frozen", None)
        return config


class CachedDetectionMetrics(DetectionMetricsCallback):
    """:class:`DetectionMetricsCallback` for a :class:`CachedDetectionTask` on
    :class:`CachedFeatureBatches` (same decoding, NMS and scoring)."""

    def compute(self, model: CachedDetectionTask) -> dict[str, float]:
        num_classes = model.head.num_classes
        scorer = (
            DetectionMAP(num_classes, class_names=self.class_names)
            if self.metric == "map"
            else FROC()
        )
        data = self.validation_data
        for index in range(len(data)):
            batch = data[index]
            outputs = model.predict_on_batch({name: batch[name] for name in model.feature_layers})
            detections = model.boxes_from_outputs(
                outputs, model.image_size, self.conf_threshold, self.nms_iou
            )
            valid = batch[BOX_MASK].astype(bool)
            for k, (boxes, scores, classes) in enumerate(detections):
                gt_boxes = batch[BOXES][k][valid[k]].reshape(-1, 4)
                if self.metric == "map":
                    scorer.add(boxes, scores, classes, gt_boxes, batch[BOX_CLASSES][k][valid[k]])
                else:
                    scorer.add(boxes, scores, gt_boxes)
        if self.metric == "map":
            return scorer.result()
        return {"froc": scorer.result()[0]}
