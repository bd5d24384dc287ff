import json

import keras
import numpy as np
import pytest

from lovt_keras.training import checkpoints
from lovt_keras.training.checkpoints import (
    Checkpointer,
    CheckpointError,
    TrainingState,
    load_checkpoint,
    read_checkpoint_state,
    save_checkpoint,
)


def _model(units=4, dropout=0.5):
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(units)(inputs)
    hidden = keras.layers.BatchNormalization()(hidden)
    hidden = keras.layers.Dropout(dropout)(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(optimizer=keras.optimizers.AdamW(1e-2, gradient_accumulation_steps=2),
                  loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _numpy(variables):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


def _trained_model():
    model = _model()
    x = np.random.default_rng(0).normal(size=(12, 3)).astype("float32")
    model.fit(x, x[:, :1], batch_size=4, epochs=1, verbose=0, shuffle=False)
    return model


def test_round_trip_restores_every_variable_and_the_state(tmp_path):
    model = _trained_model()
    state = TrainingState(epoch=2, step_in_epoch=5, global_step=17, best_value=0.25,
                          best_epoch=1, seed=3, callbacks={"plateau": {"bad_epochs": 2}})
    path = save_checkpoint(tmp_path / "last.npz", model, state)
    assert read_checkpoint_state(path) == state

    fresh = _model()
    assert not all(np.array_equal(a, b) for a, b in zip(_numpy(model.variables),
                                                         _numpy(fresh.variables)))
    loaded_state, metrics = load_checkpoint(path, fresh, metrics=True)
    assert loaded_state == state
    for group in ("variables", "optimizer"):
        source = model.variables if group == "variables" else model.optimizer.variables
        target = fresh.variables if group == "variables" else fresh.optimizer.variables
        for a, b in zip(_numpy(source), _numpy(target)):
            np.testing.assert_array_equal(a, b)
    # Iterations (3 mini-batches), gradient accumulators and dropout seed states included.
    assert int(keras.ops.convert_to_numpy(fresh.optimizer._iterations)) == 3
    assert any("seed_generator_state" in v.path for v in model.variables)
    assert len(metrics) == len(model.metrics_variables)
    for a, b in zip(_numpy(model.metrics_variables), metrics):
        np.testing.assert_array_equal(a, b)


def test_interrupted_writes_leave_the_previous_checkpoint(tmp_path, monkeypatch):
    model = _trained_model()
    path = save_checkpoint(tmp_path / "last.npz", model, TrainingState(global_step=1))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(checkpoints.np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, TrainingState(global_step=2))
    monkeypatch.undo()
    assert read_checkpoint_state(path).global_step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.npz"]
    # A temporary file left by kill -9 (never renamed) does not disturb anything.
    (tmp_path / f".last.npz.tmp-{12345}").write_bytes(b"partial")
    save_checkpoint(path, model, TrainingState(global_step=3))
    assert read_checkpoint_state(path).global_step == 3


def test_mismatching_models_are_refused_with_the_variable_name(tmp_path):
    path = save_checkpoint(tmp_path / "c.npz", _trained_model(), TrainingState())
    with pytest.raises(CheckpointError, match=r"has shape \(3, 4\).* has \(3, 5\)"):
        load_checkpoint(path, _model(units=5))
    bigger = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.Dense(1)])
    bigger.compile(optimizer="adamw", loss="mse")
    bigger.optimizer.build(bigger.trainable_variables)
    with pytest.raises(CheckpointError, match="holds .* model variables, the model has"):
        load_checkpoint(path, bigger)
    (tmp_path / "other.npz").write_bytes(b"")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(CheckpointError, match="not a lovt_keras checkpoint"):
        load_checkpoint(tmp_path / "other.npz", _model())
    weights_only = save_checkpoint(tmp_path / "best.npz", _trained_model(), TrainingState(),
                                   optimizer=False, metrics=False)
    with pytest.raises(CheckpointError, match="holds no optimizer variables"):
        load_checkpoint(weights_only, _model())
    state, _ = load_checkpoint(weights_only, _model(), optimizer=False)
    assert state == TrainingState()


@pytest.mark.parametrize("keep_best", [True, False])
def test_checkpointer_schedule_of_saves(tmp_path, monkeypatch, keep_best):
    saved = []
    original = checkpoints.save_checkpoint

    def record(path, model, state, optimizer=True, metrics=True):
        saved.append((path.name, state.epoch, state.step_in_epoch, state.global_step, metrics))
        return original(path, model, state, optimizer=optimizer, metrics=metrics)

    monkeypatch.setattr(checkpoints, "save_checkpoint", record)
    model = _model()
    state = TrainingState()
    state.best_epoch = 0  # as if the best-value callback had chosen epoch 1
    x = np.ones((12, 3), "float32")
    model.fit(x, x[:, :1], batch_size=4, epochs=2, verbose=0, shuffle=False,
              callbacks=[Checkpointer(tmp_path, state, every_steps=2, batches_per_epoch=3,
                                      keep_best=keep_best)])
    # Mid-epoch saves every 2 mini-batches except on an epoch's last batch (its
    # end-of-epoch save follows), best at the end of the best epoch (unless the run
    # keeps its final weights), last at each end.
    best = [("best.npz", 0, 3, 3, False)] if keep_best else []
    assert saved == [
        ("last.npz", 0, 2, 2, True),
        *best,
        ("last.npz", 1, 0, 3, False),
        ("last.npz", 1, 1, 4, True),
        ("last.npz", 2, 0, 6, False),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        ["best.npz", "last.npz"] if keep_best else ["last.npz"])
    if keep_best:
        meta = json.loads(bytes(np.load(tmp_path / "best.npz")["__meta__"]).decode())
        assert set(meta["groups"]) == {"model"}
