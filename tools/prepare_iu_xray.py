"""``python -m tools.prepare iu-xray REPORTS_DIR IMAGES_DIR OUTPUT_DIR ...``

Converts the IU X-ray (Open-i NLMCXR) report XMLs and PNG images into a pretraining
dataset folder (see ``lovt_keras.data.iu_xray``) and prints the counts and the skips.
"""

from __future__ import annotations

import argparse

DESCRIPTION = "IU X-ray (Open-i NLMCXR) XML reports + PNG images -> pretraining dataset"


def _fractions(text: str) -> tuple[float, float, float]:
    parts = text.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VAL,TEST fractions, got {text!r}")
    try:
        return tuple(float(p) for p in parts)  # type: ignore[return-value]
    except ValueError:
        raise argparse.ArgumentTypeError(f"fractions must be numbers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reports_dir", help="folder of the XMLs (ecgen-radiology or its parent)")
    parser.add_argument("images_dir", help="folder of the PNGs (NLMCXR_png)")
    parser.add_argument("output_dir", help="dataset folder to create")
    parser.add_argument("--image_size", type=int, default=256, help="stored image side (px)")
    parser.add_argument(
        "--split", type=_fractions, default=(0.8, 0.1, 0.1),
        help="train,validation,test fractions of the reports (default 0.8,0.1,0.1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the report split")
    parser.add_argument(
        "--projections", default=None,
        help="Kaggle indiana_projections.csv (uid,filename,projection); enables frontal-only",
    )
    views = parser.add_mutually_exclusive_group()
    views.add_argument(
        "--frontal_only", dest="frontal_only", action="store_true", default=None,
        help="keep frontal images only (needs --projections; the default with it)",
    )
    views.add_argument(
        "--all_views", dest="frontal_only", action="store_false",
        help="keep every linked image (the default without --projections)",
    )
    parser.add_argument("--num_proc", type=int, default=1, help="image decoding processes")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT_DIR")


def main(args: argparse.Namespace) -> int:
    from lovt_keras.data.iu_xray import convert_iu_xray

    try:
        result = convert_iu_xray(
            args.reports_dir, args.images_dir, args.output_dir, image_size=args.image_size,
            split=args.split, seed=args.seed, projections=args.projections,
            frontal_only=args.frontal_only, overwrite=args.overwrite, num_proc=args.num_proc,
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
