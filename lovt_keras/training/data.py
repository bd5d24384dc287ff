"""The training programs' data: prepared datasets as batches, subsets, partial epochs.

The functions here are what the gin files build data with (``lovt.pretraining_batches``,
``lovt.synthcxr_folder``, ``lovt.trained_tokenizer``, ``lovt.tokenizer_from_folder``;
registered by ``tools.gin_registry``).
"""

from __future__ import annotations

import functools
import os

import datasets
import keras
import numpy as np

from lovt_keras.data import synthcxr


class EpochView(keras.utils.PyDataset):
    """Batches ``start .. stop - 1`` of a batch sequence, for one ``fit`` call.

    Used to resume in the middle of an epoch (``start`` = batches already trained) and
    to truncate an epoch to a whole number of gradient-accumulation cycles (``stop``).
    ``on_epoch_begin``/``on_epoch_end`` are forwarded to the wrapped data; workers and
    queue settings are copied from it.

    Args:
        data: a ``keras.utils.PyDataset`` (``len`` = batches per epoch).
        start: first batch index (0 <= start < stop).
        stop: one past the last batch index (None = ``len(data)``).
    """

    def __init__(self, data: keras.utils.PyDataset, start: int = 0, stop: int | None = None):
        super().__init__(
            workers=getattr(data, "workers", 1),
            use_multiprocessing=getattr(data, "use_multiprocessing", False),
            max_queue_size=getattr(data, "max_queue_size", 10),
        )
        total = len(data)
        stop = total if stop is None else int(stop)
        if not 0 <= int(start) < stop <= total:
            raise ValueError(
                f"EpochView needs 0 <= start < stop <= len(data) = {total}, "
                f"got start={start}, stop={stop}"
            )
        self.data = data
        self.start = int(start)
        self.stop = stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches")
        return self.data[self.start + index]

    def on_epoch_begin(self):
        hook = getattr(self.data, "on_epoch_begin", None)
        if hook is not None:
            hook()

    def on_epoch_end(self):
        hook = getattr(self.data, "on_epoch_end", None)
        if hook is not None:
            hook()


def first_studies(dataset: datasets.Dataset, fraction: float | None = None,
                  max_studies: int | None = None) -> datasets.Dataset:
    """The rows of the first studies of a split (the official ``train_subset``).

    The official code takes the first ``round(fraction * n)`` samples of the train
    split (``Subset(range(...))``), a sample being a study; here rows are images, so the
    subset is the rows of the first ``round(fraction * num_studies)`` studies in order of
    first appearance (deterministic: no shuffling), the order in which the converters
    store them. ``max_studies`` caps the count further. Unlike converting with
    ``--train_fraction``, the pixel statistics stay those of the full train split, as
    in the official code.

    Args:
        dataset: one split with a ``study_id`` column.
        fraction: share of the studies to keep, in (0, 1] (None = all).
        max_studies: upper bound on the number of studies (None = no bound).

    Returns:
        The dataset itself when nothing is removed, else a ``select`` of it.
    """
    if fraction is None and max_studies is None:
        return dataset
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if max_studies is not None and max_studies < 1:
        raise ValueError(f"max_studies must be >= 1, got {max_studies}")
    column = dataset.with_format("arrow", columns=["study_id"])[:].column("study_id")
    codes = column.combine_chunks().dictionary_encode().indices.to_numpy(zero_copy_only=False)
    num_studies = int(codes.max()) + 1 if len(codes) else 0
    keep = num_studies if fraction is None else round(fraction * num_studies)
    if max_studies is not None:
        keep = min(keep, int(max_studies))
    if keep < 1:
        raise ValueError(
            f"fraction={fraction} of {num_studies} studies keeps no study"
        )
    if keep == num_studies:
        return dataset
    # Dictionary codes number the studies in order of first appearance.
    return dataset.select(np.flatnonzero(codes < keep))


