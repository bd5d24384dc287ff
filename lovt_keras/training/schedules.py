"""Learning-rate schedules of the LoVT recipe (official ``configure_optimizers`` in
``src/models/pretraining/bimodal_alignment_model.py``).

Keras calls a schedule with the optimizer's raw iteration counter, which counts
mini-batches, also under gradient accumulation: with ``gradient_accumulation_steps=A``
the k-th weight update (k = 1, 2, ...) happens at mini-batch ``kA - 1`` and reads the
learning rate there. Both schedules therefore take ``gradient_accumulation_steps`` and
convert the mini-batch count ``s`` into the number of completed weight updates
``t = floor(s / A)``, so that update k uses ``lr(t = k - 1)`` exactly as a PyTorch
scheduler stepped after every ``optimizer.step()``.
"""

from __future__ import annotations

import math

import keras
from keras import ops


def _completed_updates(step, gradient_accumulation_steps: int):
    """Integer weight updates completed before mini-batch ``step`` (int32 tensor)."""
    step = ops.cast(step, "int32")
    if gradient_accumulation_steps > 1:
        step = ops.floor_divide(step, gradient_accumulation_steps)
    return step


@keras.saving.register_keras_serializable(package="lovt_keras")
class CosinePerEpoch(keras.optimizers.schedules.LearningRateSchedule):
    """The official ``cosine_annealing_per_epoch`` schedule of LoVT.

    The official code uses ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max =
    optimizer steps per epoch, eta_min = 0)`` stepped after every optimizer step and
    never reset. PyTorch computes it recursively::

        lr_t = (1 + cos(pi t / T)) / (1 + cos(pi (t - 1) / T)) * lr_{t-1}
        lr_t = lr_{t-1} + lr0 (1 - cos(pi / T)) / 2      if (t - 1 - T) % 2T == 0

    The first line is the ratio of consecutive values of the closed form, the second
    takes over where that ratio is 0/0 (just after a zero of the cosine), and since
    ``cos(pi (T + 1) / T) = -cos(pi / T)`` it also equals the closed form there. So for
    every t (up to float rounding) the learning rate is

        lr(t) = lr0 (1 + cos(pi t / T)) / 2,

    which does not stop at t = T: it falls from ``lr0`` to 0 over one epoch and rises
    back to ``lr0`` over the next, a cosine wave with a period of two epochs. This class
    evaluates the closed form at t = completed weight updates, in float32 with a
    relative error of about 1e-7 (tested against PyTorch's recursion over 5 periods).

    Args:
        learning_rate: lr0, the peak (and initial) learning rate.
        steps_per_epoch: T, weight updates per epoch (mini-batches per epoch divided by
            ``gradient_accumulation_steps``).
        gradient_accumulation_steps: A, mini-batches per weight update (1 = none).

    Call args:
        step: the optimizer's mini-batch counter (scalar int tensor).

    Returns:
        Scalar float32 learning rate.
    """

    def __init__(self, learning_rate: float, steps_per_epoch: int,
                 gradient_accumulation_steps: int = 1):
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        if gradient_accumulation_steps < 1:
            raise ValueError(
                f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}"
            )
        self.learning_rate = float(learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.gradient_accumulation_steps = int(gradient_accumulation_steps)

    def __call__(self, step):
        # (1 + cos(pi t / T)) / 2 = sin^2(pi (T - t) / (2T)) with t taken modulo the
        # period 2T in integers: the sine's argument stays small near the zeros, so
        # float32 keeps a relative accuracy of ~1e-7 over the whole wave.
        period = 2 * self.steps_per_epoch
        t = ops.mod(_completed_updates(step, self.gradient_accumulation_steps), period)
        offset = ops.cast(self.steps_per_epoch - t, "float32")
        return self.learning_rate * ops.square(ops.sin(offset * (math.pi / period)))

    def get_config(self) -> dict:
        return {
            "learning_rate": self.learning_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }


@keras.saving.register_keras_serializable(package="lovt_keras")
class CosineWithWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup followed by one cosine decay (the common transformer schedule).

    With t = completed weight updates, W = ``warmup_steps`` and N = ``total_steps``::

        lr(t) = lr0 * t / W                                          for t < W
        lr(t) = lr_end + (lr0 - lr_end) (1 + cos(pi (t - W) / (N - W))) / 2  for W <= t < N
        lr(t) = lr_end                                               for t >= N

    (the form of Hugging Face's ``get_cosine_schedule_with_warmup``, plus a final
    learning rate).

    Args:
        learning_rate: lr0, the peak learning rate reached after the warmup.
        total_steps: N, weight updates of the whole run.
        warmup_steps: W, weight updates of the linear warmup (0 = none).
        final_learning_rate: lr_end, reached at ``total_steps`` and kept afterwards.
        gradient_accumulation_steps: mini-batches per weight update (1 = none).
    """

    def __init__(self, learning_rate: float, total_steps: int, warmup_steps: int = 0,
                 final_learning_rate: float = 0.0, gradient_accumulation_steps: int = 1):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(
                f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}"
            )
        if gradient_accumulation_steps < 1:
            raise ValueError(
                f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}"
            )
        self.learning_rate = float(learning_rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.final_learning_rate = float(final_learning_rate)
        self.gradient_accumulation_steps = int(gradient_accumulation_steps)

    def __call__(self, step):
        t = ops.cast(_completed_updates(step, self.gradient_accumulation_steps), "float32")
        warmup = float(max(self.warmup_steps, 1))
        warm = self.learning_rate * t / warmup
        progress = ops.clip(
            (t - self.warmup_steps) / float(self.total_steps - self.warmup_steps), 0.0, 1.0
        )
        decayed = self.final_learning_rate + (self.learning_rate - self.final_learning_rate) * (
            0.5 * (1.0 + ops.cos(math.pi * progress))
        )
        return ops.where(t < self.warmup_steps, warm, decayed)

    def get_config(self) -> dict:
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "final_learning_rate": self.final_learning_rate,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }
