import json
import math

import keras
import numpy as np
import pytest

from lovt_keras.testing.test_case import to_numpy
from lovt_keras.training.callbacks import (
    GRADIENT_NORM,
    PARAMETER_NORM,
    BestAndEarlyStopping,
    MetricsLogger,
    NonFiniteLossError,
    NormLogger,
    ReduceLROnPlateau,
    StopOnNonFiniteLoss,
    format_epoch_summary,
    read_metrics,
    track_gradient_norm,
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
              "learning_rate": 0.0, "lr_first_update": 1e-4, "lr_last_update": 5e-05,
              "best": False, "seconds": 12.34}
    # The rates the epoch trained with (first..last update), not the next update's 0.
    assert format_epoch_summary(record, 5) == (
        "epoch 3/5  loss 1.0000  (a 0.5000)  val_loss 0.7500  lr 0.0001..5e-05  12.3s")
    constant = dict(record, lr_first_update=2.5e-05, lr_last_update=2.5e-05)
    assert "  lr 2.5e-05  12.3s" in format_epoch_summary(constant, 5)
    # A record of an older run, without them: the value it holds is labelled.
    old = {k: v for k, v in record.items() if not k.startswith("lr_")}
    assert "  next lr 0  12.3s" in format_epoch_summary(old, 5)


def test_epoch_learning_rates_of_a_schedule_and_of_a_plain_rate():
    from lovt_keras.training.callbacks import epoch_learning_rates
    from lovt_keras.training.schedules import CosinePerEpoch

    # 4 mini-batches per epoch, 2 per update: 2 updates per epoch, cosine period 2 epochs.
    optimizer = keras.optimizers.SGD(CosinePerEpoch(0.1, 2, gradient_accumulation_steps=2),
                                     gradient_accumulation_steps=2)
    # After epoch 2 (mini-batch 8): its updates were t = 2, 3 of lr(t) = 0.1 (1 + cos(pi t
    # / 2)) / 2.
    first, last = epoch_learning_rates(optimizer, 8, 4, rate_at_start=123.0)
    assert first == pytest.approx(0.0, abs=1e-9) and last == pytest.approx(0.05)
    plain = keras.optimizers.SGD(0.3)
    assert epoch_learning_rates(plain, 8, 4, rate_at_start=0.2) == (0.2, 0.2)


