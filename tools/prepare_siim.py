"""``python -m tools.prepare siim ROOT OUTPUT_DIR [--split official|random|FOLDER] ...``

Converts SIIM-ACR Pneumothorax from its original files into a downstream dataset folder (see
``lovt_keras.data.downstream.siim``) and prints the counts, the skips with their
reasons and the notes (clipped boxes, comparison with the official split's boxes).
"""

from __future__ import annotations

import argparse

from tools.downstream_cli import add_common_arguments, run_conversion

DESCRIPTION = "SIIM-ACR Pneumothorax (train-rle.csv + DICOMs) -> downstream dataset (RLE masks, equalized; official split)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(
        parser,
        root_help="folder with train-rle.csv and dicom-images-train/",
        random_split_help="a seeded 60/20/20 split per image",
    )


def main(args: argparse.Namespace) -> int:
    from lovt_keras.data.downstream.siim import convert_siim

    return run_conversion(convert_siim, args)
