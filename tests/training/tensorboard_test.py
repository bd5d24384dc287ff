import struct

import keras
import numpy as np
import pytest

from lovt_keras.training.tensorboard import (
    EventFileWriter,
    TensorBoardLogger,
    crc32c,
    encode_event,
)


def _event_class():
    """``tensorflow.Event`` (the fields used) built from a descriptor with the real
    protobuf runtime, independent of the hand-written encoder."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name="lovt_test_event.proto", package="lovt_test")
    F = descriptor_pb2.FieldDescriptorProto
    value = proto.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
    summary = proto.message_type.add(name="Summary")
    summary.field.add(name="value", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                      type_name=".lovt_test.Value")
    event = proto.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".lovt_test.Summary")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("lovt_test.Event"))


def _read_records(path):
    """TFRecord framing, checking both checksums."""
    def masked(data):
        crc = crc32c(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    data = path.read_bytes()
    records, offset = [], 0
    while offset < len(data):
        header = data[offset:offset + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[offset + 8:offset + 12])[0] == masked(header)
        payload = data[offset + 12:offset + 12 + length]
        (crc,) = struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])
        assert crc == masked(payload)
        records.append(payload)
        offset += 16 + length
    return records


def test_crc32c_known_values():
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 test vector


def test_encoded_event_parses_with_protobuf():
    Event = _event_class()
    event = Event.FromString(encode_event(1234.5, 300, {"epoch_loss": 0.25, "b": -1.5}))
    assert event.wall_time == 1234.5 and event.step == 300
    assert [(v.tag, v.simple_value) for v in event.summary.value] == [
        ("epoch_loss", 0.25), ("b", -1.5)]
    assert Event.FromString(encode_event(1.0, file_version="brain.Event:2")).file_version == (
        "brain.Event:2")


def test_logger_writes_train_and_validation_scalars(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.125), loss="mse")
    logger = TensorBoardLogger(tmp_path)
    logger.set_model(model)
    logger.on_epoch_end(0, {"loss": 3.0, "val_loss": 2.0})
    logger.on_epoch_end(1, {"loss": 1.0, "val_loss": 1.5})
    Event = _event_class()
    (train_file,) = (tmp_path / "train").glob("events.out.tfevents.*")
    events = [Event.FromString(r) for r in _read_records(train_file)]
    assert events[0].file_version == "brain.Event:2"
    scalars = [(e.step, {v.tag: v.simple_value for v in e.summary.value}) for e in events[1:]]
    assert scalars == [(0, {"epoch_loss": 3.0, "epoch_learning_rate": 0.125}),
                       (1, {"epoch_loss": 1.0, "epoch_learning_rate": 0.125})]
    (val_file,) = (tmp_path / "validation").glob("events.out.tfevents.*")
    values = [[(v.tag, v.simple_value) for v in Event.FromString(r).summary.value]
              for r in _read_records(val_file)[1:]]
    assert values == [[("epoch_loss", 2.0)], [("epoch_loss", 1.5)]]


def test_event_file_writer_appends(tmp_path):
    writer = EventFileWriter(tmp_path)
    writer.scalars(7, {"x": np.float32(0.5)})
    assert len(_read_records(writer.path)) == 2
    assert writer.path.name.startswith("events.out.tfevents.")
    with pytest.raises(ValueError, match="could not convert"):
        writer.scalars(1, {"x": "not a number"})
