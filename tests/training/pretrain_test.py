"""Tests of ``pretrain``: the recipe's mechanics and an exact resume after ``kill -9``.

Most tests use a small regression model with the state that makes resuming hard
(BatchNorm statistics, dropout randomness, AdamW moments, gradient accumulators, the
schedule position, data that depends on the epoch), so they run in seconds; the LoVT
pretrainer itself is trained end to end by ``tests/tools/run_test.py``.

Run as a script (``python tests/training/pretrain_test.py OUT_DIR DELAY``) this file
trains the same configuration; the resume test runs it in a subprocess and kills it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from lovt_keras import keys
from lovt_keras.training.checkpoints import LAST, Checkpointer, read_checkpoint_state
from lovt_keras.training.pretrain import check_batch_fits_model, pretrain

REPO_ROOT = Path(__file__).resolve().parents[2]


@keras.saving.register_keras_serializable(package="lovt_keras_tests")
class TinyRegressor(keras.Model):
    """Dense -> BatchNorm -> Dropout -> Dense on ``x`` (B, 6); loss: MSE to ``y`` (B,).

    ``batch_norm=False`` makes the validation loss constant when the weights do not
    move (BatchNorm's moving statistics change with every training batch)."""

    def __init__(self, batch_norm=True, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.norm = keras.layers.BatchNormalization() if batch_norm else keras.layers.Identity()
        self.dropout = keras.layers.Dropout(0.3)
        self.head = keras.layers.Dense(1)
        self.mse_tracker = keras.metrics.Mean(name="mse_loss")

    def call(self, inputs, training=None):
        hidden = self.norm(self.hidden(inputs["x"]), training=training)
        return self.head(self.dropout(hidden, training=training))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = ops.mean(ops.square(ops.cast(y_pred[:, 0], "float32") - x["y"]))
        self.mse_tracker.update_state(loss)
        return loss


class EpochBatches(keras.utils.PyDataset):
    """Batch i of epoch e is a pure function of (seed, e, i), like PretrainingBatches."""

    def __init__(self, num_batches=4, batch_size=8, seed=0, delay=0.0):
        super().__init__()
        self.size, self.batch_size, self.seed, self.delay = (
            num_batches, batch_size, seed, delay)
        self.epoch = 0
        self.seen_epochs = []

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        if self.delay:
            time.sleep(self.delay)
        self.seen_epochs.append(self.epoch)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        x = rng.normal(size=(self.batch_size, 6)).astype("float32")
        y = (x @ np.arange(1, 7, dtype="float32") / 6 + 0.1 * rng.normal(size=self.batch_size))
        return {"x": x, "y": y.astype("float32")}


RECIPE = dict(epochs=3, learning_rate=0.05, weight_decay=1e-3, gradient_accumulation_steps=2,
              schedule="cosine_per_epoch", early_stopping_patience=None,
              checkpoint_every_steps=3, seed=7, tensorboard=False, export=False, verbose=0)


def train(output_dir, delay=0.0, batch_norm=True, **overrides):
    """The configuration of the resume test: 5 batches per epoch (4 used: two
    accumulation cycles), 3 epochs, a checkpoint every 3 mini-batches."""
    return pretrain(lambda: TinyRegressor(batch_norm), EpochBatches(5, delay=delay),
                    EpochBatches(2, seed=1), output_dir, **{**RECIPE, **overrides})


def _weights(model):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.variables]


def _records(output_dir):
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(reference, out, final_weights):
    for index, expected in enumerate(_weights(reference.model)):
        np.testing.assert_allclose(final_weights[index], expected, rtol=1e-5, atol=1e-6,
                                   err_msg=f"variable {reference.model.variables[index].path}")
    # The logs continue too: one record per epoch, equal to the uninterrupted ones.
    records, expected_records = _records(out), _records(reference.output_dir)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for got, want in zip(records, expected_records):
        for name in ("loss", "mse_loss", "val_loss", "learning_rate", "lr_first_update",
                     "lr_last_update", "step"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, err_msg=name)


def test_resume_after_kill_9_equals_uninterrupted_run(tmp_path):
    if keras.backend.backend() == "jax":
        pytest.skip("JAX processes start and compile slowly (~1 min each here); "
                    "test_resume_after_an_exception_equals_uninterrupted_run covers JAX")
    reference = train(tmp_path / "reference")
    assert reference.state.global_step == 12 and reference.state.epoch == 3
    assert int(ops.convert_to_numpy(reference.model.optimizer.iterations)) == 6  # updates

    out = tmp_path / "killed"
    command = [sys.executable, str(Path(__file__).resolve()), str(out), "0.4"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    last = out / "checkpoints" / LAST
    deadline = time.time() + 300
    try:
        while time.time() < deadline and process.poll() is None:
            if last.is_file() and read_checkpoint_state(last).global_step >= 3:
                break
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()[0].decode()[-3000:]
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    killed_at = read_checkpoint_state(last)
    assert not killed_at.finished and 3 <= killed_at.global_step < 12
    assert not list((out / "checkpoints").glob(".*tmp*"))  # no half-written file left

    resumed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed_from" in resumed.stdout
    final = np.load(out / "final_weights.npz")
    _assert_same_run(reference, out, [final[f"w{i}"] for i in range(len(final.files))])


class Interrupt(Exception):
    pass


def test_resume_after_an_exception_equals_uninterrupted_run(tmp_path, monkeypatch):
    """The same check in one process: the run dies right after mini-batch 7 (its last
    checkpoint is the mid-epoch one after mini-batch 6)."""
    if keras.backend.backend() != "jax":
        pytest.skip("the kill -9 test above covers this backend")
    reference = train(tmp_path / "reference")
    original = Checkpointer.on_train_batch_end

    def dying(self, batch, logs=None):
        original(self, batch, logs)
        if self.state.global_step == 7:
            raise Interrupt()

    monkeypatch.setattr(Checkpointer, "on_train_batch_end", dying)
    with pytest.raises(Interrupt):
        train(tmp_path / "run")
    monkeypatch.undo()
    assert read_checkpoint_state(tmp_path / "run" / "checkpoints" / LAST).global_step == 6
    resumed = train(tmp_path / "run")
    assert resumed.resumed_from == (1, 2)
    _assert_same_run(reference, tmp_path / "run", _weights(resumed.model))


def test_recipe_mechanics_accumulation_schedule_and_data_epochs(tmp_path):
    data = EpochBatches(5)
    result = pretrain(TinyRegressor, data, None, tmp_path, **{**RECIPE, "epochs": 2})
    info = json.loads((tmp_path / "data_info.json").read_text())
    assert info["batches_per_epoch"] == 5 and info["batches_per_epoch_used"] == 4
    # 2 epochs x 2 updates; the cosine period is 2 epochs: back at lr0 after epoch 2.
    assert int(ops.convert_to_numpy(result.model.optimizer.iterations)) == 4
    np.testing.assert_allclose([r["learning_rate"] for r in result.history], [0.0, 0.05],
                               atol=1e-9)
    # The rates the epochs trained with: lr(t) = 0.05 (1 + cos(pi t / 2)) / 2 at the
    # updates t = 0, 1 and t = 2, 3 (learning_rate above is the next update's, t = 2, 4).
    np.testing.assert_allclose([(r["lr_first_update"], r["lr_last_update"])
                                for r in result.history], [(0.05, 0.025), (0.0, 0.025)],
                               atol=1e-9)
    # Without validation data the training loss is monitored.
    assert result.state.best_epoch in (0, 1)
    assert sorted(set(data.seen_epochs)) == [0, 1]
    assert result.history[0]["step"] == 4 and result.history[1]["step"] == 8


def test_early_stopping_and_finished_runs_are_not_retrained(tmp_path):
    # lr 0: the validation loss never improves after epoch 1, patience 2 stops at epoch 3.
    kwargs = {**RECIPE, "epochs": 10, "learning_rate": 0.0, "schedule": "constant",
              "early_stopping_patience": 2}
    result = train(tmp_path, batch_norm=False, **kwargs)
    assert result.state.stopped_early and result.state.epoch == 3
    assert result.state.best_epoch == 0
    assert [r["epochs_without_improvement"] for r in result.history] == [0, 1, 2]
    again = train(tmp_path, batch_norm=False, **kwargs)
    assert again.resumed_from == (3, 0) and again.state.epoch == 3
    assert len(again.history) == 3


def _checkpoint_groups(path):
    return set(json.loads(bytes(np.load(path)["__meta__"]).decode())["groups"])


@pytest.mark.parametrize("export_checkpoint", ["best", "last"])
def test_a_finished_run_keeps_one_weights_only_checkpoint(tmp_path, export_checkpoint):
    # While training, last.npz holds the optimizer state too (to resume); once the run
    # is finished, only the weights it keeps remain, in last.npz.
    result = train(tmp_path, export_checkpoint=export_checkpoint)
    checkpoint_dir = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoint_dir.iterdir()) == [LAST]
    assert _checkpoint_groups(checkpoint_dir / LAST) == {"model"}
    state = read_checkpoint_state(checkpoint_dir / LAST)
    assert state.finished and state.epoch == 3 and state.global_step == 12
    stored = np.load(checkpoint_dir / LAST)
    kept = _weights(result.model)
    for index, expected in enumerate(kept):
        np.testing.assert_array_equal(stored[f"model.{index:06d}"], expected)

    # A rerun trains nothing and returns the same kept weights.
    again = train(tmp_path, export_checkpoint=export_checkpoint)
    assert again.resumed_from == (3, 0) and len(again.history) == 3
    for got, expected in zip(_weights(again.model), kept):
        np.testing.assert_array_equal(got, expected)
    assert sorted(p.name for p in checkpoint_dir.iterdir()) == [LAST]


def test_plateau_schedule_halves_the_learning_rate(tmp_path):
    kwargs = {**RECIPE, "epochs": 4, "learning_rate": 0.0, "schedule": "plateau",
              "plateau_patience": 1, "plateau_factor": 0.5, "gradient_accumulation_steps": 1}
    result = train(tmp_path, batch_norm=False, **kwargs)
    # lr 0 stays 0, but the callback's bookkeeping follows torch: bad epochs 1, 2 (> 1:
    # reduce and restart), 1.
    assert result.state.callbacks["reduce_lr_on_plateau"]["bad_epochs"] == 1
    # 1e-12 moves no float32 weight: the loss stays constant and the rate is halved
    # after epoch 3.
    result = train(tmp_path / "b", batch_norm=False, **{**kwargs, "learning_rate": 1e-12})
    lrs = [r["learning_rate"] for r in result.history]
    assert lrs[0] == pytest.approx(1e-12)
    assert lrs[-1] == pytest.approx(5e-13)


def test_mixed_precision_builds_a_bfloat16_model(tmp_path):
    result = train(tmp_path, epochs=1, mixed_precision=True)
    assert result.model.dtype_policy.name == "mixed_bfloat16"
    assert result.model.hidden.compute_dtype == "bfloat16"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    assert np.isfinite(result.history[0]["loss"])
    with pytest.raises(ValueError, match="dtype policy 'float32'"):
        pretrain(TinyRegressor(), EpochBatches(2), None, tmp_path / "x", mixed_precision=True,
                 gradient_accumulation_steps=1)


def test_invalid_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="fewer than one gradient-accumulation cycle"):
        train(tmp_path, gradient_accumulation_steps=8)
    with pytest.raises(ValueError, match="schedule='linear'"):
        train(tmp_path, schedule="linear")
    train(tmp_path / "run", epochs=1)
    with pytest.raises(ValueError, match="seed 7, this run has seed 8"):
        train(tmp_path / "run", epochs=1, seed=8)


