"""NIH ChestX-ray8 pathology boxes -> downstream dataset (task 18).

Official script: ``src/data/datasets/nih_cxr/nih_cxr_dataset.py``.

Original layout under ``root`` (nihcc.app.box.com/v/ChestXray-NIHCC)::

    BBox_List_2017.csv        header "Image Index,Finding Label,Bbox [x,y,w,h],,," (9 cells),
                              data rows of 6 fields: name, label, x, y, w, h
    Data_Entry_2017_v2020.csv (or Data_Entry_2017.csv)  Image Index,Finding Labels,...
    test_list.txt             official test image names (random split only)
    images_001/images/*.png ... (any folders below root; found by file name)

Eight classes in the official order (``CLASS_NAMES``; BBox_List spells "Infiltrate").
Images: gray, histogram equalization, pad to square, resize. One box-filled mask per
class, bit-packed (bit c = class c), pixels ``[round(y), round(y + h)) x [round(x),
round(x + w))`` as the official ``create_segmentation_mask``.

Splits: the official split files by default (588 / 196 / 196 images: the 880 annotated
images and 100 "No Finding" images). Ids listed there without boxes in BBox_List are the
"No Finding" images and get empty targets. ``split="random"`` samples ``num_no_finding``
"No Finding" images of ``test_list.txt`` (per Data_Entry) with ``seed`` and splits the
annotated and the no-finding images separately by patient (first 8 digits of the file
name), 60/20/20, with the official greedy rule (``common.split_by_patient``). Unlike the
official split, where the two groups are split independently and 30 patients end up in
two splits, a no-finding image of a patient with annotated images joins that patient's
split, so patients are disjoint across splits.

Boxes always come from BBox_List_2017.csv; the split CSVs' boxes are only compared with
them (``ConversionResult.notes``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from lovt_keras.data.downstream.common import (
    RANDOM,
    AnnotationError,
    ConversionResult,
    Example,
    Task,
    check_output_dir,
    example_from_boxes,
    index_files,
    load_split_folder,
    require,
    resolve_and_convert,
    split_by_patient,
    split_folder,
)
from lovt_keras.data.images import read_image

__all__ = ["CLASS_NAMES", "BBOX_FILE", "parse_nih_boxes", "read_no_finding_candidates",
           "patient_id", "convert_nih"]

CLASS_NAMES = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltrate",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
)
BBOX_FILE = "BBox_List_2017.csv"
DATA_ENTRY_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
TEST_LIST_FILE = "test_list.txt"
NO_FINDING = "No Finding"


def _strip_png(name: str) -> str:
    return name[: -len(".png")] if name.lower().endswith(".png") else name


def patient_id(image_id: str) -> int:
    """The patient of an image id ``PPPPPPPP_NNN``: the first 8 digits as an int."""
    head = image_id.split("_")[0]
    if len(head) != 8 or not head.isdigit():
        raise ValueError(f"NIH image id {image_id!r} does not start with an 8-digit patient id")
    return int(head)


def parse_nih_boxes(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """Reads ``BBox_List_2017.csv`` with its irregular header.

    Returns:
        image id (no ``.png``) -> ``(boxes float64 (N, 4) x, y, w, h in pixels, classes
        int64 (N,), "file:line" of the first row)``, in order of first appearance.

    Raises:
        AnnotationError: a header that is not the BBox_List header, a row with other than
            6 non-empty fields, a non-numeric box, or an unknown finding label.
    """
    path = Path(path)
    index = {name: i for i, name in enumerate(CLASS_NAMES)}
    out: dict[str, tuple[list, list, str]] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header[:3] != ["Image Index", "Finding Label", "Bbox [x"]:
            raise AnnotationError(
                f"{path}:1", "unexpected header",
                f"{header}; expected 'Image Index,Finding Label,Bbox [x,y,w,h],,,'",
            )
        for row in reader:
            source = f"{path}:{reader.line_num}"
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            # Data rows have 6 fields; tolerate trailing empty cells (the header's ",,,").
            if len(cells) < 6 or any(cells[6:]) or not all(cells[:6]):
                raise AnnotationError(
                    source, "row is not 'Image Index,Finding Label,x,y,w,h'", str(row)
                )
            name, label = cells[0], cells[1]
            if label not in index:
                raise AnnotationError(
                    source, "unknown finding label", f"{label!r}; expected one of {CLASS_NAMES}"
                )
            try:
                box = [float(v) for v in cells[2:6]]
            except ValueError as e:
                raise AnnotationError(source, "non-numeric box", str(cells[2:6])) from e
            boxes, classes, _ = out.setdefault(_strip_png(name), ([], [], source))
            boxes.append(box)
            classes.append(index[label])
    return {
        image_id: (
            np.asarray(boxes, np.float64).reshape(-1, 4),
            np.asarray(classes, np.int64),
            source,
        )
        for image_id, (boxes, classes, source) in out.items()
    }


def read_no_finding_candidates(root: str | os.PathLike) -> list[str]:
    """Image ids of ``test_list.txt`` labelled exactly "No Finding" in Data_Entry, in Data_Entry order.

    Raises:
        FileNotFoundError: neither Data_Entry file or no ``test_list.txt`` (names them).
        AnnotationError: Data_Entry without ``Image Index`` / ``Finding Labels`` columns.
    """
    root = Path(root)
    entry = next((root / n for n in DATA_ENTRY_FILES if (root / n).is_file()), None)
    if entry is None:
        raise FileNotFoundError(
            f"none of {', '.join(str(root / n) for n in DATA_ENTRY_FILES)} exists; the random "
            "NIH split needs it to pick the 'No Finding' images (or pass num_no_finding=0)"
        )
    test_list = root / TEST_LIST_FILE
    if not test_list.is_file():
        raise FileNotFoundError(
            f"{test_list} does not exist; the random NIH split picks the 'No Finding' images "
            "from it (or pass num_no_finding=0)"
        )
    test_ids = {_strip_png(line.strip()) for line in test_list.read_text().splitlines()}
    out = []
    with open(entry, newline="") as f:
        reader = csv.reader(f)
        # The bracketed names split into extra header cells, as do the values, so the
        # first columns stay aligned.
        header = [h.strip() for h in next(reader, [])]
        if "Image Index" not in header or "Finding Labels" not in header:
            raise AnnotationError(
                f"{entry}:1", "missing columns", f"need Image Index, Finding Labels; got {header}"
            )
        name_col, label_col = header.index("Image Index"), header.index("Finding Labels")
        for row in reader:
            if len(row) <= max(name_col, label_col):
                continue
            image_id = _strip_png(row[name_col].strip())
            if row[label_col].strip() == NO_FINDING and image_id in test_ids:
                out.append(image_id)
    return out


def _load(task: Task) -> Example:
    boxes, classes = task.annotation
    image = read_image(task.image_path)
    return example_from_boxes(image, boxes, classes, len(CLASS_NAMES), task.source)


def convert_nih(
    root: str | os.PathLike,
    output_dir: str | os.PathLike,
    split: str | os.PathLike = "official",
    seed: int = 0,
    image_size: int = 224,
    overwrite: bool = False,
    *,
    num_no_finding: int = 100,
    on_error: str = "raise",
    num_proc: int = 1,
) -> ConversionResult:
    """Converts the NIH ChestX-ray8 box subset into a downstream dataset folder.

    Args:
        root: folder with ``BBox_List_2017.csv`` and the images (any subfolders); for
            ``split="random"`` also Data_Entry and ``test_list.txt``.
        output_dir: the dataset folder to write.
        split: ``"official"``, ``"random"`` or a split folder.
        seed: seed of the no-finding sample and the random patient split.
        image_size: stored image size.
        overwrite: replace an existing ``output_dir``.
        num_no_finding: "No Finding" test images added by the random split (official: 100).
        on_error: per-image problems (box outside the image or with non-positive size,
            unreadable PNG): ``"raise"`` or ``"skip"`` (counted).
        num_proc: worker processes for reading PNGs.

    Returns:
        ``ConversionResult``; rows hold ``image`` (equalized), ``id`` (file name without
        ``.png``), ``boxes`` (224-px ``x, y, w, h``), ``box_classes`` (0..7, see
        ``CLASS_NAMES``) and ``masks`` (bit c = class c).
    """
    check_output_dir(output_dir, overwrite)
    root = Path(root)
    annotated = parse_nih_boxes(require(root / BBOX_FILE, "the NIH layout"))
    no_finding: list[str] = []
    empty = (np.zeros((0, 4)), np.zeros(0, np.int64))
    if str(split) == RANDOM:
        if num_no_finding > 0:
            candidates = [i for i in read_no_finding_candidates(root) if i not in annotated]
            if len(candidates) < num_no_finding:
                raise ValueError(
                    f"only {len(candidates)} 'No Finding' test images in {root}, "
                    f"num_no_finding={num_no_finding}"
                )
            rng = np.random.default_rng(seed)
            no_finding = [candidates[i] for i in rng.choice(len(candidates), num_no_finding,
                                                             replace=False)]
    else:
        # Listed ids with no boxes in the split file either are "No Finding" images;
        # those with boxes must be in BBox_List (else they count as missing).
        folder = split_folder(split, "nih")
        if folder.is_dir():
            for entries in load_split_folder(folder).values():
                no_finding += [
                    e.id for e in entries
                    if e.id not in annotated and (e.boxes is None or len(e.boxes) == 0)
                ]
    targets = {i: (boxes, classes) for i, (boxes, classes, _) in annotated.items()}
    sources = {i: source for i, (_, _, source) in annotated.items()}
    for image_id in no_finding:
        targets[image_id] = empty
        sources[image_id] = f"{image_id} (No Finding)"
    images = index_files(root, (".png",), wanted=targets)
    nf_set = set(no_finding)

    def make_random(ids: list[str]) -> dict[str, list[str]]:
        boxed = split_by_patient([i for i in ids if i not in nf_set], patient_id, seed)
        where = {patient_id(i): name for name, part in boxed.items() for i in part}
        # A "No Finding" image of a patient with annotated images joins that patient's
        # split (the official script splits the two groups independently, which put 30
        # patients into two splits); the others are split by patient on their own.
        follow = {name: [] for name in boxed}
        rest = []
        for i in (i for i in ids if i in nf_set):
            if patient_id(i) in where:
                follow[where[patient_id(i)]].append(i)
            else:
                rest.append(i)
        normal = split_by_patient(rest, patient_id, seed)
        return {name: boxed[name] + follow[name] + normal[name] for name in boxed}

    return resolve_and_convert(
        dataset="nih", output_dir=output_dir, split=split, seed=seed, image_size=image_size,
        overwrite=overwrite, on_error=on_error, num_proc=num_proc,
        annotated=list(targets),
        images=images,
        make_random=make_random,
        task=lambda i: Task(i, str(images[i]), targets[i], sources[i]),
        loader=_load,
        class_names=CLASS_NAMES,
        equalize=True,
        source=f"NIH ChestX-ray8 BBox_List_2017 + No Finding test images ({root})",
        stats_extra={"num_no_finding": len(no_finding)} if str(split) == RANDOM else None,
    )
