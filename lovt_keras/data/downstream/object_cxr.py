"""Object-CXR (JF Healthcare, MIDL 2020) -> downstream dataset (tasks 15-17).

Official script: ``src/data/datasets/object_cxr/object_cxr_dataset.py``.

Original layout under ``root`` (or ``root/input``, the official script's layout)::

    train.csv, dev.csv     image_name,annotation
    train/<image_name>     JPG (8000 images)
    dev/<image_name>       JPG (1000 images; the test set)

``annotation`` is empty (no foreign object) or ``;``-separated objects: ``0 x1 y1 x2 y2``
(rectangle), ``1 x1 y1 x2 y2`` (ellipse inside that rectangle) or ``2 x1 y1 ... xn yn``
(polygon). Images: gray, histogram equalization, pad to square, resize. One class
``foreign_object`` (id 0; the official split CSVs write 1).

Boxes and masks, and where they differ from the official ``object_cxr_dataset.py``:

- Rectangle and ellipse: box ``(x1, y1, x2 - x1, y2 - y1)``. The official
  ``sample_to_bboxes`` stores ``(x1, y1, y2 - y1, x2 - x1)``, i.e. width and height
  swapped; the shipped official split CSVs carry that swap (the conversion notes count
  the images whose boxes match the CSV only after swapping back). Here boxes are right.
- Polygon: box = min/max of the points (as official); mask = the filled polygon with
  points ``(x, y)`` (PIL ``ImageDraw.polygon``). The official code passes ``(y, x)`` to
  ``cv2.fillPoly``, which mirrors polygon masks about the diagonal; here they are right.
- Rectangle mask: pixels ``[round(y1), round(y2)) x [round(x1), round(x2))`` (official).
- Ellipse mask: the official code fills the ellipse's bounding rectangle; that is the
  default here (``ellipse_masks="box"``); ``ellipse_masks="ellipse"`` fills the ellipse
  itself instead (pixels whose centre is inside the ellipse).
- Coordinates outside the image (the annotations contain a few, e.g. x = -24) are
  clipped to the image and counted; the official code would index from the end of the
  array for a negative coordinate.

Boxes always come from ``train.csv``/``dev.csv``; the split CSVs' boxes are only compared
with them (``ConversionResult.notes``).

Splits: the official split files by default (6400 / 1600 from train.csv, the 1000 dev
images as test); ``split="random"`` splits train.csv 80/20 with ``seed`` and keeps dev as
test, like the official script (which used ``train_test_split`` without a fixed seed).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from lovt_keras.data.downstream.common import (
    AnnotationError,
    ConversionResult,
    Example,
    Task,
    boxes_to_mask,
    check_boxes,
    check_output_dir,
    locate_root,
    random_split,
    require,
    resolve_and_convert,
)
from lovt_keras.data.images import read_image

__all__ = ["CLASS_NAMES", "RECTANGLE", "ELLIPSE", "POLYGON", "ObjectAnnotation",
           "parse_object_annotation", "object_cxr_target", "read_object_cxr_csv",
           "convert_object_cxr"]

CLASS_NAMES = ("foreign_object",)
RECTANGLE, ELLIPSE, POLYGON = 0, 1, 2
ELLIPSE_MASKS = ("box", "ellipse")


class ObjectAnnotation(NamedTuple):
    """One object of an ``annotation`` cell.

    Attributes:
        kind: ``RECTANGLE`` (0), ``ELLIPSE`` (1) or ``POLYGON`` (2).
        coords: float64 ``(2K,)`` as ``x1, y1, x2, y2, ...`` in image pixels.
    """

    kind: int
    coords: np.ndarray


def parse_object_annotation(annotation: str, source: str) -> list[ObjectAnnotation]:
    """Parses one ``annotation`` cell.

    Raises:
        AnnotationError: "unknown object type" (not 0, 1 or 2), "malformed object" (not
            numbers, rectangle/ellipse without exactly 4 coordinates, polygon with an odd
            count or fewer than 3 points), naming ``source`` and the object.
    """
    objects = []
    for index, text in enumerate(t for t in annotation.split(";") if t.strip()):
        where = f"{source} object {index + 1} {text.strip()!r}"
        try:
            values = [float(v) for v in text.split()]
        except ValueError as e:
            raise AnnotationError(where, "malformed object", "not numbers") from e
        kind, coords = values[0], np.asarray(values[1:], dtype=np.float64)
        if kind not in (RECTANGLE, ELLIPSE, POLYGON):
            raise AnnotationError(
                where, "unknown object type", f"{values[0]:g}; expected 0 (rectangle), "
                "1 (ellipse) or 2 (polygon)"
            )
        kind = int(kind)
        if kind in (RECTANGLE, ELLIPSE) and coords.size != 4:
            raise AnnotationError(
                where, "malformed object", f"{coords.size} coordinates, expected x1 y1 x2 y2"
            )
        if kind == POLYGON and (coords.size % 2 or coords.size < 6):
            raise AnnotationError(
                where, "malformed object",
                f"polygon with {coords.size} coordinates; expected >= 3 x y pairs",
            )
        objects.append(ObjectAnnotation(kind, coords))
    return objects


def _box(obj: ObjectAnnotation) -> tuple[float, float, float, float]:
    xs, ys = obj.coords[0::2], obj.coords[1::2]
    if obj.kind == POLYGON:
        x1, y1, x2, y2 = xs.min(), ys.min(), xs.max(), ys.max()
    else:
        x1, y1, x2, y2 = obj.coords
    return float(x1), float(y1), float(x2 - x1), float(y2 - y1)


def _ellipse_mask(coords: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels whose centre lies in the ellipse inscribed in ``[x1, x2] x [y1, y2]``.

    Same pixel convention as the box masks (pixel ``(r, c)`` covers ``[c, c + 1) x
    [r, r + 1)``), so the ellipse stays inside its box's mask; PIL's ``ellipse`` would
    include the pixel column ``x2`` and row ``y2``.
    """
    x1, y1, x2, y2 = (float(c) for c in coords)
    cx, cy, ax, ay = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    cols = (np.arange(width) + 0.5 - cx) / ax
    rows = (np.arange(height) + 0.5 - cy) / ay
    return (rows[:, None] ** 2 + cols[None, :] ** 2 <= 1.0).astype(np.uint8)