def test_check_batch_fits_model_names_the_mismatch():
    from types import SimpleNamespace

    from lovt_keras.testing.fixtures import random_batch

    # The attributes the check reads (those of LoVTPretrainer's encoders).
    model = SimpleNamespace(
        image_encoder=SimpleNamespace(image_size=64),
        report_encoder=SimpleNamespace(
            max_sentences=4,
            backbone=SimpleNamespace(vocabulary_size=128, max_sequence_length=32)),
    )
    batch = random_batch(batch_size=2, image_size=64, max_tokens=32, max_sentences=4)
    check_batch_fits_model(model, batch)
    with pytest.raises(ValueError, match="images are 32x32 but the image encoder expects 64x64"):
        check_batch_fits_model(model, random_batch(2, image_size=32, max_sentences=4))
    bad = dict(batch, **{keys.TOKEN_IDS: batch[keys.TOKEN_IDS] + 500})
    with pytest.raises(ValueError, match="token id .* vocabulary has 128 tokens"):
        check_batch_fits_model(model, bad)
    with pytest.raises(ValueError, match="48 tokens per report .* at most 32"):
        check_batch_fits_model(model, random_batch(2, max_tokens=48, max_sentences=4))
    with pytest.raises(ValueError, match="6 sentence slots .* max_sentences=4"):
        check_batch_fits_model(model, random_batch(2, max_tokens=32, max_sentences=6))
    with pytest.raises(ValueError, match=r"lack the keys \['images'\]"):
        check_batch_fits_model(model, {k: v for k, v in batch.items() if k != keys.IMAGES})


