import keras
import numpy as np
import pytest

from lovt_keras.training.tensorboard import EventFileWriter, TensorBoardLogger


def _read_events(path):
    """The events of one file, read by TensorFlow's record reader and ``Event`` protocol
    buffer, independent of the writer (it also checks both checksums of every record)."""
    import tensorflow as tf

    return list(tf.compat.v1.train.summary_iterator(str(path)))


def _scalars(events):
    return [(e.step, {v.tag: v.simple_value for v in e.summary.value}) for e in events]


def test_logger_writes_train_and_validation_scalars(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.125), loss="mse")
    logger = TensorBoardLogger(tmp_path)
    logger.set_model(model)
    logger.on_epoch_end(0, {"loss": 3.0, "val_loss": 2.0})
    logger.on_epoch_end(1, {"loss": 1.0, "val_loss": 1.5})
    # Readable before the end of training: every event is flushed when written.
    (train_file,) = (tmp_path / "train").glob("events.out.tfevents.*")
    events = _read_events(train_file)
    assert events[0].file_version == "brain.Event:2"
    assert _scalars(events[1:]) == [(0, {"epoch_loss": 3.0, "epoch_learning_rate": 0.125}),
                                    (1, {"epoch_loss": 1.0, "epoch_learning_rate": 0.125})]
    (val_file,) = (tmp_path / "validation").glob("events.out.tfevents.*")
    assert _scalars(_read_events(val_file)[1:]) == [(0, {"epoch_loss": 2.0}),
                                                    (1, {"epoch_loss": 1.5})]


def test_logger_in_fit_and_a_second_fit_writes_a_new_file(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.25), loss="mse")
    logger = TensorBoardLogger(tmp_path)
    x, y = np.ones((4, 2), "float32"), np.zeros((4, 1), "float32")
    history = model.fit(x, y, epochs=2, batch_size=4, callbacks=[logger], verbose=0)
    model.fit(x, y, epochs=3, initial_epoch=2, batch_size=4, callbacks=[logger], verbose=0)
    files = (tmp_path / "train").glob("events.out.tfevents.*")
    first, second = sorted((_scalars(_read_events(f)[1:]) for f in files), key=len, reverse=True)
    assert not (tmp_path / "validation").exists()
    assert [step for step, _ in first + second] == [0, 1, 2]
    np.testing.assert_allclose([v["epoch_loss"] for _, v in first], history.history["loss"],
                               rtol=1e-6)
    assert all(v["epoch_learning_rate"] == 0.25 for _, v in first)


def test_event_file_writer_appends(tmp_path):
    writer = EventFileWriter(tmp_path)
    writer.scalars(7, {"x": np.float32(0.5), "y": -1.5})
    with pytest.raises(ValueError, match="could not convert"):
        writer.scalars(1, {"x": "not a number"})
    writer.scalars(8, {"x": 2})
    events = _read_events(writer.path)
    assert len(events) == 3 and events[0].file_version == "brain.Event:2"
    assert _scalars(events[1:]) == [(7, {"x": 0.5, "y": -1.5}), (8, {"x": 2.0})]
    assert events[1].wall_time <= events[2].wall_time
    assert writer.path.name.startswith("events.out.tfevents.")
    # Two writers opened in the same second in one folder get files of their own.
    other = EventFileWriter(tmp_path)
    assert other.path != writer.path
    writer.close()
    other.close()
    assert len(_read_events(writer.path)) == 3
