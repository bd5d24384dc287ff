"""Shared pieces of the downstream dataset converters (official ``src/data/datasets/``).

- Annotation helpers: ``decode_rle`` (Kaggle SIIM relative, column-major RLE),
  ``boxes_to_mask`` (box-filled masks with the official rounding), ``check_boxes``
  (boxes against the image), ``pack_masks`` / ``unpack_masks`` (bit c = class c).
- Examples: ``example_from_boxes`` (checked boxes with one box-filled mask per class)
  and ``example_from_mask`` (a one-class mask, no boxes), the two kinds of targets.
- Splits: ``load_split_folder`` / ``official_split_folder`` (the split CSVs of the official
  code, shipped in ``lovt_keras/data/splits``; the folder names are in the table
  ``registry.CONVERTERS``), ``split_folder`` (the folder a ``split`` argument names),
  ``random_split`` (per image) and ``split_by_patient`` (greedy, patients disjoint), both
  seeded; ``subset_fraction`` (the first rows of a split, the official ``train_subset``).
- Original layout: ``locate_root`` (the folder of a layout that may be nested one level
  down), ``require`` (a file or folder that must exist), ``index_files``.
- The conversion drivers. ``resolve_and_convert`` is what a converter calls once it has
  parsed its annotations: it assigns the images to splits (``resolve_split``) and hands
  them to ``convert_downstream``, which preprocesses every image (optional histogram
  equalization, pad to square, resize to 224, boxes and masks moved along;
  ``equalize_8bit`` is the fast exact equalization), writes the dataset folder with
  ``write_dataset`` and returns a ``ConversionResult`` (counts per split, skips with
  reasons, and notes: boxes clipped to the image and the cross-check of the boxes with
  the split CSV's).

Downstream row format (one row per image):
``image`` uint8 ``(S, S)``; ``id`` string; ``boxes`` float32 ``(N, 4)`` as ``x, y, w, h`` in
the stored ``S``-px image; ``box_classes`` int32 ``(N,)`` indexing ``class_names``;
``masks`` uint8 ``(S, S)`` with bit ``c`` set inside class ``c`` (decode with
``unpack_masks``). Read back with ``with_format("numpy")``, a row without boxes gives
``boxes`` of shape ``(0,)``: use ``boxes.reshape(-1, 4)``.

Bad input: structural problems of an annotation file (wrong header, missing column,
non-numeric value) always raise ``AnnotationError`` naming the file and line. Problems of
one image's annotation (malformed RLE, unknown polygon type, box outside the image or with
non-positive size, mask of another size than the image) and unreadable images raise too
with ``on_error="raise"`` (the default) and are skipped and counted per reason with
``on_error="skip"``. Images that are listed but absent (or present but unlisted) are always
counted, never silently dropped.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from lovt_keras.data.dataset_writer import (
    NO_IMAGE_FILE,
    UNREADABLE_IMAGE,
    ConversionError,
    ConversionResult,
    EmptyTrainSplitError,
    check_output_dir,
    flatten_skips,
    imap_ordered,
    write_dataset,
)
from lovt_keras.data.downstream.registry import CONVERTERS
from lovt_keras.data.images import (
    ImageReadError,
    equalize_histogram,
    pad_and_resize,
    to_uint8,
)
from lovt_keras.data.reports import SkipCounter

__all__ = [
    "SPLITS",
    "OFFICIAL",
    "RANDOM",
    "OFFICIAL_SPLIT_NAMES",
    "SPLITS_DIR",
    "LISTED_BUT_MISSING",
    "NOT_IN_SPLIT",
    "NO_IMAGE_FILE",
    "UNREADABLE_IMAGE",
    "IMAGE_WITHOUT_ANNOTATION",
    "AnnotationError",
    "SplitEntry",
    "Task",
    "Example",
    "ConversionResult",
    "check_output_dir",
    "resolve_split",
    "resolve_and_convert",
    "decode_rle",
    "boxes_to_mask",
    "check_boxes",
    "pack_masks",
    "unpack_masks",
    "preprocess",
    "equalize_8bit",
    "example_from_boxes",
    "example_from_mask",
    "official_split_folder",
    "split_folder",
    "read_split_csv",
    "load_split_folder",
    "random_split",
    "split_by_patient",
    "subset_fraction",
    "compare_boxes",
    "index_files",
    "locate_root",
    "require",
    "downstream_features",
    "convert_downstream",
]

SPLITS = ("train", "validation", "test")
OFFICIAL = "official"
RANDOM = "random"

# The official split folders (names as in the official repo's ``datasets/``), by dataset
# key (``object_cxr``); declared with the rest of each dataset in the converter table.
SPLITS_DIR = Path(__file__).resolve().parents[1] / "splits"
OFFICIAL_SPLIT_NAMES = {c.dataset: c.official_split for c in CONVERTERS.values()}

# Skip reasons shared by all converters, so that summaries compare.
LISTED_BUT_MISSING = "listed in the official split but missing"
NOT_IN_SPLIT = "present but not in any split"
ON_ERROR = ("raise", "skip")


class AnnotationError(ValueError):
    """Bad annotation input; the message names the file/row and what is wrong.

    Attributes:
        source: the file and line (or image id) the problem comes from.
        kind: the category of the problem (the skip reason with ``on_error="skip"``).
        detail: specifics (values, sizes).
    """

    def __init__(self, source: str, kind: str, detail: str = ""):
        self.source = str(source)
        self.kind = kind
        self.detail = detail
        super().__init__(f"{self.source}: {kind}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):
        # Picklable across worker processes with all three fields.
        return (type(self), (self.source, self.kind, self.detail))


# --------------------------------------------------------------------------------------
# Masks and boxes
# --------------------------------------------------------------------------------------


def decode_rle(rle: str, height: int, width: int, source: str = "<rle>") -> np.ndarray:
    """Decodes one Kaggle SIIM-ACR run-length encoding into a binary mask.

    The encoding is space-separated pairs ``(offset, length)``; the first offset counts
    from pixel 0, each later one from the end of the previous run ("relative" RLE). Pixels
    are numbered column-major (down the first column, then the next), so the flat mask is
    reshaped to ``(width, height)`` and transposed. ``"-1"`` (with any surrounding spaces)
    and the empty string mean an empty mask.

    Args:
        rle: the ``EncodedPixels`` value.
        height, width: the image size the encoding refers to.
        source: names the row in error messages.

    Returns:
        uint8 ``(height, width)`` with values 0/1.

    Raises:
        AnnotationError: non-integer tokens, an odd number of values, negative offsets,
            run lengths < 1, or runs past the end of the image.
    """
    mask = np.zeros(height * width, dtype=np.uint8)
    text = rle.strip()
    if text in ("-1", ""):
        return mask.reshape(width, height).T.copy()
    try:
        values = np.array([int(tok) for tok in text.split()], dtype=np.int64)
    except ValueError as e:
        raise AnnotationError(source, "malformed RLE", f"non-integer value: {e}") from e
    if values.size % 2:
        raise AnnotationError(
            source, "malformed RLE", f"odd number of values ({values.size}); expected pairs"
        )
    offsets, lengths = values[0::2], values[1::2]
    if (offsets < 0).any():
        raise AnnotationError(source, "malformed RLE", f"negative offset {offsets.min()}")
    if (lengths < 1).any():
        raise AnnotationError(source, "malformed RLE", f"run length {lengths.min()} < 1")
    ends = np.cumsum(offsets + lengths)
    starts = ends - lengths
    if ends[-1] > mask.size:
        bad = int(np.argmax(ends > mask.size))
        raise AnnotationError(
            source,
            "malformed RLE",
            f"run {bad + 1} covers pixels [{starts[bad]}, {ends[bad]}) past the end of the "
            f"{height}x{width} image ({mask.size} pixels)",
        )
    # Runs are disjoint and increasing: mark starts +1 and ends -1, then a cumsum fills.
    marks = np.zeros(mask.size + 1, dtype=np.int32)
    np.add.at(marks, starts, 1)
    np.add.at(marks, ends, -1)
    mask = (np.cumsum(marks[:-1]) > 0).astype(np.uint8)
    return mask.reshape(width, height).T.copy()


def boxes_to_mask(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fills boxes into a binary mask with the official rounding.

    Pixels ``[round(y), round(y + h)) x [round(x), round(x + w))`` are set (Python/numpy
    round half to even, as the official ``create_segmentation_mask``), clipped to the image.

    Args:
        boxes: ``(N, 4)`` as ``x, y, w, h`` in pixels of the image.
        height, width: the mask size.

    Returns:
        uint8 ``(height, width)`` with values 0/1.
    """
    mask = np.zeros((height, width), dtype=np.uint8)
    for x, y, w, h in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        r0, r1 = (int(np.clip(np.round(v), 0, height)) for v in (y, y + h))
        c0, c1 = (int(np.clip(np.round(v), 0, width)) for v in (x, x + w))
        mask[r0:r1, c0:c1] = 1
    return mask


