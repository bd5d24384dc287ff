import json

import datasets
import numpy as np
import pytest

from lovt_keras import keys
from lovt_keras.data import downstream_batches as db
from lovt_keras.data.downstream.common import downstream_features, pack_masks
from lovt_keras.data.synthcxr import FINDING_CLASSES, decode_masks, load_synthcxr, synthcxr_dir

SIZES = dict(num_train=12, num_validation=6, num_test=6, image_size=64, seed=1)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    cache = tmp_path_factory.mktemp("synthcxr")
    dataset_dict = load_synthcxr(cache, **SIZES)
    folder = synthcxr_dir(cache, **SIZES)
    return folder, dataset_dict


def _downstream_folder(path, rows_per_split, class_names, mean=0.25, std=0.5):
    """A downstream-format folder (``id`` column, ``class_names`` in stats.json)."""
    splits = {}
    for split, rows in rows_per_split.items():
        splits[split] = datasets.Dataset.from_list(rows, features=downstream_features(8))
    datasets.DatasetDict(splits).save_to_disk(str(path))
    (path / "stats.json").write_text(json.dumps({"mean": mean, "std": std, "class_names": class_names}))
    return path


def _row(i, boxes=(), classes=(), masks=None):
    masks = np.zeros((2, 8, 8), np.uint8) if masks is None else masks
    return {
        "image": np.full((8, 8), 10 * i, np.uint8),
        "id": f"img{i}",
        "boxes": [list(b) for b in boxes],
        "box_classes": list(classes),
        "masks": pack_masks(masks),
    }


def test_key_names_match_the_task_models():
    from lovt_keras.models import downstream

    assert (db.MASKS, db.BOXES, db.BOX_CLASSES, db.BOX_MASK) == (
        downstream.MASKS, downstream.BOXES, downstream.BOX_CLASSES, downstream.BOX_MASK)


def test_images_are_normalized_with_the_folder_stats_exactly(synth):
    folder, dataset_dict = synth
    splits = db.downstream_splits(folder, "segmentation", batch_size=4)
    stats = json.loads((folder / "stats.json").read_text())
    batch = splits["validation"][0]
    raw = np.stack([np.asarray(r, np.uint8) for r in dataset_dict["validation"]["image"][:4]])
    expected = (raw.astype(np.float64) / 255.0 - stats["mean"]) / stats["std"]
    assert batch[keys.IMAGES].shape == (4, 64, 64, 1) and batch[keys.IMAGES].dtype == np.float32
    np.testing.assert_allclose(batch[keys.IMAGES][..., 0], expected, rtol=1e-6, atol=1e-6)
    # Over the whole train split the normalized pixels have mean 0 and std 1 (the stats
    # are the train pixels' own).
    train = splits["train"]
    all_images = train.images(np.arange(train.num_rows)).astype(np.float64)
    assert abs(all_images.mean()) < 1e-5 and abs(all_images.std() - 1.0) < 1e-5


def test_masks_are_the_task_classes_in_task_order(synth):
    folder, dataset_dict = synth
    classes = ["pneumothorax", "opacity", "foreign_object"]
    splits = db.downstream_splits(folder, "segmentation", classes=classes, batch_size=5)
    test = splits["test"]
    batch = test[1]  # rows 5 (the last, partial batch)
    assert batch[db.MASKS].shape == (1, 64, 64, 3) and batch[db.MASKS].dtype == np.float32
    decoded = decode_masks(dataset_dict["test"].with_format("numpy")[5])  # (6, 64, 64)
    for channel, name in enumerate(classes):
        np.testing.assert_array_equal(batch[db.MASKS][0, ..., channel],
                                      decoded[FINDING_CLASSES.index(name)])
    # Across the split every class bit reaches its channel.
    rows = np.arange(test.num_rows)
    masks = test.targets(rows)[db.MASKS]
    packed = np.stack([np.asarray(m, np.uint8) for m in dataset_dict["test"]["masks"]])
    for channel, name in enumerate(classes):
        bit = FINDING_CLASSES.index(name)
        np.testing.assert_array_equal(masks[..., channel], (packed >> bit) & 1)


