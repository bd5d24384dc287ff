"""Converts datasets from their original files into the formats lovt_keras reads.

    python -m tools.prepare NAME --help

The downstream datasets (``rsna``, ``siim``, ``object-cxr``, ``nih``, ``covid-rural``) are
the entries of ``lovt_keras.data.downstream.registry.CONVERTERS``: each takes ROOT,
OUTPUT_DIR, the common options below and its own ``options``, and prints the counts, the
skips with their reasons and the notes (clipped boxes, comparison with the official
split's boxes). The pretraining datasets each have a module ``tools/prepare_<name>.py``
(dashes become underscores) that defines ``DESCRIPTION``, ``add_arguments(parser)`` and
``main(args) -> int``. The conversions themselves live in ``lovt_keras.data``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lovt_keras.data.downstream.registry import CONVERTERS, Converter

PRETRAINING = ("synthcxr", "mimic-cxr", "iu-xray")
DATASETS = (*PRETRAINING, *CONVERTERS)


def _module(name: str):
    return importlib.import_module(f"tools.prepare_{name.replace('-', '_')}")


def add_downstream_arguments(parser: argparse.ArgumentParser, converter: Converter) -> None:
    """ROOT, OUTPUT_DIR, --split, --seed, --image_size, --on_error, --num_proc, --overwrite
    and the converter's own options."""
    parser.add_argument("root", help=converter.root_help)
    parser.add_argument("output_dir", help="dataset folder to create")
    parser.add_argument(
        "--split", default="official",
        help=f"'official' (the paper's split files, default), 'random' "
        f"({converter.random_split_help}) or a folder with train.csv, validation.csv and test.csv",
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
    for option in converter.options:
        parser.add_argument(
            f"--{option.name}", type=option.type, default=option.default,
            choices=option.choices, help=option.help,
        )


def run_downstream(converter: Converter, args: argparse.Namespace) -> int:
    """Runs the converter with the parsed options and prints its summary."""
    convert = converter.load()  # outside the try: an import error must surface
    options = {option.name: getattr(args, option.name) for option in converter.options}
    try:
        result = convert(
            args.root, args.output_dir, split=args.split, seed=args.seed,
            image_size=args.image_size, overwrite=args.overwrite, on_error=args.on_error,
            num_proc=args.num_proc, **options,
        )
    except (OSError, ValueError) as error:
        # Bad input (missing files, a malformed row, an existing output folder): the
        # message names the file or row and the problem.
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(result.summary())
    print(f"train pixel mean {result.stats['mean']:.4f}, std {result.stats['std']:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.prepare",
        description="Convert a dataset from its original files.",
    )
    sub = parser.add_subparsers(dest="dataset", metavar="NAME", required=True)
    for name in DATASETS:
        if name in CONVERTERS:
            converter = CONVERTERS[name]
            p = sub.add_parser(name, help=converter.description,
                               description=converter.description)
            add_downstream_arguments(p, converter)
        else:
            module = _module(name)  # every converter ships; an import error must surface
            p = sub.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
            module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dataset in CONVERTERS:
        return run_downstream(CONVERTERS[args.dataset], args)
    return int(_module(args.dataset).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
