"""Downstream batches with cached encoder feature maps in place of the images."""

from __future__ import annotations

import keras
import numpy as np

from lovt_keras.data.downstream_batches import DownstreamBatches
from lovt_keras.data.epochs import EpochTracking


class CachedFeatureBatches(EpochTracking, keras.utils.PyDataset):
    """``base``'s batches with cached feature maps in place of the images.

    Batch ``i`` of epoch ``e`` holds the rows ``base.batch_rows(i, e)`` (same rows, same
    order per ``(seed, epoch)``): ``{layer: float32 (B, h, w, d), **base.targets(rows)}``,
    the inputs of a task built with ``feature_inputs`` (see
    :class:`~lovt_keras.models.downstream_task.DownstreamTask`). Epochs advance like
    ``base``'s (``on_epoch_end`` after a complete epoch, or ``set_epoch``).

    Args:
        base: the image batches (its shuffling, fraction and targets are used).
        features: ``layer -> (base.num_rows, h, w, d)`` in row order.
        packed_masks: segmentation: ``base.packed_masks`` of every row, read once (e.g.
            ``FeatureStore.packed_masks``), so that a batch's masks are indexed rather
            than read from the dataset; None = read them per batch.
    """

    def __init__(self, base: DownstreamBatches, features: dict[str, np.ndarray],
                 packed_masks: np.ndarray | None = None):
        super().__init__(workers=1, use_multiprocessing=False)
        for name, value in features.items():
            if len(value) != base.num_rows:
                raise ValueError(
                    f"feature map {name!r} has {len(value)} rows, the batches {base.num_rows}"
                )
        if packed_masks is not None and len(packed_masks) != base.num_rows:
            raise ValueError(
                f"packed_masks has {len(packed_masks)} rows, the batches {base.num_rows}"
            )
        self.base = base
        self.features = features
        self.packed_masks = packed_masks
        self._init_epochs()

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        epoch = self._epoch
        rows = self.base.batch_rows(index, epoch)
        batch = {name: np.asarray(value[rows]) for name, value in self.features.items()}
        batch.update(self.base.targets(rows, packed_masks=self.packed_masks))
        self._mark_served(index, epoch)
        return batch
