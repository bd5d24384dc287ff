import json

import datasets
import numpy as np
import pytest

from lovt_keras.data.downstream.common import (
    LISTED_BUT_MISSING,
    AnnotationError,
    load_split_folder,
    official_split_folder,
    subset_fraction,
)
from lovt_keras.data.downstream.rsna import convert_rsna, parse_rsna_labels
from tools import prepare

HEADER = "patientId,x,y,width,height,Target"


def _tree(tmp_path, files, labels, images):
    root = tmp_path / "rsna"
    files.text(root / "stage_2_train_labels.csv", "\n".join([HEADER, *labels]) + "\n")
    for pid, pixels in images.items():
        files.dicom(root / "stage_2_train_images" / f"{pid}.dcm", pixels)
    return root


def _load(path):
    return datasets.load_from_disk(str(path)).with_format("numpy")


def test_boxes_masks_and_image_after_pad_and_resize(tmp_path, files):
    # 40 x 64 DICOM: padded to 64 x 64 (12 rows on top), then x3.5 to 224.
    pixels = np.full((40, 64), 200, np.uint8)
    root = _tree(
        tmp_path, files,
        ["a,10.0,5.0,20.0,10.0,1", "b,,,,,0", "c,,,,,0"],
        {"a": pixels, "b": pixels, "extra": pixels},
    )
    split = files.split(
        tmp_path / "split", ["a,10.0;5.0;20.0;10.0,1"], ["b,,"], ["c,,", "d,,"],
        header="ID,boxes,classes",
    )
    result = convert_rsna(root, tmp_path / "out", split=split)
    ds = _load(tmp_path / "out")
    assert result.counts == {"train": 1, "validation": 1, "test": 0}
    row = ds["train"][0]
    assert row["id"] == "a"
    # x 10 * 3.5, y (5 + 12) * 3.5, w 20 * 3.5, h 10 * 3.5.
    np.testing.assert_allclose(row["boxes"], [[35.0, 59.5, 70.0, 35.0]])
    np.testing.assert_array_equal(row["box_classes"], [0])
    # Nearest resize of the box mask: pixel centres r + 0.5 in [59.5, 94.5), c + 0.5 in [35, 105).
    expected = np.zeros((224, 224), np.uint8)
    expected[59:94, 35:105] = 1
    np.testing.assert_array_equal(row["masks"], expected)
    # No equalization for RSNA: the constant 200 stays 200, the padding stays 0.
    assert row["image"][112, 112] == 200 and row["image"][:40].max() == 0
    assert row["image"][45:178].min() == 200  # away from the bilinear edge
    empty = ds["validation"][0]
    assert empty["id"] == "b" and len(empty["boxes"]) == 0 and empty["masks"].max() == 0
    # Counted, not dropped: c, d listed but without image; "extra" has no label row.
    assert result.skipped["images"].as_dict() == {
        LISTED_BUT_MISSING: 2, "image file without annotation": 1,
    }
    assert result.notes == {"images whose boxes equal the split CSV's": 2}
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    train = np.asarray(ds["train"][:]["image"], np.float64) / 255
    assert stats["mean"] == pytest.approx(train.mean(), abs=1e-12)
    assert stats["std"] == pytest.approx(train.std(), abs=1e-12)
    assert stats["class_names"] == ["opacity"]
    assert stats["counts"] == {"train": 1, "validation": 1, "test": 0}
    assert stats["skipped"]["images: " + LISTED_BUT_MISSING] == 2
    assert stats["image_size"] == 224 and stats["equalize_hist"] is False


def test_several_boxes_per_patient(tmp_path, files):
    pixels = np.zeros((32, 32), np.uint8)
    root = _tree(
        tmp_path, files,
        ["p,1.0,2.0,3.0,4.0,1", "q,,,,,0", "p,10.0,12.0,5.0,6.0,1"],
        {"p": pixels, "q": pixels},
    )
    labels = parse_rsna_labels(root / "stage_2_train_labels.csv")
    assert list(labels) == ["p", "q"]
    np.testing.assert_allclose(labels["p"][0], [[1, 2, 3, 4], [10, 12, 5, 6]])
    assert labels["q"][0].shape == (0, 4)
    convert_rsna(root, tmp_path / "out", split="random", seed=0, image_size=64)
    rows = {r["id"]: r for s in ("train", "validation", "test") for r in _load(tmp_path / "out")[s]}
    np.testing.assert_allclose(rows["p"]["boxes"], [[2, 4, 6, 8], [20, 24, 10, 12]])
    assert rows["p"]["masks"].sum() == 6 * 8 + 10 * 12


