"""TensorBoard scalar logs without TensorFlow's summary ops or the tensorboard package.

Keras' ``TensorBoard`` callback needs ``tf.summary``, whose implementation lives in the
``tensorboard`` package (not a dependency of lovt_keras), and it imports TensorFlow on
every backend. An event file is simple: TFRecord framing (length, masked CRC-32C,
payload, masked CRC-32C) around ``tensorflow.Event`` protocol buffers. This module writes
the three fields that scalar plots need (wall time, step, ``Summary.Value(tag,
simple_value)``) by hand, which TensorBoard reads like any other event file.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import keras

from lovt_keras.training.callbacks import current_learning_rate


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord files."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int = 0, scalars: dict[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
    """The protobuf bytes of a ``tensorflow.Event`` with scalar summary values."""
    out = _field(1, 1) + struct.pack("<d", wall_time)  # double wall_time = 1
    if step:
        out += _field(2, 0) + _varint(int(step))  # int64 step = 2
    if file_version is not None:
        out += _length_delimited(3, file_version.encode())  # string file_version = 3
    if scalars:
        values = b"".join(
            _length_delimited(  # Summary.value = 1
                1,
                _length_delimited(1, tag.encode())  # Value.tag = 1
                + _field(2, 5) + struct.pack("<f", float(value)),  # Value.simple_value = 2
            )
            for tag, value in scalars.items()
        )
        out += _length_delimited(5, values)  # Summary summary = 5
    return out


def frame_record(payload: bytes) -> bytes:
    """TFRecord framing of one record."""
    length = struct.pack("<Q", len(payload))
    return (length + struct.pack("<I", _masked_crc(length)) + payload
            + struct.pack("<I", _masked_crc(payload)))


class EventFileWriter:
    """Appends scalar events to a new ``events.out.tfevents.*`` file in ``log_dir``."""

    def __init__(self, log_dir: str | os.PathLike):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.v2"
        self.path = self.log_dir / name
        self._write(encode_event(time.time(), file_version="brain.Event:2"))

    def _write(self, payload: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(frame_record(payload))
            f.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Writes one event holding the scalars ``values`` (tag -> value) at ``step``."""
        self._write(encode_event(time.time(), step, values))


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