def check_boxes(
    boxes: np.ndarray, height: int, width: int, source: str
) -> tuple[np.ndarray, int]:
    """Validates boxes against the image and clips those that stick out.

    Args:
        boxes: ``(N, 4)`` as ``x, y, w, h`` in pixels.
        height, width: the image size.
        source: names the row/image in error messages.

    Returns:
        ``(boxes float64 (N, 4) clipped to [0, width] x [0, height], number clipped)``.

    Raises:
        AnnotationError: a non-finite value, ``w <= 0`` or ``h <= 0`` ("box with
            non-positive size"), or a box that does not overlap the image ("box outside
            the image").
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = boxes.copy()
    clipped = 0
    for i, (x, y, w, h) in enumerate(boxes):
        if not np.all(np.isfinite((x, y, w, h))):
            raise AnnotationError(source, "non-finite box", f"box {i}: {x}, {y}, {w}, {h}")
        if w <= 0 or h <= 0:
            raise AnnotationError(
                source, "box with non-positive size", f"box {i}: x={x}, y={y}, w={w}, h={h}"
            )
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
        if x1 <= x0 or y1 <= y0:
            raise AnnotationError(
                source,
                "box outside the image",
                f"box {i}: x={x}, y={y}, w={w}, h={h} on a {width}x{height} (WxH) image",
            )
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            clipped += 1
            out[i] = (x0, y0, x1 - x0, y1 - y0)
    return out, clipped


def pack_masks(masks: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Packs binary per-class masks ``(C, H, W)`` (C <= 8) into uint8 ``(H, W)``, bit c = class c."""
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[0] > 8:
        raise ValueError(f"pack_masks expects (C <= 8, H, W), got shape {masks.shape}")
    shifts = np.arange(masks.shape[0], dtype=np.uint8).reshape(-1, 1, 1)
    return np.bitwise_or.reduce((masks != 0).astype(np.uint8) << shifts, axis=0).astype(np.uint8)


