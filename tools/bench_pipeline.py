"""Throughput of the pretraining batch pipeline, read from a prepared dataset on disk.

    python -m tools.bench_pipeline [--num_images 1000] [--workers 0 2] [--epochs 1]
        [--model_rate IMAGES_PER_S | --measure_model_depth 18]

Prepares (or reuses) SynthCXR with ``--num_images`` train images at ``--stored_size`` px
in the SynthCXR cache (``$LOVT_KERAS_CACHE/synthcxr`` or ``~/.cache/lovt_keras/synthcxr``),
then prints images/s of ``PretrainingBatches`` in training mode (ConVIRT augmentation,
sentence swaps, tokenization, normalization; batch 32, 224 px) for each ``--workers``
value. Batches are drawn through Keras' own ``PyDatasetAdapter`` iteration, as ``fit``
draws them: ``workers`` > 1 uses its thread pool, 0 or 1 computes batches in the calling
thread.

The pipeline must deliver at least 3x the images/s that the model consumes in training.
Pass the model's rate with ``--model_rate``, or let ``--measure_model_depth D`` measure
``fit`` of a LoVT pretrainer with a ResNet-D image encoder and a 2-layer BERT at the same
image size on the current ``KERAS_BACKEND`` (a lower bound of the real model's cost).
"""

from __future__ import annotations

import argparse
import os
import time

# The library (and so Keras) is imported in main after the arguments are parsed:
# `--help` stays fast and prints no framework logs.

REQUIRED_RATIO = 3.0


def pipeline_rate(batches, epochs: int) -> tuple[float, float, int]:
    """Images per wall-clock second and per CPU second (all threads of this process) of
    ``epochs`` epochs drawn the way ``fit`` draws them, and the number of images.

    The CPU-second rate is what one free core delivers; it does not depend on other load
    on the machine, which the wall-clock rate does."""
    # Keras' private adapter is the code fit runs; importing it keeps the measurement
    # honest about the enqueuer's thread pool and queue (pinned keras 3.15).
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    adapter = PyDatasetAdapter(batches, shuffle=False)
    batches[0]  # warm-up outside the clock (imports, first Arrow read)
    images = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        adapter.on_epoch_begin()
        for batch in adapter.get_numpy_iterator():
            images += len(batch["images"])
        adapter.on_epoch_end()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return images / wall, images / cpu, images


def model_rate(batches, depth: int, steps: int) -> float:
    """Training images/s of a LoVT pretrainer (ResNet-``depth``, 2-layer BERT)."""
    import keras
    import numpy as np

    from lovt_keras.testing.fixtures import tiny_pretrainer

    tokenizer = batches.tokenizer
    model = tiny_pretrainer(
        image_size=batches.image_size,
        depth=depth,
        vocabulary_size=tokenizer.vocabulary_size,
        max_tokens=tokenizer.max_tokens,
        max_sentences=tokenizer.max_sentences,
        projection_dim=128,
        hidden_dim=512,
    )
    model.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=1e-6))
    batch = batches[0]
    repeated = {k: np.concatenate([v] * steps) for k, v in batch.items()}
    size = len(batch["images"])
    model.fit(batch, batch_size=size, epochs=1, verbose=0)  # compile outside the clock
    start = time.perf_counter()
    model.fit(repeated, batch_size=size, epochs=1, verbose=0, shuffle=False)
    return steps * size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=1000, help="train images (1000)")
    parser.add_argument("--stored_size", type=int, default=224, help="stored image side (224)")
    parser.add_argument("--image_size", type=int, default=224, help="output image side (224)")
    parser.add_argument("--batch_size", type=int, default=32, help="studies per batch (32)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                        help="worker threads to measure (0 2)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per measurement (1)")
    parser.add_argument("--cache_dir", default=None, help="SynthCXR cache folder")
    parser.add_argument("--num_proc", type=int, default=1, help="processes to generate with")
    parser.add_argument("--model_rate", type=float, default=None,
                        help="training images/s of the model to compare with")
    parser.add_argument("--measure_model_depth", type=int, default=None,
                        help="measure fit of a LoVT pretrainer with this ResNet depth")
    parser.add_argument("--model_steps", type=int, default=5, help="timed fit steps (5)")
    args = parser.parse_args(argv)

    from lovt_keras.data.pretraining_dataset import PretrainingBatches, synthcxr_tokenizer
    from lovt_keras.data.synthcxr import load_stats, load_synthcxr, synthcxr_dir

    sizes = dict(num_train=args.num_images, num_validation=32, num_test=32,
                 image_size=args.stored_size, seed=0)
    folder = synthcxr_dir(args.cache_dir, **sizes)
    reused = (folder / "stats.json").is_file()
    start = time.perf_counter()
    dataset_dict = load_synthcxr(args.cache_dir, num_proc=args.num_proc, **sizes)
    prepared = time.perf_counter() - start
    stats = load_stats(folder)
    tokenizer = synthcxr_tokenizer(dataset_dict)
    print(f"dataset: {folder} ({'reused' if reused else f'generated in {prepared:.1f} s'}), "
          f"{len(dataset_dict['train'])} train images at {args.stored_size} px; "
          f"tokenizer: {tokenizer.vocabulary_size} tokens, T={tokenizer.max_tokens}, "
          f"S={tokenizer.max_sentences}; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")

    rates = {}
    for workers in args.workers:
        batches = PretrainingBatches(
            dataset_dict["train"], tokenizer, stats, batch_size=args.batch_size,
            image_size=args.image_size, workers=workers, max_queue_size=8,
        )
        rate, per_cpu_second, images = pipeline_rate(batches, args.epochs)
        rates[workers] = rate
        print(f"pipeline: {workers} workers, batch {args.batch_size}, {args.image_size} px: "
              f"{rate:.0f} images/s ({per_cpu_second:.0f} images per CPU-second, "
              f"{images} images)")

    reference = args.model_rate
    if args.measure_model_depth is not None:
        import keras

        batches = PretrainingBatches(dataset_dict["train"], tokenizer, stats,
                                     batch_size=args.batch_size, image_size=args.image_size)
        reference = model_rate(batches, args.measure_model_depth, args.model_steps)
        print(f"model: LoVT ResNet-{args.measure_model_depth}, {keras.backend.backend()}, "
              f"batch {args.batch_size}, {args.image_size} px: {reference:.1f} images/s")
    if reference:
        best = max(rates.values())
        ratio = best / reference
        verdict = "ok" if ratio >= REQUIRED_RATIO else "TOO SLOW"
        print(f"pipeline / model = {ratio:.1f}x (required >= {REQUIRED_RATIO:.0f}x): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
