"""RSNA Pneumonia Detection (Kaggle stage 2 train) -> downstream dataset (tasks 1-9).

Official script:
``src/data/datasets/rsna_pneunomia_detection/rsna_pneunomia_detection_dataset.py``.

Original layout under ``root``::

    stage_2_train_labels.csv         patientId,x,y,width,height,Target (one row per box;
                                     Target=0 rows have empty box fields)
    stage_2_train_images/<patientId>.dcm   (1024x1024 8-bit MONOCHROME2)

Preprocessing as the official ``rsna_pneunomia_detection_dataset.py``: the DICOM pixels
as they are (no histogram equalization), boxes collected per patient, one class
``opacity`` (id 0; the official split CSVs write 1), box-filled masks for the
segmentation tasks (pixels ``[round(y), round(y + h)) x [round(x), round(x + w))``), then
pad to square and resize to 224 with boxes and masks.

Splits: the official split files by default (16010 / 5337 / 5337 images, train.csv in
random order). ``split="random"`` draws a fresh seeded 60/20/20 split per image. The label
fractions of tasks 1-9 are ``subset_fraction(ds["train"], 0.01 | 0.1 | 1.0)`` (the first
rows: 160 / 1601 / 16010) and all tasks validate on ``subset_fraction(ds["validation"],
0.1)`` (534 images); the dataset stores the complete splits.

Boxes always come from ``stage_2_train_labels.csv``; the split CSVs' boxes (the official
conversion of the same file) are only compared with them (``ConversionResult.notes``).
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
    example_from_boxes,
    require,
    resolve_and_convert,
)
from lovt_keras.data.images import read_image

__all__ = ["CLASS_NAMES", "LABELS_FILE", "IMAGES_DIR", "parse_rsna_labels", "convert_rsna"]

CLASS_NAMES = ("opacity",)
LABELS_FILE = "stage_2_train_labels.csv"
IMAGES_DIR = "stage_2_train_images"
_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")


def parse_rsna_labels(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, str]]:
    """Reads ``stage_2_train_labels.csv`` into boxes per patient.

    Args:
        path: the CSV file.

    Returns:
        patientId -> ``(boxes float64 (N, 4) x, y, w, h in DICOM pixels, source)`` in
        order of first appearance; ``N = 0`` for ``Target = 0`` patients. ``source`` is
        ``file:line`` of the patient's first row.

    Raises:
        AnnotationError: a missing column, a Target other than 0/1, a Target=1 row
            without four numbers, a Target=0 row with box values, or a patient with both
            Target values (each naming the file and line).
    """
    path = Path(path)
    out: dict[str, tuple[list, str]] = {}
    targets: dict[str, str] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise AnnotationError(
                f"{path}:1", "missing columns", f"{missing}; header is {reader.fieldnames}"
            )
        for row in reader:
            source = f"{path}:{reader.line_num}"
            pid = (row["patientId"] or "").strip()
            if not pid:
                raise AnnotationError(source, "row without patientId")
            target = (row["Target"] or "").strip()
            if target not in ("0", "1"):
                raise AnnotationError(source, "Target is not 0 or 1", repr(row["Target"]))
            values = [(row[c] or "").strip() for c in ("x", "y", "width", "height")]
            if pid in targets and targets[pid] != target:
                raise AnnotationError(
                    source, "patient with both Target 0 and 1", f"{pid}; first at {out[pid][1]}"
                )
            targets[pid] = target
            boxes, _ = out.setdefault(pid, ([], source))
            if target == "0":
                if any(values):
                    raise AnnotationError(source, "Target=0 row with box values", str(values))
                continue
            try:
                boxes.append([float(v) for v in values])
            except ValueError as e:
                raise AnnotationError(
                    source, "Target=1 row without a numeric box", str(values)
                ) from e
    return {
        pid: (np.asarray(boxes, dtype=np.float64).reshape(-1, 4), source)
        for pid, (boxes, source) in out.items()
    }


def _load(task: Task) -> Example:
    boxes = np.asarray(task.annotation, dtype=np.float64).reshape(-1, 4)
    classes = np.zeros(len(boxes), np.int32)
    return example_from_boxes(read_image(task.image_path), boxes, classes, 1, task.source)


def convert_rsna(
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
    """Converts RSNA Pneumonia Detection into a downstream dataset folder.

    Args:
        root: folder with ``stage_2_train_labels.csv`` and ``stage_2_train_images/``.
        output_dir: the dataset folder to write.
        split: ``"official"`` (shipped split files), ``"random"`` (seeded 60/20/20 per
            image) or a folder with ``train.csv``/``validation.csv``/``test.csv``.
        seed: seed of the random split.
        image_size: stored image size.
        overwrite: replace an existing ``output_dir``.
        on_error: per-image problems (unreadable DICOM, box outside the image or with
            non-positive size): ``"raise"`` or ``"skip"`` (counted).
        num_proc: worker processes for reading DICOMs.

    Returns:
        ``ConversionResult``; rows hold ``image``, ``id`` (patientId), ``boxes`` (224-px
        ``x, y, w, h``), ``box_classes`` (all 0) and ``masks`` (bit 0 = opacity).
    """
    check_output_dir(output_dir, overwrite)
    root = Path(root)
    layout = "the Kaggle RSNA layout"
    annotations = parse_rsna_labels(require(root / LABELS_FILE, layout))
    images = {
        entry.name[: -len(".dcm")]: Path(entry.path)
        for entry in os.scandir(require(root / IMAGES_DIR, layout, folder=True))
        if entry.name.lower().endswith(".dcm") and entry.is_file()
    }
    return resolve_and_convert(
        dataset="rsna", output_dir=output_dir, split=split, seed=seed, image_size=image_size,
        overwrite=overwrite, on_error=on_error, num_proc=num_proc,
        annotated=list(annotations),
        images=images,
        unannotated_images=sorted(images),
        task=lambda pid: Task(pid, str(images[pid]), *annotations[pid]),
        loader=_load,
        class_names=CLASS_NAMES,
        equalize=False,
        source=f"RSNA Pneumonia Detection stage 2 train ({root})",
    )
