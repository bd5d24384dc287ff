"""Where a backend's training step loses to plain PyTorch: convolutions, BatchNorm, Keras.

    python -m tools.bench_convs --backend jax [--steps 8] [--warmup 2] [--threads N]

Times the forward + backward pass (the gradient of the mean square of the output) of

- ``encoder quickstart`` / ``encoder full``: the image encoder alone, as the training
  step has it (width-16 ResNet-18 at batch 32; ResNet-50 at batch 8; 224 px);
- ``conv stack``: 8 convolutions 3x3, 32 -> 32 channels, on 56 x 56 maps at batch 32,
  with ReLU, with and without BatchNorm (training mode), as Keras layers;
- ``conv stack, raw``: the same 8 convolutions written in the backend's own ops without
  Keras (``jax.lax.conv_general_dilated``, ``tf.nn.conv2d``,
  ``torch.nn.functional.conv2d``), in its own data layout (NHWC on JAX and TensorFlow,
  NCHW on PyTorch);

each on ``--backend`` (jitted on JAX, a ``tf.function`` on TensorFlow, eager on
PyTorch) and in plain PyTorch (``tools.bench_torch``'s ResNet and ``torch.nn``
layers, eager), in one process, and prints a Markdown table with the speed relative to
plain PyTorch (as ``tools.bench``: plain PyTorch's time / this one; above 1 is faster).
If the raw backend convolutions are as
slow as the Keras ones, the gap is the backend's convolution kernels, not Keras; the
``with BatchNorm`` minus ``without`` difference is the BatchNorm's cost.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

# name -> (depth, width, batch): the encoder of tools.bench's quickstart and full configs.
ENCODERS = {"quickstart": (18, 16, 32), "full": (50, 64, 8)}
STACK = dict(layers=8, channels=32, size=56, batch=32)


def _median_ms(function, steps: int, warmup: int) -> float:
    times = []
    for index in range(warmup + steps):
        start = time.perf_counter()
        function()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000.0


def _stack_weights(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    c = STACK["channels"]
    return [(rng.standard_normal((3, 3, c, c)) * np.sqrt(2.0 / (9 * c))).astype(np.float32)
            for _ in range(STACK["layers"])]


def _stack_input(channels_first: bool) -> np.ndarray:
    shape = (STACK["batch"], STACK["size"], STACK["size"], STACK["channels"])
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if channels_first else x


# --- Keras on the chosen backend


def _keras_gradient_step(model, inputs, output_key=None):
    """A function running forward + backward of ``mean(model(inputs)**2)`` once."""
    import keras

    backend = keras.backend.backend()

    def output(y):
        return y[output_key] if output_key else y

    if backend == "jax":
        import jax
        import jax.numpy as jnp

        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]
        x = jnp.asarray(inputs)

        def loss(trainable, x):
            y, _ = model.stateless_call(trainable, frozen, x, training=True)
            return jnp.mean(output(y) ** 2)

        grad = jax.jit(jax.grad(loss))
        return lambda: jax.block_until_ready(grad(trainable, x))
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(inputs)

        @tf.function
        def grad():
            with tf.GradientTape() as tape:
                value = tf.reduce_mean(output(model(x, training=True)) ** 2)
            return tape.gradient(value, model.trainable_variables)

        return lambda: [g.numpy() for g in grad()[:1]]
    import torch

    x = torch.as_tensor(inputs)
    params = [v.value for v in model.trainable_variables]

    def step():
        value = (output(model(x, training=True)) ** 2).mean()
        return torch.autograd.grad(value, params)

    return step


def _keras_stack(batch_norm: bool):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((STACK["size"], STACK["size"], STACK["channels"]))
    x = inputs
    for weights in _stack_weights():
        conv = keras.layers.Conv2D(STACK["channels"], 3, padding="same", use_bias=False)
        x = conv(x)
        conv.kernel.assign(weights)
        if batch_norm:
            x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    return keras.Model(inputs, x)


def _raw_stack_step():
    """The conv stack in the backend's own ops, no Keras (forward + backward)."""
    import keras

    backend = keras.backend.backend()
    weights = _stack_weights()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        ws = [jnp.asarray(w) for w in weights]
        x = jnp.asarray(_stack_input(False))

        def loss(ws):
            y = x
            for w in ws:
                y = jax.lax.conv_general_dilated(
                    y, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
                y = jax.nn.relu(y)
            return jnp.mean(y ** 2)

        grad = jax.jit(jax.grad(loss))
        return lambda: jax.block_until_ready(grad(ws))
    if backend == "tensorflow":
        import tensorflow as tf

        ws = [tf.Variable(w) for w in weights]
        x = tf.constant(_stack_input(False))

        @tf.function
        def grad():
            with tf.GradientTape() as tape:
                y = x
                for w in ws:
                    y = tf.nn.relu(tf.nn.conv2d(y, w, 1, "SAME"))
                value = tf.reduce_mean(y ** 2)
            return tape.gradient(value, ws)

        return lambda: grad()[0].numpy()
    return _torch_stack_step(batch_norm=False, functional=True)


# --- plain PyTorch


def _torch_stack_step(batch_norm: bool, functional: bool = False):
    import torch

    x = torch.as_tensor(_stack_input(True))
    weights = [torch.tensor(w.transpose(3, 2, 0, 1).copy(), requires_grad=True)
               for w in _stack_weights()]  # HWIO -> OIHW
    if functional:
        def step():
            y = x
            for w in weights:
                y = torch.relu(torch.nn.functional.conv2d(y, w, padding=1))
            return torch.autograd.grad((y ** 2).mean(), weights)

        return step
    layers = []
    for w in weights:
        conv = torch.nn.Conv2d(STACK["channels"], STACK["channels"], 3, padding=1, bias=False)
        conv.weight.data.copy_(w.detach())
        layers.append(conv)
        if batch_norm:
            layers.append(torch.nn.BatchNorm2d(STACK["channels"]))
        layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).train()
    params = list(model.parameters())
    return lambda: torch.autograd.grad((model(x) ** 2).mean(), params)


