"""Callbacks of the training programs; their state lives in a shared ``TrainingState``.

Keeping the state of early stopping, the best value and the plateau scheduler in the
``TrainingState`` (instead of inside Keras' own callbacks) is what lets a run that was
killed continue exactly: the state is saved with every checkpoint and restored before
``fit`` starts again.

Training also says when it goes wrong, as big_vision does: ``StopOnNonFiniteLoss`` stops
at the first non-finite loss, naming the step and the component, and ``NormLogger`` puts
the parameter norm and (with ``track_gradient_norm``) the gradient norm beside the losses
in the epoch logs.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import keras
import numpy as np
from keras import ops

from lovt_keras.files import write_atomically
from lovt_keras.training.checkpoints import TrainingState

PARAMETER_NORM = "parameter_norm"
GRADIENT_NORM = "gradient_norm"


def _float(value) -> float:
    return float(np.asarray(keras.ops.convert_to_numpy(value)))


def global_norm(tensors) -> Any:
    """``sqrt(sum of the squares of every entry)`` of a list of tensors or variables.

    None entries (variables without a gradient) are skipped. Computed in float32 with
    ``keras.ops``; returns a float32 scalar tensor (0 for an empty list).
    """
    # reshape first: it turns TensorFlow's IndexedSlices (embedding gradients) into
    # dense tensors, summing duplicate rows; squaring the slices' values directly
    # would square each duplicate separately.
    squares = [
        ops.sum(ops.square(ops.cast(ops.reshape(t, (-1,)), "float32")))
        for t in tensors if t is not None
    ]
    if not squares:
        return ops.zeros((), "float32")
    return ops.sqrt(ops.sum(ops.stack(squares)))


def track_gradient_norm(optimizer):
    """Makes ``optimizer`` add up the global L2 norm of every gradient it applies.

    Two float32 optimizer variables are added, ``gradient_norm_sum`` and
    ``gradient_norm_count`` (the gradients applied since ``NormLogger`` last read them),
    and the instance's ``apply`` is wrapped to update them. Keras' trainers call
    ``apply`` on every backend (TensorFlow and PyTorch directly, JAX inside
    ``stateless_apply``, whose scope carries the two variables through the compiled
    step like the Adam moments), so no per-backend ``train_step`` is needed. The norm
    is of each mini-batch's gradient as the optimizer receives it (after loss-scale
    unscaling; before clipping and gradient accumulation); a ``LossScaleOptimizer``
    skips, and so does not count, the steps whose scaled gradients overflowed.

    The instance is wrapped rather than subclassed: on PyTorch ``keras.optimizers.Adam``
    and ``AdamW`` construct fused torch-specific classes that a subclass would lose.
    Call it before the optimizer's variables are first checkpointed: the two variables
    are saved with them (a checkpoint written without them does not load into an
    optimizer with them, and the other way round).

    Args:
        optimizer: a Keras optimizer (or a ``LossScaleOptimizer``: its inner optimizer
            is tracked). Built or not.

    Returns:
        The optimizer (tracking it twice changes nothing).
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if _gradient_norm_variables(inner) is not None:
        return optimizer
    total = inner.add_variable((), initializer="zeros", dtype="float32",
                               name="gradient_norm_sum")
    count = inner.add_variable((), initializer="zeros", dtype="float32",
                               name="gradient_norm_count")
    apply = inner.apply

    def apply_and_track(grads, trainable_variables=None):
        grads = list(grads)
        total.assign_add(global_norm(grads))
        count.assign_add(ops.ones((), "float32"))
        return apply(grads, trainable_variables)

    inner.apply = apply_and_track
    inner._gradient_norm_variables = (total, count)
    return optimizer


def _gradient_norm_variables(optimizer):
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return getattr(inner, "_gradient_norm_variables", None)


def current_learning_rate(optimizer) -> float:
    """The learning rate the optimizer's next update uses (schedules evaluated)."""
    return _float(optimizer.learning_rate)


def _schedule(optimizer) -> keras.optimizers.schedules.LearningRateSchedule | None:
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    schedule = getattr(inner, "_learning_rate", None)  # Keras keeps no public handle
    return schedule if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule) else None


