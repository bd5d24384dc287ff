"""The pretraining batch pipeline: a ``keras.utils.PyDataset`` of LoVT batch dicts.

A prepared pretraining dataset (MIMIC-CXR, IU X-ray, SynthCXR; see the data conventions)
has one row per image; rows of the same study share ``study_id`` and the report. LoVT
trains on studies (official ``src/data/datasets/mimic_cxr/mimic_cxr_dataset.py``): one
sample is one study, and each time it is loaded one of its frontal images is chosen
uniformly at random. ``PretrainingBatches`` does this and yields the dicts that
``LoVTPretrainer`` takes (keys of ``lovt_keras.keys``):

- ``images`` float32 ``(B, H, W, 1)``: the chosen image, ConVIRT-augmented (official
  ``src/models/image/scan_transforms.py``) when training or padded and resized when
  evaluating, normalized with the train split's pixel mean and std;
- ``token_ids``, ``padding_mask``, ``sentence_ids`` ``(B, T)`` and ``sentence_mask``
  ``(B, S)``: the report's sentences after the text augmentation (official
  ``src/models/text/report_transforms.py``), encoded by a ``ReportTokenizer``.

Determinism: batch ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``. The study
order of an epoch is ``default_rng((seed, e)).permutation``, the image of study ``s``
comes from ``default_rng([seed, e, s, 2])`` and the augmentation of the sample at
position ``p`` of the epoch from ``default_rng([seed, e, p, 1])``. So worker threads may
compute batches in any order, Keras may shuffle the batch order, and a run restarted at
epoch ``e`` (``set_epoch(e)``) sees the same data as an uninterrupted one. The trailing
stream tags 1 and 2 keep the keys distinct: ``SeedSequence`` pads short keys with zeros,
so ``[seed, e]`` and ``[seed, e, 0, 0]`` would be the same stream.

The dataset must hold only the images to train on (frontal views); the converters
filter the views.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import Any

import datasets
import keras
import numpy as np

from lovt_keras import keys
from lovt_keras.data.epochs import EpochTracking
from lovt_keras.data.image_augment import ConvirtAugmentation, EvalTransform
from lovt_keras.data.synthcxr import SYNTHCXR_VOCAB_SIZE
from lovt_keras.data.text_augment import RANDOM_SENTENCE, RANDOM_SWAPS, augment_sentences
from lovt_keras.data.tokenization import ReportTokenizer
from lovt_keras.files import write_atomically

__all__ = [
    "PretrainingBatches",
    "TEXT_AUGMENTATIONS",
    "load_pretraining_dataset",
    "synthcxr_tokenizer",
]

STATS_FILE = "stats.json"
DATASET_DICT_FILE = "dataset_dict.json"
REQUIRED_COLUMNS = ("image", "study_id", "sentences")
# "swaps" is accepted as a short alias of the official name "random_swaps".
TEXT_AUGMENTATIONS = (None, RANDOM_SWAPS, RANDOM_SENTENCE)
_TEXT_ALIASES = {"swaps": RANDOM_SWAPS}

# Stream tags of the per-sample generators (see the module docstring).
_AUGMENT_STREAM = 1
_CHOICE_STREAM = 2

# The cached vocabulary of a SynthCXR folder ("v2": the deterministic trainer).
SYNTHCXR_VOCAB_FILE = "vocab-v2.txt"


def load_pretraining_dataset(path: str | PathLike) -> tuple[datasets.DatasetDict, dict]:
    """Loads a prepared pretraining dataset folder and its ``stats.json``.

    Args:
        path: a folder written by a ``tools.prepare`` converter: a ``DatasetDict`` saved
            with ``save_to_disk`` and ``stats.json`` beside it.

    Returns:
        ``(dataset_dict, stats)``; every split has the columns ``image``, ``study_id``
        and ``sentences``; ``stats`` has finite ``mean`` and ``std > 0``.

    Raises:
        FileNotFoundError: the folder, its ``dataset_dict.json`` or its ``stats.json`` is
            missing (the message names the folder).
        ValueError: the stats or the columns are not usable (naming the file or split).
    """
    folder = Path(path).expanduser()
    hint = (f"prepare it with `python -m tools.prepare mimic-cxr ROOT {folder}`, "
            f"`python -m tools.prepare iu-xray REPORTS_DIR IMAGES_DIR {folder}` or "
            f"`python -m tools.prepare synthcxr --output_dir {folder}`; "
            "`python -m tools.prepare NAME --help` lists the arguments)")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such dataset folder ({hint})")
    if not (folder / DATASET_DICT_FILE).is_file():
        raise FileNotFoundError(
            f"{folder}: not a prepared dataset folder: no {DATASET_DICT_FILE} (a DatasetDict "
            f"written with save_to_disk); {hint}"
        )
    stats_path = folder / STATS_FILE
    if not stats_path.is_file():
        raise FileNotFoundError(f"{folder}: not a prepared dataset folder: no {STATS_FILE}")
    try:
        stats = json.loads(stats_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{stats_path}: not valid JSON ({error})") from error
    _check_stats(stats, str(stats_path))
    dataset_dict = datasets.load_from_disk(str(folder))
    if not isinstance(dataset_dict, datasets.DatasetDict):
        raise ValueError(f"{folder}: holds a single Dataset, expected a DatasetDict of splits")
    for split, dataset in dataset_dict.items():
        missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
        if missing:
            raise ValueError(
                f"{folder}: split {split!r} lacks the columns {missing} "
                f"(has {dataset.column_names})"
            )
    return dataset_dict, stats


def _check_stats(stats: Any, source: str) -> None:
    if not isinstance(stats, dict):
        raise ValueError(f"{source}: expected a JSON object with 'mean' and 'std'")
    for name in ("mean", "std"):
        value = stats.get(name)
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{source}: '{name}' must be a finite number, got {value!r}")
    if not stats["std"] > 0:
        raise ValueError(f"{source}: 'std' must be > 0, got {stats['std']!r}")


class PretrainingBatches(EpochTracking, keras.utils.PyDataset):
    """Batches of studies for image-report pretraining, for ``model.fit``.

    One sample is one study: each epoch visits every study once (in a new random order
    when ``training`` and ``shuffle``) and picks one of its images uniformly at random
    (evaluation: the study's first row). See the module docstring for how the randomness
    of batch ``i`` of epoch ``e`` derives from ``(seed, e, i)``.

    Epochs: ``on_epoch_end`` (called by ``fit``) advances to the next epoch once every
    batch of the epoch opened by ``on_epoch_begin`` has been computed (a loop outside
    Keras calls both, or ``set_epoch``); when resuming with
    ``fit(initial_epoch=e)``, call ``set_epoch(e)`` first. With ``use_multiprocessing``
    the batches are computed in other processes, so drive the epoch with ``set_epoch``
    (e.g. from a callback's ``on_epoch_begin``). Pass ``shuffle=False`` to ``fit``: the
    order is already random, and a fixed order keeps runs reproducible. Build the model
    before ``fit`` (e.g. ``model(batches[0])``): otherwise Keras draws a batch to build
    it, and with worker threads the batches its enqueuer prefetched then are served
    first in epoch 0 (a Keras behaviour: its ``stop`` keeps prefetched batches).

    Args:
        dataset: one split of a prepared pretraining dataset (columns ``image``
            Array2D uint8, ``study_id``, ``sentences``), e.g. from
            ``load_pretraining_dataset``.
        tokenizer: encodes the sentences; fixes T = ``max_tokens`` and S =
            ``max_sentences``.
        stats: dict with the train split's pixel ``mean`` and ``std`` (pixels in
            [0, 1]).
        batch_size: studies per batch (B).
        training: random image choice, image and text augmentation; False gives the
            evaluation pipeline (first image, ``EvalTransform``, sentences as stored,
            fixed order).
        image_size: side of the output images (224).
        text_augmentation: ``"random_swaps"`` (LoVT; alias ``"swaps"``),
            ``"random_sentence"`` (ConVIRT, CLIP*) or None; only when ``training``.
        seed: non-negative int, the root of all randomness.
        shuffle: permute the studies each epoch (training only).
        drop_remainder: drop the last partial batch. Contrastive losses draw their
            negatives from the batch, so training should see full batches only; with
            False the last batch holds the remaining ``num_studies % batch_size``
            studies.
        workers, use_multiprocessing, max_queue_size: Keras' ``PyDataset`` options;
            ``fit`` computes batches in ``workers`` threads when ``workers > 1``.
        augmentation: optional callable ``(image float32 (H, W) in [0, 1], rng) ->
            (image_size, image_size)`` replacing ``ConvirtAugmentation(image_size)`` in
            training mode.

    Raises:
        ValueError: missing columns, an unknown text augmentation, fewer studies than
            one batch with ``drop_remainder``, or rows with a null study id or no
            sentence (naming the rows and studies).
    """

    def __init__(
        self,
        dataset: datasets.Dataset,
        tokenizer: ReportTokenizer,
        stats: dict,
        batch_size: int = 32,
        training: bool = True,
        image_size: int = 224,
        text_augmentation: str | None = RANDOM_SWAPS,
        seed: int = 0,
        shuffle: bool = True,
        drop_remainder: bool = True,
        workers: int = 2,
        use_multiprocessing: bool = False,
        max_queue_size: int = 8,
        augmentation: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
    ):
        super().__init__(
            workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size
        )
        if isinstance(dataset, datasets.DatasetDict):
            raise TypeError("dataset must be one split (e.g. dataset_dict['train']), not a DatasetDict")
        missing = [c for c in REQUIRED_COLUMNS if c not in dataset.column_names]
        if missing:
            raise ValueError(
                f"dataset lacks the columns {missing} (has {dataset.column_names}); "
                "expected a prepared pretraining dataset"
            )
        image_feature = dataset.features["image"]
        if not isinstance(image_feature, datasets.Array2D) or image_feature.dtype != "uint8":
            raise ValueError(f"column 'image' must be Array2D uint8, got {image_feature}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(seed) < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed}")
        text_augmentation = _TEXT_ALIASES.get(text_augmentation, text_augmentation)
        if text_augmentation not in TEXT_AUGMENTATIONS:
            raise ValueError(
                f"unknown text_augmentation {text_augmentation!r}; expected one of "
                f"{TEXT_AUGMENTATIONS} (or 'swaps')"
            )
        _check_stats(stats, "stats")

        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.training = bool(training)
        self.image_size = int(image_size)
        self.text_augmentation = text_augmentation if self.training else None
        self.seed = int(seed)
        self.shuffle = bool(shuffle) and self.training
        self.drop_remainder = bool(drop_remainder)
        self.mean = float(stats["mean"])
        self.std = float(stats["std"])
        self.stored_shape = tuple(int(s) for s in image_feature.shape)
        if self.training:
            self.transform = augmentation or ConvirtAugmentation(self.image_size)
        else:
            self.transform = EvalTransform(self.image_size)
        # Stored images already at the output size pass through unchanged in evaluation.
        self._identity_eval = not self.training and self.stored_shape == (
            self.image_size,
            self.image_size,
        )

        self._study_ids, self._study_rows, self._study_offsets = _group_by_study(dataset)
        _check_sentences(dataset)
        self.num_studies = len(self._study_offsets) - 1
        if self.drop_remainder and self.num_studies < self.batch_size:
            raise ValueError(
                f"the dataset has {self.num_studies} studies, fewer than batch_size "
                f"{self.batch_size}: with drop_remainder=True there is no batch"
            )
        self._images = dataset.with_format("numpy", columns=["image"])
        self._sentences = dataset.select_columns(["sentences"])
        self._order_lock = threading.Lock()
        self._orders: dict[int, np.ndarray] = {}
        self.shard_index, self.shard_count = 0, 1
        self._init_epochs()

    def set_shard(self, index: int, count: int) -> None:
        """Serves this process's share of every batch: ``batch_size / count`` studies,
        the ``index``-th contiguous block of the global batch (multi-process data
        parallelism, see ``lovt_keras.training.distribution``).

        The shares of the ``count`` processes put together are the unsharded batch,
        images and augmentations included: every random choice depends on the study's
        position in the global batch, not on the shard.

        Raises:
            ValueError: ``index`` outside ``[0, count)`` or ``batch_size`` not divisible
                by ``count``.
        """
        index, count = int(index), int(count)
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"shard {index} of {count}: need 0 <= index < count")
        if self.batch_size % count:
            raise ValueError(
                f"batch_size {self.batch_size} does not split into {count} equal shares; "
                "use a batch size divisible by the number of processes"
            )
        if count > 1 and not self.drop_remainder:
            raise ValueError("sharded batches need drop_remainder=True (equal shares)")
        self.shard_index, self.shard_count = index, count

    @property
    def local_batch_size(self) -> int:
        """Studies per batch served by this process (``batch_size / shard_count``)."""
        return self.batch_size // self.shard_count

    def __len__(self) -> int:
        """Number of batches per epoch: ``num_studies // batch_size`` with
        ``drop_remainder``, else ``ceil(num_studies / batch_size)``."""
        if self.drop_remainder:
            return self.num_studies // self.batch_size
        return -(-self.num_studies // self.batch_size)

    # ------------------------------------------------------------------ sampling

    def study_order(self, epoch: int | None = None) -> np.ndarray:
        """int64 ``(num_studies,)``: the study indices in the order of ``epoch``."""
        epoch = self._epoch if epoch is None else int(epoch)
        if not self.shuffle:
            return np.arange(self.num_studies)
        with self._order_lock:
            order = self._orders.get(epoch)
            if order is None:
                order = np.random.default_rng((self.seed, epoch)).permutation(self.num_studies)
                if len(self._orders) >= 4:  # threads only ever need the current epoch
                    self._orders.clear()
                self._orders[epoch] = order
        return order

    def batch_rows(self, index: int, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The studies of batch ``index`` (this process's share, see ``set_shard``) and
        the dataset row chosen for each.

        Returns:
            ``(studies, rows)``, int64 ``(B,)`` each: study indices (in order of first
            appearance in the dataset, see ``study_id``) and dataset row indices.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range for {len(self)} batches")
        epoch = self._epoch if epoch is None else int(epoch)
        start = index * self.batch_size + self.shard_index * self.local_batch_size
        end = min(start + self.local_batch_size, (index + 1) * self.batch_size)
        studies = self.study_order(epoch)[start:end]
        rows = np.empty(len(studies), np.int64)
        for k, study in enumerate(studies.tolist()):
            first, end = self._study_offsets[study], self._study_offsets[study + 1]
            pick = 0
            if self.training and end - first > 1:
                rng = np.random.default_rng([self.seed, epoch, study, _CHOICE_STREAM])
                pick = int(rng.integers(end - first))
            rows[k] = self._study_rows[first + pick]
        return studies, rows

    def study_id(self, study: int) -> str:
        """The ``study_id`` of a study index."""
        return self._study_ids[int(study)]

    def study_rows(self, study: int) -> np.ndarray:
        """int64: the dataset rows of a study, in dataset order."""
        first, end = self._study_offsets[study], self._study_offsets[study + 1]
        return self._study_rows[first:end]

    # ------------------------------------------------------------------ batches

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """Batch ``index`` of the current epoch (see the class docstring for the keys)."""
        epoch = self._epoch
        studies, rows = self.batch_rows(index, epoch)
        row_list = rows.tolist()
        raw = self._images[row_list]["image"]  # uint8 (B, H, W), one batched Arrow read
        texts = self._sentences[row_list]["sentences"]

        size = self.image_size
        images = np.empty((len(rows), size, size, 1), np.float32)
        sentence_lists = []
        first_position = index * self.batch_size + self.shard_index * self.local_batch_size
        for k in range(len(rows)):
            pixels = raw[k].astype(np.float32) / np.float32(255.0)
            sentences = texts[k]
            if self.training:
                rng = np.random.default_rng(
                    [self.seed, epoch, first_position + k, _AUGMENT_STREAM]
                )
                images[k, :, :, 0] = self.transform(pixels, rng)
                sentences = augment_sentences(sentences, rng, self.text_augmentation)
            elif self._identity_eval:
                images[k, :, :, 0] = pixels
            else:
                images[k, :, :, 0] = self.transform(pixels)
            sentence_lists.append(sentences)
        images -= np.float32(self.mean)
        images /= np.float32(self.std)

        try:
            encoded = self.tokenizer.encode(sentence_lists)
        except ValueError as error:
            raise self._encoding_error(index, studies, rows, sentence_lists) from error
        self._mark_served(index, epoch)
        return {keys.IMAGES: images, **encoded}

    def _encoding_error(self, index, studies, rows, sentence_lists) -> ValueError:
        """Finds the sample that the tokenizer rejects and names its row and study."""
        for k, sentences in enumerate(sentence_lists):
            try:
                self.tokenizer.encode([sentences])
            except ValueError as error:
                return ValueError(
                    f"batch {index}: dataset row {int(rows[k])} (study "
                    f"{self.study_id(studies[k])!r}) cannot be encoded: {error}; "
                    f"sentences {list(sentences)[:3]!r}"
                )
        return ValueError(f"batch {index}: the tokenizer rejected the batch (rows {rows.tolist()})")

    def __repr__(self) -> str:
        return (
            f"PretrainingBatches(studies={self.num_studies}, batches={len(self)}, "
            f"batch_size={self.batch_size}, training={self.training}, "
            f"image_size={self.image_size}, text_augmentation={self.text_augmentation!r}, "
            f"epoch={self._epoch})"
        )


def _group_by_study(dataset: datasets.Dataset) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Groups rows by ``study_id`` with one vectorized Arrow pass (fast for 300k rows).

    Returns:
        ``(study_ids, rows, offsets)``: study ids in order of first appearance; int64
        row indices sorted by study (dataset order within a study); int64 offsets
        ``(num_studies + 1,)`` so that study ``s`` owns ``rows[offsets[s]:offsets[s+1]]``.
    """
    if len(dataset) == 0:
        raise ValueError("the dataset has no rows")
    # The "arrow" format applies a select/shuffle indices mapping, unlike dataset.data.
    column = dataset.with_format("arrow", columns=["study_id"])[:].column("study_id")
    column = column.combine_chunks()
    if column.null_count:
        nulls = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
        raise ValueError(
            f"{column.null_count} rows have no study_id, e.g. rows {nulls[:5].tolist()}"
        )
    encoded = column.dictionary_encode()  # codes in order of first appearance
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    study_ids = encoded.dictionary.to_pylist()
    rows = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(study_ids))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return study_ids, rows, offsets


