"""The downstream batch pipeline: a ``keras.utils.PyDataset`` over a downstream dataset.

As in the official ``src/models/downstream/downstream_evaluation.py`` and
``src/data/dataloading_utils.py`` (``apply_subset``): no augmentation; the stored 224 px
images are normalized with the TRAIN split's pixel mean and std (pixels in [0, 1]) of the
dataset folder's ``stats.json``; the encoder replicates them to 3 channels itself. Label
fractions are the FIRST rows of a split (the official ``train_subset``,
``common.subset_fraction``), and so are validation fractions (RSNA validates on the first
10 % of its validation split).

Works on every downstream dataset folder (``lovt_keras.data.downstream``) and on SynthCXR
folders (``lovt_keras.data.synthcxr``); the latter have ``study_id`` instead of ``id`` and
no ``class_names`` in ``stats.json`` (their classes are ``synthcxr.FINDING_CLASSES``).

Batch dicts (key names as in ``lovt_keras.models.downstream``; B = batch, S = image size,
C = number of task classes, M = ``max_boxes``):

- segmentation: ``images`` float32 ``(B, S, S, 1)``, ``masks`` float32 ``(B, S, S, C)``
  with values 0/1, channel k = the task's k-th class;
- detection: ``images``, ``boxes`` float32 ``(B, M, 4)`` as ``x, y, w, h`` pixels (zeros
  where padded), ``box_classes`` int32 ``(B, M)`` indexing the task's classes (0 where
  padded), ``box_mask`` bool ``(B, M)`` (True = real box). Boxes of classes outside the
  task are dropped.

Order: batch ``i`` of epoch ``e`` holds rows ``order(e)[i * B : (i + 1) * B]`` where
``order(e)`` is ``numpy.random.default_rng((seed, e)).permutation(n)`` when shuffling,
else ``arange(n)``; so the batches are a pure function of ``(seed, epoch, index)``.

Fixed-length epochs (``steps_per_epoch``, for low-label training): the rows form one
endless stream ``order(0), order(1), ...`` (one pass over the rows each) and epoch ``e``
is the window of ``steps_per_epoch`` full batches starting at stream position
``e * steps_per_epoch * B``; a batch may hold the end of one pass and the start of the
next, and a row more than once when there are fewer rows than ``B``.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import datasets
import keras
import numpy as np

from lovt_keras import keys
from lovt_keras.data.downstream.common import subset_fraction, unpack_masks
from lovt_keras.data.epochs import EpochTracking
from lovt_keras.data.synthcxr import FINDING_CLASSES

# Batch-dict keys of the downstream tasks (defined once, in ``lovt_keras.keys``; kept
# here as names for the modules that import them from this one).
MASKS = keys.MASKS
BOXES = keys.BOXES
BOX_CLASSES = keys.BOX_CLASSES
BOX_MASK = keys.BOX_MASK

SEGMENTATION = "segmentation"
DETECTION = "detection"
TASK_TYPES = (SEGMENTATION, DETECTION)
SPLITS = ("train", "validation", "test")
STATS_FILE = "stats.json"
ID_COLUMNS = ("id", "study_id")


class DownstreamDataError(ValueError):
    """A dataset folder or row that the pipeline cannot use (names the folder/row)."""


def load_downstream_folder(path: str | os.PathLike) -> tuple[datasets.DatasetDict, dict]:
    """Loads a downstream (or SynthCXR) dataset folder and its ``stats.json``.

    Returns:
        ``(DatasetDict with train/validation/test, stats)``; ``stats["class_names"]`` is
        filled in for SynthCXR folders (``synthcxr.FINDING_CLASSES``).

    Raises:
        FileNotFoundError: no such folder or no ``stats.json`` in it.
        DownstreamDataError: a missing split or column, or stats without a finite
            ``mean`` / positive ``std`` / ``class_names``.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such downstream dataset folder")
    stats_file = folder / STATS_FILE
    if not stats_file.is_file():
        from lovt_keras.data.downstream.registry import CONVERTERS

        raise FileNotFoundError(
            f"{stats_file}: missing; a downstream dataset folder is written by "
            f"`python -m tools.prepare NAME ROOT {folder}` (NAME: {', '.join(CONVERTERS)}; "
            "`python -m tools.prepare NAME --help` lists the arguments) or load_synthcxr, "
            "together with its stats.json"
        )
    stats = json.loads(stats_file.read_text())
    dataset_dict = datasets.load_from_disk(str(folder))
    if not isinstance(dataset_dict, datasets.DatasetDict):
        raise DownstreamDataError(f"{folder}: holds a single Dataset, expected a DatasetDict")
    missing = [s for s in SPLITS if s not in dataset_dict]
    if missing:
        raise DownstreamDataError(
            f"{folder}: no split(s) {missing} (has {sorted(dataset_dict)})"
        )
    columns = dataset_dict["train"].column_names
    for name in ("mean", "std"):
        value = stats.get(name)
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise DownstreamDataError(f"{stats_file}: '{name}' must be a finite number, got {value!r}")
    if not stats["std"] > 0:
        raise DownstreamDataError(f"{stats_file}: 'std' must be > 0, got {stats['std']!r}")
    if "class_names" not in stats:
        if "findings" in columns and "study_id" in columns:  # a SynthCXR folder
            stats = dict(stats, class_names=list(FINDING_CLASSES))
        else:
            raise DownstreamDataError(f"{stats_file}: no 'class_names'")
    return dataset_dict, stats


