"""Speed and memory of one pretraining step of an experiment's model, on random batches.

    python -m tools.bench_train_step [--gin experiments/pretrain/lovt_mimic_100.gin ...]
        [--bind ...] [--batch_size 32] [--steps 20] [--mixed_precision]

Builds the pretraining model of a gin file exactly as ``python -m tools.run`` does, with
a randomly initialized report encoder shaped like the experiment's (the default replaces
the BioClinicalBERT weights of the MIMIC experiments by a random BERT-base: 12 layers,
768 wide, 12 heads, 28,996 tokens, the first 6 layers and the embeddings frozen as in the
experiment), compiles it with the experiment's optimizer settings (AdamW, lr 1e-4,
weight decay 1e-6) and times ``train_on_batch`` on a fixed random batch of the
experiment's shapes (224 px images, ``MAX_TOKENS`` tokens, ``MAX_SENTENCES``
sentences) after ``--warmup`` untimed steps (compilation). ``train_on_batch`` returns
the losses as numbers, so every timed step includes the device's completion. Prints
ms/step, images/s, the step time of an optimizer update with the experiment's gradient
accumulation, and the accelerator's peak memory where the backend reports it (JAX,
PyTorch on CUDA).

The data pipeline is not part of this figure (see ``tools.bench_pipeline``). Reports the
backend (``KERAS_BACKEND``) and device with the figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

DEFAULT_GIN = "experiments/pretrain/lovt_mimic_100.gin"
# BioClinicalBERT's shape (BERT-base, cased vocabulary), randomly initialized.
BERT_BASE_BINDINGS = [
    "lovt.BertReportEncoder.backbone = @lovt.BertBackbone()",
    "lovt.BertBackbone.vocabulary_size = 28996",
    "lovt.BertBackbone.num_layers = 12",
    "lovt.BertBackbone.num_heads = 12",
    "lovt.BertBackbone.hidden_dim = 768",
    "lovt.BertBackbone.intermediate_dim = 3072",
    "lovt.BertBackbone.dropout = 0.1",
    "lovt.BertBackbone.max_sequence_length = %MAX_TOKENS",
]


def device_description() -> str:
    """The accelerator (or CPU) the current backend computes on."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}: {getattr(device, 'device_kind', device)}"
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)}"
        return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return f"gpu: {tf.config.experimental.get_device_details(gpus[0]).get('device_name', gpus[0].name)}"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def peak_memory_bytes() -> int | None:
    """Peak accelerator memory of this process so far, where the backend reports it."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use")
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated())
    return None


def main(argv: list[str] | None = None) -> dict:
    """Runs the benchmark; returns the figures (``ms_per_step`` is the median)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gin", action="append", default=None,
                        help=f"pretraining gin file, repeatable ({DEFAULT_GIN})")
    parser.add_argument("--bind", action="append", default=[],
                        help="extra gin binding (repeatable), after the BERT-base ones")
    parser.add_argument("--no_bert_base", action="store_true",
                        help="keep the gin file's report encoder (it must not need files)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="studies per step (default: the gin file's BATCH_SIZE)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps (3)")
    parser.add_argument("--mixed_precision", action="store_true",
                        help="mixed_bfloat16 dtype policy (as lovt.pretrain.mixed_precision)")
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    from lovt_keras.testing.fixtures import random_batch
    from tools import run
    from tools.gin_registry import bound_value

    if args.mixed_precision:
        keras.config.set_dtype_policy("mixed_bfloat16")
    bindings = ([] if args.no_bert_base else BERT_BASE_BINDINGS) + list(args.bind)
    files = args.gin or [DEFAULT_GIN]
    spec = run.configure(files, bindings)
    macro = lambda name: bound_value(f"%{name}")  # noqa: E731
    batch_size = args.batch_size or int(macro("BATCH_SIZE"))
    image_size, max_tokens = int(macro("IMAGE_SIZE")), int(macro("MAX_TOKENS"))
    max_sentences = int(macro("MAX_SENTENCES"))
    accumulation = int(bound_value("lovt.pretrain.gradient_accumulation_steps"))
    learning_rate = float(bound_value("lovt.pretrain.learning_rate"))
    weight_decay = float(bound_value("lovt.pretrain.weight_decay"))

    model = spec.model()
    vocabulary = int(model.report_encoder.backbone.vocabulary_size)
    batch = random_batch(batch_size, image_size, max_tokens, max_sentences, vocabulary, seed=0)
    model(batch)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay))
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    total = sum(int(np.prod(w.shape)) for w in model.weights)
    print(f"{' + '.join(files)}: {type(model).__name__}, ResNet-{model.image_encoder.depth} + "
          f"{model.report_encoder.backbone.num_layers}-layer BERT (vocabulary {vocabulary}); "
          f"{total:,} weights, {trainable:,} trainable; batch {batch_size}, {image_size} px, "
          f"{max_tokens} tokens, {max_sentences} sentences; policy "
          f"{keras.config.dtype_policy().name}", flush=True)
    print(f"backend {keras.backend.backend()}, device {device_description()}", flush=True)

    start = time.perf_counter()
    for _ in range(args.warmup):
        logs = model.train_on_batch(batch, return_dict=True)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        logs = model.train_on_batch(batch, return_dict=True)
        float(logs["loss"])
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    mean = statistics.fmean(times)
    peak = peak_memory_bytes()
    print(f"warm-up {args.warmup} steps: {compile_s:.1f} s (compilation included)")
    print(f"step: median {1000 * median:.1f} ms, mean {1000 * mean:.1f} ms, min "
          f"{1000 * min(times):.1f} ms over {args.steps} steps; {batch_size / median:.1f} "
          f"images/s; loss {float(logs['loss']):.3f}")
    print(f"optimizer update with gradient accumulation {accumulation} (effective batch "
          f"{accumulation * batch_size}): {accumulation * median:.2f} s")
    if peak is not None:
        print(f"peak accelerator memory: {peak / 2**30:.2f} GiB")
    return {
        "weights": total, "trainable_weights": trainable, "batch_size": batch_size,
        "ms_per_step": 1000 * median, "images_per_s": batch_size / median,
        "update_s": accumulation * median, "loss": float(logs["loss"]), "peak_bytes": peak,
    }


if __name__ == "__main__":
    main()