def _check_sentences(dataset: datasets.Dataset) -> None:
    """Raises naming the rows whose ``sentences`` list is null or empty.

    The converters skip (and count) such reports, so a prepared dataset has none; a row
    without sentences would otherwise fail in a worker thread in the middle of training.
    """
    table = dataset.with_format("arrow", columns=["study_id", "sentences"])[:]
    column = table.column("sentences").combine_chunks()
    lengths = column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(lengths == 0)
    if len(bad):
        ids = table.column("study_id").take(bad[:5]).to_pylist()
        examples = ", ".join(f"row {r} (study {s!r})" for r, s in zip(bad[:5].tolist(), ids))
        raise ValueError(
            f"{len(bad)} of {len(dataset)} rows have no sentences, e.g. {examples}; "
            "prepared datasets must skip (and count) reports without sentences"
        )


# ---------------------------------------------------------------------- SynthCXR


def _dataset_folder(dataset_dict: datasets.DatasetDict) -> Path | None:
    """The folder a ``DatasetDict`` was loaded from, if it is a prepared folder."""
    for dataset in dataset_dict.values():
        for cache_file in dataset.cache_files:
            folder = Path(cache_file["filename"]).parent.parent
            if (folder / DATASET_DICT_FILE).is_file() and (folder / STATS_FILE).is_file():
                return folder
    return None