def test_boxes_are_filtered_remapped_and_padded(synth):
    folder, dataset_dict = synth
    train = dataset_dict["train"]
    counts = [sum(c in (0, 5) for c in row) for row in train["box_classes"]]
    splits = db.downstream_splits(folder, "detection", classes=["foreign_object", "opacity"],
                                  batch_size=12)
    batches = splits["train"]
    # One box budget for all three splits: the most boxes of the task classes in any row.
    most = max(
        sum(c in (0, 5) for c in row)
        for split in ("train", "validation", "test") for row in dataset_dict[split]["box_classes"]
    )
    assert {b.max_boxes for b in splits.values()} == {max(most, 1)}
    batch = batches.rows_batch(np.arange(12))
    assert batch[db.BOXES].shape == (12, most, 4) and batch[db.BOX_CLASSES].dtype == np.int32
    assert batch[db.BOX_MASK].sum(1).tolist() == counts
    for i, (boxes, classes) in enumerate(zip(train["boxes"], train["box_classes"])):
        keep = [k for k, c in enumerate(classes) if c in (0, 5)]
        n = len(keep)
        np.testing.assert_array_equal(batch[db.BOXES][i, :n], np.asarray(boxes, np.float32)[keep].reshape(-1, 4))
        # foreign_object (class 5) is task class 0, opacity (class 0) task class 1.
        assert batch[db.BOX_CLASSES][i, :n].tolist() == [{5: 0, 0: 1}[classes[k]] for k in keep]
        assert not batch[db.BOX_MASK][i, n:].any() and not batch[db.BOXES][i, n:].any()


def test_fractions_are_the_first_rows(synth):
    folder, dataset_dict = synth
    splits = db.downstream_splits(folder, "segmentation", batch_size=2, label_fraction=0.5,
                                  validation_fraction=0.5)
    assert splits["train"].ids == dataset_dict["train"]["study_id"][:6]
    assert splits["validation"].ids == dataset_dict["validation"]["study_id"][:3]
    assert splits["test"].num_rows == 6
    # A shuffled epoch only permutes the first rows.
    assert sorted(splits["train"].order(3).tolist()) == list(range(6))
    # round() is Python's: 1 % of 12 rows is none at all.
    with pytest.raises(db.DownstreamDataError, match="selects no row"):
        db.downstream_splits(folder, "segmentation", label_fraction=0.01)


def test_shuffling_is_a_function_of_seed_and_epoch(synth):
    folder, _ = synth
    a = db.downstream_splits(folder, "segmentation", batch_size=4, seed=3)["train"]
    b = db.downstream_splits(folder, "segmentation", batch_size=4, seed=3)["train"]
    c = db.downstream_splits(folder, "segmentation", batch_size=4, seed=4)["train"]
    np.testing.assert_array_equal(a.order(0), np.random.default_rng((3, 0)).permutation(12))
    np.testing.assert_array_equal(a.order(2), b.order(2))
    assert not np.array_equal(a.order(0), a.order(1)) and not np.array_equal(a.order(0), c.order(0))
    # Epochs advance only after a complete epoch opened by on_epoch_begin (Keras calls
    # on_epoch_end once before the first epoch, after drawing batches for tracing).
    a[0]
    a.on_epoch_end()
    assert a.epoch == 0
    a.on_epoch_begin()
    first = [a[i][keys.IMAGES] for i in range(len(a))]
    a.on_epoch_end()
    assert a.epoch == 1
    a.on_epoch_begin()
    a[0]
    a.on_epoch_end()  # an incomplete epoch does not advance
    assert a.epoch == 1
    np.testing.assert_array_equal(first[0], b.images(b.order(0)[:4]))
    a.set_epoch(0)
    np.testing.assert_array_equal(a[0][keys.IMAGES], first[0])
    # Validation and test keep the dataset order.
    splits = db.downstream_splits(folder, "segmentation", batch_size=4, seed=3)
    np.testing.assert_array_equal(splits["validation"].order(5), np.arange(6))


