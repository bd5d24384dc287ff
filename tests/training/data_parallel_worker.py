"""Runs one data-parallel check in a fresh process (the device count of JAX and
TensorFlow is fixed when they start; PyTorch needs one process per device).

    python tests/training/data_parallel_worker.py step OUT.json [--negatives global]
        [--sync_batch_norm] [--frozen_batch_norm]

``step``: one SGD step (``fit`` on one batch) of a tiny LoVT pretrainer on a global batch of 8,
on one device, then data parallel on 2 devices (JAX: 2 virtual CPU devices; TensorFlow:
2 logical CPUs; PyTorch: this process is one of 2 ranks started by the test and trains
on its half of the batch). Writes the losses of both steps and how far the
data-parallel update is from the single-device one (``_summary``) as JSON.

    python tests/training/data_parallel_worker.py pretrain OUT_DIR --devices N
        [--stop_after STEPS] [--cache DIR] [--frozen_batch_norm]

``pretrain``: ``pretrain()`` on a tiny SynthCXR dataset with ``distribution``
``data_parallel`` (``--devices 2``) or ``none`` (``--devices 1``); ``--stop_after``
interrupts after that many mini-batches (the mid-epoch checkpoint stays).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
if BACKEND == "jax":
    # 2 virtual CPU devices; their collectives wait longer than XLA's 40 s default on
    # a busy 2-core machine (a device thread may be descheduled that long).
    os.environ["XLA_FLAGS"] = " ".join([
        os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=2",
        "--xla_cpu_collective_call_terminate_timeout_seconds=900",
        "--xla_cpu_collective_timeout_seconds=900"])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lovt_keras.testing.fixtures import random_batch, tiny_pretrainer  # noqa: E402
from lovt_keras.training import distribution as dist  # noqa: E402

BATCH = 8
LEARNING_RATE = 0.05


def _logical_cpus_for_tensorflow():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def _model(frozen_batch_norm: bool):
    keras.utils.set_random_seed(7)
    model = tiny_pretrainer(image_size=64)
    model(random_batch(2, image_size=64), training=False)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        # Dropout masks are drawn per device (TensorFlow, PyTorch), so they differ from
        # the single-device run's: compare without dropout.
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
        # inference-mode BatchNorm: no batch statistics at all
        if frozen_batch_norm and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return model


def _weights(model):
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in model.trainable_variables]


class _OneBatch(keras.utils.PyDataset):
    """The batch, once per epoch, fed as ``pretrain`` feeds its batches (a PyDataset:
    TensorFlow's ``train_on_batch`` would give the whole batch to every replica)."""

    def __init__(self, batch):
        super().__init__()
        self.batch = batch

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return self.batch


def _fit_one_step(model, batch) -> dict:
    history = model.fit(_OneBatch(batch), epochs=1, shuffle=False, verbose=0)
    return {k: float(v[-1]) for k, v in history.history.items()}


def _one_step(model, batch):
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), jit_compile=False)
    return _fit_one_step(model, batch)


def _summary(single_before, single_after, parallel_after) -> dict:
    """How far the data-parallel update is from the single-device one."""
    update = [a - b for a, b in zip(single_after, single_before)]
    error = [p - a for p, a in zip(parallel_after, single_after)]
    norm = float(np.sqrt(sum(np.sum(np.square(u, dtype=np.float64)) for u in update)))
    return {
        "update_norm": norm,
        "relative_update_error": float(
            np.sqrt(sum(np.sum(np.square(e, dtype=np.float64)) for e in error))) / norm,
        "max_abs_error": float(max(np.max(np.abs(e)) for e in error)),
        # equal on every rank when the ranks hold the same weights
        "checksum": float(sum((i + 1) * np.sum(w, dtype=np.float64)
                              for i, w in enumerate(parallel_after))),
    }