def synthcxr_tokenizer(
    dataset_dict: datasets.DatasetDict,
    vocab_size: int = SYNTHCXR_VOCAB_SIZE,
    max_tokens: int = 128,
    max_sentences: int = 16,
) -> ReportTokenizer:
    """SynthCXR's default tokenizer: WordPiece trained on the train split's sentences.

    The vocabulary is cached in the dataset folder (``vocab-v2.txt``, or
    ``vocab-v2-<vocab_size>.txt`` for a non-default size) and reused next time; it is a
    deterministic function of the train split (``ReportTokenizer.train``), so every run,
    on this machine or another, gets the same token ids. (``v2``: vocabularies of the
    earlier, non-deterministic trainer were cached as ``vocab.txt`` and are ignored.) A dataset held in memory (no
    folder) gets a freshly trained, uncached vocabulary.

    Args:
        dataset_dict: SynthCXR as loaded by ``load_synthcxr`` or
            ``load_pretraining_dataset`` (needs a ``train`` split with ``sentences``).
        vocab_size: upper bound of the vocabulary size (SynthCXR's vocabulary is small,
            so the trained one may have fewer tokens).
        max_tokens: T of the encoded reports.
        max_sentences: S of the encoded reports.

    Returns:
        A ``ReportTokenizer`` (lowercase).
    """
    if "train" not in dataset_dict:
        raise ValueError(f"no 'train' split to train the vocabulary on (has {list(dataset_dict)})")
    folder = _dataset_folder(dataset_dict)
    name = (SYNTHCXR_VOCAB_FILE if vocab_size == SYNTHCXR_VOCAB_SIZE
            else SYNTHCXR_VOCAB_FILE.replace(".txt", f"-{int(vocab_size)}.txt"))
    if folder is not None and (folder / name).is_file():
        return ReportTokenizer(
            str(folder / name), max_tokens=max_tokens, max_sentences=max_sentences
        )
    train = dataset_dict["train"].select_columns(["sentences"])

    def corpus():
        for start in range(0, len(train), 1024):
            for sentences in train[start : start + 1024]["sentences"]:
                yield from sentences

    tokenizer = ReportTokenizer.train(
        corpus(), vocab_size=int(vocab_size), max_tokens=max_tokens, max_sentences=max_sentences
    )
    if folder is not None:
        # Atomically, so a concurrent reader never sees half a vocabulary.
        write_atomically(folder / name, "\n".join(tokenizer.vocabulary) + "\n")
    return tokenizer

