import json
from pathlib import Path

import datasets
import keras
import numpy as np
import pytest

from lovt_keras import keys
from lovt_keras.data.pretraining_dataset import (
    SYNTHCXR_VOCAB_FILE,
    PretrainingBatches,
    load_pretraining_dataset,
    synthcxr_tokenizer,
)
from lovt_keras.data.synthcxr import load_stats, load_synthcxr
from lovt_keras.data.tokenization import ReportTokenizer

SIZE = 32
STATS = {"mean": 0.4, "std": 0.2}
# Images per study of the tiny dataset; rows of a study are interleaved with other
# studies' rows so that grouping cannot rely on contiguous rows.
STUDY_SIZES = (1, 2, 3, 1, 2, 3, 2)
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")


def _study_sentences(study):
    word = WORDS[study]
    return [f"the {word} finding is small.", f"no {word} effusion.", f"{word} heart is normal."]


def _tiny_rows():
    """(study of each row, image of each row); pixel [0, 0] of row r holds r."""
    studies = []
    for round_ in range(max(STUDY_SIZES)):
        studies += [s for s, n in enumerate(STUDY_SIZES) if round_ < n]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(len(studies), SIZE, SIZE), dtype=np.uint8)
    images[:, 0, 0] = np.arange(len(studies))
    return np.array(studies), images


def _tiny_dataset(sentences=None):
    studies, images = _tiny_rows()
    features = datasets.Features({
        "image": datasets.Array2D((SIZE, SIZE), "uint8"),
        "study_id": datasets.Value("string"),
        "sentences": datasets.Sequence(datasets.Value("string")),
    })
    if sentences is None:
        sentences = [_study_sentences(s) for s in studies]
    return datasets.Dataset.from_dict(
        {"image": images, "study_id": [f"study-{s}" for s in studies], "sentences": sentences},
        features=features,
    )


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [s for study in range(len(STUDY_SIZES)) for s in _study_sentences(study)]
    return ReportTokenizer.train(corpus * 3, vocab_size=200, min_frequency=1,
                                 max_tokens=40, max_sentences=4)


def _batches(dataset, tokenizer, **kwargs):
    kwargs = {"batch_size": 3, "image_size": SIZE, "workers": 0, **kwargs}
    return PretrainingBatches(dataset, tokenizer, STATS, **kwargs)


def _rows_of(batch):
    """Dataset rows of the samples, read back from pixel [0, 0] (identity transforms)."""
    pixel = batch[keys.IMAGES][:, 0, 0, 0] * STATS["std"] + STATS["mean"]
    return np.rint(pixel * 255).astype(int)


def _identity(image, rng):
    return image


def test_batch_shapes_dtypes_and_exact_normalization(tokenizer):
    dataset = _tiny_dataset()
    _, images = _tiny_rows()
    for training in (False, True):
        batches = _batches(dataset, tokenizer, training=training, augmentation=_identity)
        assert len(batches) == 7 // 3 == 2
        batch = batches[1]
        assert batch[keys.IMAGES].shape == (3, SIZE, SIZE, 1)
        assert batch[keys.IMAGES].dtype == np.float32
        for key, dtype in ((keys.TOKEN_IDS, np.int32), (keys.PADDING_MASK, bool),
                           (keys.SENTENCE_IDS, np.int32)):
            assert batch[key].shape == (3, 40) and batch[key].dtype == dtype
        assert batch[keys.SENTENCE_MASK].shape == (3, 4)
        assert batch[keys.SENTENCE_MASK].dtype == bool
        _, rows = batches.batch_rows(1)
        expected = (images[rows].astype(np.float32) / np.float32(255) - np.float32(0.4)) / np.float32(0.2)
        np.testing.assert_array_equal(batch[keys.IMAGES][..., 0], expected)


def test_every_study_once_per_epoch_one_image_each(tokenizer):
    studies_of_row, _ = _tiny_rows()
    batches = _batches(_tiny_dataset(), tokenizer, augmentation=_identity, drop_remainder=False)
    assert batches.num_studies == 7 and len(batches) == 3  # 3 + 3 + 1
    orders = []
    for epoch in range(3):
        batches.on_epoch_begin()
        rows = np.concatenate([_rows_of(batches[i]) for i in range(len(batches))])
        assert len(rows) == 7
        seen = studies_of_row[rows]
        assert sorted(seen.tolist()) == list(range(7))  # each study exactly once
        assert [f"study-{s}" for s in seen] == [
            batches.study_id(s) for s in batches.study_order(epoch)
        ]
        orders.append(seen.tolist())
        batches.on_epoch_end()
    assert batches.epoch == 3
    assert orders[0] != orders[1] or orders[1] != orders[2]  # reshuffled each epoch