def object_cxr_target(
    annotation: str, height: int, width: int, source: str, ellipse_masks: str = "box"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Boxes and mask of one image from its ``annotation`` cell.

    Args:
        annotation: the CSV cell (``""`` for none).
        height, width: the image size.
        source: names the row in error messages.
        ellipse_masks: ``"box"`` (official: fill the bounding rectangle) or ``"ellipse"``.

    Returns:
        ``(boxes (N, 4) x, y, w, h clipped to the image, unclipped boxes (N, 4),
        mask uint8 (height, width) 0/1, number of clipped boxes)``.

    Raises:
        AnnotationError: see ``parse_object_annotation`` and ``common.check_boxes``.
    """
    if ellipse_masks not in ELLIPSE_MASKS:
        raise ValueError(f"ellipse_masks must be one of {ELLIPSE_MASKS}, got {ellipse_masks!r}")
    objects = parse_object_annotation(annotation, source)
    boxes = np.asarray([_box(o) for o in objects], dtype=np.float64).reshape(-1, 4)
    clipped_boxes, clipped = check_boxes(boxes, height, width, source)
    mask = np.zeros((height, width), dtype=np.uint8)
    drawn = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(drawn)
    for obj, box in zip(objects, clipped_boxes):
        if obj.kind == POLYGON:
            draw.polygon([(float(x), float(y)) for x, y in obj.coords.reshape(-1, 2)], fill=1)
        elif obj.kind == ELLIPSE and ellipse_masks == "ellipse":
            mask |= _ellipse_mask(obj.coords, height, width)
        else:
            mask |= boxes_to_mask(box[None], height, width)
    mask |= np.asarray(drawn, dtype=np.uint8)
    return clipped_boxes, boxes, mask, clipped


def read_object_cxr_csv(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """Reads ``train.csv`` / ``dev.csv``: ``(image_name, annotation, "file:line")`` per row.

    Raises:
        AnnotationError: wrong header, a row without two fields, or a name listed twice.
    """
    path = Path(path)
    out = []
    seen: dict[str, str] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header != ["image_name", "annotation"]:
            raise AnnotationError(
                f"{path}:1", "unexpected header", f"{header}; expected image_name, annotation"
            )
        for row in reader:
            source = f"{path}:{reader.line_num}"
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) != 2 or not row[0].strip():
                raise AnnotationError(source, "row is not 'image_name,annotation'", str(row))
            name = row[0].strip()
            if name in seen:
                raise AnnotationError(source, "image listed twice", f"{name} also at {seen[name]}")
            seen[name] = source
            out.append((name, row[1], source))
    return out


def _load(task: Task) -> Example:
    annotation, ellipse_masks = task.annotation
    image = read_image(task.image_path)
    height, width = image.shape
    boxes, original, mask, clipped = object_cxr_target(
        annotation, height, width, task.source, ellipse_masks
    )
    return Example(
        image=image,
        boxes=boxes,
        classes=np.zeros(len(boxes), np.int32),
        masks=mask,
        clipped=clipped,
        original_boxes=original,
    )


def convert_object_cxr(
    root: str | os.PathLike,
    output_dir: str | os.PathLike,
    split: str | os.PathLike = "official",
    seed: int = 0,
    image_size: int = 224,
    overwrite: bool = False,
    *,
    ellipse_masks: str = "box",
    validation_fraction: float = 0.2,
    on_error: str = "raise",
    num_proc: int = 1,
) -> ConversionResult:
    """Converts Object-CXR into a downstream dataset folder.

    Args:
        root: folder with ``train.csv``, ``dev.csv``, ``train/``, ``dev/`` (directly or
            under ``input/``).
        output_dir: the dataset folder to write.
        split: ``"official"``, ``"random"`` (train.csv split ``1 - validation_fraction``
            / ``validation_fraction`` with ``seed``, dev as test) or a split folder.
        seed: seed of the random split.
        image_size: stored image size.
        overwrite: replace an existing ``output_dir``.
        ellipse_masks: ``"box"`` (official) or ``"ellipse"``.
        validation_fraction: of train.csv, for the random split.
        on_error: per-image problems (unknown object type, malformed object, box outside
            the image or with non-positive size, unreadable JPG): ``"raise"`` or
            ``"skip"`` (counted).
        num_proc: worker processes for reading JPGs.

    Returns:
        ``ConversionResult``; rows hold ``image`` (equalized), ``id`` (image name
        without ``.jpg``), ``boxes`` (224-px ``x, y, w, h``), ``box_classes`` (all 0)
        and ``masks`` (bit 0 = foreign object).
    """
    if ellipse_masks not in ELLIPSE_MASKS:
        raise ValueError(f"ellipse_masks must be one of {ELLIPSE_MASKS}, got {ellipse_masks!r}")
    check_output_dir(output_dir, overwrite)
    base = locate_root(root, "train.csv", ("input", "."))
    annotations: dict[str, tuple[str, str, Path]] = {}
    train_ids: list[str] = []
    for part in ("train", "dev"):
        csv_path = require(base / f"{part}.csv", "the Object-CXR layout")
        for name, annotation, source in read_object_cxr_csv(csv_path):
            image_id = name[: -len(".jpg")] if name.lower().endswith(".jpg") else name
            if image_id in annotations:
                raise AnnotationError(
                    source, "image listed twice", f"{image_id} also at {annotations[image_id][1]}"
                )
            annotations[image_id] = (annotation, source, base / part / name)
            if part == "train":
                train_ids.append(image_id)
    images = {i for i, (_, _, path) in annotations.items() if path.is_file()}
    train_set = set(train_ids)

    def make_random(ids: list[str]) -> dict[str, list[str]]:
        parts = random_split(
            [i for i in ids if i in train_set], seed, (1 - validation_fraction, validation_fraction, 0.0)
        )
        parts["test"] = [i for i in ids if i not in train_set]
        return parts

    def task(i: str) -> Task:
        annotation, source, path = annotations[i]
        return Task(i, str(path), (annotation, ellipse_masks), source)

    return resolve_and_convert(
        dataset="object_cxr", output_dir=output_dir, split=split, seed=seed,
        image_size=image_size, overwrite=overwrite, on_error=on_error, num_proc=num_proc,
        annotated=list(annotations),
        images=images,
        make_random=make_random,
        task=task,
        loader=_load,
        class_names=CLASS_NAMES,
        equalize=True,
        source=f"Object-CXR train + dev ({base})",
        stats_extra={"ellipse_masks": ellipse_masks},
    )