def epoch_learning_rates(optimizer, end_step: int, batches: int,
                         rate_at_start: float) -> tuple[float, float]:
    """The learning rates of the first and the last weight update of the epoch that just
    ended after mini-batch ``end_step`` of the run, having trained ``batches``
    mini-batches.

    Keras calls a schedule with the number of mini-batches trained (also under gradient
    accumulation, see ``schedules``), so both are evaluated where those updates read it
    (also after a resume in mid-epoch); a plain rate (constant, or changed by a plateau
    callback at epoch ends) is ``rate_at_start``, the rate when the epoch began.
    """
    schedule = _schedule(optimizer)
    if schedule is None or batches < 1:
        return rate_at_start, rate_at_start
    return (_float(schedule(max(end_step - batches, 0))), _float(schedule(max(end_step - 1, 0))))


class SetDataEpoch(keras.callbacks.Callback):
    """Calls ``data.set_epoch(epoch)`` at the start of every epoch.

    Batches of a ``PretrainingBatches`` are a pure function of ``(seed, epoch, index)``;
    setting the epoch explicitly (rather than counting ``on_epoch_end`` calls) keeps the
    data order right after a restart with ``initial_epoch``.
    """

    def __init__(self, data):
        super().__init__()
        self.data = data

    def on_epoch_begin(self, epoch, logs=None):
        set_epoch = getattr(self.data, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(int(epoch))


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss (raised by ``StopOnNonFiniteLoss``)."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops ``fit`` with a ``NonFiniteLossError`` at the first non-finite loss.

    After every training batch it checks ``loss`` and every ``*_loss`` component of the
    batch logs (Keras' running means over the epoch, so the first batch that produced
    a NaN or infinity is the one found) and raises an error naming the step (1-based
    epoch and batch) and each non-finite entry, as big_vision stops on a non-finite
    loss. Put it before the ``Checkpointer``, which then keeps the last finite state.

    Args:
        resume_offset: mini-batches of the first epoch trained before an interruption
            (as ``Checkpointer``), so that batches are counted from the epoch start.
    """

    def __init__(self, resume_offset: int = 0):
        super().__init__()
        self.resume_offset = int(resume_offset)
        self._epoch = 0
        self._offset = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = int(epoch)
        self._offset, self.resume_offset = self.resume_offset, 0

    def on_train_batch_end(self, batch, logs=None):
        values = {
            key: _float(value) for key, value in (logs or {}).items()
            if key == "loss" or key.endswith("_loss")
        }
        # ``loss`` first, then the components by name (the logs' order is the metrics'
        # order on TensorFlow and PyTorch, sorted on JAX).
        bad = sorted((key != "loss", key) for key, value in values.items()
                     if not math.isfinite(value))
        if bad:
            self.model.stop_training = True
            raise NonFiniteLossError(
                f"non-finite training loss at epoch {self._epoch + 1}, batch "
                f"{self._offset + int(batch) + 1}: "
                + ", ".join(f"{key}={values[key]}" for _, key in bad)
                + " (running means of the epoch)"
            )


class NormLogger(keras.callbacks.Callback):
    """Adds the parameter and gradient norms to the epoch logs, beside the losses.

    - ``parameter_norm``: the global L2 norm of the trainable weights at the end of the
      epoch;
    - ``gradient_norm``: the mean over the epoch's mini-batches of the global L2 norm of
      their gradients, when the optimizer was prepared with ``track_gradient_norm``
      (absent otherwise, or when no gradient was applied).

    Put it before the callbacks that log (``MetricsLogger``, ``TensorBoardLogger``):
    they write what it adds. The gradient sums are reset after being read; kept in the
    optimizer's variables, they are checkpointed, so an epoch resumed in its middle
    still averages all of its mini-batches.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        model = self.model  # on JAX, reading it attaches the trained state
        logs[PARAMETER_NORM] = _float(global_norm(model.trainable_weights))
        tracked = _gradient_norm_variables(model.optimizer)
        if tracked is None:
            return
        total, count = tracked
        if _float(count) > 0:
            logs[GRADIENT_NORM] = _float(total) / _float(count)
        total.assign(ops.zeros((), "float32"))
        count.assign(ops.zeros((), "float32"))


class BestAndEarlyStopping(keras.callbacks.Callback):
    """Tracks the best monitored value and stops when it stops improving.

    As in the official Lightning setup, two rules: the best checkpoint follows every
    strict improvement (``ModelCheckpoint``), while early stopping counts an epoch as
    improved only if the value falls by more than ``min_delta`` below the best value
    seen by early stopping, and stops after ``patience`` epochs without improvement
    (``EarlyStopping``). NaN never improves.

    Args:
        state: the shared ``TrainingState`` (``best_value``, ``best_epoch``,
            ``early_stopping_best``, ``epochs_without_improvement``, ``stopped_early``).
        monitor: the log key to minimize (``"val_loss"``).
        patience: epochs without improvement before stopping (None = never stop).
        min_delta: minimum decrease that counts as an improvement for early stopping.
    """

    def __init__(self, state: TrainingState, monitor: str = "val_loss",
                 patience: int | None = 10, min_delta: float = 1e-5):
        super().__init__()
        self.state = state
        self.monitor = monitor
        self.patience = patience
        self.min_delta = float(min_delta)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise KeyError(
                f"early stopping monitors {self.monitor!r}, but the epoch logs have only "
                f"{sorted(logs)}"
            )
        value = float(logs[self.monitor])
        state = self.state
        if not math.isnan(value) and (state.best_value is None or value < state.best_value):
            state.best_value = value
            state.best_epoch = int(epoch)
        if not math.isnan(value) and (
            state.early_stopping_best is None or value < state.early_stopping_best - self.min_delta
        ):
            state.early_stopping_best = value
            state.epochs_without_improvement = 0
        else:
            state.epochs_without_improvement += 1
        if self.patience is not None and state.epochs_without_improvement >= self.patience:
            state.stopped_early = True
            self.model.stop_training = True


class ReduceLROnPlateau(keras.callbacks.Callback):
    """PyTorch's ``ReduceLROnPlateau`` (mode min, relative threshold), resumable.

    After every epoch: the value improves if ``value < best * (1 - threshold)``; after
    more than ``patience`` epochs without improvement the learning rate is multiplied by
    ``factor`` (not below ``min_learning_rate``) and the counter restarts. The optimizer
    must have a constant learning rate (a variable, saved with its state); the counter
    and best value are kept in ``state.callbacks["reduce_lr_on_plateau"]``.

    Args:
        state: the shared ``TrainingState``.
        monitor: the log key to minimize.
        factor: multiplier of the learning rate (0.5 for ConVIRT).
        patience: epochs without improvement tolerated (12 for ConVIRT).
        threshold: relative improvement needed (torch default 1e-4).
        min_learning_rate: lower bound.
    """

    name = "reduce_lr_on_plateau"

    def __init__(self, state: TrainingState, monitor: str = "val_loss", factor: float = 0.5,
                 patience: int = 12, threshold: float = 1e-4, min_learning_rate: float = 0.0):
        super().__init__()
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        self.state = state
        self.monitor = monitor
        self.factor = float(factor)
        self.patience = int(patience)
        self.threshold = float(threshold)
        self.min_learning_rate = float(min_learning_rate)

    def _own_state(self) -> dict[str, Any]:
        return self.state.callbacks.setdefault(self.name, {"best": None, "bad_epochs": 0})

    def on_epoch_end(self, epoch, logs=None):
        value = float((logs or {})[self.monitor])
        own = self._own_state()
        if not math.isnan(value) and (own["best"] is None or value < own["best"] * (
            1.0 - self.threshold
        )):
            own["best"] = value
            own["bad_epochs"] = 0
        else:
            own["bad_epochs"] += 1
        if own["bad_epochs"] > self.patience:
            optimizer = self.model.optimizer
            old = current_learning_rate(optimizer)
            new = max(old * self.factor, self.min_learning_rate)
            # torch skips changes smaller than eps = 1e-8.
            if old - new > 1e-8:
                optimizer.learning_rate = new
            own["bad_epochs"] = 0


class MetricsLogger(keras.callbacks.Callback):
    """Writes one JSON line per epoch to ``metrics.jsonl`` and prints a summary line.

    Record keys: ``epoch`` (1-based), ``step`` (mini-batches so far), ``learning_rate``
    (of the next update, i.e. after the epoch), ``lr_first_update`` and
    ``lr_last_update`` (the rates the epoch trained with, see ``epoch_learning_rates``),
    the epoch's training logs (``loss`` and every named loss component), the validation
    logs (``val_...``), ``best`` (this epoch gave the best checkpoint),
    ``epochs_without_improvement`` and ``seconds``. The summary line shows the rates the
    epoch trained with: ``lr 0.0001..5e-05`` (first..last update) or ``lr 0.0001``.

    Args:
        path: the ``metrics.jsonl`` file (appended to).
        state: the shared ``TrainingState`` (read after the best/early-stopping callback).
        epochs: total epochs, for the summary line.
        stream: where the summary goes (None = silent).
    """

    def __init__(self, path: str | os.PathLike, state: TrainingState, epochs: int,
                 stream: TextIO | None = sys.stdout):
        super().__init__()
        self.path = Path(path)
        self.state = state
        self.epochs = int(epochs)
        self.stream = stream
        self._start = time.time()
        self._rate_at_start: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()
        self._rate_at_start = current_learning_rate(self.model.optimizer)

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        optimizer = self.model.optimizer
        at_start = (current_learning_rate(optimizer) if self._rate_at_start is None
                    else self._rate_at_start)
        first, last = epoch_learning_rates(optimizer, self.state.global_step,
                                           self.state.step_in_epoch, at_start)
        record: dict[str, Any] = {
            "epoch": int(epoch) + 1,
            "step": int(self.state.global_step),
            "learning_rate": current_learning_rate(optimizer),
            "lr_first_update": first,
            "lr_last_update": last,
        }
        record.update(logs)
        record["best"] = self.state.best_epoch == epoch
        record["epochs_without_improvement"] = self.state.epochs_without_improvement
        record["seconds"] = round(time.time() - self._start, 3)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.stream is not None:
            print(format_epoch_summary(record, self.epochs), file=self.stream, flush=True)


def format_epoch_summary(record: dict[str, Any], epochs: int) -> str:
    """One line: epoch, losses (components shortened), validation loss, the learning
    rates the epoch trained with (first..last update; a record without them shows the
    rate of the next update as ``next lr``), time."""
    parts = [f"epoch {record['epoch']}/{epochs}"]
    if "loss" in record:
        parts.append(f"loss {record['loss']:.4f}")
    components = [
        f"{k.removesuffix('_loss')} {v:.4f}"
        for k, v in record.items()
        if k.endswith("_loss") and k != "loss" and not k.startswith("val_")
    ]
    if components:
        parts.append("(" + ", ".join(components) + ")")
    if "val_loss" in record:
        parts.append(f"val_loss {record['val_loss']:.4f}" + (" *best*" if record.get("best") else ""))
    if "lr_first_update" in record:
        first, last = record["lr_first_update"], record["lr_last_update"]
        parts.append(f"lr {first:.3g}" if f"{first:.3g}" == f"{last:.3g}"
                     else f"lr {first:.3g}..{last:.3g}")
    else:
        parts.append(f"next lr {record['learning_rate']:.3g}")
    parts.append(f"{record['seconds']:.1f}s")
    return "  ".join(parts)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (empty if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON record ({error})") from error
    return records


def truncate_metrics(path: str | os.PathLike, completed_epochs: int) -> None:
    """Keeps the records of the first ``completed_epochs`` epochs (after a restart the
    epochs after the checkpoint are trained, and logged, again)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the interruption
            if int(record.get("epoch", 0)) <= completed_epochs:
                kept.append(json.dumps(record))
    write_atomically(path, "".join(line + "\n" for line in kept))