def test_random_split_is_seeded_60_20_20(tmp_path, files):
    pixels = np.zeros((16, 16), np.uint8)
    ids = [f"id{k:02d}" for k in range(10)]
    root = _tree(tmp_path, files, [f"{i},,,,,0" for i in ids], dict.fromkeys(ids, pixels))
    first = convert_rsna(root, tmp_path / "a", split="random", seed=1, image_size=32)
    assert first.counts == {"train": 6, "validation": 2, "test": 2}
    splits = {s: list(_load(tmp_path / "a")[s]["id"]) for s in ("train", "validation", "test")}
    assert sorted(sum(splits.values(), [])) == ids
    convert_rsna(root, tmp_path / "b", split="random", seed=1, image_size=32)
    assert {s: list(_load(tmp_path / "b")[s]["id"]) for s in splits} == splits
    convert_rsna(root, tmp_path / "c", split="random", seed=2, image_size=32)
    assert {s: list(_load(tmp_path / "c")[s]["id"]) for s in splits} != splits
    assert json.loads((tmp_path / "a" / "stats.json").read_text())["seed"] == 1


def test_default_is_the_official_split(tmp_path, files):
    official = load_split_folder(official_split_folder("rsna"))
    picks = {
        "train": [e.id for e in official["train"][:2]],
        "validation": [official["validation"][0].id],
        "test": [official["test"][0].id],
    }
    pixels = np.zeros((64, 64), np.uint8)
    labels, images = [], {}
    for split, ids in picks.items():
        for i in ids:
            entry = next(e for e in official[split] if e.id == i)
            # The labels file as Kaggle writes it, from the official boxes (same file).
            for x, y, w, h in entry.boxes / 16:  # 1024 -> 64 px image
                labels.append(f"{i},{x},{y},{w},{h},1")
            if len(entry.boxes) == 0:
                labels.append(f"{i},,,,,0")
            images[i] = pixels
    root = _tree(tmp_path, files, labels, images)
    result = convert_rsna(root, tmp_path / "out", image_size=32)
    ds = _load(tmp_path / "out")
    assert {s: list(ds[s]["id"]) for s in picks} == picks
    assert result.skipped["images"][LISTED_BUT_MISSING] == 26684 - 4
    assert result.stats["split"] == "official" and result.stats["seed"] is None
    # Boxes here are the official ones / 16, so the cross-check reports mismatches
    # for the images with boxes and matches for the others.
    with_boxes = sum(len(next(e for e in official[s] if e.id == i).boxes) > 0
                     for s, ids in picks.items() for i in ids)
    assert result.notes.get("images whose boxes differ from the split CSV's", 0) == with_boxes


@pytest.mark.parametrize(
    "line, message",
    [
        ("a,1.0,2.0,3.0,4.0,2", r"labels.csv:3: Target is not 0 or 1 \('2'\)"),
        ("a,,,,,1", r"labels.csv:3: Target=1 row without a numeric box"),
        ("a,1.0,2.0,3.0,4.0,0", r"labels.csv:3: Target=0 row with box values"),
        ("ok,1.0,2.0,3.0,4.0,1", r"labels.csv:3: patient with both Target 0 and 1"),
    ],
)
def test_malformed_label_rows_name_the_line(tmp_path, files, line, message):
    path = files.text(tmp_path / "stage_2_train_labels.csv", f"{HEADER}\nok,,,,,0\n{line}\n")
    with pytest.raises(AnnotationError, match=message):
        parse_rsna_labels(path)


def test_missing_column(tmp_path, files):
    path = files.text(tmp_path / "stage_2_train_labels.csv", "patientId,x,y,width,height\n")
    with pytest.raises(AnnotationError, match=r"missing columns \(\['Target'\]"):
        parse_rsna_labels(path)


@pytest.mark.parametrize(
    "box, kind", [("30.0,5.0,10.0,10.0", "box outside the image"),
                  ("3.0,5.0,0.0,10.0", "box with non-positive size")],
)
def test_bad_box_raises_or_is_counted(tmp_path, files, box, kind):
    pixels = np.zeros((20, 20), np.uint8)
    root = _tree(tmp_path, files, [f"bad,{box},1", "good,,,,,0"], {"bad": pixels, "good": pixels})
    split = files.split(tmp_path / "split", ["bad", "good"], [], [])
    with pytest.raises(AnnotationError, match=f"stage_2_train_labels.csv:2: {kind}"):
        convert_rsna(root, tmp_path / "out", split=split, image_size=32)
    assert not (tmp_path / "out").exists()
    result = convert_rsna(root, tmp_path / "out", split=split, image_size=32, on_error="skip")
    assert result.counts["train"] == 1
    assert result.skipped["images"].as_dict() == {kind: 1}
    assert "stage_2_train_labels.csv:2" in result.summary()