def test_image_choice_is_uniform_varies_by_epoch_and_is_deterministic(tokenizer):
    studies_of_row, _ = _tiny_rows()
    dataset = _tiny_dataset()
    batches = _batches(dataset, tokenizer, batch_size=7, augmentation=_identity)
    study = 2  # three images: rows 2, 9, 14 of the interleaved layout
    own_rows = np.flatnonzero(studies_of_row == study)
    np.testing.assert_array_equal(batches.study_rows(study), own_rows)
    picks = []
    for epoch in range(300):
        studies, rows = batches.batch_rows(0, epoch)
        picks.append(rows[studies.tolist().index(study)])
    counts = np.array([picks.count(r) for r in own_rows])
    assert counts.sum() == 300 and counts.min() >= 70  # ~100 each if uniform
    # The pixels agree with batch_rows, and a fresh object with the same seed agrees.
    fresh = _batches(dataset, tokenizer, batch_size=7, augmentation=_identity)
    for epoch in (0, 1, 5):
        batches.set_epoch(epoch)
        fresh.set_epoch(epoch)
        np.testing.assert_array_equal(_rows_of(batches[0]), batches.batch_rows(0)[1])
        np.testing.assert_array_equal(_rows_of(batches[0]), _rows_of(fresh[0]))
    other_seed = _batches(dataset, tokenizer, batch_size=7, augmentation=_identity, seed=1)
    assert any(
        not np.array_equal(other_seed.batch_rows(0, e)[1], batches.batch_rows(0, e)[1])
        for e in range(5)
    )


def test_batches_are_pure_functions_of_seed_epoch_index(tokenizer):
    """Full augmentation: same arrays recomputed, out of order, in a fresh object."""
    dataset = _tiny_dataset()
    batches = _batches(dataset, tokenizer, text_augmentation="swaps")
    batches.set_epoch(4)
    first = [batches[i] for i in range(len(batches))]
    reverse = [batches[i] for i in reversed(range(len(batches)))][::-1]
    batches.set_epoch(5)
    next_epoch = batches[0]
    resumed = _batches(dataset, tokenizer, text_augmentation="swaps")
    resumed.set_epoch(4)
    for a, b, c in zip(first, reverse, [resumed[i] for i in range(len(resumed))]):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(a[key], c[key])
    assert not np.array_equal(first[0][keys.IMAGES], next_epoch[keys.IMAGES])
    # Augmented pixels stay inside the normalized [0, 1] range.
    lo, hi = (0 - 0.4) / 0.2, (1 - 0.4) / 0.2
    assert first[0][keys.IMAGES].min() >= lo - 1e-5 and first[0][keys.IMAGES].max() <= hi + 1e-5


def test_epoch_advances_only_after_a_full_epoch(tokenizer):
    batches = _batches(_tiny_dataset(), tokenizer, augmentation=_identity)
    assert len(batches) == 2
    batches[0]
    batches[1]  # all batches computed for a tf.data signature, outside an epoch
    batches.on_epoch_end()  # as Keras' EpochIterator.reset before the first epoch
    assert batches.epoch == 0
    batches.on_epoch_begin()
    batches[0]
    batches.on_epoch_end()  # one of two batches computed: drawn to build the model
    assert batches.epoch == 0
    batches.on_epoch_begin()
    batches[1]
    batches[0]
    batches.on_epoch_end()
    assert batches.epoch == 1
    batches.set_epoch(9)
    assert batches.epoch == 9 and len(batches.study_order()) == 7
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        batches.set_epoch(-1)


def test_eval_mode_is_fixed_first_image_unaugmented(tokenizer):
    studies_of_row, images = _tiny_rows()
    batches = _batches(_tiny_dataset(), tokenizer, training=False, drop_remainder=False)
    first_rows = [int(np.flatnonzero(studies_of_row == s)[0]) for s in range(7)]
    rows = np.concatenate([_rows_of(batches[i]) for i in range(len(batches))])
    assert rows.tolist() == first_rows  # studies in order of first appearance
    before = batches[0]
    batches.on_epoch_end()
    batches.set_epoch(7)
    after = batches[0]
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    # Eval resizing to another size is the EvalTransform (pad + bilinear resize).
    small = _batches(_tiny_dataset(), tokenizer, training=False, image_size=16)
    from PIL import Image

    expected = np.asarray(
        Image.fromarray(images[first_rows[0]].astype(np.float32) / 255).resize((16, 16), Image.BILINEAR)
    )
    np.testing.assert_allclose(small[0][keys.IMAGES][0, ..., 0] * 0.2 + 0.4, expected, atol=1e-6)


