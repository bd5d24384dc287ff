"""Epoch bookkeeping shared by the batch sequences (``keras.utils.PyDataset``).

The batches of an epoch are a pure function of ``(seed, epoch, index)``, so a sequence
must know which epoch Keras is drawing. Keras tells it through ``on_epoch_begin`` /
``on_epoch_end``, with two quirks that :class:`EpochTracking` absorbs:

- ``fit`` and ``evaluate`` also call ``on_epoch_end`` once before the first epoch
  (``EpochIterator.reset``), after drawing up to two batches for the ``tf.data``
  signature (TensorFlow, no ``on_epoch_begin``) or one batch to build the model (JAX,
  PyTorch, after ``on_epoch_begin``). That call must not skip epoch 0.
- an epoch cut short (``steps_per_epoch``, an exception) must not advance the epoch.

So the epoch advances at ``on_epoch_end`` only if ``on_epoch_begin`` opened it and every
batch of it was computed since. ``set_epoch`` selects an epoch explicitly (resuming, or
``lovt_keras.training.callbacks.SetDataEpoch`` at every epoch of ``fit``).
"""

from __future__ import annotations

import threading


class EpochTracking:
    """Mixin for a ``PyDataset`` whose batches depend on the epoch.

    The subclass calls ``_init_epochs()`` in its constructor, reads the epoch of a batch
    with ``epoch = self.epoch`` before computing it and reports it with
    ``self._mark_served(index, epoch)`` afterwards; ``len(self)`` is the number of
    batches per epoch.
    """

    def _init_epochs(self) -> None:
        self._epoch = 0
        self._served_lock = threading.Lock()
        self._served: set[int] = set()  # batches of the open epoch computed so far
        self._epoch_open = False  # on_epoch_begin was called since the last on_epoch_end

    @property
    def epoch(self) -> int:
        """The epoch whose batches ``__getitem__`` returns."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch of the following batches (e.g. ``initial_epoch`` when
        resuming a run)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        with self._served_lock:
            self._epoch = int(epoch)
            self._served = set()

    def on_epoch_begin(self) -> None:
        """Called by Keras before it draws the batches of an epoch."""
        with self._served_lock:
            self._epoch_open = True
            self._served = set()

    def on_epoch_end(self) -> None:
        """Called by Keras at the end of an epoch: moves to the next epoch if the epoch
        was opened with ``on_epoch_begin`` and every one of its batches was computed
        (see the module docstring)."""
        with self._served_lock:
            if self._epoch_open and len(self._served) >= len(self):
                self._epoch += 1
            self._epoch_open = False
            self._served = set()

    def _mark_served(self, index: int, epoch: int) -> None:
        """Records that batch ``index`` of ``epoch`` was computed (ignored if the epoch
        changed meanwhile)."""
        with self._served_lock:
            if epoch == self._epoch:
                self._served.add(int(index))
