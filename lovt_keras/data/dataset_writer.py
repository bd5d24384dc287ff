"""Writing prepared datasets to disk: the folder layout every converter shares.

A prepared dataset is a folder that ``datasets.load_from_disk`` reads as a
``DatasetDict`` (splits ``train``, ``validation``, ``test``) with a ``stats.json``
beside the splits. ``stats.json`` holds ``mean`` and ``std`` of the train pixels
scaled to ``[0, 1]`` (population std over every pixel of every stored train image,
computed exactly from a 256-bin histogram of the uint8 pixels while the rows are
written), ``num_pixels``, ``counts`` (rows per split), ``image_size`` and whatever
the converter adds (``source``, ``skipped``, ``class_names``, ...).

``write_dataset`` builds the whole folder in a hidden temporary sibling and renames
it into place only when complete, so an interrupted conversion never leaves a folder
that loads; an existing output folder is replaced only with ``overwrite=True``.

It also holds what the converters share around the writer: ``check_output_dir``
(fail fast before a long conversion), ``load_square_image`` (read, pad to square,
resize, uint8), ``imap_ordered`` (decode images in worker processes, results in
input order so skip counting stays in the caller's process), and
``ConversionResult`` / ``ConversionError`` (what a converter returns or raises,
with its counts and skip summaries).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets.arrow_writer import ArrowWriter

from lovt_keras.data.images import ImageReadError, pad_and_resize, read_image, to_uint8
from lovt_keras.data.reports import SkipCounter, clean_whitespace
from lovt_keras.files import replace_folder

__all__ = [
    "NO_IMAGE_FILE",
    "SPLITS",
    "STATS_FILE",
    "UNREADABLE_IMAGE",
    "ConversionError",
    "ConversionResult",
    "EmptyTrainSplitError",
    "OutputExistsError",
    "check_output_dir",
    "flatten_skips",
    "format_report",
    "imap_ordered",
    "load_images",
    "load_square_image",
    "read_stats",
    "write_dataset",
]

STATS_FILE = "stats.json"
SPLITS = ("train", "validation", "test")
# Skip reasons for images, shared by the converters so that summaries are comparable.
NO_IMAGE_FILE = "no image file"
UNREADABLE_IMAGE = "unreadable image file"
# Keys that write_dataset computes; stats_extra may not set them.
_COMPUTED_KEYS = ("mean", "std", "num_pixels", "counts")


class OutputExistsError(FileExistsError):
    """The output folder exists and ``overwrite`` was not given."""


class EmptyTrainSplitError(ValueError):
    """No row reached the train split, so there are no pixel statistics."""


class ConversionError(ValueError):
    """A conversion failed after counting; ``result`` holds the counts and skips so far."""

    def __init__(self, message: str, result: ConversionResult):
        super().__init__(message)
        self.result = result


@dataclass
class ConversionResult:
    """What a converter did.

    Attributes:
        output_dir: the dataset folder.
        counts: rows written per split.
        skipped: skip counters by unit (e.g. ``{"studies": ..., "images": ...}``).
        stats: the content of ``stats.json`` (empty when nothing was written).
        notes: other numbers worth reporting that are not skips (e.g. studies left
            out by a train subset, labels filled in), text -> count.
    """

    output_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, SkipCounter] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """Several lines: rows per split, each skip counter's summary, the notes."""
        if self.counts:
            counts = ", ".join(f"{split} {n}" for split, n in self.counts.items())
            lines = [f"wrote {self.output_dir}: {counts} rows"]
        else:
            lines = [f"nothing written to {self.output_dir}"]
        for unit, counter in self.skipped.items():
            lines.append(f"  {unit}: {counter.summary()}")
        for text, n in self.notes.items():
            lines.append(f"  note: {n} {text}")
        return "\n".join(lines)


