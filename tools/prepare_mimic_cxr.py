"""``python -m tools.prepare mimic-cxr ROOT OUTPUT_DIR [--reports ZIP_OR_DIR] ...``

Converts MIMIC-CXR-JPG 2.0.0 (+ the MIMIC-CXR reports) into a pretraining dataset
folder (see ``lovt_keras.data.mimic_cxr``) and prints the counts and the skips.
"""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "MIMIC-CXR-JPG 2.0.0 + reports -> pretraining dataset (frontal images, findings + "
    "impression, official split)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="MIMIC-CXR-JPG 2.0.0 folder (CSV files and files/)")
    parser.add_argument("output_dir", help="dataset folder to create")
    parser.add_argument(
        "--reports", default=None,
        help="mimic-cxr-reports.zip or its extracted folder (default: look under ROOT)",
    )
    parser.add_argument("--image_size", type=int, default=256, help="stored image side (px)")
    parser.add_argument(
        "--train_fraction", type=float, default=1.0,
        help="keep the first fraction of train studies (0.3 for the 30%% subset)",
    )
    parser.add_argument("--num_proc", type=int, default=1, help="image decoding processes")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR")


def main(args: argparse.Namespace) -> int:
    from lovt_keras.data.mimic_cxr import convert_mimic_cxr

    try:
        result = convert_mimic_cxr(
            args.root, args.output_dir, reports=args.reports, image_size=args.image_size,
            train_fraction=args.train_fraction, overwrite=args.overwrite, num_proc=args.num_proc,
        )
    except (OSError, ValueError) as error:
        # Bad input (missing files or columns, an existing output folder, nothing left
        # to write): the message names the file and the problem, and a ConversionError
        # carries the skip summary.
        print(f"error: {error}")
        return 1
    print(result.summary())
    print(f"train pixel mean {result.stats['mean']:.4f}, std {result.stats['std']:.4f}")
    return 0
