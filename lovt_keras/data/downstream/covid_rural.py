"""COVID Rural opacity segmentation -> downstream dataset (tasks 10-12).

Official script: ``src/data/datasets/COVID_rural/covid_rural_dataset.py``.

Original layout under ``root`` (github haimingt/opacity_segmentation_covid_chest_X_ray,
folder ``covid_rural_annot``; ``root`` may also be its parent)::

    jpgs/COVID-19-AR-<patient>_<MM-DD-YYYY>-XR.jpg     colour JPGs
    pngs_masks/<same name>.png                          binary masks, image size

Preprocessing as the official ``covid_rural_dataset.py``: gray as the mean of the colour
channels, histogram equalization, then pad to square and resize. Images without a mask
are dropped (counted). Masks must have the image's size and values {0, 1} ({0, 255} is
accepted too). One class ``opacity`` (id 0), no boxes.

Splits: the official split files by default (133 / 44 / 44 images); ``split="random"``
splits by patient (the name up to the first ``_``), 60/20/20, with the official greedy
rule (``common.split_by_patient``).

Deviation: the official script re-encodes the equalized image as JPEG before use; here
the equalized pixels go straight to pad/resize (no second lossy compression).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from lovt_keras.data.downstream.common import (
    AnnotationError,
    ConversionResult,
    Example,
    Task,
    check_output_dir,
    example_from_mask,
    index_files,
    locate_root,
    require,
    resolve_and_convert,
    split_by_patient,
)
from lovt_keras.data.images import read_image

__all__ = ["CLASS_NAMES", "IMAGES_DIR", "MASKS_DIR", "patient_id", "read_mask",
           "convert_covid_rural"]

CLASS_NAMES = ("opacity",)
IMAGES_DIR = "jpgs"
MASKS_DIR = "pngs_masks"
IMAGE_WITHOUT_MASK = "image without mask"


def patient_id(image_id: str) -> str:
    """``COVID-19-AR-16406541_01-19-2012-XR`` -> ``COVID-19-AR-16406541``."""
    return image_id.split("_")[0]


def read_mask(path: str | os.PathLike, height: int, width: int) -> np.ndarray:
    """Reads a COVID Rural mask PNG as uint8 ``(height, width)`` 0/1.

    Raises:
        AnnotationError: unreadable file, "mask size differs from the image", colour
            channels that differ, or "mask is not binary" (values other than {0, 1} or
            {0, 255}), naming the file.
    """
    path = str(path)
    try:
        with Image.open(path) as img:
            img.load()
            mask = np.asarray(img)
    except Exception as e:  # Pillow raises OSError, SyntaxError, ...
        raise AnnotationError(path, "unreadable mask", f"{type(e).__name__}: {e}") from e
    if mask.ndim == 3:
        if not (mask == mask[..., :1]).all():
            raise AnnotationError(path, "mask is not binary", "colour channels differ")
        mask = mask[..., 0]
    if mask.shape != (height, width):
        raise AnnotationError(
            path, "mask size differs from the image",
            f"mask {mask.shape[1]}x{mask.shape[0]}, image {width}x{height} (WxH)",
        )
    values = set(np.unique(mask).tolist())
    if values <= {0, 1}:
        return mask.astype(np.uint8)
    if values <= {0, 255}:
        return (mask == 255).astype(np.uint8)
    raise AnnotationError(
        path, "mask is not binary", f"values {sorted(values)[:8]}; expected {{0, 1}}"
    )


def _load(task: Task) -> Example:
    image = read_image(task.image_path)
    return example_from_mask(image, read_mask(task.annotation, *image.shape))


def convert_covid_rural(
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
    """Converts COVID Rural into a downstream dataset folder.

    Args:
        root: ``covid_rural_annot`` (with ``jpgs/`` and ``pngs_masks/``) or its parent.
        output_dir: the dataset folder to write.
        split: ``"official"``, ``"random"`` (seeded 60/20/20 by patient) or a split folder.
        seed: seed of the random split.
        image_size: stored image size.
        overwrite: replace an existing ``output_dir``.
        on_error: per-image problems (mask size differs, mask not binary, unreadable
            image or mask): ``"raise"`` or ``"skip"`` (counted).
        num_proc: worker processes for reading images.

    Returns:
        ``ConversionResult``; rows hold ``image`` (equalized), ``id`` (file stem), empty
        ``boxes``/``box_classes`` and ``masks`` (bit 0 = opacity).
    """
    check_output_dir(output_dir, overwrite)
    base = locate_root(root, IMAGES_DIR, (".", "covid_rural_annot"))
    layout = "covid_rural_annot/jpgs and pngs_masks"
    image_dir, mask_dir = (require(base / d, layout, folder=True) for d in (IMAGES_DIR, MASKS_DIR))
    images = index_files(image_dir, (".jpg", ".jpeg"))
    masks = index_files(mask_dir, (".png",))
    return resolve_and_convert(
        dataset="covid_rural", output_dir=output_dir, split=split, seed=seed,
        image_size=image_size, overwrite=overwrite, on_error=on_error, num_proc=num_proc,
        annotated=sorted(masks),
        images=images,
        unannotated_images=sorted(images),
        unannotated_reason=IMAGE_WITHOUT_MASK,
        make_random=lambda ids: split_by_patient(ids, patient_id, seed),
        task=lambda i: Task(i, str(images[i]), str(masks[i]), str(masks[i])),
        loader=_load,
        class_names=CLASS_NAMES,
        equalize=True,
        source=f"COVID Rural covid_rural_annot ({base})",
    )