def test_fixed_length_epochs_cycle_through_the_label_fraction(synth):
    folder, _ = synth
    # 3 labelled rows (25 % of 12), batches of 4, 5 full batches per epoch.
    train = db.DownstreamBatches(
        db.load_downstream_folder(folder)[0]["train"], db.load_downstream_folder(folder)[1],
        "segmentation", batch_size=4, shuffle=True, seed=7, fraction=0.25, steps_per_epoch=5,
    )
    assert len(train) == 5 and train.num_rows == 3
    stream = np.concatenate([np.random.default_rng((7, k)).permutation(3) for k in range(20)])
    for epoch in (0, 2):
        for index in range(5):
            start = (epoch * 5 + index) * 4
            np.testing.assert_array_equal(train.batch_rows(index, epoch), stream[start:start + 4])
    # Every batch is full and each pass visits every row once.
    rows = np.concatenate([train.batch_rows(i, 0) for i in range(5)])
    assert rows.shape == (20,) and np.bincount(rows[:18], minlength=3).tolist() == [6, 6, 6]
    train.set_epoch(1)
    batch = train[4]
    np.testing.assert_array_equal(batch[keys.IMAGES], train.images(stream[36:40]))
    with pytest.raises(IndexError):
        train.batch_rows(5)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        db.DownstreamBatches(db.load_downstream_folder(folder)[0]["train"],
                             db.load_downstream_folder(folder)[1], "segmentation",
                             steps_per_epoch=0)
    # Through downstream_splits: the train split only (validation and test untouched).
    splits = db.downstream_splits(folder, "segmentation", batch_size=4, label_fraction=0.25,
                                  train_steps_per_epoch=3, seed=7)
    assert [len(splits[s]) for s in db.SPLITS] == [3, 2, 2]
    assert splits["train"].num_rows == 3 and splits["validation"].steps_per_epoch is None
    np.testing.assert_array_equal(splits["train"].batch_rows(2, 1), stream[20:24])
    plain = db.downstream_splits(folder, "segmentation", batch_size=4, label_fraction=0.25)
    assert len(plain["train"]) == 1


def test_downstream_format_folder_with_ids_and_class_names(tmp_path):
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[1, 2:4, 2:6] = 1
    rows = {
        "train": [_row(1, [(1, 2, 3, 4), (0, 0, 2, 2)], [1, 0], masks), _row(2)],
        "validation": [_row(3, [(4, 4, 2, 2)], [1])],
        "test": [_row(4)],
    }
    folder = _downstream_folder(tmp_path / "ds", rows, ["effusion", "mass"])
    splits = db.downstream_splits(folder, "detection", classes=["mass"], batch_size=2)
    batch = splits["train"][0]
    assert splits["train"].ids in (["img1", "img2"], ["img2", "img1"])
    first = splits["train"].order(0).tolist().index(0)
    assert batch[db.BOXES][first].tolist() == [[1, 2, 3, 4]]
    assert batch[db.BOX_CLASSES][first].tolist() == [0]
    np.testing.assert_allclose(batch[keys.IMAGES][first, 0, 0, 0], (10 / 255 - 0.25) / 0.5, rtol=1e-6)
    seg = db.downstream_splits(folder, "segmentation", batch_size=2)["train"]
    np.testing.assert_array_equal(seg.targets([0])[db.MASKS][0].transpose(2, 0, 1), masks)


def test_bad_input_is_named(synth, tmp_path):
    folder, _ = synth
    with pytest.raises(db.DownstreamDataError, match="unknown class 'pneumonia'"):
        db.downstream_splits(folder, "segmentation", classes=["pneumonia"])
    with pytest.raises(FileNotFoundError, match="stats.json"):
        (tmp_path / "empty").mkdir()
        db.load_downstream_folder(tmp_path / "empty")
    with pytest.raises(db.DownstreamDataError, match="stored at 64 px but the task expects 224"):
        db.downstream_splits(folder, "segmentation", image_size=224)
    rows = {"train": [_row(1, [(1, 1, 2, 2), (3, 3, 2, 2)], [0, 0])], "validation": [_row(2)],
            "test": [_row(3)]}
    other = _downstream_folder(tmp_path / "ds", rows, ["a"])
    with pytest.raises(db.DownstreamDataError, match="row 0 \\(id 'img1'\\) has 2 boxes"):
        db.downstream_splits(other, "detection", max_boxes=1)
    rows["train"] = [_row(1, [(1, 1, 2, 2)], [3])]
    other = _downstream_folder(tmp_path / "ds2", rows, ["a"])
    with pytest.raises(db.DownstreamDataError, match="id 'img1'\\) has box class 3"):
        db.downstream_splits(other, "detection")
