"""SIIM-ACR Pneumothorax -> downstream dataset (tasks 13-14).

Official script: ``src/data/datasets/siim_acr_pneumothorax/siim_acr_pneumothorax.py``.

Original layout under ``root`` (Kaggle ``siim-acr-pneumothorax-segmentation``, mirror
``seesee/siim-train-test``)::

    train-rle.csv                    header "ImageId, EncodedPixels" (note the space);
                                     one row per pneumothorax instance, "-1" for none
    dicom-images-train/<study>/<series>/<ImageId>.dcm

Masks: the Kaggle "relative" run-length encoding (``common.decode_rle``: offsets counted
from the end of the previous run, pixels column-major), several rows of one image OR-ed.
The official script assumes 1024x1024; here each mask is decoded at its DICOM's size.
Images: pixels / 255 (``read_image``), histogram equalization, pad to square, resize.
One class ``pneumothorax`` (id 0), no boxes.

Splits: the official split files by default (7229 / 2409 / 2409 images);
``split="random"`` draws a fresh seeded 60/20/20 split per image.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from lovt_keras.data.downstream.common import (
    AnnotationError,
    ConversionResult,
    Example,
    Task,
    check_output_dir,
    decode_rle,
    example_from_mask,
    index_files,
    require,
    resolve_and_convert,
)
from lovt_keras.data.images import read_image

__all__ = ["CLASS_NAMES", "RLE_FILE", "IMAGES_DIR", "parse_siim_rle", "decode_siim_mask",
           "convert_siim"]

CLASS_NAMES = ("pneumothorax",)
RLE_FILE = "train-rle.csv"
IMAGES_DIR = "dicom-images-train"


def parse_siim_rle(path: str | os.PathLike) -> dict[str, list[tuple[str, str]]]:
    """Reads ``train-rle.csv`` (header ``ImageId, EncodedPixels``, spaces stripped).

    Returns:
        ImageId -> list of ``(EncodedPixels, "file:line")``, images in order of first
        appearance. The encodings are checked when decoded (they need the image size).

    Raises:
        AnnotationError: a wrong header or a row without two fields (naming the line).
    """
    path = Path(path)
    out: dict[str, list[tuple[str, str]]] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header != ["ImageId", "EncodedPixels"]:
            raise AnnotationError(
                f"{path}:1", "unexpected header", f"{header}; expected ImageId, EncodedPixels"
            )
        for row in reader:
            source = f"{path}:{reader.line_num}"
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != 2 or not row[0].strip():
                raise AnnotationError(source, "row is not 'ImageId, EncodedPixels'", str(row))
            out.setdefault(row[0].strip(), []).append((row[1].strip(), source))
    return out


def decode_siim_mask(rles: list[tuple[str, str]], height: int, width: int) -> np.ndarray:
    """ORs the decoded RLE rows of one image: uint8 ``(height, width)`` 0/1."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for rle, source in rles:
        mask |= decode_rle(rle, height, width, source)
    return mask


def _load(task: Task) -> Example:
    image = read_image(task.image_path)
    return example_from_mask(image, decode_siim_mask(task.annotation, *image.shape))


def convert_siim(
    root: str | os.PathLike,
    output_dir: str | os.PathLike,
    split: str | os.PathLike = "official",
    seed: int = 0,
    image_size: int = 224,
    overwrite: bool = False,
    *,
    on_error: str = "raise",
    num_proc: int = 1,
) -> ConversionResult:
    """Converts SIIM-ACR Pneumothorax into a downstream dataset folder.

    Args:
        root: folder with ``train-rle.csv`` and ``dicom-images-train/`` (searched
            recursively for ``<ImageId>.dcm``; the whole ``root`` if that folder is absent).
        output_dir: the dataset folder to write.
        split: ``"official"``, ``"random"`` (seeded 60/20/20 per image) or a split folder.
        seed: seed of the random split.
        image_size: stored image size.
        overwrite: replace an existing ``output_dir``.
        on_error: per-image problems (malformed RLE: odd length, runs past the end;
            unreadable DICOM): ``"raise"`` or ``"skip"`` (counted).
        num_proc: worker processes for reading DICOMs.

    Returns:
        ``ConversionResult``; rows hold ``image`` (equalized), ``id`` (ImageId), empty
        ``boxes``/``box_classes`` and ``masks`` (bit 0 = pneumothorax).
    """
    check_output_dir(output_dir, overwrite)
    root = Path(root)
    annotations = parse_siim_rle(require(root / RLE_FILE, "the Kaggle SIIM layout"))
    image_dir = root / IMAGES_DIR if (root / IMAGES_DIR).is_dir() else root
    images = index_files(image_dir, (".dcm",))
    return resolve_and_convert(
        dataset="siim", output_dir=output_dir, split=split, seed=seed, image_size=image_size,
        overwrite=overwrite, on_error=on_error, num_proc=num_proc,
        annotated=list(annotations),
        images=images,
        unannotated_images=sorted(images),
        task=lambda i: Task(i, str(images[i]), annotations[i], annotations[i][0][1]),
        loader=_load,
        class_names=CLASS_NAMES,
        equalize=True,
        source=f"SIIM-ACR Pneumothorax train ({root})",
    )