def flatten_skips(skipped: Mapping[str, SkipCounter]) -> dict[str, int]:
    """``{"studies": counter, ...}`` -> ``{"studies: <reason>": count, ...}`` for stats.json."""
    return {
        f"{unit}: {reason}": count
        for unit, counter in skipped.items()
        for reason, count in sorted(counter.counts.items())
    }


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Raises ``OutputExistsError`` naming the folder if it exists and not ``overwrite``.

    Converters call this before any slow work; ``write_dataset`` calls it again.
    """
    path = Path(output_dir)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputExistsError(
            f"output folder {str(path)!r} already exists; choose another folder or pass "
            "overwrite=True (--overwrite) to replace it"
        )
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output path {str(path)!r} exists and is not a folder")
    return path


def read_stats(path: str | os.PathLike) -> dict[str, Any]:
    """Reads ``stats.json`` of a dataset folder (or the file itself)."""
    path = Path(path)
    file = path if path.name == STATS_FILE else path / STATS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no stats file (is this a prepared dataset folder?)")
    return json.loads(file.read_text())


def write_dataset(
    output_dir: str | os.PathLike,
    splits: Mapping[str, Iterable[Mapping[str, Any]]],
    features: datasets.Features,
    stats_extra: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    overwrite: bool = False,
    *,
    image_column: str = "image",
    stats_split: str = "train",
    writer_batch_size: int = 256,
) -> dict[str, Any]:
    """Writes a ``DatasetDict`` folder with ``stats.json``, atomically.

    Rows are consumed one at a time (a generator never has to fit in memory) and
    written to Arrow; the pixel histogram of ``stats_split`` is accumulated on the
    way, so the statistics cost no second pass.

    Args:
        output_dir: the final folder; must not exist unless ``overwrite``.
        splits: split name -> iterable (list or generator) of row dicts whose keys
            are exactly the feature names. Splits are written in this order.
        features: the ``datasets.Features`` of every split.
        stats_extra: more entries for ``stats.json``, or a callable returning them
            that is called after all rows are written (so it can report skips
            counted while the generators ran). It may not set ``mean``, ``std``,
            ``num_pixels`` or ``counts``; ``image_size`` defaults to the image
            column's size.
        overwrite: replace an existing ``output_dir``.
        image_column: the column with uint8 ``(H, W)`` images for the statistics.
        stats_split: the split whose pixels give ``mean`` and ``std``.
        writer_batch_size: rows per Arrow record batch (memory vs. speed).

    Returns:
        The ``stats.json`` content: ``mean``, ``std`` (floats; pixels / 255 pooled
        over all images of ``stats_split``, population std), ``num_pixels``,
        ``counts`` (split -> rows) and the extras.

    Raises:
        OutputExistsError: ``output_dir`` exists and not ``overwrite``.
        EmptyTrainSplitError: ``stats_split`` received no row (nothing is written).
        ValueError: a row with missing/extra columns, an array of the wrong shape or
            a value that does not fit the features, naming the split and row index.
        TypeError: an array column (e.g. the image) with the wrong dtype, naming the
            split and row index.
    """
    final = check_output_dir(output_dir, overwrite)
    if stats_split not in splits:
        raise ValueError(f"splits must include {stats_split!r} (pixel statistics); got {list(splits)}")
    image_feature = features.get(image_column)
    if not isinstance(image_feature, datasets.Array2D) or image_feature.dtype != "uint8":
        raise ValueError(
            f"the image column {image_column!r} must be an Array2D uint8 feature, got "
            f"{image_feature!r}"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        counts: dict[str, int] = {}
        histogram = np.zeros(256, np.int64)
        for split, rows in splits.items():
            counts[split] = _write_split(
                tmp, split, rows, features, image_column,
                histogram if split == stats_split else None, writer_batch_size,
            )
        # Checked after every split was consumed, so that the caller's skip counts are
        # complete when it reports the error.
        if counts[stats_split] == 0:
            raise EmptyTrainSplitError(
                f"{final}: the {stats_split} split received no rows, so there are no "
                "pixel statistics; nothing was written"
            )
        # The file DatasetDict.save_to_disk writes: it lists the split folders.
        with open(tmp / datasets.config.DATASETDICT_JSON_FILENAME, "w", encoding="utf-8") as f:
            json.dump({"splits": list(counts)}, f)

        stats = _histogram_stats(histogram)
        stats["counts"] = counts
        shape = getattr(features[image_column], "shape", None)
        if shape is not None:
            stats["image_size"] = int(shape[0]) if shape[0] == shape[1] else list(shape)
        extra = stats_extra() if callable(stats_extra) else (stats_extra or {})
        clash = sorted(set(extra) & set(_COMPUTED_KEYS))
        if clash:
            raise ValueError(f"stats_extra may not set the computed key(s) {clash}")
        stats.update(extra)
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2, sort_keys=False))
        try:
            replace_folder(tmp, final, overwrite)
        except FileExistsError as error:  # checked at the start: it appeared since
            raise OutputExistsError(
                f"output folder {str(final)!r} appeared during the conversion") from error
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return stats


def _write_split(
    tmp: Path,
    split: str,
    rows: Iterable[Mapping[str, Any]],
    features: datasets.Features,
    image_column: str,
    histogram: np.ndarray | None,
    writer_batch_size: int,
) -> int:
    build = tmp / f"_build-{split}.arrow"
    names = set(features)
    arrays = {
        name: (tuple(feature.shape), np.dtype(feature.dtype))
        for name, feature in features.items()
        if isinstance(feature, datasets.Array2D | datasets.Array3D | datasets.Array4D
                      | datasets.Array5D)
    }
    count = 0
    with ArrowWriter(features=features, path=str(build), writer_batch_size=writer_batch_size) as writer:
        for index, row in enumerate(rows):
            keys = set(row)
            if keys != names:
                raise ValueError(
                    f"split {split!r} row {index}: columns do not match the features "
                    f"(missing {sorted(names - keys)}, extra {sorted(keys - names)})"
                )
            for name, (shape, dtype) in arrays.items():
                # Arrow would store a wrongly shaped array without complaint and fail
                # only when the dataset is read, so the shape is checked here.
                value = np.asarray(row[name])
                if value.shape != shape or value.dtype != dtype:
                    problem = TypeError if value.shape == shape else ValueError
                    raise problem(
                        f"split {split!r} row {index}: column {name!r} has shape "
                        f"{value.shape} and dtype {value.dtype}, expected {shape} {dtype}"
                    )
            if histogram is not None:
                image = np.asarray(row[image_column])
                histogram += np.bincount(image.reshape(-1), minlength=256)
            try:
                writer.write(features.encode_example(dict(row)))
            except Exception as error:  # noqa: BLE001 - re-raised with the row named
                raise ValueError(
                    f"split {split!r} row {index}: does not fit the features ({error})"
                ) from error
            count += 1
        writer.finalize()
    dataset = datasets.Dataset.from_file(
        str(build), info=datasets.DatasetInfo(features=features), split=datasets.NamedSplit(split)
    )
    with _quiet_datasets():
        # An empty split still needs one (empty) shard, or load_from_disk fails on it.
        dataset.save_to_disk(str(tmp / split), num_shards=1 if count == 0 else None)
    del dataset
    build.unlink()  # keep only the saved copy: the peak disk use is one split twice
    return count


@contextlib.contextmanager
def _quiet_datasets():
    """Hides the datasets progress bars while saving (they flood logs and tests)."""
    enabled = datasets.utils.logging.is_progress_bar_enabled()
    datasets.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            datasets.utils.logging.enable_progress_bar()


def _histogram_stats(histogram: np.ndarray) -> dict[str, Any]:
    count = int(histogram.sum())
    values = np.arange(256, dtype=np.float64) / 255.0
    mean = float((histogram * values).sum() / count)
    var = float((histogram * (values - mean) ** 2).sum() / count)
    return {"mean": mean, "std": var**0.5, "num_pixels": count}


# --------------------------------------------------------------------------------------
# Shared by the converters
# --------------------------------------------------------------------------------------


def load_square_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Reads an image file, pads it to a centred square and resizes it to ``size``.

    Returns:
        uint8 ``(size, size)`` (``read_image`` -> ``pad_and_resize`` -> ``to_uint8``).

    Raises:
        ImageReadError: the file is missing or cannot be decoded (names the file).
    """
    image, _, _ = pad_and_resize(read_image(path), size)
    return to_uint8(image)


