"""The command-line options and error handling shared by the downstream converters
(``tools/prepare_rsna.py``, ``prepare_siim``, ``prepare_object_cxr``, ``prepare_nih``,
``prepare_covid_rural``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def add_common_arguments(parser: argparse.ArgumentParser, root_help: str,
                         random_split_help: str) -> None:
    """ROOT, OUTPUT_DIR, --split, --seed, --image_size, --on_error, --num_proc, --overwrite."""
    parser.add_argument("root", help=root_help)
    parser.add_argument("output_dir", help="dataset folder to create")
    parser.add_argument(
        "--split", default="official",
        help=f"'official' (the paper's split files, default), 'random' ({random_split_help}) "
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


def run_conversion(convert: Callable, args: argparse.Namespace, **extra) -> int:
    """Calls ``convert`` with the common options (plus ``extra``) and prints the summary."""
    try:
        result = convert(
            args.root, args.output_dir, split=args.split, seed=args.seed,
            image_size=args.image_size, overwrite=args.overwrite, on_error=args.on_error,
            num_proc=args.num_proc, **extra,
        )
    except (OSError, ValueError) as error:
        # Bad input (missing files, a malformed row, an existing output folder): the
        # message names the file or row and the problem.
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(result.summary())
    print(f"train pixel mean {result.stats['mean']:.4f}, std {result.stats['std']:.4f}")
    return 0
