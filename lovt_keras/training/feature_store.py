"""Feature maps of a frozen image encoder, computed once per image and kept for many runs.

The store behind the cached-feature fast path (:mod:`lovt_keras.training.linear_probe`):
in memory up to a byte budget, in memory-mapped ``.npy`` files in a temporary folder
beyond it. The encoder is anything meeting :mod:`lovt_keras.models.encoder_contract`;
only ``encoder.predict_on_batch(images)`` (inference mode) is called.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Hashable, Sequence

import keras
import numpy as np

from lovt_keras import keys
from lovt_keras.data.downstream_batches import DownstreamBatches

DEFAULT_MEMORY_BYTES = 2 * 1024**3
DEFAULT_DISK_BYTES = 32 * 1024**3


class FeatureStore:
    """Cached encoder feature maps, keyed by the caller (split, encoder, layers), and the
    splits' stored masks (:meth:`packed_masks`).

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
        self.mask_bytes = 0
        self._entries: dict[Hashable, dict[str, np.ndarray]] = {}
        self._masks: dict[Hashable, np.ndarray] = {}
        self._folder: str | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def can_hold(self, nbytes: int, disk: bool = True) -> bool:
        """Whether ``nbytes`` more fit the memory and disk budgets (``disk=False``: the
        memory budget alone)."""
        if not disk:
            return self.memory_bytes + int(nbytes) <= self.max_memory_bytes
        used = self.memory_bytes + self.disk_bytes
        return used + int(nbytes) <= self.max_memory_bytes + self.max_disk_bytes

    def get(self, key: Hashable, encoder: keras.Model, batches: DownstreamBatches,
            layers: Sequence[str]) -> dict[str, np.ndarray]:
        """Feature maps ``layer -> float32 (N, h, w, d)`` of every row of ``batches``
        (in row order), computed with ``encoder`` (inference mode) on first use of
        ``key``; the layer name ``images`` stands for the (normalized) images themselves. The caller guarantees that ``key`` identifies the encoder's weights,
        the rows and the layers."""
        with self._lock:
            cached = self._entries.get(key)
            if cached is None:
                cached = self._compute(encoder, batches, tuple(layers))
                self._entries[key] = cached
        return cached

    def packed_masks(self, key: Hashable, batches: DownstreamBatches) -> np.ndarray:
        """The stored masks of every row of ``batches`` (segmentation), uint8 ``(N, S,
        S)`` as :meth:`DownstreamBatches.packed_masks`, read on first use of ``key`` and
        kept in memory (``mask_bytes``; one byte per pixel, outside the feature maps'
        budgets, which ``memory_bytes`` and ``disk_bytes`` count): the runs of a split
        then index them instead of reading the dataset in every batch of every epoch. The caller
        guarantees that ``key`` identifies the split's rows; the masks do not depend on
        the encoder."""
        key = ("packed_masks", key)
        with self._lock:
            cached = self._masks.get(key)
            if cached is None:
                cached = np.empty((batches.num_rows, batches.image_size, batches.image_size),
                                  np.uint8)
                for start in range(0, batches.num_rows, self.chunk_size):
                    rows = np.arange(start, min(start + self.chunk_size, batches.num_rows))
                    cached[rows] = batches.packed_masks(rows)
                self._masks[key] = cached
                self.mask_bytes += cached.nbytes
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
            images = batches.images(rows)
            features = dict(encoder.predict_on_batch(images))
            features.setdefault(keys.IMAGES, images)
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
            self._masks.clear()
            self.memory_bytes = self.disk_bytes = self.mask_bytes = 0
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)
                self._folder = None

    def __del__(self):
        folder = getattr(self, "_folder", None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