def test_box_partly_outside_is_clipped_and_noted(tmp_path, files):
    root = _tree(tmp_path, files, ["a,10.0,10.0,20.0,5.0,1"], {"a": np.zeros((20, 20), np.uint8)})
    result = convert_rsna(root, tmp_path / "out", split="random", image_size=20)
    row = next(r for s in ("train", "validation", "test") for r in _load(tmp_path / "out")[s])
    np.testing.assert_allclose(row["boxes"], [[10, 10, 10, 5]])
    assert result.notes == {"boxes clipped to the image": 1}


def test_corrupt_dicom_raises_or_is_counted(tmp_path, files):
    root = _tree(tmp_path, files, ["a,,,,,0", "b,,,,,0"], {"a": np.zeros((8, 8), np.uint8)})
    files.text(root / "stage_2_train_images" / "b.dcm", "not a dicom")
    split = files.split(tmp_path / "split", ["a", "b"], [], [])
    with pytest.raises(ValueError, match=r"b.dcm"):
        convert_rsna(root, tmp_path / "out", split=split, image_size=8)
    result = convert_rsna(root, tmp_path / "out", split=split, image_size=8, on_error="skip")
    assert result.skipped["images"]["unreadable image file"] == 1


def test_overwrite_rule(tmp_path, files):
    root = _tree(tmp_path, files, ["a,,,,,0"], {"a": np.zeros((8, 8), np.uint8)})
    split = files.split(tmp_path / "split", ["a"], [], [])
    convert_rsna(root, tmp_path / "out", split=split, image_size=8)
    with pytest.raises(FileExistsError, match="already exists"):
        convert_rsna(root, tmp_path / "out", split=split, image_size=8)
    convert_rsna(root, tmp_path / "out", split=split, image_size=16, overwrite=True)
    assert _load(tmp_path / "out")["train"][0]["image"].shape == (16, 16)


def test_tool_entry_point(tmp_path, files, capsys):
    root = _tree(tmp_path, files, ["a,1.0,1.0,2.0,2.0,1", "b,,,,,0"],
                 {"a": np.zeros((8, 8), np.uint8), "b": np.zeros((8, 8), np.uint8)})
    split = files.split(tmp_path / "split", ["a"], ["b"], ["gone"])
    code = prepare.main(["rsna", str(root), str(tmp_path / "out"), "--split", str(split),
                         "--image_size", "16"])
    out = capsys.readouterr().out
    assert code == 0
    assert "train 1, validation 1, test 0 rows" in out
    assert "1 listed in the official split but missing (e.g. gone (test, no image file))" in out
    assert prepare.main(["rsna", str(root), str(tmp_path / "out")]) == 1
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        prepare.main(["rsna", "--help"])
    assert info.value.code == 0
    assert "stage_2_train_labels.csv" in capsys.readouterr().out


def test_subset_fractions_of_the_official_split():
    official = load_split_folder(official_split_folder("rsna"))
    assert [len(subset_fraction(official["train"], f)) for f in (0.01, 0.1, 1.0)] == [160, 1601, 16010]
    assert len(subset_fraction(official["validation"], 0.1)) == 534


def test_real_labels_excerpt_matches_official_split_boxes(realdata):
    labels = parse_rsna_labels(
        realdata("annotations", "rsna_pneumonia", "stage_2_train_labels_excerpt.csv")
    )
    np.testing.assert_allclose(
        labels["00436515-870c-4b36-a041-de91049b9ab4"][0],
        [[264, 152, 213, 379], [562, 152, 256, 453]],
    )
    assert labels["0004cfab-14fd-4e49-80ba-63a80b6bddd6"][0].shape == (0, 4)
    entries = {
        e.id: e for part in load_split_folder(official_split_folder("rsna")).values() for e in part
    }
    # Every patient of the excerpt is in the official split, with the same boxes
    # (the last patient may be cut off by the excerpt, so compare all but it).
    ids = list(labels)[:-1]
    assert all(i in entries for i in labels)
    for i in ids:
        mine, theirs = labels[i][0], entries[i].boxes
        np.testing.assert_allclose(mine[np.lexsort(mine.T[::-1])], theirs[np.lexsort(theirs.T[::-1])])
    assert sum(len(labels[i][0]) > 0 for i in ids) > 3


def test_nothing_in_train_is_an_error_with_the_skips(tmp_path, files):
    from lovt_keras.data.dataset_writer import ConversionError

    root = _tree(tmp_path, files, ["a,,,,,0"], {"a": np.zeros((8, 8), np.uint8)})
    with pytest.raises(ConversionError, match=r"train split received no rows.*26684 listed "
                       r"in the official split but missing.*1 present but not in any split"):
        convert_rsna(root, tmp_path / "out", image_size=8)
    assert not (tmp_path / "out").exists()