def test_tokens_decode_to_the_study_sentences(tokenizer):
    studies_of_row, _ = _tiny_rows()
    for kwargs in ({"training": False}, {"training": True, "text_augmentation": None}):
        batches = _batches(_tiny_dataset(), tokenizer, augmentation=_identity, **kwargs)
        batch = batches[1]
        for k, row in enumerate(_rows_of(batch)):
            sentences = _study_sentences(studies_of_row[row])
            assert batch[keys.SENTENCE_MASK][k].tolist() == [True, True, True, False]
            token_ids = batch[keys.TOKEN_IDS][k]
            for j, sentence in enumerate(sentences):
                ids = token_ids[batch[keys.SENTENCE_IDS][k] == j].tolist()
                assert ids == tokenizer.tokenize(sentence)
            decoded = tokenizer.sentences_of(batch, k)
            assert ["".join(s.split()) for s in decoded] == [
                "".join(s.split()) for s in sentences
            ]


def test_text_augmentations(tokenizer):
    studies_of_row, _ = _tiny_rows()
    dataset = _tiny_dataset()
    one = _batches(dataset, tokenizer, augmentation=_identity, text_augmentation="random_sentence")
    swaps = _batches(dataset, tokenizer, augmentation=_identity, text_augmentation="random_swaps")
    reordered = 0
    for epoch in range(6):
        one.set_epoch(epoch)
        swaps.set_epoch(epoch)
        for i in range(len(one)):
            b1, b2 = one[i], swaps[i]
            for k, row in enumerate(_rows_of(b1)):
                own = ["".join(s.split()) for s in _study_sentences(studies_of_row[row])]
                decoded = ["".join(s.split()) for s in tokenizer.sentences_of(b1, k)]
                assert len(decoded) == 1 and decoded[0] in own
            for k, row in enumerate(_rows_of(b2)):
                own = ["".join(s.split()) for s in _study_sentences(studies_of_row[row])]
                decoded = ["".join(s.split()) for s in tokenizer.sentences_of(b2, k)]
                assert sorted(decoded) == sorted(own)  # swapped, none dropped
                reordered += decoded != own
    assert reordered > 0
    with pytest.raises(ValueError, match="unknown text_augmentation"):
        _batches(dataset, tokenizer, text_augmentation="shuffle")


def test_selected_dataset_groups_by_mapped_rows(tokenizer):
    studies_of_row, _ = _tiny_rows()
    order = np.arange(len(studies_of_row))[::-1].tolist()
    view = _tiny_dataset().select(order)
    batches = _batches(view, tokenizer, training=False, drop_remainder=False)
    rows = np.concatenate([_rows_of(batches[i]) for i in range(len(batches))])
    # First appearance in the reversed view is the LAST original row of each study.
    expected = []
    for row in order:
        if studies_of_row[row] not in [studies_of_row[r] for r in expected]:
            expected.append(row)
    assert rows.tolist() == expected


