"""Converters of the downstream datasets of the localized evaluation (official dataset
scripts under ``src/data/datasets/``, split files under ``datasets/``).

One module per dataset, each with ``convert_<name>(root, output_dir, split="official",
seed=0, image_size=224, overwrite=False, ...)``; shared helpers in ``common``.
"""
