import math

import keras
import numpy as np
import pytest

from lovt_keras.training.schedules import CosinePerEpoch, CosineWithWarmup


def torch_recursive_cosine(base_lr: float, t_max: int, steps: int) -> np.ndarray:
    """PyTorch's CosineAnnealingLR.get_lr (eta_min = 0) transcribed: the recursive form,
    stepped once per optimizer step, never reset. Entry t is the lr of update t + 1."""
    lrs = [base_lr]
    lr = base_lr
    for t in range(1, steps):
        if (t - 1 - t_max) % (2 * t_max) == 0:
            lr = lr + base_lr * (1 - math.cos(math.pi / t_max)) / 2
        else:
            lr = (1 + math.cos(math.pi * t / t_max)) / (1 + math.cos(math.pi * (t - 1) / t_max)) * lr
        lrs.append(lr)
    return np.array(lrs)


def _values(schedule, steps):
    return np.array([float(keras.ops.convert_to_numpy(schedule(s))) for s in steps])


@pytest.mark.parametrize("t_max", [1, 3, 7])
def test_cosine_per_epoch_equals_torch_recursion_over_five_periods(t_max):
    steps = 10 * t_max + 1
    expected = torch_recursive_cosine(1e-4, t_max, steps)
    actual = _values(CosinePerEpoch(1e-4, t_max), range(steps))
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-12)
    # Period of two epochs: 0 at the end of every odd epoch, back to lr0 after even ones.
    np.testing.assert_allclose(actual[t_max::2 * t_max], 0.0, atol=1e-11)
    np.testing.assert_allclose(actual[::2 * t_max], 1e-4, rtol=1e-6)


def test_cosine_per_epoch_matches_torch_scheduler():
    if keras.backend.backend() != "torch":
        pytest.skip("importing torch into a TensorFlow/JAX process costs ~15 s; the numpy "
                    "transcription of torch's recursion above covers the other backends")
    import torch

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4, eta_min=0)
    expected = []
    for _ in range(20):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(_values(CosinePerEpoch(1e-4, 4), range(20)), expected,
                               rtol=1e-6, atol=1e-11)


def test_gradient_accumulation_reads_completed_updates():
    # Update k (1-based) happens at mini-batch k*A - 1 and must use lr(t = k - 1).
    schedule = CosinePerEpoch(2e-4, steps_per_epoch=3, gradient_accumulation_steps=4)
    reference = CosinePerEpoch(2e-4, steps_per_epoch=3)
    updates = np.arange(1, 13)
    np.testing.assert_allclose(_values(schedule, updates * 4 - 1),
                               _values(reference, updates - 1), rtol=1e-6, atol=1e-12)
    # Within an accumulation cycle the value is constant.
    np.testing.assert_allclose(_values(schedule, [4, 5, 6, 7]), _values(reference, [1] * 4))


def test_adamw_applies_the_schedule_per_update_under_accumulation():
    # One scalar weight, gradient 1 per mini-batch; AdamW's first step size is lr.
    variable = keras.Variable(np.zeros((1,), "float32"))
    optimizer = keras.optimizers.AdamW(
        CosinePerEpoch(0.1, steps_per_epoch=2, gradient_accumulation_steps=2),
        weight_decay=0.0, epsilon=1e-12, gradient_accumulation_steps=2,
    )
    optimizer.build([variable])
    values = []
    for _ in range(8):
        optimizer.apply([keras.ops.ones((1,))], [variable])
        values.append(float(keras.ops.convert_to_numpy(variable)[0]))
    steps = -np.diff([0.0] + values)
    # Weights move only at every second mini-batch, by lr(t) with t = 0, 1, 2, 3
    # (Adam's normalized step is 1 for a constant gradient): 0.1, 0.05, 0, 0.05.
    np.testing.assert_allclose(steps[0::2], 0.0, atol=1e-7)
    np.testing.assert_allclose(steps[1::2], [0.1, 0.05, 0.0, 0.05], atol=1e-6)


def test_cosine_with_warmup_hand_computed():
    schedule = CosineWithWarmup(1.0, total_steps=10, warmup_steps=4, final_learning_rate=0.1)
    values = _values(schedule, range(13))
    np.testing.assert_allclose(values[:4], [0.0, 0.25, 0.5, 0.75], atol=1e-7)
    progress = (np.arange(4, 10) - 4) / 6
    np.testing.assert_allclose(values[4:10], 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress)),
                               rtol=1e-6)
    np.testing.assert_allclose(values[10:], 0.1, rtol=1e-6)
    accumulated = CosineWithWarmup(1.0, 10, 4, 0.1, gradient_accumulation_steps=3)
    np.testing.assert_allclose(_values(accumulated, [9, 10, 11]), values[[3, 3, 3]], rtol=1e-6)


@pytest.mark.parametrize("schedule", [
    CosinePerEpoch(3e-4, 5, 16),
    CosineWithWarmup(1e-3, 100, 10, 1e-5, 2),
])
def test_schedules_serialize(schedule):
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule)
    )
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    np.testing.assert_allclose(_values(restored, range(0, 60, 7)), _values(schedule, range(0, 60, 7)))


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        CosinePerEpoch(1e-4, 0)
    with pytest.raises(ValueError, match="warmup_steps"):
        CosineWithWarmup(1e-4, total_steps=5, warmup_steps=5)