def unpack_masks(packed: Any, num_classes: int) -> np.ndarray:
    """Unpacks the ``masks`` column (uint8 ``(..., H, W)``) into uint8 ``(..., C, H, W)`` 0/1.

    ``packed`` may also be a row dict holding ``masks``.
    """
    packed = packed["masks"] if isinstance(packed, Mapping) else packed
    packed = np.asarray(packed, dtype=np.uint8)
    shifts = np.arange(num_classes, dtype=np.uint8).reshape(-1, 1, 1)
    return (packed[..., None, :, :] >> shifts) & np.uint8(1)


@dataclasses.dataclass
class Example:
    """One image with its annotations in original-image pixels (before preprocessing).

    Attributes:
        image: float32 ``(H, W)`` in ``[0, 1]``.
        boxes: ``(N, 4)`` ``x, y, w, h`` in original pixels.
        classes: int ``(N,)``.
        masks: uint8 ``(H, W)`` packed (bit c = class c).
        clipped: boxes clipped to the image while loading.
        original_boxes: the boxes before clipping (for the split cross-check), or None
            when equal to ``boxes``.
    """

    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    masks: np.ndarray
    clipped: int = 0
    original_boxes: np.ndarray | None = None


def equalize_8bit(image: np.ndarray) -> np.ndarray:
    """``equalize_histogram(image)``, computed through a 256-entry table for 8-bit images.

    Images read from 8-bit files hold values ``k / 255``; for them the histogram of the
    pixels is the weighted histogram of the levels present (same min/max, hence the same
    bin edges and bin of every value), so interpolating the levels once and indexing
    gives exactly ``equalize_histogram``'s output, about 10x faster on a 1024^2 image
    (``np.interp`` over every pixel dominates). Other images take the direct route.

    Args:
        image: float32 ``(H, W)`` in ``[0, 1]``.

    Returns:
        float32 ``(H, W)``, equal to ``equalize_histogram(image)``.
    """
    image = np.asarray(image)
    if image.dtype != np.float32 or image.size == 0:
        return equalize_histogram(image)
    levels = np.rint(image * np.float32(255.0))
    if levels.min() < 0 or levels.max() > 255:
        return equalize_histogram(image)
    codes = levels.astype(np.uint8)
    if not np.array_equal(codes.astype(np.float32) / np.float32(255.0), image):
        return equalize_histogram(image)
    counts = np.bincount(codes.ravel(), minlength=256)
    present = np.flatnonzero(counts)
    values = present.astype(np.float32) / np.float32(255.0)
    hist, edges = np.histogram(values, bins=256, weights=counts[present])
    centers = (edges[:-1] + edges[1:]) / 2.0
    cdf = np.cumsum(hist, dtype=np.float64)
    cdf /= cdf[-1]
    table = np.zeros(256, np.float32)
    table[present] = np.interp(values, centers, cdf).astype(np.float32)
    return table[codes]


def preprocess(
    example: Example, image_size: int = 224, equalize: bool = False
) -> dict[str, np.ndarray]:
    """The official preprocessing of one image: [equalize_hist], pad to square, resize.

    Equalization (skimage ``equalize_hist`` semantics) is applied to the full-resolution
    image, as the official scripts do before saving. Masks are resized with nearest
    neighbour (bit planes stay consistent), boxes scaled with the image.

    Returns:
        dict with ``image`` uint8 ``(S, S)``, ``boxes`` float32 ``(N, 4)`` in ``S``-px
        coordinates, ``box_classes`` int32 ``(N,)`` and ``masks`` uint8 ``(S, S)``.
    """
    image = example.image
    if equalize:
        image = equalize_8bit(image)
    boxes = np.asarray(example.boxes, dtype=np.float64).reshape(-1, 4)
    image, boxes, masks = pad_and_resize(image, image_size, boxes, example.masks)
    return {
        "image": to_uint8(image),
        "boxes": boxes.astype(np.float32).reshape(-1, 4),
        "box_classes": np.asarray(example.classes, dtype=np.int32).reshape(-1),
        "masks": np.asarray(masks, dtype=np.uint8),
    }