def format_report(findings: str, impression: str) -> str:
    """``"FINDINGS: ...\\n\\nIMPRESSION: ..."`` with whitespace cleaned; absent sections left out.

    The layout of SynthCXR reports, so ``extract_sections`` parses it back.
    """
    parts = []
    if findings.strip():
        parts.append("FINDINGS: " + clean_whitespace(findings))
    if impression.strip():
        parts.append("IMPRESSION: " + clean_whitespace(impression))
    return "\n\n".join(parts)


def _load_task(task: tuple[str, int]) -> tuple[np.ndarray | None, str | None, bool]:
    """Worker body: ``(image, None, False)`` or ``(None, reason, missing)``."""
    path, size = task
    if not os.path.isfile(path):
        return None, "file does not exist", True
    try:
        return load_square_image(path, size), None, False
    except ImageReadError as error:
        return None, error.reason, False


def imap_ordered(
    function: Callable[[Any], Any],
    items: Iterable[Any],
    num_proc: int = 1,
    chunksize: int = 8,
) -> Iterator[Any]:
    """``map(function, items)`` lazily, in worker processes when ``num_proc > 1``.

    Results come back in input order, so the caller can count skips and write rows
    in its own process. Workers are started with ``spawn`` (never ``fork``: the
    parent may hold threads of a deep-learning backend). ``function`` must be a
    module-level function and the items picklable.
    """
    if num_proc <= 1:
        yield from map(function, items)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(num_proc) as pool:
        yield from pool.imap(function, items, chunksize=chunksize)


def load_images(
    paths: Iterable[str | os.PathLike], size: int, num_proc: int = 1
) -> Iterator[tuple[np.ndarray | None, str | None, bool]]:
    """Loads many images with ``load_square_image``, in order, without raising.

    Yields:
        ``(image uint8 (size, size), None, False)`` for a readable file, or
        ``(None, reason, missing)`` where ``missing`` is True when the file does not
        exist and ``reason`` says what is wrong otherwise.
    """
    tasks = ((os.fspath(p), int(size)) for p in paths)
    return imap_ordered(_load_task, tasks, num_proc)
