"""Data-parallel step time on 1 or N devices: ``python -m tools.bench_devices``.

Times ``fit`` steps of a ``tools.bench`` configuration with ``pretrain``'s engine
(``lovt_keras.training.distribution``): the same global batch on ``--devices`` devices.
On a CPU the devices are virtual (JAX: ``--xla_force_host_platform_device_count``;
TensorFlow: logical CPUs) and share the machine's cores, so the figures show what
data parallelism costs here, not what it gains on GPUs. PyTorch runs one process per
device under ``torchrun`` (rank 0 prints).

    python -m tools.bench_devices --backend jax --config tiny --devices 2
    torchrun --nproc_per_node 2 -m tools.bench_devices --backend torch --config tiny
    # a node of 8 GPUs (each backend):
    python -m tools.bench_devices --backend jax --config full --devices 8 \\
        --bind "BATCH_SIZE = 256"

Prints the median step time (and spread) over ``--steps`` steps after ``--warmup``
ones, images per second and the first step's time (compilation), and writes them as
JSON to ``--output_dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def parse_args(argv):
    from tools.bench import CONFIGS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny",
                        help="a tools.bench configuration (tiny)")
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None,
                        help="Keras backend (default: KERAS_BACKEND)")
    parser.add_argument("--devices", type=int, default=None,
                        help="devices: 1 = no distribution; on a CPU, N virtual devices "
                             "(default: every device; PyTorch: the torchrun processes)")
    parser.add_argument("--negatives", choices=("global", "per_device"), default="global")
    parser.add_argument("--bind", action="append", default=[], help="extra gin binding")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (2)")
    parser.add_argument("--output_dir", default="runs/bench_devices")
    return parser.parse_args(argv)


def _prepare_devices(backend: str, devices: int | None) -> None:
    """Virtual CPU devices must be set before the backend starts."""
    os.environ["KERAS_BACKEND"] = backend
    if backend == "jax" and devices and devices > 1:
        os.environ["XLA_FLAGS"] = " ".join([
            os.environ.get("XLA_FLAGS", ""),
            f"--xla_force_host_platform_device_count={devices}",
            # a virtual device's thread can wait long on a busy CPU
            "--xla_cpu_collective_call_terminate_timeout_seconds=900",
            "--xla_cpu_collective_timeout_seconds=900"])


def _tensorflow_devices(devices: int | None):
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return None if devices is None else [f"/gpu:{i}" for i in range(devices)]
    if devices and devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    return None


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    backend = args.backend or os.environ.get("KERAS_BACKEND", "tensorflow")
    _prepare_devices(backend, args.devices)
    if backend == "tensorflow":
        _tensorflow_devices(args.devices)

    import keras
    import numpy as np

    from lovt_keras.testing.fixtures import random_batch
    from lovt_keras.training.distribution import setup_distribution
    from tools import run
    from tools.bench import CONFIGS, step_statistics
    from tools.gin_registry import bound_value

    config = CONFIGS[args.config]
    spec = run.configure(list(config.files), [*config.bindings, *args.bind])
    macro = lambda name: bound_value(f"%{name}")  # noqa: E731
    batch_size = int(macro("BATCH_SIZE"))
    image_size, max_tokens = int(macro("IMAGE_SIZE")), int(macro("MAX_TOKENS"))
    max_sentences = int(macro("MAX_SENTENCES"))

    parallel = (args.devices or 2) > 1 and not (backend == "torch"
                                                and int(os.environ.get("WORLD_SIZE", "1")) < 2)
    setup = setup_distribution("data_parallel" if parallel else "none", args.negatives)
    keras.utils.set_random_seed(0)
    with setup.scope():
        model = spec.model()
        vocabulary = int(model.report_encoder.backbone.vocabulary_size)
        batch = random_batch(batch_size, image_size, max_tokens, max_sentences, vocabulary)
        share = batch_size // setup.process_count
        start = setup.process_index * share
        local = {k: v[start:start + share] for k, v in batch.items()}
        model(random_batch(2, image_size, max_tokens, max_sentences, vocabulary),
              training=False)
        model.compile(optimizer=keras.optimizers.AdamW(1e-4))
        model.optimizer.build(model.trainable_variables)
    setup.prepare_model(model)

    class Repeat(keras.utils.PyDataset):
        def __init__(self, steps):
            super().__init__()
            self.steps = steps

        def __len__(self):
            return self.steps

        def __getitem__(self, index):
            return local

    class Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # waits for the step
            self.ends.append(time.perf_counter())

    clock = Clock()
    steps = args.warmup + args.steps
    model.fit(setup.wrap_data(Repeat(steps)), epochs=1, shuffle=False, verbose=0,
              callbacks=[clock])
    times = list(np.diff([clock.start, *clock.ends]))
    first_step_s = times[0]
    step = step_statistics(times[args.warmup:], batch_size)
    result = {
        "config": args.config, "backend": backend, "devices": setup.num_replicas,
        "processes": setup.process_count, "negatives": args.negatives,
        "engine": setup.describe(), "batch_size": batch_size, "step": step,
        "first_step_s": first_step_s, "load_average": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
    }
    if setup.is_chief:
        print(f"{args.config}, {backend}, {setup.describe()}: median step "
              f"{1000 * step['median_s']:.0f} ms (IQR {1000 * step['iqr_s']:.0f}) over "
              f"{args.steps} steps, {step['images_per_s']:.1f} images/s, first step "
              f"{first_step_s:.1f} s; batch {batch_size}; load average "
              f"{result['load_average']:.1f}", flush=True)
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        name = f"{args.config}_{backend}_{setup.num_replicas}dev.json"
        (out / name).write_text(json.dumps(result, indent=1))
    setup.close()
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
