"""``python -m tools.prepare object-cxr ROOT OUTPUT_DIR [--split official|random|FOLDER] ...``

Converts Object-CXR from its original files into a downstream dataset folder (see
``lovt_keras.data.downstream.object_cxr``) and prints the counts, the skips with their
reasons and the notes (clipped boxes, comparison with the official split's boxes).
"""

from __future__ import annotations

import argparse

from tools.downstream_cli import add_common_arguments, run_conversion

DESCRIPTION = "Object-CXR (train.csv/dev.csv + JPGs) -> downstream dataset (boxes, masks, equalized; official split)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(
        parser,
        root_help="folder with train.csv, dev.csv, train/ and dev/ (directly or under input/)",
        random_split_help="train.csv split 80/20 with --seed, dev as test",
    )
    parser.add_argument(
        "--ellipse_masks", choices=("box", "ellipse"), default="box",
        help="mask of an ellipse annotation: its bounding box (official) or the ellipse",
    )


def main(args: argparse.Namespace) -> int:
    from lovt_keras.data.downstream.object_cxr import convert_object_cxr

    return run_conversion(convert_object_cxr, args, ellipse_masks=args.ellipse_masks)