def step(args):
    """``--part single``: the single-device step only (saves the weights before and
    after); ``parallel``: the data-parallel step only, compared with the weights a
    ``single`` part saved (``--reference``); ``both``: both in this process."""
    batch = random_batch(BATCH, image_size=64, seed=3)
    out = Path(args.out)
    if args.part in ("single", "both"):
        single = _model(args.frozen_batch_norm)
        before = _weights(single)
        single_logs = _one_step(single, batch)
        single_after = _weights(single)
        del single
        if args.part == "single":
            np.savez(out, *before, *single_after)
            out.with_suffix(".logs.json").write_text(json.dumps(single_logs))
            return
    else:
        saved = np.load(args.reference)
        arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        before, single_after = arrays[:len(arrays) // 2], arrays[len(arrays) // 2:]
        single_logs = json.loads(Path(args.reference).with_suffix(".logs.json").read_text())
    setup = dist.setup_distribution("data_parallel", args.negatives, args.sync_batch_norm)
    try:
        with setup.scope():
            model = _model(args.frozen_batch_norm)
            model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), jit_compile=False)
        setup.prepare_model(model)
        share = BATCH // setup.process_count
        start = setup.process_index * share
        local = {k: v[start:start + share] for k, v in batch.items()}
        history = model.fit(setup.wrap_data(_OneBatch(local)), epochs=1, shuffle=False,
                            verbose=0)
        logs = {k: float(v[-1]) for k, v in history.history.items()}
        result = _summary(before, single_after, _weights(model))
        result.update(replicas=setup.num_replicas, process=setup.process_index,
                      single_logs=single_logs, parallel_logs=logs)
    finally:
        setup.close()
    if setup.process_count > 1:
        out = out.with_name(f"{out.stem}_rank{setup.process_index}{out.suffix}")
    out.write_text(json.dumps(result, indent=1))


class _Interrupted(Exception):
    pass


def _stop_after(steps: int) -> None:
    """Raises ``_Interrupted`` once ``steps`` mini-batches are trained and checkpointed."""
    from lovt_keras.training import checkpoints

    original = checkpoints.Checkpointer.on_train_batch_end

    def on_train_batch_end(self, batch, logs=None):
        original(self, batch, logs)
        if self.state.global_step >= steps:
            raise _Interrupted

    checkpoints.Checkpointer.on_train_batch_end = on_train_batch_end


def pretrain_check(args):
    """``pretrain`` on a tiny SynthCXR: 2 epochs of 4 global batches of 8."""
    from lovt_keras.data.pretraining_dataset import PretrainingBatches, synthcxr_tokenizer
    from lovt_keras.data.synthcxr import load_stats, load_synthcxr
    from lovt_keras.training.pretrain import pretrain

    data = load_synthcxr(args.cache, num_train=32, num_validation=8, num_test=8,
                         image_size=64)
    tokenizer = synthcxr_tokenizer(data, max_tokens=32, max_sentences=4)
    stats = load_stats(data)

    def batches(split, training):
        return PretrainingBatches(data[split], tokenizer, stats, batch_size=BATCH,
                                  training=training, image_size=64, seed=0, workers=0)

    def model():
        built = tiny_pretrainer(image_size=64, vocabulary_size=tokenizer.vocabulary_size)
        built(random_batch(2, image_size=64, vocabulary_size=tokenizer.vocabulary_size),
              training=False)
        for layer in built._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, keras.layers.Dropout):
                layer.rate = 0.0
            if args.frozen_batch_norm and isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        return built

    if args.stop_after:
        _stop_after(args.stop_after)
    try:
        result = pretrain(model, batches("train", True), batches("validation", False),
                          args.out, epochs=2, learning_rate=1e-3, schedule="constant",
                          gradient_accumulation_steps=1, checkpoint_every_steps=1,
                          early_stopping_patience=None, export=False, tensorboard=False,
                          distribution="data_parallel" if args.devices > 1 else "none",
                          seed=5, verbose=1)
    except _Interrupted:
        print(f"interrupted after {args.stop_after} mini-batches")
        return
    if result.output_dir.joinpath("checkpoints").exists() and result.history:
        weights = [keras.ops.convert_to_numpy(v) for v in result.model.trainable_variables]
        np.savez(Path(args.out) / "final_weights.npz", *weights)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("check", choices=["step", "pretrain"])
    parser.add_argument("out")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--part", choices=["both", "single", "parallel"], default="both")
    parser.add_argument("--reference", help="the weights of a --part single run")
    parser.add_argument("--stop_after", type=int, default=0)
    parser.add_argument("--cache", default=None)
    parser.add_argument("--negatives", default="global")
    parser.add_argument("--sync_batch_norm", action="store_true")
    parser.add_argument("--frozen_batch_norm", action="store_true")
    args = parser.parse_args(argv)
    if BACKEND == "tensorflow":
        _logical_cpus_for_tensorflow()
    (step if args.check == "step" else pretrain_check)(args)


if __name__ == "__main__":
    main()