def example_from_boxes(
    image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, num_classes: int, source: str
) -> Example:
    """An image with boxes: boxes checked and clipped, one box-filled mask per class.

    Args:
        image: float32 ``(H, W)`` in ``[0, 1]``.
        boxes: ``(N, 4)`` ``x, y, w, h`` in pixels of ``image``.
        classes: int ``(N,)`` in ``[0, num_classes)``.
        num_classes: the mask bits to fill (``boxes_to_mask`` of class c's clipped boxes
            in bit c).
        source: names the row/image in error messages.

    Raises:
        AnnotationError: see ``check_boxes``.
    """
    height, width = image.shape
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1)
    clipped_boxes, clipped = check_boxes(boxes, height, width, source)
    planes = np.stack([
        boxes_to_mask(clipped_boxes[classes == c], height, width) for c in range(num_classes)
    ])
    return Example(
        image=image,
        boxes=clipped_boxes,
        classes=classes.astype(np.int32),
        masks=pack_masks(planes),
        clipped=clipped,
        original_boxes=boxes,
    )


def example_from_mask(image: np.ndarray, mask: np.ndarray) -> Example:
    """An image with a one-class uint8 0/1 ``mask`` of its size and no boxes (a one-class
    mask is its own bit-packed form)."""
    return Example(
        image=image,
        boxes=np.zeros((0, 4), np.float64),
        classes=np.zeros(0, np.int32),
        masks=mask,
    )


# --------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SplitEntry:
    """One row of a split CSV.

    Attributes:
        id: the image id.
        boxes: ``(N, 4)`` ``x, y, w, h`` in original pixels (detection CSVs) or None.
        classes: ``(N,)`` class ids as written by the official code, or None.
        source: file and line.
    """

    id: str
    boxes: np.ndarray | None
    classes: np.ndarray | None
    source: str


def official_split_folder(dataset: str) -> Path:
    """The shipped official split folder of ``dataset`` (a key of ``OFFICIAL_SPLIT_NAMES``)."""
    if dataset not in OFFICIAL_SPLIT_NAMES:
        raise ValueError(
            f"no official split for {dataset!r}; known: {', '.join(OFFICIAL_SPLIT_NAMES)}"
        )
    folder = SPLITS_DIR / OFFICIAL_SPLIT_NAMES[dataset]
    if not folder.is_dir():
        raise FileNotFoundError(f"official split folder {folder} is missing from the package")
    return folder


def split_folder(split: str | os.PathLike, dataset: str) -> Path:
    """The folder of split CSVs that a ``split`` other than ``"random"`` names: the shipped
    official one of ``dataset`` for ``"official"``, else ``split`` itself."""
    return official_split_folder(dataset) if str(split) == OFFICIAL else Path(split)


