"""``python -m tools.prepare nih ROOT OUTPUT_DIR [--split official|random|FOLDER] ...``

Converts NIH ChestX-ray8 boxes from its original files into a downstream dataset folder (see
``lovt_keras.data.downstream.nih``) and prints the counts, the skips with their
reasons and the notes (clipped boxes, comparison with the official split's boxes).
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = "NIH ChestX-ray8 boxes (BBox_List_2017.csv + PNGs) -> downstream dataset (8 classes, equalized; official split)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="folder with BBox_List_2017.csv and the images (any subfolders); Data_Entry_2017*.csv and test_list.txt for --split random")
    parser.add_argument("output_dir", help="dataset folder to create")
    parser.add_argument(
        "--split", default="official",
        help="'official' (the paper's split files, default), 'random' (100 'No Finding' test images sampled with --seed, both groups split 60/20/20 by patient) "
        "or a folder with train.csv, validation.csv and test.csv",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of --split random (0)")
    parser.add_argument("--image_size", type=int, default=224, help="stored image side (224)")
    parser.add_argument(
        "--num_no_finding", type=int, default=100,
        help="'No Finding' images added by --split random (100)",
    )
    parser.add_argument(
        "--on_error", choices=("raise", "skip"), default="raise",
        help="bad annotation or unreadable image: stop with an error naming it (default) "
        "or skip the image and count it",
    )
    parser.add_argument("--num_proc", type=int, default=1, help="image decoding processes (1)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR")


def main(args: argparse.Namespace) -> int:
    from lovt_keras.data.downstream.nih import convert_nih

    try:
        result = convert_nih(
            args.root, args.output_dir, split=args.split, seed=args.seed,
            image_size=args.image_size, overwrite=args.overwrite, on_error=args.on_error,
            num_proc=args.num_proc, num_no_finding=args.num_no_finding,
        )
    except (OSError, ValueError) as error:
        # Bad input (missing files, a malformed row, an existing output folder): the
        # message names the file or row and the problem.
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(result.summary())
    print(f"train pixel mean {result.stats['mean']:.4f}, std {result.stats['std']:.4f}")
    return 0