def test_truncate_metrics_keeps_completed_epochs(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"epoch": e, "loss": float(e)}) for e in (1, 2, 3)]
    path.write_text("\n".join(lines) + '\n{"epoch": 4, "lo')  # cut by a kill
    truncate_metrics(path, completed_epochs=2)
    assert [r["epoch"] for r in read_metrics(path)] == [1, 2]
    path.write_text('{"epoch": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        read_metrics(path)


def test_stop_on_non_finite_loss_names_step_and_components_by_hand():
    callback = StopOnNonFiniteLoss(resume_offset=10)
    callback.set_model(_model())
    callback.on_epoch_begin(2)
    callback.on_train_batch_end(0, {"loss": 1.0, "a_loss": 0.5})  # finite: nothing
    with pytest.raises(NonFiniteLossError) as error:
        callback.on_train_batch_end(4, {"loss": np.float32("inf"), "a_loss": 1.0,
                                        "b_loss": float("nan"), "accuracy": float("nan")})
    assert str(error.value).startswith(
        "non-finite training loss at epoch 3, batch 15: loss=inf, b_loss=nan")
    assert "a_loss" not in str(error.value) and "accuracy" not in str(error.value)
    assert callback.model.stop_training
    callback.on_epoch_begin(3)  # the resume offset applies to the first epoch only
    with pytest.raises(NonFiniteLossError, match="epoch 4, batch 1: a_loss=nan"):
        callback.on_train_batch_end(0, {"loss": 1.0, "a_loss": float("nan")})


class _TwoLosses(keras.Model):
    """``loss = first_loss + second_loss``; ``second_loss`` is the mean log of the
    inputs' first column, NaN for a batch with a negative entry there."""

    def __init__(self):
        super().__init__(name="two_losses")  # TensorFlow rejects the default "__two_losses"
        self.dense = keras.layers.Dense(1)
        self.trackers = [keras.metrics.Mean(name=n) for n in ("first_loss", "second_loss")]

    def call(self, x):
        return self.dense(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        first = keras.ops.mean(keras.ops.square(y_pred - y))
        second = keras.ops.mean(keras.ops.log(x[:, 0]))
        self.trackers[0].update_state(first)
        self.trackers[1].update_state(second)
        return first + second


def test_a_nan_loss_stops_fit_naming_step_and_component():
    x = np.ones((8, 2), "float32")
    x[5, 0] = -1.0  # second batch of 4 -> log(-1) = NaN
    model = _TwoLosses()
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    after = []
    spy = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: after.append(b))
    with pytest.raises(NonFiniteLossError) as error:
        model.fit(x, np.zeros((8, 1), "float32"), batch_size=4, epochs=3, shuffle=False,
                  verbose=0, callbacks=[StopOnNonFiniteLoss(), spy])
    message = str(error.value)
    assert message.startswith("non-finite training loss at epoch 1, batch 2: "), message
    assert "loss=nan" in message and "second_loss=nan" in message
    assert "first_loss" not in message
    assert after == [0]  # the callbacks after it never saw the bad batch


def _embedding_model(learning_rate):
    """ids (B, 4) -> Embedding(5, 3) -> mean over tokens -> Dense(1); MSE."""
    model = keras.Sequential([
        keras.Input((4,), dtype="int32"),
        keras.layers.Embedding(5, 3, embeddings_initializer=keras.initializers.RandomNormal(
            seed=1)),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(1, kernel_initializer=keras.initializers.RandomNormal(seed=2),
                           bias_initializer="ones"),
    ])
    optimizer = track_gradient_norm(keras.optimizers.SGD(learning_rate))
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _numpy_sgd_norms(weights, batches, learning_rate, epochs):
    """Per epoch: the mean gradient norm (at the weights each step starts from) and
    the parameter norm at the end; gradients written out by hand, in float64."""
    embeddings, kernel, bias = (np.asarray(w, np.float64) for w in weights)
    records = []
    for _ in range(epochs):
        norms = []
        for ids, y in batches:
            hidden = embeddings[ids].mean(1)  # (B, 3)
            residual = 2 * (hidden @ kernel + bias - y) / len(ids)  # d loss / d pred
            g_kernel = hidden.T @ residual
            g_bias = residual.sum(0)
            g_embeddings = np.zeros_like(embeddings)
            for n, row in enumerate(ids):
                for token in row:  # repeated ids add up
                    g_embeddings[token] += residual[n, 0] * kernel[:, 0] / ids.shape[1]
            grads = (g_embeddings, g_kernel, g_bias)
            norms.append(np.sqrt(sum((g * g).sum() for g in grads)))
            embeddings = embeddings - learning_rate * g_embeddings
            kernel = kernel - learning_rate * g_kernel
            bias = bias - learning_rate * g_bias
        parameters = np.sqrt(sum((w * w).sum() for w in (embeddings, kernel, bias)))
        records.append((np.mean(norms), parameters))
    return records


def test_norm_logger_matches_numpy_gradient_and_parameter_norms():
    ids = np.array([[1, 1, 2, 4], [0, 3, 3, 3], [2, 2, 2, 1],
                    [4, 4, 0, 1], [3, 3, 3, 3], [0, 1, 2, 4]], "int32")
    y = np.array([[0.5], [-1.0], [2.0], [1.5], [0.0], [-0.5]], "float32")
    model = _embedding_model(learning_rate=0.1)
    model(ids[:1])
    optimizer_variables = len(model.optimizer.variables)
    assert track_gradient_norm(model.optimizer) is model.optimizer  # once is enough
    assert len(model.optimizer.variables) == optimizer_variables
    initial = [to_numpy(w) for w in model.trainable_weights]
    history = model.fit(ids, y, batch_size=3, epochs=2, shuffle=False, verbose=0,
                        callbacks=[NormLogger()]).history
    expected = _numpy_sgd_norms(initial, [(ids[:3], y[:3]), (ids[3:], y[3:])], 0.1, 2)
    np.testing.assert_allclose(history[GRADIENT_NORM], [e[0] for e in expected], rtol=1e-5)
    np.testing.assert_allclose(history[PARAMETER_NORM], [e[1] for e in expected], rtol=1e-5)
    final = np.sqrt(sum((to_numpy(w).astype(np.float64) ** 2).sum()
                        for w in model.trainable_weights))
    np.testing.assert_allclose(history[PARAMETER_NORM][-1], final, rtol=1e-6)
    # Read and reset at every epoch end.
    total, count = (v for v in model.optimizer.variables if "gradient_norm" in v.path)
    assert float(to_numpy(total)) == 0 and float(to_numpy(count)) == 0


def test_norm_logger_without_gradient_tracking_logs_the_parameter_norm():
    model = _model()
    x, y = np.ones((4, 2), "float32"), np.zeros((4, 1), "float32")
    history = model.fit(x, y, epochs=1, verbose=0, callbacks=[NormLogger()]).history
    assert GRADIENT_NORM not in history
    weights = [to_numpy(w) for w in model.trainable_weights]
    np.testing.assert_allclose(history[PARAMETER_NORM][0],
                               np.sqrt(sum((w * w).sum() for w in weights)), rtol=1e-6)