def _parse_split_boxes(boxes: str, classes: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    box_items = [b for b in boxes.split("|") if b.strip()]
    class_items = [c for c in classes.split("|") if c.strip()]
    if len(box_items) != len(class_items):
        raise AnnotationError(
            source, "split CSV row malformed",
            f"{len(box_items)} boxes but {len(class_items)} classes",
        )
    try:
        parsed = [[float(v) for v in b.split(";")] for b in box_items]
        class_ids = [int(c) for c in class_items]
    except ValueError as e:
        raise AnnotationError(source, "split CSV row malformed", str(e)) from e
    if any(len(b) != 4 for b in parsed):
        raise AnnotationError(source, "split CSV row malformed", "a box is not x;y;w;h")
    return (
        np.asarray(parsed, dtype=np.float64).reshape(-1, 4),
        np.asarray(class_ids, dtype=np.int64),
    )


def read_split_csv(path: str | os.PathLike) -> list[SplitEntry]:
    """Reads one official split CSV: ``ID`` or ``ID,boxes,classes`` (``x;y;w;h`` joined by ``|``).

    Raises:
        AnnotationError: unknown header, malformed boxes, or an id listed twice.
    """
    path = Path(path)
    entries: list[SplitEntry] = []
    seen: dict[str, str] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise AnnotationError(str(path), "empty split file")
        header = [h.strip() for h in header]
        if header not in (["ID"], ["ID", "boxes", "classes"]):
            raise AnnotationError(
                f"{path}:1", "unknown split CSV header",
                f"{header}; expected ['ID'] or ['ID', 'boxes', 'classes']",
            )
        detection = len(header) == 3
        for row in reader:
            source = f"{path}:{reader.line_num}"
            if not row or not row[0].strip():
                continue
            image_id = row[0].strip()
            if image_id in seen:
                raise AnnotationError(source, "id listed twice", f"{image_id} also at {seen[image_id]}")
            seen[image_id] = source
            boxes = classes = None
            if detection:
                padded = row + [""] * (3 - len(row))
                boxes, classes = _parse_split_boxes(padded[1], padded[2], source)
            entries.append(SplitEntry(image_id, boxes, classes, source))
    return entries


def load_split_folder(folder: str | os.PathLike) -> dict[str, list[SplitEntry]]:
    """Reads ``train.csv``, ``validation.csv`` and ``test.csv`` of a split folder.

    Raises:
        FileNotFoundError: a split file is missing (names it).
        AnnotationError: a file is malformed or an id is in two splits.
    """
    folder = Path(folder)
    out: dict[str, list[SplitEntry]] = {}
    where: dict[str, str] = {}
    for split in SPLITS:
        path = folder / f"{split}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"split file {path} does not exist")
        out[split] = read_split_csv(path)
        for entry in out[split]:
            if entry.id in where:
                raise AnnotationError(
                    entry.source, "id in two splits", f"{entry.id} also at {where[entry.id]}"
                )
            where[entry.id] = entry.source
    return out


def _fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(
            f"fractions must be (train, validation, test) >= 0 summing to 1, got {fractions}"
        )
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def random_split(
    ids: Sequence[str], seed: int, fractions: Sequence[float] = (0.6, 0.2, 0.2)
) -> dict[str, list[str]]:
    """Seeded random split per image, as the official ``random_split_indices``.

    A permutation of the ids is cut into test (``round(f_test * N)``), validation
    (``round(f_val * N)``) and train (the rest), in that order; each split keeps the
    permuted order, so the first rows of train are a random subset.

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}``.
    """
    _, f_val, f_test = _fractions(fractions)
    ids = list(ids)
    perm = np.random.default_rng(seed).permutation(len(ids))
    n_test, n_val = round(f_test * len(ids)), round(f_val * len(ids))
    pick = lambda idx: [ids[i] for i in idx]  # noqa: E731
    return {
        "train": pick(perm[n_test + n_val :]),
        "validation": pick(perm[n_test : n_test + n_val]),
        "test": pick(perm[:n_test]),
    }


def split_by_patient(
    ids: Sequence[str],
    patient_of: Callable[[str], Any] | Mapping[str, Any],
    seed: int,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
) -> dict[str, list[str]]:
    """Seeded split by patient, the greedy rule of the official NIH and COVID scripts.

    Patients (in order of first appearance) are permuted; whole patients go to test until
    it holds at least ``round(f_test * N)`` images, then to validation until it holds at
    least ``round(f_val * N)``, the rest to train. No patient is in two splits; images
    keep their input order within a patient.

    Args:
        ids: image ids.
        patient_of: image id -> patient id (function or mapping).
        seed: seed of the permutation.
        fractions: (train, validation, test).

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}``.
    """
    _, f_val, f_test = _fractions(fractions)
    get = patient_of.__getitem__ if isinstance(patient_of, Mapping) else patient_of
    by_patient: dict[Any, list[str]] = {}
    for image_id in ids:
        by_patient.setdefault(get(image_id), []).append(image_id)
    patients = list(by_patient)
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    n = len(ids)
    out: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    i = 0
    for split, target in (("test", round(f_test * n)), ("validation", round(f_val * n))):
        while len(out[split]) < target and i < len(order):
            out[split].extend(by_patient[order[i]])
            i += 1
    for patient in order[i:]:
        out["train"].extend(by_patient[patient])
    return out


def subset_fraction(dataset: Any, fraction: float) -> Any:
    """The first ``round(len(dataset) * fraction)`` rows (official ``apply_subset``).

    The splits are stored in random order (official RSNA train.csv, ``random_split``),
    so the first rows are a random subset: RSNA 1 % / 10 % / 100 % of 16010 training
    images give 160 / 1601 / 16010, and 10 % of the 5337 validation images give 534.
    ``round`` is Python's (half to even).

    Args:
        dataset: a ``datasets.Dataset`` (uses ``select``) or any sliceable sequence.
        fraction: in ``(0, 1]``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = round(len(dataset) * fraction)
    if hasattr(dataset, "select"):
        return dataset.select(range(n))
    return dataset[:n]


def compare_boxes(ours: np.ndarray, theirs: np.ndarray, atol: float = 0.01) -> str:
    """Compares our boxes with a split CSV's boxes for one image (original pixels).

    Returns:
        ``"match"`` (same boxes as a multiset), ``"match_wh_swapped"`` (same after swapping
        width and height in the CSV's boxes and not otherwise) or ``"mismatch"``.
    """
    ours = np.asarray(ours, dtype=np.float64).reshape(-1, 4)
    theirs = np.asarray(theirs, dtype=np.float64).reshape(-1, 4)

    def same(a, b):
        if a.shape != b.shape:
            return False
        a = a[np.lexsort(a.T[::-1])]
        b = b[np.lexsort(b.T[::-1])]
        return bool(np.allclose(a, b, atol=atol, rtol=0))

    if same(ours, theirs):
        return "match"
    if same(ours, theirs[:, [0, 1, 3, 2]]):
        return "match_wh_swapped"
    return "mismatch"


def index_files(
    folder: str | os.PathLike, suffixes: Sequence[str], wanted: Iterable[str] | None = None
) -> dict[str, Path]:
    """Maps file stem -> path for files under ``folder`` (recursive) with one of ``suffixes``.

    Args:
        folder: where to look.
        suffixes: lower-case suffixes such as ``(".dcm",)``.
        wanted: if given, only these stems are indexed.

    Raises:
        AnnotationError: the same stem occurs twice (both paths named).
    """
    wanted = None if wanted is None else set(wanted)
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in suffixes or (wanted is not None and stem not in wanted):
                continue
            path = Path(dirpath) / name
            if stem in out:
                raise AnnotationError(
                    str(path), "duplicate image file", f"{stem} also at {out[stem]}"
                )
            out[stem] = path
    return out


def locate_root(root: str | os.PathLike, marker: str, candidates: Sequence[str]) -> Path:
    """The first of ``root / c`` for ``c`` in ``candidates`` that holds ``marker``, else ``root``.

    For layouts that users keep at different depths: ``locate_root(root, "train.csv",
    ("input", "."))`` finds Object-CXR's ``input/`` folder before ``root`` itself.
    """
    root = Path(root)
    for candidate in candidates:
        if (root / candidate / marker).exists():
            return root / candidate
    return root


def require(path: Path, expected: str, *, folder: bool = False) -> Path:
    """``path`` if it is a file (a folder with ``folder=True``).

    Raises:
        FileNotFoundError: ``"<path> does not exist (expected <expected>)"``.
    """
    if not (path.is_dir() if folder else path.is_file()):
        raise FileNotFoundError(f"{path} does not exist (expected {expected})")
    return path


# --------------------------------------------------------------------------------------
# Conversion driver
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything a worker needs to load one image (picklable).

    Attributes:
        id: image id.
        image_path: the image file.
        annotation: dataset-specific annotation (boxes, RLE strings, mask path, ...).
        source: file and line of the annotation, for messages.
    """

    id: str
    image_path: str
    annotation: Any
    source: str


def downstream_features(image_size: int = 224) -> datasets.Features:
    """The ``datasets.Features`` of a downstream split."""
    shape = (image_size, image_size)
    return datasets.Features({
        "image": datasets.Array2D(shape, "uint8"),
        "id": datasets.Value("string"),
        "boxes": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
        "box_classes": datasets.Sequence(datasets.Value("int32")),
        "masks": datasets.Array2D(shape, "uint8"),  # bit c = class c, see unpack_masks
    })


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


IMAGE_WITHOUT_ANNOTATION = "image file without annotation"


def resolve_split(
    split: str | os.PathLike,
    dataset: str,
    annotated: Sequence[str],
    images: Iterable[str],
    make_random: Callable[[list[str]], dict[str, list[str]]],
    skipped: SkipCounter,
    unannotated_images: Iterable[str] = (),
    unannotated_reason: str = IMAGE_WITHOUT_ANNOTATION,
) -> tuple[dict[str, list[str]], dict[str, SplitEntry], str]:
    """Assigns the images that have an annotation and an image file to splits.

    Every id that is not used is counted once in ``skipped``:

    - official split or split folder: a listed id without image file or annotation ->
      ``LISTED_BUT_MISSING``; an available id that no split lists -> ``NOT_IN_SPLIT``;
      an unlisted annotated id without image file -> ``NO_IMAGE_FILE``;
    - random split: an annotated id without image file -> ``NO_IMAGE_FILE``;
    - both: an unlisted image file without annotation -> ``unannotated_reason``.

    Args:
        split: ``"official"`` (the shipped split files), ``"random"`` (``make_random``)
            or a folder holding ``train.csv``, ``validation.csv`` and ``test.csv``.
        dataset: key of ``OFFICIAL_SPLIT_NAMES``.
        annotated: ids that have an annotation, in order.
        images: ids that have an image file.
        make_random: available ids (in ``annotated`` order) -> ids per split.
        skipped: receives the counts; its ``seen`` is set to the number of ids looked at.
        unannotated_images: ids of image files without annotation (counted only).
        unannotated_reason: their skip reason.

    Returns:
        ``(ids per split, split CSV entries by id (empty for random), description)``.
    """
    have_image = set(images)
    have_annotation = set(annotated)
    available = [i for i in annotated if i in have_image]
    unannotated = [i for i in unannotated_images if i not in have_annotation]
    if str(split) == RANDOM:
        for image_id in annotated:
            if image_id not in have_image:
                skipped.add(NO_IMAGE_FILE, source=image_id)
        for image_id in unannotated:
            skipped.add(unannotated_reason, source=image_id)
        skipped.seen = len(have_annotation) + len(unannotated)
        return make_random(available), {}, RANDOM
    folder = split_folder(split, dataset)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"split {str(split)!r} is neither 'official', 'random' nor a folder of split CSVs"
        )
    entries = load_split_folder(folder)
    usable = set(available)
    out: dict[str, list[str]] = {}
    by_id: dict[str, SplitEntry] = {}
    for name in SPLITS:
        out[name] = []
        for entry in entries[name]:
            by_id[entry.id] = entry
            if entry.id in usable:
                out[name].append(entry.id)
            else:
                why = "no annotation" if entry.id in have_image else "no image file"
                skipped.add(LISTED_BUT_MISSING, source=f"{entry.id} ({name}, {why})")
    for image_id in annotated:
        if image_id not in by_id:
            reason = NOT_IN_SPLIT if image_id in have_image else NO_IMAGE_FILE
            skipped.add(reason, source=image_id)
    for image_id in unannotated:
        if image_id not in by_id:
            skipped.add(unannotated_reason, source=image_id)
    skipped.seen = len(set(by_id) | have_annotation | set(unannotated))
    description = OFFICIAL if str(split) == OFFICIAL else str(folder)
    return out, by_id, description


def _run_task(item: tuple) -> tuple[str, Any, int]:
    """Worker: ``("row", row_dict, clipped)`` or ``("skip", (reason, source), 0)``.

    ``item`` is ``(loader, task, image_size, equalize, on_error)``; the row carries the
    unclipped original boxes under ``_original_boxes`` for the split cross-check.
    """
    loader, task, image_size, equalize, on_error = item
    try:
        example = loader(task)
        row = preprocess(example, image_size, equalize)
    except AnnotationError as e:
        if on_error == "skip":
            return "skip", (e.kind, f"{e.source} ({e.detail})" if e.detail else e.source), 0
        raise
    except ImageReadError as e:
        if on_error == "skip":
            return "skip", (UNREADABLE_IMAGE, f"{e.path} ({e.reason})"), 0
        raise
    row["id"] = task.id
    original = example.boxes if example.original_boxes is None else example.original_boxes
    row["_original_boxes"] = np.asarray(original, dtype=np.float64).reshape(-1, 4)
    return "row", row, example.clipped


# Notes of the box cross-check (ConversionResult.notes keys).
BOX_CHECK_NOTES = {
    "match": "images whose boxes equal the split CSV's",
    "match_wh_swapped": "images whose boxes equal the split CSV's only with w and h swapped",
    "mismatch": "images whose boxes differ from the split CSV's",
}
CLIPPED_NOTE = "boxes clipped to the image"


class _Tally:
    """Counts filled in while the writer consumes the row generators."""

    def __init__(self, skipped: SkipCounter):
        self.skipped = skipped
        self.clipped = 0
        self.box_check: dict[str, int] = {}

    def notes(self) -> dict[str, int]:
        notes = {CLIPPED_NOTE: self.clipped} if self.clipped else {}
        for key, text in BOX_CHECK_NOTES.items():
            if self.box_check.get(key):
                notes[text] = self.box_check[key]
        return notes


def _rows(
    tasks: Sequence[Task],
    loader: Callable[[Task], Example],
    image_size: int,
    equalize: bool,
    on_error: str,
    num_proc: int,
    entries: Mapping[str, SplitEntry],
    tally: _Tally,
) -> Iterator[dict]:
    items = ((loader, t, image_size, equalize, on_error) for t in tasks)
    for kind, payload, clipped in imap_ordered(_run_task, items, num_proc):
        if kind == "skip":
            tally.skipped.add(payload[0], source=payload[1])
            continue
        tally.clipped += clipped
        original = payload.pop("_original_boxes")
        entry = entries.get(payload["id"])
        if entry is not None and entry.boxes is not None:
            result = compare_boxes(original, entry.boxes)
            tally.box_check[result] = tally.box_check.get(result, 0) + 1
        yield payload


def convert_downstream(
    *,
    dataset: str,
    output_dir: str | os.PathLike,
    tasks: Mapping[str, Task],
    split_ids: Mapping[str, Sequence[str]],
    split_entries: Mapping[str, SplitEntry],
    split_description: str,
    loader: Callable[[Task], Example],
    class_names: Sequence[str],
    equalize: bool,
    image_size: int,
    skipped: SkipCounter,
    source: str,
    overwrite: bool,
    on_error: str,
    num_proc: int = 1,
    seed: int | None = None,
    stats_extra: Mapping[str, Any] | None = None,
) -> ConversionResult:
    """Preprocesses the images of every split and writes the dataset folder.

    Args:
        dataset: key of ``OFFICIAL_SPLIT_NAMES`` (recorded in stats.json).
        output_dir: the dataset folder to create.
        tasks: image id -> ``Task`` for every image of ``split_ids``.
        split_ids: ids per split, in row order.
        split_entries: split CSV rows by id; where they carry boxes, the converted
            boxes (original pixels, before clipping) are compared with them and the
            outcome is reported in ``notes`` (``compare_boxes``).
        split_description: ``"official"``, ``"random"`` or the split folder.
        loader: module-level function ``Task -> Example`` (may run in worker processes).
        class_names: in class-id order (at most 8, the bits of the packed masks).
        equalize: apply histogram equalization (official for SIIM, Object-CXR, NIH, COVID).
        image_size: stored size S.
        skipped: skip counter holding the skips found while parsing; per-image skips
            are added while converting.
        source: what the data was converted from (recorded in stats.json).
        overwrite: replace an existing ``output_dir``.
        on_error: ``"raise"`` or ``"skip"`` for per-image problems.
        num_proc: worker processes for reading and preprocessing images.
        seed: the random-split seed (recorded), None for file splits.
        stats_extra: more entries for stats.json.

    Raises:
        ConversionError: no image reached the train split (the message carries the skip
            summary; ``error.result`` the counts).

    Returns:
        ``ConversionResult`` with ``skipped={"images": skipped}`` and the clipping and
        box cross-check counts in ``notes``. stats.json holds ``mean``/``std`` of the
        stored train images, ``counts``, ``class_names``, ``skipped`` (``"images:
        <reason>"`` -> count), ``notes``, ``source``, ``split`` and ``seed``.
    """
    _check_on_error(on_error)
    if len(class_names) > 8:
        raise ValueError(f"at most 8 classes fit the packed masks, got {len(class_names)}")
    tally = _Tally(skipped)
    rows = {
        split: _rows(
            [tasks[i] for i in split_ids[split]], loader, image_size, equalize, on_error,
            max(1, int(num_proc)), split_entries, tally,
        )
        for split in SPLITS
    }

    def extras() -> dict[str, Any]:
        # Called by write_dataset after all rows are written: the counts are final.
        return {
            "dataset": dataset,
            "source": source,
            "class_names": list(class_names),
            "equalize_hist": equalize,
            "split": split_description,
            "seed": seed,
            "skipped": flatten_skips({"images": skipped}),
            "notes": tally.notes(),
            **dict(stats_extra or {}),
        }

    try:
        stats = write_dataset(
            output_dir, rows, downstream_features(image_size), extras, overwrite=overwrite
        )
    except EmptyTrainSplitError as error:
        # Usually the wrong folder or split: say what was skipped and why.
        result = ConversionResult(
            output_dir=Path(output_dir), skipped={"images": skipped}, notes=tally.notes()
        )
        raise ConversionError(f"{error}; {skipped.summary()}", result) from error
    return ConversionResult(
        output_dir=Path(output_dir),
        counts=dict(stats["counts"]),
        skipped={"images": skipped},
        stats=stats,
        notes=tally.notes(),
    )


def resolve_and_convert(
    *,
    dataset: str,
    output_dir: str | os.PathLike,
    split: str | os.PathLike,
    seed: int,
    image_size: int,
    overwrite: bool,
    on_error: str,
    num_proc: int,
    annotated: Sequence[str],
    images: Iterable[str],
    task: Callable[[str], Task],
    loader: Callable[[Task], Example],
    class_names: Sequence[str],
    equalize: bool,
    source: str,
    make_random: Callable[[list[str]], dict[str, list[str]]] | None = None,
    unannotated_images: Iterable[str] = (),
    unannotated_reason: str = IMAGE_WITHOUT_ANNOTATION,
    stats_extra: Mapping[str, Any] | None = None,
) -> ConversionResult:
    """The end of every converter: ``resolve_split``, then ``convert_downstream``.

    Args:
        dataset, output_dir, loader, class_names, equalize, image_size, source,
            overwrite, on_error, num_proc, stats_extra: as in ``convert_downstream``.
        split, annotated, images, unannotated_images, unannotated_reason: as in
            ``resolve_split``.
        seed: the seed of the random split (recorded in stats.json for it).
        task: image id -> its ``Task``, called for the ids of the splits.
        make_random: available ids -> ids per split; default ``random_split(ids, seed)``
            (60/20/20 per image).

    Returns:
        see ``convert_downstream``.
    """
    if make_random is None:
        make_random = lambda ids: random_split(ids, seed)  # noqa: E731
    skipped = SkipCounter(noun="images")
    split_ids, entries, description = resolve_split(
        split, dataset, annotated, images, make_random, skipped,
        unannotated_images=unannotated_images, unannotated_reason=unannotated_reason,
    )
    return convert_downstream(
        dataset=dataset,
        output_dir=output_dir,
        tasks={i: task(i) for ids in split_ids.values() for i in ids},
        split_ids=split_ids,
        split_entries=entries,
        split_description=description,
        loader=loader,
        class_names=class_names,
        equalize=equalize,
        image_size=image_size,
        skipped=skipped,
        source=source,
        overwrite=overwrite,
        on_error=on_error,
        num_proc=num_proc,
        seed=seed if description == RANDOM else None,
        stats_extra=stats_extra,
    )
