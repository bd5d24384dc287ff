"""``python -m tools.prepare rsna ROOT OUTPUT_DIR [--split official|random|FOLDER] ...``

Converts RSNA Pneumonia Detection from its original files into a downstream dataset folder (see
``lovt_keras.data.downstream.rsna``) and prints the counts, the skips with their
reasons and the notes (clipped boxes, comparison with the official split's boxes).
"""

from __future__ import annotations

import argparse

from tools.downstream_cli import add_common_arguments, run_conversion

DESCRIPTION = "RSNA Pneumonia Detection (stage_2_train_labels.csv + DICOMs) -> downstream dataset (boxes, box masks; official split)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(
        parser,
        root_help="folder with stage_2_train_labels.csv and stage_2_train_images/",
        random_split_help="a seeded 60/20/20 split per image",
    )


def main(args: argparse.Namespace) -> int:
    from lovt_keras.data.downstream.rsna import convert_rsna

    return run_conversion(convert_rsna, args)
