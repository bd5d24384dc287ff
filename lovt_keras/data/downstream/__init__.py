"""Converters of the downstream datasets of the localized evaluation (official dataset
scripts under ``src/data/datasets/``, split files under ``datasets/``).

One module per dataset, each with ``convert_<name>(root, output_dir, split="official",
seed=0, image_size=224, overwrite=False, ...)`` that parses the original annotations and
ends in ``common.resolve_and_convert``; shared helpers in ``common``. The table
``registry.CONVERTERS`` lists them with their command-line texts, extra options and
official split folders (``python -m tools.prepare`` is built from it).
"""

from lovt_keras.data.downstream.registry import CONVERTERS, Converter, Option

__all__ = ["CONVERTERS", "Converter", "Option"]
