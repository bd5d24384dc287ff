"""Generates SynthCXR and its tokenizer vocabulary into a dataset folder.

    python -m tools.prepare synthcxr [--output_dir DIR] [--num_train N] [--overwrite]

Without ``--output_dir`` the folder is the cache folder that
``lovt_keras.data.synthcxr.load_synthcxr`` uses for the same parameters, so later
``load_synthcxr`` calls reuse it. The folder is built in a temporary sibling and renamed
into place when complete; an existing folder is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

from lovt_keras.data import synthcxr
from lovt_keras.files import replace_folder, write_json

DESCRIPTION = "Generate SynthCXR, the synthetic chest-X-ray dataset (images, reports, labels)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output_dir",
        default=None,
        help="dataset folder to write (default: the load_synthcxr cache folder for these "
        "parameters, under $LOVT_KERAS_CACHE/synthcxr or ~/.cache/lovt_keras/synthcxr)",
    )
    for flag, default, what in (
        ("--num_train", synthcxr.DEFAULT_NUM_TRAIN, "train images"),
        ("--num_validation", synthcxr.DEFAULT_NUM_VALIDATION, "validation images"),
        ("--num_test", synthcxr.DEFAULT_NUM_TEST, "test images"),
        ("--image_size", synthcxr.DEFAULT_IMAGE_SIZE, "stored image side"),
        ("--seed", synthcxr.DEFAULT_SEED, "generator seed"),
    ):
        parser.add_argument(flag, type=int, default=default, help=f"{what} ({default})")
    parser.add_argument("--num_proc", type=int, default=1, help="generator processes (1)")
    parser.add_argument(
        "--vocab_size", type=int, default=synthcxr.SYNTHCXR_VOCAB_SIZE,
        help=f"WordPiece vocabulary bound ({synthcxr.SYNTHCXR_VOCAB_SIZE})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")


def main(args: argparse.Namespace) -> int:
    from lovt_keras.data.pretraining_dataset import synthcxr_tokenizer

    sizes = {"num_train": args.num_train, "num_validation": args.num_validation,
             "num_test": args.num_test}
    for name, value in sizes.items():
        if value < 1:
            print(f"error: --{name} must be >= 1, got {value}", file=sys.stderr)
            return 2
    params = dict(sizes, image_size=args.image_size, seed=args.seed)
    if args.output_dir is None:
        final = synthcxr.synthcxr_dir(None, **params)
    else:
        final = Path(args.output_dir).expanduser().resolve()
    if final.exists() and not args.overwrite:
        print(f"error: {final} already exists; pass --overwrite to replace it", file=sys.stderr)
        return 1

    start = time.perf_counter()
    final.parent.mkdir(parents=True, exist_ok=True)
    # load_synthcxr builds atomically inside this scratch folder; the result is then
    # renamed to ``final``, so an interrupted run leaves no loadable folder behind.
    scratch = final.parent / f".{final.name}.prepare-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        dataset_dict = synthcxr.load_synthcxr(cache_dir=scratch, num_proc=args.num_proc, **params)
        built = synthcxr.synthcxr_dir(scratch, **params)
        stats = _complete_stats(built, dataset_dict)
        tokenizer = synthcxr_tokenizer(dataset_dict, vocab_size=args.vocab_size)
        del dataset_dict
        try:
            replace_folder(built, final, overwrite=args.overwrite)
        except FileExistsError:  # it appeared while we were generating
            print(f"error: {final} already exists; pass --overwrite to replace it",
                  file=sys.stderr)
            return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.perf_counter() - start

    counts = ", ".join(f"{split} {n}" for split, n in stats["counts"].items())
    print(f"SynthCXR written to {final}")
    print(f"  images: {counts} ({args.image_size} px, seed {args.seed})")
    print(f"  train pixel mean {stats['mean']:.4f}, std {stats['std']:.4f}")
    print(f"  vocabulary: {tokenizer.vocabulary_size} WordPiece tokens")
    print("  skipped: none (every generated sample is kept)")
    print(f"  time: {seconds:.1f} s")
    return 0


def _complete_stats(folder: Path, dataset_dict) -> dict:
    """Adds the convention's ``source``, ``counts`` and ``skipped`` to ``stats.json``."""
    path = folder / synthcxr.STATS_FILE
    stats = json.loads(path.read_text())
    stats["source"] = f"SynthCXR generator v{synthcxr.GENERATOR_VERSION}"
    stats["counts"] = {split: len(ds) for split, ds in dataset_dict.items()}
    stats["skipped"] = {}
    write_json(path, stats)
    return stats
