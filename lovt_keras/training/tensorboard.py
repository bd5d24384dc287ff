"""TensorBoard scalar logs on every backend, written with tensorboardX.

Keras' ``TensorBoard`` callback needs ``tf.summary`` (implemented in the ``tensorboard``
package, not a dependency of lovt_keras) and imports TensorFlow on every backend.
tensorboardX writes the same event files without TensorFlow: its ``RecordWriter`` does
the TFRecord framing and checksums and its protocol buffers are TensorBoard's ``Event``
and ``Summary``. This module keeps the layout of Keras' callback (``train`` and
``validation`` runs, ``epoch_<name>`` tags).
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

import keras

from lovt_keras.training.callbacks import current_learning_rate

# Event file names carry the second they were opened in; the process id and this counter
# keep two writers opened in the same second in one folder from sharing a file.
_FILE_NUMBERS = itertools.count()


class EventFileWriter:
    """Appends scalar events to a new ``events.out.tfevents.*`` file in ``log_dir``.

    Every event is flushed to disk when written, so the file can be read at any time.
    """

    def __init__(self, log_dir: str | os.PathLike):
        # tensorboardX imports torch whenever torch is installed (to accept its tensors):
        # imported here, only when a run logs, not with lovt_keras.training.
        from tensorboardX import RecordWriter
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        self._event, self._summary = Event, Summary
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
                f"{os.getpid()}.{next(_FILE_NUMBERS)}.v2")
        self.path = self.log_dir / name
        self._records = RecordWriter(str(self.path))
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())
        self._records.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Writes one event holding the scalars ``values`` (tag -> value) at ``step``."""
        summary = self._summary(value=[self._summary.Value(tag=tag, simple_value=float(value))
                                       for tag, value in values.items()])
        self._write(self._event(wall_time=time.time(), step=int(step), summary=summary))

    def close(self) -> None:
        self._records.close()


class TensorBoardLogger(keras.callbacks.Callback):
    """Per-epoch scalars in the layout of Keras' ``TensorBoard`` callback.

    ``log_dir/train`` gets ``epoch_<name>`` for every training log (``loss`` and the
    loss components) and ``epoch_learning_rate``; ``log_dir/validation`` gets the
    ``val_`` logs without the prefix. The step is the epoch (0-based), as in Keras.
    """

    def __init__(self, log_dir: str | os.PathLike):
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writers: dict[str, EventFileWriter] = {}

    def _writer(self, run: str) -> EventFileWriter:
        if run not in self._writers:
            self._writers[run] = EventFileWriter(self.log_dir / run)
        return self._writers[run]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        train = {f"epoch_{k}": float(v) for k, v in logs.items() if not k.startswith("val_")}
        train["epoch_learning_rate"] = current_learning_rate(self.model.optimizer)
        self._writer("train").scalars(epoch, train)
        validation = {f"epoch_{k[4:]}": float(v) for k, v in logs.items() if k.startswith("val_")}
        if validation:
            self._writer("validation").scalars(epoch, validation)

    def on_train_end(self, logs=None):
        # A later fit with this callback (the rest of a resumed epoch, then the following
        # epochs) writes new files in the same folders; TensorBoard reads them all.
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