if __name__ == "__main__":
    # The subprocess of test_resume_after_kill_9_equals_uninterrupted_run.
    result = train(sys.argv[1], delay=float(sys.argv[2]))
    np.savez(Path(sys.argv[1]) / "final_weights.npz",
             **{f"w{i}": w for i, w in enumerate(_weights(result.model))})
    print("resumed_from", result.resumed_from)


def test_chance_warning_names_a_global_loss_left_at_ln_batch():
    from lovt_keras.training.pretrain import chance_warning

    # ln 32 = 3.4657; 5 % below it is 3.2925.
    stuck = {"loss": 3.47, "global_image_to_report": 3.4345, "global_report_to_image": 3.30}
    warning = chance_warning(stuck, 32)
    assert warning.startswith("warning: the global loss ended at chance (global_image_to_report "
                              "3.4345, global_report_to_image 3.3000; ln 32 = 3.4657)")
    # One term below 95 % of chance: it learned something.
    assert chance_warning(dict(stuck, global_report_to_image=3.29), 32) is None
    assert chance_warning({"global_image_to_report": 2.02}, 32) is None
    # No global term (image-only or local-only methods), or no batch size: no warning.
    assert chance_warning({"loss": 3.47, "local_report_att2l": 3.4}, 32) is None
    assert chance_warning(stuck, None) is None and chance_warning({}, 32) is None
