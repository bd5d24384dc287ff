import json
import math

import keras
import numpy as np
import pytest

from lovt_keras.training.callbacks import (
    BestAndEarlyStopping,
    MetricsLogger,
    ReduceLROnPlateau,
    format_epoch_summary,
    read_metrics,
    truncate_metrics,
)
from lovt_keras.training.checkpoints import TrainingState


def _model(learning_rate=1.0):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _feed(callback, values, key="val_loss"):
    stops = []
    for epoch, value in enumerate(values):
        callback.on_epoch_end(epoch, {key: value})
        stops.append(bool(callback.model.stop_training))
    return stops


def test_best_value_and_early_stopping_by_hand():
    state = TrainingState()
    callback = BestAndEarlyStopping(state, patience=2, min_delta=1e-3)
    callback.set_model(_model())
    callback.model.stop_training = False
    # 0.9995 is a strict improvement (new best checkpoint) but not by more than
    # min_delta (early stopping counts it as a bad epoch).
    stops = _feed(callback, [1.0, 0.9995, 0.9, float("nan"), 0.95])
    assert state.best_value == pytest.approx(0.9) and state.best_epoch == 2
    assert state.early_stopping_best == pytest.approx(0.9)
    assert stops == [False, False, False, False, True]
    assert state.epochs_without_improvement == 2 and state.stopped_early


def test_early_stopping_needs_the_monitored_key():
    callback = BestAndEarlyStopping(TrainingState(), monitor="val_loss")
    callback.set_model(_model())
    with pytest.raises(KeyError, match="monitors 'val_loss'.*\\['loss'\\]"):
        callback.on_epoch_end(0, {"loss": 1.0})


def torch_plateau(values, factor, patience, threshold=1e-4, lr=1.0):
    """torch.optim.lr_scheduler.ReduceLROnPlateau(mode='min', threshold_mode='rel'),
    transcribed: the learning rate after each epoch."""
    best, bad, out = math.inf, 0, []
    for value in values:
        if value < best * (1 - threshold):
            best, bad = value, 0
        else:
            bad += 1
        if bad > patience:
            if lr - lr * factor > 1e-8:
                lr *= factor
            bad = 0
        out.append(lr)
    return out


def test_reduce_lr_on_plateau_follows_torch_and_keeps_its_state():
    values = [1.0, 1.0, 1.0, 0.5, 0.49999, 0.5, 0.2, 0.3, 0.3, 0.3]
    state = TrainingState()
    callback = ReduceLROnPlateau(state, factor=0.5, patience=1)
    callback.set_model(_model(learning_rate=1.0))
    lrs = []
    for epoch, value in enumerate(values):
        callback.on_epoch_end(epoch, {"val_loss": value})
        lrs.append(float(keras.ops.convert_to_numpy(callback.model.optimizer.learning_rate)))
    np.testing.assert_allclose(lrs, torch_plateau(values, 0.5, 1), rtol=1e-6)
    np.testing.assert_allclose(lrs, [1, 1, .5, .5, .5, .25, .25, .25, .125, .125], rtol=1e-6)
    assert state.callbacks["reduce_lr_on_plateau"] == {"best": 0.2, "bad_epochs": 1}


def test_metrics_logger_records_and_summary(tmp_path):
    import io

    state = TrainingState(global_step=40, best_epoch=1, epochs_without_improvement=0)
    stream = io.StringIO()
    logger = MetricsLogger(tmp_path / "metrics.jsonl", state, epochs=10, stream=stream)
    logger.set_model(_model(learning_rate=0.5))
    logger.on_epoch_begin(1)
    logger.on_epoch_end(1, {"loss": 2.5, "global_image_to_report_loss": 1.25,
                            "val_loss": 2.0, "val_global_image_to_report_loss": 1.0})
    (record,) = read_metrics(tmp_path / "metrics.jsonl")
    assert record["epoch"] == 2 and record["step"] == 40 and record["best"] is True
    assert record["learning_rate"] == pytest.approx(0.5)
    assert record["loss"] == 2.5 and record["val_global_image_to_report_loss"] == 1.0
    line = stream.getvalue().strip()
    assert line.startswith("epoch 2/10  loss 2.5000  (global_image_to_report 1.2500)  "
                           "val_loss 2.0000 *best*  lr 0.5  ")


def test_summary_format_by_hand():
    record = {"epoch": 3, "loss": 1.0, "a_loss": 0.5, "val_loss": 0.75, "val_a_loss": 0.1,
              "learning_rate": 2.5e-05, "best": False, "seconds": 12.34}
    assert format_epoch_summary(record, 5) == (
        "epoch 3/5  loss 1.0000  (a 0.5000)  val_loss 0.7500  lr 2.5e-05  12.3s")


def test_truncate_metrics_keeps_completed_epochs(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"epoch": e, "loss": float(e)}) for e in (1, 2, 3)]
    path.write_text("\n".join(lines) + '\n{"epoch": 4, "lo')  # cut by a kill
    truncate_metrics(path, completed_epochs=2)
    assert [r["epoch"] for r in read_metrics(path)] == [1, 2]
    path.write_text('{"epoch": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        read_metrics(path)