def _torch_encoder_step(depth: int, width: int, batch: int):
    import torch

    from tools.bench_torch import ResNet

    torch.manual_seed(0)
    model = ResNet(depth, width).train()
    x = torch.as_tensor(np.random.default_rng(0).standard_normal(
        (batch, 1, 224, 224)).astype(np.float32))
    params = list(model.parameters())
    return lambda: torch.autograd.grad((model(x)["conv5"] ** 2).mean(), params)


def measure(steps: int, warmup: int) -> list[dict]:
    """Rows ``{what, keras_ms, plain_ms}`` for the current Keras backend."""
    import keras

    from lovt_keras.models.image_encoder import ResNetImageEncoder

    rows = []
    for name, (depth, width, batch) in ENCODERS.items():
        keras.utils.set_random_seed(0)
        encoder = ResNetImageEncoder(depth=depth, width=width, image_size=224)
        images = np.random.default_rng(0).standard_normal((batch, 224, 224, 1)).astype(np.float32)
        rows.append({
            "what": f"encoder {name} (ResNet-{depth}, width {width}, batch {batch})",
            "keras_ms": _median_ms(_keras_gradient_step(encoder, images, "conv5"), steps, warmup),
            "plain_ms": _median_ms(_torch_encoder_step(depth, width, batch), steps, warmup),
        })
    for batch_norm in (True, False):
        label = "with" if batch_norm else "without"
        rows.append({
            "what": f"conv stack, {label} BatchNorm",
            "keras_ms": _median_ms(_keras_gradient_step(_keras_stack(batch_norm),
                                                        _stack_input(False)), steps, warmup),
            "plain_ms": _median_ms(_torch_stack_step(batch_norm), steps, warmup),
        })
    rows.append({
        "what": "conv stack, raw backend ops (no Keras, no BatchNorm)",
        "keras_ms": _median_ms(_raw_stack_step(), steps, warmup),
        "plain_ms": _median_ms(_torch_stack_step(False, functional=True), steps, warmup),
    })
    return rows


def markdown(backend: str, rows: list[dict]) -> str:
    lines = [f"| forward + backward | {backend} (ms) | plain PyTorch (ms) | "
             "speed vs plain PyTorch |", "|---|---|---|---|"]
    for row in rows:
        ratio = row["plain_ms"] / row["keras_ms"]
        lines.append(f"| {row['what']} | {row['keras_ms']:.1f} | {row['plain_ms']:.1f} | "
                     f"{ratio:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None,
                        help="Keras backend (default: $KERAS_BACKEND)")
    parser.add_argument("--steps", type=int, default=8, help="timed passes (8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes first (2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads of plain PyTorch (default: torch's)")
    args = parser.parse_args(argv)
    from tools.bench import _prepare_backend

    _prepare_backend(args.backend)
    import keras
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    backend = keras.backend.backend()
    print(f"backend {backend}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"median of {args.steps} passes after {args.warmup}", flush=True)
    rows = measure(args.steps, args.warmup)
    print(markdown(backend, rows), end="")
    return rows


if __name__ == "__main__":
    main()