@functools.lru_cache(maxsize=8)
def load_prepared_dataset(path: str) -> tuple[datasets.DatasetDict, dict]:
    """``load_pretraining_dataset(path)``, loaded once per process (the batches of every
    split and the tokenizer read the same folder); :func:`clear_dataset_cache` forgets."""
    from lovt_keras.data.pretraining_dataset import load_pretraining_dataset

    return load_pretraining_dataset(path)


def clear_dataset_cache() -> None:
    """Forgets the datasets :func:`load_prepared_dataset` loaded (between runs in one
    process, e.g. in tests)."""
    load_prepared_dataset.cache_clear()


def pretraining_batches(path: str, tokenizer, split: str = "train", training: bool = True,
                        batch_size: int = 32, image_size: int = 224,
                        text_augmentation: str | None = "random_swaps", seed: int = 0,
                        fraction: float | None = None, max_studies: int | None = None,
                        workers: int = 2, image_augmentation: bool = True):
    """``PretrainingBatches`` of one split of a prepared dataset folder.

    ``fraction`` keeps the first share of the split's studies (the official 30 % subset:
    ``train/lovt.pretraining_batches.fraction = 0.3``) and ``max_studies`` caps their
    number (the tiny overlay), see :func:`first_studies`. ``image_augmentation=False``
    replaces the ConVIRT image augmentation of training batches by the evaluation
    transform (text augmentation stays).
    """
    from lovt_keras.data.image_augment import EvalTransform
    from lovt_keras.data.pretraining_dataset import PretrainingBatches

    dataset_dict, stats = load_prepared_dataset(os.fspath(path))
    if split not in dataset_dict:
        raise ValueError(f"{path}: no split {split!r} (has {sorted(dataset_dict)})")
    dataset = first_studies(dataset_dict[split], fraction=fraction, max_studies=max_studies)
    return PretrainingBatches(
        dataset, tokenizer, stats, batch_size=batch_size, training=training,
        image_size=image_size, text_augmentation=text_augmentation, seed=seed, workers=workers,
        augmentation=None if image_augmentation else EvalTransform(image_size),
    )


def tokenizer_from_folder(folder: str, max_tokens: int = 512, max_sentences: int = 32):
    """The ``ReportTokenizer`` of a BERT model folder (its ``vocab.txt``)."""
    from lovt_keras.data.tokenization import ReportTokenizer

    return ReportTokenizer.from_model_folder(folder, max_tokens=max_tokens,
                                             max_sentences=max_sentences)


def trained_tokenizer(path: str, vocab_size: int = synthcxr.SYNTHCXR_VOCAB_SIZE, max_tokens: int = 128,
                      max_sentences: int = 16):
    """A WordPiece tokenizer trained on the train split of a prepared dataset folder
    (cached in the folder; for randomly initialized report encoders)."""
    from lovt_keras.data.pretraining_dataset import synthcxr_tokenizer

    dataset_dict, _ = load_prepared_dataset(os.fspath(path))
    return synthcxr_tokenizer(dataset_dict, vocab_size=vocab_size, max_tokens=max_tokens,
                              max_sentences=max_sentences)


def synthcxr_folder(cache_dir: str | None = None, num_train: int = synthcxr.DEFAULT_NUM_TRAIN,
                    num_validation: int = synthcxr.DEFAULT_NUM_VALIDATION,
                    num_test: int = synthcxr.DEFAULT_NUM_TEST,
                    image_size: int = synthcxr.DEFAULT_IMAGE_SIZE,
                    seed: int = synthcxr.DEFAULT_SEED) -> str:
    """Generates SynthCXR once (cached) and returns its prepared dataset folder."""
    synthcxr.load_synthcxr(cache_dir, num_train, num_validation, num_test, image_size, seed)
    return str(synthcxr.synthcxr_dir(cache_dir, num_train, num_validation, num_test,
                                     image_size, seed))
