"""``python -m tools.prepare nih ROOT OUTPUT_DIR [--split official|random|FOLDER] ...``

Converts NIH ChestX-ray8 boxes from its original files into a downstream dataset folder (see
``lovt_keras.data.downstream.nih``) and prints the counts, the skips with their
reasons and the notes (clipped boxes, comparison with the official split's boxes).
"""

from __future__ import annotations

import argparse

from tools.downstream_cli import add_common_arguments, run_conversion

DESCRIPTION = "NIH ChestX-ray8 boxes (BBox_List_2017.csv + PNGs) -> downstream dataset (8 classes, equalized; official split)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(
        parser,
        root_help="folder with BBox_List_2017.csv and the images (any subfolders); Data_Entry_2017*.csv and test_list.txt for --split random",
        random_split_help="100 'No Finding' test images sampled with --seed, both groups split 60/20/20 by patient",
    )
    parser.add_argument(
        "--num_no_finding", type=int, default=100,
        help="'No Finding' images added by --split random (100)",
    )


def main(args: argparse.Namespace) -> int:
    from lovt_keras.data.downstream.nih import convert_nih

    return run_conversion(convert_nih, args, num_no_finding=args.num_no_finding)
