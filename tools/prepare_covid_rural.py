"""``python -m tools.prepare covid-rural ROOT OUTPUT_DIR [--split official|random|FOLDER] ...``

Converts COVID Rural from its original files into a downstream dataset folder (see
``lovt_keras.data.downstream.covid_rural``) and prints the counts, the skips with their
reasons and the notes (clipped boxes, comparison with the official split's boxes).
"""

from __future__ import annotations

import argparse

from tools.downstream_cli import add_common_arguments, run_conversion

DESCRIPTION = "COVID Rural (jpgs/ + pngs_masks/) -> downstream dataset (opacity masks, equalized; official split)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(
        parser,
        root_help="covid_rural_annot folder (with jpgs/ and pngs_masks/) or its parent",
        random_split_help="a seeded 60/20/20 split by patient",
    )


def main(args: argparse.Namespace) -> int:
    from lovt_keras.data.downstream.covid_rural import convert_covid_rural

    return run_conversion(convert_covid_rural, args)
