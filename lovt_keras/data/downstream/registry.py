"""The table of the downstream dataset converters, read by ``python -m tools.prepare``.

One ``Converter`` per dataset, keyed by its command-line name. Everything per dataset
that is not in its module lives here: the converter function (imported only when used,
so that ``--help`` stays fast), the texts of the command line, the extra options and the
shipped official split folder. ``tools/prepare.py`` adds ROOT, OUTPUT_DIR and the common
options (``--split``, ``--seed``, ``--image_size``, ``--on_error``, ``--num_proc``,
``--overwrite``) to every entry.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["Option", "Converter", "CONVERTERS"]


@dataclasses.dataclass(frozen=True)
class Option:
    """An extra ``--NAME`` option of one converter, passed to it as the keyword ``NAME``.

    Attributes:
        name: the keyword argument of the converter (and the flag without ``--``).
        help: the help text.
        default: the default, the same as the converter's.
        type: converts the command-line string (None: keep the string).
        choices: the allowed values, or None.
    """

    name: str
    help: str
    default: Any = None
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Converter:
    """One downstream dataset.

    Attributes:
        name: the command-line name (``object-cxr``); with ``_`` for ``-`` it is the
            ``dataset`` key of the module, the stats.json and the official split.
        convert: ``"module:function"``; the function takes ``(root, output_dir, split=,
            seed=, image_size=, overwrite=, on_error=, num_proc=, **options)`` and returns
            a ``ConversionResult``.
        description: one line for ``--help``: the original files -> what is stored.
        root_help: help of the ROOT argument (the original layout).
        random_split_help: what ``--split random`` does.
        official_split: the folder of the official split CSVs under
            ``lovt_keras/data/splits`` (named as in the official repository's ``datasets/``).
        options: extra command-line options of this converter.
    """

    name: str
    convert: str
    description: str
    root_help: str
    random_split_help: str
    official_split: str
    options: tuple[Option, ...] = ()

    @property
    def dataset(self) -> str:
        """The key used by the converter module (``object_cxr``)."""
        return self.name.replace("-", "_")

    def load(self) -> Callable[..., Any]:
        """Imports and returns the converter function (import errors propagate)."""
        module, function = self.convert.split(":")
        return getattr(importlib.import_module(module), function)


_MODULE = "lovt_keras.data.downstream"

CONVERTERS: dict[str, Converter] = {c.name: c for c in (
    Converter(
        name="rsna",
        convert=f"{_MODULE}.rsna:convert_rsna",
        description="RSNA Pneumonia Detection (stage_2_train_labels.csv + DICOMs) -> "
        "downstream dataset (boxes, box masks; official split)",
        root_help="folder with stage_2_train_labels.csv and stage_2_train_images/",
        random_split_help="a seeded 60/20/20 split per image",
        official_split="RSNA-Pneunomia-Detection",
    ),
    Converter(
        name="siim",
        convert=f"{_MODULE}.siim:convert_siim",
        description="SIIM-ACR Pneumothorax (train-rle.csv + DICOMs) -> downstream dataset "
        "(RLE masks, equalized; official split)",
        root_help="folder with train-rle.csv and dicom-images-train/",
        random_split_help="a seeded 60/20/20 split per image",
        official_split="siim-acr-pneumothorax-segmentation",
    ),
    Converter(
        name="object-cxr",
        convert=f"{_MODULE}.object_cxr:convert_object_cxr",
        description="Object-CXR (train.csv/dev.csv + JPGs) -> downstream dataset (boxes, "
        "masks, equalized; official split)",
        root_help="folder with train.csv, dev.csv, train/ and dev/ (directly or under input/)",
        random_split_help="train.csv split 80/20 with --seed, dev as test",
        official_split="object-CXR",
        options=(
            Option(
                "ellipse_masks", default="box", choices=("box", "ellipse"),
                help="mask of an ellipse annotation: its bounding box (official) or the ellipse",
            ),
        ),
    ),
    Converter(
        name="nih",
        convert=f"{_MODULE}.nih:convert_nih",
        description="NIH ChestX-ray8 boxes (BBox_List_2017.csv + PNGs) -> downstream dataset "
        "(8 classes, equalized; official split)",
        root_help="folder with BBox_List_2017.csv and the images (any subfolders); "
        "Data_Entry_2017*.csv and test_list.txt for --split random",
        random_split_help="100 'No Finding' test images sampled with --seed, both groups "
        "split 60/20/20 by patient",
        official_split="NIH_CXR_pathology_detection",
        options=(
            Option(
                "num_no_finding", default=100, type=int,
                help="'No Finding' images added by --split random (100)",
            ),
        ),
    ),
    Converter(
        name="covid-rural",
        convert=f"{_MODULE}.covid_rural:convert_covid_rural",
        description="COVID Rural (jpgs/ + pngs_masks/) -> downstream dataset (opacity masks, "
        "equalized; official split)",
        root_help="covid_rural_annot folder (with jpgs/ and pngs_masks/) or its parent",
        random_split_help="a seeded 60/20/20 split by patient",
        official_split="Opacity-Segmentation-COVID",
    ),
)}
