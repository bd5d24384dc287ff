"""Converters of the downstream datasets of the localized evaluation (spec 5.3).

One module per dataset, each with ``convert_<name>(root, output_dir, split="official",
seed=0, image_size=224, overwrite=False, ...)``; shared helpers in ``common``.
"""
