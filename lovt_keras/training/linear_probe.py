"""Fast path of frozen tasks: encoder features computed once and cached.

In the frozen linear tasks (paper tasks 7-9, 12, 17, 18) the encoder runs in inference
mode (BatchNorm statistics frozen, no gradient) on images without augmentation, so its
conv5 features of a given image never change during training: computing them once per
image and training the 1x1-conv head on the cached maps gives the same batches, the same
loss and the same updates as :class:`~lovt_keras.models.segmentation_task.SegmentationTask`
on the images, at the cost of one forward pass per image instead of one per image and
epoch (tested in ``tests/training/linear_probe_test.py``). Only floating-point round-off
can differ (a backend may pick another convolution algorithm for another batch size).
The same holds for the frozen YOLOv3 tasks (4-6, 16), whose head reads conv3-conv5,
and the frozen U-Net tasks (11, 14), whose head reads conv1-conv5 and the images; the
U-Net's maps (9 MB per 224 px image for a ResNet-50) are cached only while they fit
the store's memory budget, never spilled to disk (a SIIM split would need tens of GB). Which heads may take this path is the ``cacheable`` flag of their
entry in :data:`lovt_keras.training.downstream_heads.DOWNSTREAM_HEADS`.

Pieces:

- :class:`~lovt_keras.training.feature_store.FeatureStore`: feature maps of a frozen
  encoder for every row of a split, in row order, kept in memory up to a byte budget and
  in memory-mapped ``.npy`` files in a temporary folder beyond it; several runs
  (learning rates, seeds, tasks) of one encoder share it. It also keeps each split's
  stored masks (``FeatureStore.packed_masks``), read once instead of in every batch.
- :class:`~lovt_keras.training.cached_feature_batches.CachedFeatureBatches`: the batches
  of a :class:`~lovt_keras.data.downstream_batches.DownstreamBatches` (same rows, same
  order per ``(seed, epoch)``) with the cached feature maps instead of the images.
- the normal task models on those batches: ``SegmentationTask(encoder, head,
  feature_inputs=("conv5",))`` and ``DetectionTask(encoder, head, feature_inputs=head.
  feature_layers, image_size=(H, W))`` read the maps instead of running the encoder;
  :class:`~lovt_keras.models.detection_metrics_callback.DetectionMetricsCallback` scores
  them on the cached batches.
"""

from lovt_keras.training.cached_feature_batches import CachedFeatureBatches
from lovt_keras.training.feature_store import (
    DEFAULT_DISK_BYTES,
    DEFAULT_MEMORY_BYTES,
    FeatureStore,
)

__all__ = ["DEFAULT_DISK_BYTES", "DEFAULT_MEMORY_BYTES", "CachedFeatureBatches", "FeatureStore"]
