"""``python -m tools.prepare rsna ROOT OUTPUT_DIR [--split official|random|FOLDER] ...``

Converts RSNA Pneumonia Detection from its original files into a downstream dataset folder (see
``lovt_keras.data.downstream.rsna``) and prints the counts, the skips with their
reasons and the notes (clipped boxes, comparison with the official split's boxes).
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = "RSNA Pneumonia Detection (stage_2_train_labels.csv + DICOMs) -> downstream dataset (boxes, box masks; official split)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="folder with stage_2_train_labels.csv and stage_2_train_images/")
    parser.add_argument("output_dir", help="dataset folder to create")
    parser.add_argument(
        "--split", default="official",
        help="'official' (the paper's split files, default), 'random' (a seeded 60/20/20 split per image) "
        "or a folder with train.csv, validation.csv and test.csv",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --split random (0)")
    parser.add_argument("--image_size", type=int, default=224, help="stored image side (224)")
    parser.add_argument(
        "--on_error", choices=("raise", "skip"), default="raise",
        help="bad annotation or unreadable image: stop with an error naming it (default) "
        "or skip the image and count it",
    )
    parser.add_argument("--num_proc", type=int, default=1, help="image decoding processes (1)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR")


def main(args: argparse.Namespace) -> int:
    from lovt_keras.data.downstream.rsna import convert_rsna

    try:
        result = convert_rsna(
            args.root, args.output_dir, split=args.split, seed=args.seed,
            image_size=args.image_size, overwrite=args.overwrite, on_error=args.on_error,
            num_proc=args.num_proc,
        )
    except (OSError, ValueError) as error:
        # Bad input (missing files, a malformed row, an existing output folder): the
        # message names the file or row and the problem.
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(result.summary())
    print(f"train pixel mean {result.stats['mean']:.4f}, std {result.stats['std']:.4f}")
    return 0