def resolve_classes(classes: Sequence[str | int] | None, class_names: Sequence[str],
                    source: str = "dataset") -> list[int]:
    """Class ids (into ``class_names``) of a task's classes, given by name or id.

    ``None`` means every class of the dataset, in id order.
    """
    if classes is None:
        return list(range(len(class_names)))
    ids = []
    for c in classes:
        if isinstance(c, str):
            if c not in class_names:
                raise DownstreamDataError(
                    f"{source}: unknown class {c!r}; the dataset's classes are {list(class_names)}"
                )
            ids.append(list(class_names).index(c))
        else:
            if not 0 <= int(c) < len(class_names):
                raise DownstreamDataError(
                    f"{source}: class id {c} out of range for {len(class_names)} classes"
                )
            ids.append(int(c))
    if len(set(ids)) != len(ids):
        raise DownstreamDataError(f"{source}: repeated classes in {list(classes)}")
    if not ids:
        raise DownstreamDataError(f"{source}: a task needs at least one class")
    return ids


def epoch_order(num_rows: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """int64 ``(num_rows,)``: the row order of an epoch (see the module docstring)."""
    if not shuffle:
        return np.arange(num_rows, dtype=np.int64)
    return np.random.default_rng((int(seed), int(epoch))).permutation(num_rows).astype(np.int64)


class DownstreamBatches(EpochTracking, keras.utils.PyDataset):
    """Batches of one split of a downstream dataset for a segmentation or detection task.

    Epochs: ``on_epoch_end`` (called by ``fit``) moves to the next epoch once every batch
    of the current one was computed (Keras also calls it before the first epoch, after
    drawing a batch to build the model; that call does not skip epoch 0). ``set_epoch``
    selects an epoch explicitly (``lovt_keras.training.callbacks.SetDataEpoch``).

    Args:
        dataset: one split (``datasets.Dataset``) with ``image`` Array2D uint8 ``(S, S)``,
            ``id`` or ``study_id``, ``masks`` (segmentation) or ``boxes`` and
            ``box_classes`` (detection).
        stats: the folder's stats with the train ``mean``/``std`` and ``class_names``.
        task_type: ``"segmentation"`` or ``"detection"``.
        classes: the task's classes (names or ids); None = all, in id order.
        batch_size: rows per batch.
        shuffle: a new permutation per epoch (training); else dataset order.
        seed: the shuffling seed.
        fraction: keep the first ``round(n * fraction)`` rows (label fraction).
        max_boxes: box slots per image (detection); None = the most boxes of any row of
            this split (at least 1). A row with more boxes raises.
        drop_remainder: drop the last partial batch.
        steps_per_epoch: None = an epoch is one pass over the rows; an int = an epoch
            is this many full batches drawn from the stream of passes (see the module
            docstring); so a small label fraction gets as many optimizer steps per
            epoch as a large one.
        workers, use_multiprocessing, max_queue_size: Keras ``PyDataset`` options.
        name: names the split in messages (e.g. the folder and split).

    Raises:
        DownstreamDataError: a missing column, an empty selection, a row with more
            boxes than ``max_boxes`` or a box class outside ``class_names`` (naming the
            row id).
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        stats: dict,
        task_type: str,
        classes: Sequence[str | int] | None = None,
        batch_size: int = 8,
        shuffle: bool = False,
        seed: int = 0,
        fraction: float = 1.0,
        max_boxes: int | None = None,
        drop_remainder: bool = False,
        steps_per_epoch: int | None = None,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 8,
        name: str = "split",
    ):
        super().__init__(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size
        )
        if task_type not in TASK_TYPES:
            raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.name = name
        columns = dataset.column_names
        needed = ["image"] + ([MASKS] if task_type == SEGMENTATION else [BOXES, BOX_CLASSES])
        missing = [c for c in needed if c not in columns]
        id_column = next((c for c in ID_COLUMNS if c in columns), None)
        if id_column is None:
            missing.append("id")
        if missing:
            raise DownstreamDataError(
                f"{name}: no column(s) {missing} for a {task_type} task (has {columns})"
            )
        image_feature = dataset.features["image"]
        if not isinstance(image_feature, datasets.Array2D) or image_feature.dtype != "uint8":
            raise DownstreamDataError(f"{name}: column 'image' must be Array2D uint8, got {image_feature}")
        self.image_size = int(image_feature.shape[0])
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        full_size = len(dataset)
        dataset = subset_fraction(dataset, fraction)
        if len(dataset) == 0:
            raise DownstreamDataError(
                f"{name}: fraction {fraction} of {full_size} rows selects no row"
            )
        self.task_type = task_type
        self.class_names = list(stats["class_names"])
        self.class_ids = resolve_classes(classes, self.class_names, name)
        self.num_classes = len(self.class_ids)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.fraction = float(fraction)
        self.drop_remainder = bool(drop_remainder)
        self.mean = float(stats["mean"])
        self.std = float(stats["std"])
        self.num_rows = len(dataset)
        if steps_per_epoch is not None and int(steps_per_epoch) < 1:
            raise ValueError(f"steps_per_epoch must be None or >= 1, got {steps_per_epoch}")
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        if self.drop_remainder and self.steps_per_epoch is None and self.num_rows < self.batch_size:
            raise DownstreamDataError(
                f"{name}: {self.num_rows} rows, fewer than batch_size {self.batch_size} "
                "with drop_remainder=True"
            )
        self.ids = [str(i) for i in dataset[id_column]]
        array_columns = ["image"] + ([MASKS] if task_type == SEGMENTATION else [])
        self._arrays = dataset.with_format("numpy", columns=array_columns)
        self.boxes: list[np.ndarray] = []
        self.box_classes: list[np.ndarray] = []
        if task_type == DETECTION:
            self._read_boxes(dataset)
            most = max((len(b) for b in self.boxes), default=0)
            if max_boxes is None:
                max_boxes = max(1, most)
            elif most > int(max_boxes):
                row = int(np.argmax([len(b) for b in self.boxes]))
                raise DownstreamDataError(
                    f"{name}: row {row} (id {self.ids[row]!r}) has {most} boxes of the task's "
                    f"classes, more than max_boxes={max_boxes}"
                )
        self.max_boxes = None if max_boxes is None else int(max_boxes)
        self._lock = threading.Lock()
        self._orders: dict[int, np.ndarray] = {}
        self._init_epochs()

    def _read_boxes(self, dataset: datasets.Dataset) -> None:
        # Python lists: the numpy format gives ragged object arrays and int64 classes.
        wanted = {c: k for k, c in enumerate(self.class_ids)}
        for row, (boxes, classes) in enumerate(zip(dataset[BOXES], dataset[BOX_CLASSES])):
            boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
            classes = np.asarray(classes, dtype=np.int64).reshape(-1)
            if len(boxes) != len(classes):
                raise DownstreamDataError(
                    f"{self.name}: row {row} (id {self.ids[row]!r}) has {len(boxes)} boxes but "
                    f"{len(classes)} box classes"
                )
            bad = classes[(classes < 0) | (classes >= len(self.class_names))]
            if bad.size:
                raise DownstreamDataError(
                    f"{self.name}: row {row} (id {self.ids[row]!r}) has box class {int(bad[0])}, "
                    f"outside the {len(self.class_names)} classes {self.class_names}"
                )
            keep = np.isin(classes, self.class_ids)
            self.boxes.append(boxes[keep])
            self.box_classes.append(np.array([wanted[int(c)] for c in classes[keep]], np.int32))

    # ------------------------------------------------------------------ epochs

    def __len__(self) -> int:
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        if self.drop_remainder:
            return self.num_rows // self.batch_size
        return -(-self.num_rows // self.batch_size)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """int64 ``(num_rows,)``: the rows in the order of ``epoch`` (default: current);
        with ``steps_per_epoch``, the order of pass ``epoch`` of the row stream."""
        epoch = self._epoch if epoch is None else int(epoch)
        with self._lock:
            order = self._orders.get(epoch)
            if order is None:
                order = epoch_order(self.num_rows, self.seed, epoch, self.shuffle)
                if len(self._orders) >= 4:
                    self._orders.clear()
                self._orders[epoch] = order
        return order

    def batch_rows(self, index: int, epoch: int | None = None) -> np.ndarray:
        """int64 ``(B,)``: the rows of batch ``index`` of ``epoch``."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        epoch = self._epoch if epoch is None else int(epoch)
        size = self.batch_size
        if self.steps_per_epoch is None:
            return self.order(epoch)[index * size : (index + 1) * size]
        first = (epoch * self.steps_per_epoch + index) * size
        positions = np.arange(first, first + size, dtype=np.int64)
        passes, offsets = np.divmod(positions, self.num_rows)
        rows = np.empty(size, np.int64)
        for one_pass in np.unique(passes):
            chosen = passes == one_pass
            rows[chosen] = self.order(int(one_pass))[offsets[chosen]]
        return rows

    # ------------------------------------------------------------------ batches

    def images(self, rows: Sequence[int]) -> np.ndarray:
        """float32 ``(B, S, S, 1)``: normalized images of ``rows``."""
        raw = self._arrays[[int(r) for r in rows]]["image"]
        images = raw.astype(np.float32)[..., None] / np.float32(255.0)
        images -= np.float32(self.mean)
        images /= np.float32(self.std)
        return images

    def packed_masks(self, rows: Sequence[int]) -> np.ndarray:
        """uint8 ``(B, S, S)``: the stored masks of ``rows`` (segmentation), bit ``c`` =
        class ``c`` of ``class_names``, one batched Arrow read."""
        if self.task_type != SEGMENTATION:
            raise ValueError(f"{self.name}: a {self.task_type} task has no masks")
        return np.asarray(self._arrays[[int(r) for r in rows]][MASKS], np.uint8)

    def targets(self, rows: Sequence[int],
                packed_masks: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The task's targets of ``rows`` (``masks`` or the box entries).

        ``packed_masks``: the masks of every row, ``packed_masks(range(num_rows))``,
        read once and kept by the caller (segmentation; the same targets without an
        Arrow read per batch); None = read ``rows`` from the dataset.
        """
        rows = [int(r) for r in rows]
        if self.task_type == SEGMENTATION:
            if packed_masks is None:
                packed = self.packed_masks(rows)
            else:
                if len(packed_masks) != self.num_rows:
                    raise ValueError(f"{self.name}: packed_masks has {len(packed_masks)} rows, "
                                     f"the split {self.num_rows}")
                packed = packed_masks[rows]
            masks = unpack_masks(packed, max(self.class_ids) + 1)[:, self.class_ids]
            return {MASKS: np.moveaxis(masks, 1, -1).astype(np.float32)}
        boxes = np.zeros((len(rows), self.max_boxes, 4), np.float32)
        classes = np.zeros((len(rows), self.max_boxes), np.int32)
        valid = np.zeros((len(rows), self.max_boxes), bool)
        for k, row in enumerate(rows):
            n = len(self.boxes[row])
            boxes[k, :n] = self.boxes[row]
            classes[k, :n] = self.box_classes[row]
            valid[k, :n] = True
        return {BOXES: boxes, BOX_CLASSES: classes, BOX_MASK: valid}

    def rows_batch(self, rows: Sequence[int]) -> dict[str, np.ndarray]:
        """The batch dict of arbitrary ``rows``."""
        return {keys.IMAGES: self.images(rows), **self.targets(rows)}

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        epoch = self._epoch
        batch = self.rows_batch(self.batch_rows(index, epoch))
        self._mark_served(index, epoch)
        return batch

    def __repr__(self) -> str:
        return (
            f"DownstreamBatches({self.name}, rows={self.num_rows}, batches={len(self)}, "
            f"task_type={self.task_type!r}, classes={[self.class_names[c] for c in self.class_ids]}, "
            f"batch_size={self.batch_size}, shuffle={self.shuffle}, fraction={self.fraction}"
            + ("" if self.steps_per_epoch is None else f", steps_per_epoch={self.steps_per_epoch}")
            + ")"
        )


def downstream_splits(
    folder: str | os.PathLike,
    task_type: str,
    classes: Sequence[str | int] | None = None,
    batch_size: int = 8,
    label_fraction: float = 1.0,
    validation_fraction: float = 1.0,
    seed: int = 0,
    image_size: int | None = None,
    eval_batch_size: int | None = None,
    max_boxes: int | None = None,
    train_steps_per_epoch: int | None = None,
) -> dict[str, DownstreamBatches]:
    """Train (shuffled, first ``label_fraction``), validation (first
    ``validation_fraction``) and test batches of a dataset folder.

    Args:
        folder: the dataset folder.
        image_size: the expected stored size (checked), None = any.
        eval_batch_size: batch size of validation and test (default ``batch_size``).
        max_boxes: detection box slots; None = the most boxes of any row of the three
            splits (the same for all so the compiled shapes match).
        train_steps_per_epoch: None = a train epoch is one pass over the label
            fraction's rows; an int = that many full batches drawn from them
            (``DownstreamBatches.steps_per_epoch``), e.g. as many as one pass over the
            whole split, so that a small label fraction gets the optimizer steps and
            validations of a large one.
        Other args: see ``DownstreamBatches``.
    """
    dataset_dict, stats = load_downstream_folder(folder)
    stored = int(dataset_dict["train"].features["image"].shape[0])
    if image_size is not None and stored != int(image_size):
        raise DownstreamDataError(
            f"{folder}: images are stored at {stored} px but the task expects {image_size} px"
        )
    options = dict(fraction=1.0, seed=seed, max_boxes=max_boxes)
    out = {
        "train": DownstreamBatches(
            dataset_dict["train"], stats, task_type, classes, batch_size, shuffle=True,
            steps_per_epoch=train_steps_per_epoch, name=f"{folder}[train]",
            **dict(options, fraction=label_fraction),
        ),
        "validation": DownstreamBatches(
            dataset_dict["validation"], stats, task_type, classes,
            eval_batch_size or batch_size, name=f"{folder}[validation]",
            **dict(options, fraction=validation_fraction),
        ),
        "test": DownstreamBatches(
            dataset_dict["test"], stats, task_type, classes, eval_batch_size or batch_size,
            name=f"{folder}[test]", **options,
        ),
    }
    if task_type == DETECTION and max_boxes is None:
        # One box budget for all splits, so train and evaluation batches share shapes.
        most = max(b.max_boxes for b in out.values())
        for batches in out.values():
            batches.max_boxes = most
    return out