def test_bad_inputs_raise_clear_errors(tokenizer, tmp_path):
    studies_of_row, _ = _tiny_rows()
    sentences = [_study_sentences(s) for s in studies_of_row]
    sentences[4] = []
    with pytest.raises(ValueError, match=r"1 of 14 rows have no sentences, e.g. row 4 \(study 'study-4'\)"):
        _batches(_tiny_dataset(sentences), tokenizer)
    with pytest.raises(ValueError, match="7 studies, fewer than batch_size 8"):
        _batches(_tiny_dataset(), tokenizer, batch_size=8)
    sentences = [_study_sentences(s) for s in studies_of_row]
    sentences[5] = ["   "]  # passes the construction check, has no token
    batches = _batches(_tiny_dataset(sentences), tokenizer, training=False, batch_size=7)
    with pytest.raises(ValueError, match=r"dataset row 5 \(study 'study-5'\) cannot be encoded"):
        batches[0]
    with pytest.raises(IndexError):
        batches[1]
    # Folder checks of load_pretraining_dataset.
    with pytest.raises(FileNotFoundError, match="no such dataset folder"):
        load_pretraining_dataset(tmp_path / "missing")
    folder = tmp_path / "prepared"
    datasets.DatasetDict({"train": _tiny_dataset()}).save_to_disk(str(folder))
    with pytest.raises(FileNotFoundError, match=f"{folder}: not a prepared dataset folder: no stats.json"):
        load_pretraining_dataset(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no dataset_dict.json"):
        load_pretraining_dataset(tmp_path / "empty")
    (folder / "stats.json").write_text(json.dumps({"mean": 0.5, "std": 0.0}))
    with pytest.raises(ValueError, match="'std' must be > 0"):
        load_pretraining_dataset(folder)
    (folder / "stats.json").write_text(json.dumps({"mean": 0.45, "std": 0.25, "source": "t"}))
    dataset_dict, stats = load_pretraining_dataset(folder)
    assert stats == {"mean": 0.45, "std": 0.25, "source": "t"}
    assert dataset_dict["train"]["study_id"] == _tiny_dataset()["study_id"]


@pytest.fixture(scope="module")
def tiny_synthcxr(tmp_path_factory):
    cache = tmp_path_factory.mktemp("synthcxr")
    return load_synthcxr(cache, num_train=16, num_validation=4, num_test=4, image_size=64)


def test_synthcxr_tokenizer_is_cached_in_the_folder(tiny_synthcxr):
    tokenizer = synthcxr_tokenizer(tiny_synthcxr, max_tokens=64, max_sentences=16)
    # The folder holds the split folders, which hold the Arrow files.
    vocab = Path(tiny_synthcxr["train"].cache_files[0]["filename"]).parent.parent / SYNTHCXR_VOCAB_FILE
    assert vocab.is_file()
    assert vocab.read_text().split("\n")[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    again = synthcxr_tokenizer(tiny_synthcxr, max_tokens=64, max_sentences=16)
    assert again.vocabulary == tokenizer.vocabulary
    # Every train sentence tokenizes without unknown tokens.
    sentences = [s for row in tiny_synthcxr["train"]["sentences"] for s in row]
    assert all(tokenizer.unk_token_id not in tokenizer.tokenize(s) for s in sentences)


# Large: tests/tools/run_test.py fits on these batches with two loader threads by default
# (and asserts a bit-identical repeat); this one checks the weights move (43-72 s on JAX).
@pytest.mark.large
def test_fit_with_worker_threads_changes_weights(tiny_synthcxr):
    from lovt_keras.testing.fixtures import tiny_pretrainer

    tokenizer = synthcxr_tokenizer(tiny_synthcxr, max_tokens=64, max_sentences=16)
    stats = load_stats(tiny_synthcxr)
    batches = PretrainingBatches(tiny_synthcxr["train"], tokenizer, stats, batch_size=8,
                                 image_size=64, workers=2)
    assert len(batches) == 2
    model = tiny_pretrainer(image_size=64, vocabulary_size=tokenizer.vocabulary_size,
                            max_tokens=64, max_sentences=16)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    # Built before fit (symbolically: cheap), so Keras draws no batch to build it.
    model.build({key: value.shape for key, value in batches[0].items()})
    before = [np.array(w) for w in model.trainable_weights]
    history = model.fit(batches, epochs=1, shuffle=False, verbose=0).history
    assert len(history["loss"]) == 1 and np.all(np.isfinite(history["loss"]))
    # One epoch done; Keras' extra on_epoch_end before it did not skip epoch 0.
    assert batches.epoch == 1
    changed = [not np.allclose(b, np.array(w)) for b, w in zip(before, model.trainable_weights)]
    assert sum(changed) > len(changed) // 2


def test_shards_put_together_are_the_unsharded_batch(tokenizer):
    # 7 studies, batches of 4 (1 per epoch with drop_remainder): 2 shares of 2 studies.
    whole = _batches(_tiny_dataset(), tokenizer, batch_size=4, seed=3)
    shards = [_batches(_tiny_dataset(), tokenizer, batch_size=4, seed=3) for _ in range(2)]
    for index, shard in enumerate(shards):
        shard.set_shard(index, 2)
        assert shard.local_batch_size == 2 and len(shard) == len(whole) == 1
    for epoch in range(3):  # new orders, image choices and augmentations each epoch
        for data in (whole, *shards):
            data.set_epoch(epoch)
        studies = np.concatenate([s.batch_rows(0)[0] for s in shards])
        np.testing.assert_array_equal(studies, whole.batch_rows(0)[0])
        assert len(set(studies.tolist())) == 4  # no study dropped or repeated
        parts = [s[0] for s in shards]
        expected = whole[0]
        for key, value in expected.items():
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), value)


def test_a_shard_that_does_not_divide_the_batch_is_refused(tokenizer):
    batches = _batches(_tiny_dataset(), tokenizer, batch_size=3)
    with pytest.raises(ValueError, match="batch_size 3 does not split into 2"):
        batches.set_shard(0, 2)
    with pytest.raises(ValueError, match="shard 2 of 2"):
        batches.set_shard(2, 2)
