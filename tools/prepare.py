"""Converts datasets from their original files into the formats lovt_keras reads.

    python -m tools.prepare NAME --help

Each NAME is implemented by a module ``tools/prepare_<name>.py`` (dashes become
underscores) that defines ``DESCRIPTION``, ``add_arguments(parser)`` and
``main(args) -> int``; the conversion itself lives in ``lovt_keras.data``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

DATASETS = (
    "synthcxr",
    "mimic-cxr",
    "iu-xray",
    "rsna",
    "siim",
    "object-cxr",
    "nih",
    "covid-rural",
)


def _module(name: str):
    return importlib.import_module(f"tools.prepare_{name.replace('-', '_')}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.prepare",
        description="Convert a dataset from its original files.",
    )
    sub = parser.add_subparsers(dest="dataset", metavar="NAME", required=True)
    for name in DATASETS:
        module = _module(name)  # every converter ships; an import error must surface
        p = sub.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(_module(args.dataset).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
