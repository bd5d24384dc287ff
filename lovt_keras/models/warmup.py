"""Fine-tuning with a frozen warm-up (the official recipe): two ``fit`` phases."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import keras

from lovt_keras.models.downstream_recipe import downstream_optimizer
from lovt_keras.models.downstream_task import DownstreamTask


class _StopAfterSteps(keras.callbacks.Callback):
    """Stops ``fit`` after a number of optimizer steps, across epochs."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = int(steps)
        self.done = 0

    def on_train_batch_end(self, batch, logs=None):
        self.done += 1
        if self.done >= self.steps:
            self.model.stop_training = True


@dataclasses.dataclass
class WarmupFitResult:
    """What :func:`fit_with_warmup` ran.

    Attributes:
        warmup_steps: optimizer steps of the frozen warm-up phase.
        warmup_history: ``History.history`` of the warm-up phase (per epoch).
        history: the ``History`` of the main phase.
    """

    warmup_steps: int
    warmup_history: dict
    history: keras.callbacks.History


def fit_with_warmup(
    task: DownstreamTask,
    train_data: Any,
    validation_data: Any = None,
    *,
    warmup_steps: int,
    learning_rate: float,
    epochs: int,
    warmup_learning_rate: float = 1e-3,
    weight_decay: float = 1e-6,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    **fit_kwargs: Any,
) -> WarmupFitResult:
    """Fine-tunes ``task`` after a warm-up with the encoder frozen (official recipe).

    Phase 1: the encoder is frozen (not trainable, BatchNorm in inference mode, no
    gradient) and the head trains for ``warmup_steps`` optimizer steps with Adam at
    ``warmup_learning_rate`` (1e-3); the steps may span several passes over
    ``train_data``. Phase 2: everything is trainable (encoder BatchNorm in training
    mode), recompiled with a fresh Adam at ``learning_rate``, ``epochs`` epochs with
    ``validation_data`` and ``callbacks`` (early stopping etc.). Two phases with a
    recompile in between, because a compiled train function captures the set of
    trainable variables on every backend.

    Differences from the official Lightning loop, which keeps one optimizer and counts
    the warm-up steps inside the first epochs: the Adam moments restart at phase 2, the
    warm-up runs without validation and ``epochs`` counts the epochs after it.

    Args:
        task: a task (``SegmentationTask``, ``DetectionTask``) built with
            ``frozen=False``; it is left with ``frozen=False``.
        train_data: re-iterable training data (a batch dict of arrays with
            ``batch_size`` in ``fit_kwargs``, a ``tf.data.Dataset``, a ``PyDataset``).
        validation_data: passed to the phase-2 ``fit``.
        warmup_steps: optimizer steps of phase 1 (100 for detection and SIIM, 20 for
            COVID); 0 skips it.
        learning_rate: the task lr of phase 2.
        epochs: epochs of phase 2.
        warmup_learning_rate: lr of phase 1.
        weight_decay: Adam weight decay of both phases.
        callbacks: callbacks of phase 2.
        **fit_kwargs: further ``fit`` arguments of both phases (``batch_size``,
            ``verbose``, ``shuffle``, ``steps_per_epoch`` ...).

    Returns:
        A :class:`WarmupFitResult`.
    """
    if task.frozen:
        raise ValueError(
            "fit_with_warmup fine-tunes the encoder: build the task with frozen=False. "
            "A frozen task trains its head only: compile() and fit() it directly."
        )
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
    warmup_history: dict = {}
    done = 0
    if warmup_steps > 0:
        stopper = _StopAfterSteps(warmup_steps)
        task.frozen = True
        try:
            task.compile(optimizer=downstream_optimizer(warmup_learning_rate, weight_decay))
            # Each epoch has at least one step, so warmup_steps epochs always suffice.
            phase1 = task.fit(
                train_data, epochs=warmup_steps, callbacks=[stopper],
                **fit_kwargs,
            )
            warmup_history = dict(phase1.history)
        finally:
            task.frozen = False
        done = stopper.done
    task.compile(optimizer=downstream_optimizer(learning_rate, weight_decay))
    history = task.fit(
        train_data, validation_data=validation_data, epochs=epochs,
        callbacks=list(callbacks or []), **fit_kwargs,
    )
    return WarmupFitResult(warmup_steps=done, warmup_history=warmup_history, history=history)
