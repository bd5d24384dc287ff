import numpy as np
import pytest

from tools import bench_convs

torch = pytest.importorskip("torch")


def test_keras_and_plain_pytorch_stacks_compute_the_same_function():
    """The compared conv stacks are one function: the same weights give the same maps."""
    x = bench_convs._stack_input(False)
    import keras

    keras_out = keras.ops.convert_to_numpy(bench_convs._keras_stack(False)(x, training=True))
    weights = [torch.tensor(w.transpose(3, 2, 0, 1).copy()) for w in bench_convs._stack_weights()]
    y = torch.as_tensor(bench_convs._stack_input(True))
    for w in weights:
        y = torch.relu(torch.nn.functional.conv2d(y, w, padding=1))
    np.testing.assert_allclose(keras_out, y.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)
    assert keras_out.shape == (32, 56, 56, 32) and keras_out.std() > 0.1


def _numpy(value):
    return value.detach().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def test_timed_steps_compute_the_same_gradients_and_the_table_gives_ratios():
    import keras

    # The raw backend stack's first kernel gradient (HWIO) is plain PyTorch's (OIHW).
    raw = bench_convs._raw_stack_step()()
    first = _numpy(raw if keras.backend.backend() == "tensorflow" else raw[0])
    if keras.backend.backend() == "torch":
        first = first.transpose(2, 3, 1, 0)
    reference = _numpy(bench_convs._torch_stack_step(False, functional=True)()[0])
    scale = np.abs(reference).max()
    assert scale > 0
    # Eight float32 layers amplify the backends' different summation orders to ~1 % of
    # the largest gradient; another function would differ by far more.
    np.testing.assert_allclose(first, reference.transpose(2, 3, 1, 0), rtol=0, atol=0.02 * scale)
    # With BatchNorm: 8 kernels and 8 (scale, offset) pairs, all finite.
    grads = bench_convs._torch_stack_step(True)()
    assert len(grads) == 24 and all(np.isfinite(_numpy(g)).all() for g in grads)
    table = bench_convs.markdown("jax", [
        {"what": "conv stack", "keras_ms": 600.0, "plain_ms": 300.0},
        {"what": "encoder", "keras_ms": 150.0, "plain_ms": 200.0},
    ])
    assert "| conv stack | 600.0 | 300.0 | 0.50x |" in table  # half plain PyTorch's speed
    assert "| encoder | 150.0 | 200.0 | 1.33x |" in table
