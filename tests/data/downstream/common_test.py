import json

import datasets
import numpy as np
import pytest

from lovt_keras.data.downstream import common
from lovt_keras.data.downstream.common import (
    LISTED_BUT_MISSING,
    NO_IMAGE_FILE,
    NOT_IN_SPLIT,
    AnnotationError,
    boxes_to_mask,
    check_boxes,
    compare_boxes,
    decode_rle,
    load_split_folder,
    official_split_folder,
    pack_masks,
    random_split,
    read_split_csv,
    resolve_split,
    split_by_patient,
    subset_fraction,
    unpack_masks,
)
from lovt_keras.data.reports import SkipCounter

# ----------------------------------------------------------------------------- RLE


def test_decode_rle_hand_case_relative_and_column_major():
    # H=3, W=4; pixel k is (row k % 3, col k // 3). "1 2 3 1": run [1, 3) then, 3 pixels
    # after its end, run [6, 7): pixels (1,0), (2,0) and (0,2).
    mask = decode_rle("1 2 3 1", 3, 4)
    expected = np.zeros((3, 4), np.uint8)
    expected[1, 0] = expected[2, 0] = expected[0, 2] = 1
    np.testing.assert_array_equal(mask, expected)
    assert mask.dtype == np.uint8


def test_decode_rle_empty_values():
    for text in ("-1", " -1", "", "  "):
        assert decode_rle(text, 5, 6).sum() == 0
        assert decode_rle(text, 5, 6).shape == (5, 6)


def test_decode_rle_matches_loop_reference():
    rng = np.random.default_rng(0)
    height, width = 17, 23
    pairs, pos = [], 0
    flat = np.zeros(height * width, np.uint8)
    while True:
        gap, length = int(rng.integers(0, 9)), int(rng.integers(1, 9))
        if pos + gap + length > flat.size:
            break
        pos += gap
        flat[pos : pos + length] = 1
        pos += length
        pairs += [gap, length]
    mask = decode_rle(" ".join(map(str, pairs)), height, width)
    np.testing.assert_array_equal(mask, flat.reshape(width, height).T)


@pytest.mark.parametrize(
    "rle, message",
    [
        ("1 2 3", r"row 7: malformed RLE \(odd number of values \(3\)"),
        ("5 20", r"row 7: malformed RLE \(run 1 covers pixels \[5, 25\) past the end of the 3x4"),
        ("1 2 x 3", r"row 7: malformed RLE \(non-integer"),
        ("1 0", r"row 7: malformed RLE \(run length 0 < 1"),
        ("-1 2", r"row 7: malformed RLE \(negative offset"),
    ],
)
def test_decode_rle_errors_name_the_row(rle, message):
    with pytest.raises(AnnotationError, match=message) as info:
        decode_rle(rle, 3, 4, source="train-rle.csv row 7")
    assert info.value.kind == "malformed RLE"


# ----------------------------------------------------------------------------- boxes/masks


def test_boxes_to_mask_official_rounding_and_clipping():
    # round half to even: y 1.5 -> 2, y + h 3.5 -> 4; x 0.5 -> 0, x + w 2.5 -> 2.
    mask = boxes_to_mask(np.array([[0.5, 1.5, 2.0, 2.0]]), 6, 5)
    expected = np.zeros((6, 5), np.uint8)
    expected[2:4, 0:2] = 1
    np.testing.assert_array_equal(mask, expected)
    # A box sticking out on the left/bottom is clipped.
    mask = boxes_to_mask(np.array([[-3.0, 4.0, 5.0, 9.0]]), 6, 5)
    assert mask.sum() == 2 * 2 and mask[4:, :2].all()


def test_check_boxes_clips_and_counts():
    boxes, clipped = check_boxes(np.array([[-2.0, 1, 5, 3], [1, 1, 2, 2]]), 10, 8, "row 3")
    np.testing.assert_allclose(boxes, [[0, 1, 3, 3], [1, 1, 2, 2]])
    assert clipped == 1


@pytest.mark.parametrize(
    "box, kind",
    [
        ([1, 1, 0, 2], "box with non-positive size"),
        ([1, 1, 2, -1], "box with non-positive size"),
        ([20, 1, 2, 2], "box outside the image"),
        ([-5, 1, 5, 2], "box outside the image"),
        ([np.nan, 1, 2, 2], "non-finite box"),
    ],
)
def test_check_boxes_errors(box, kind):
    with pytest.raises(AnnotationError, match=f"labels.csv:9: {kind}") as info:
        check_boxes(np.array([box], float), 10, 8, "labels.csv:9")
    assert info.value.kind == kind


def test_pack_unpack_roundtrip():
    rng = np.random.default_rng(1)
    planes = (rng.random((8, 5, 7)) < 0.3).astype(np.uint8)
    packed = pack_masks(planes)
    assert packed.dtype == np.uint8 and packed.shape == (5, 7)
    np.testing.assert_array_equal(packed, (planes * (1 << np.arange(8))[:, None, None]).sum(0))
    np.testing.assert_array_equal(unpack_masks(packed, 8), planes)
    np.testing.assert_array_equal(unpack_masks({"masks": packed[None]}, 8)[0], planes)
    with pytest.raises(ValueError, match="C <= 8"):
        pack_masks(np.zeros((9, 2, 2)))


def test_compare_boxes():
    a = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], float)
    assert compare_boxes(a, a[::-1]) == "match"
    assert compare_boxes(a, a[:, [0, 1, 3, 2]]) == "match_wh_swapped"
    assert compare_boxes(a, a[:1]) == "mismatch"
    assert compare_boxes(np.zeros((0, 4)), np.zeros((0, 4))) == "match"
    square = np.array([[1, 2, 3, 3]], float)
    assert compare_boxes(square, square) == "match"  # a square box is not a swap


# ----------------------------------------------------------------------------- splits


def test_random_split_sizes_order_and_seed():
    ids = [f"i{k}" for k in range(10)]
    parts = random_split(ids, seed=3)
    assert [len(parts[s]) for s in ("train", "validation", "test")] == [6, 2, 2]
    assert sorted(sum(parts.values(), [])) == sorted(ids)
    perm = np.random.default_rng(3).permutation(10)
    assert parts["test"] == [ids[i] for i in perm[:2]]
    assert parts["validation"] == [ids[i] for i in perm[2:4]]
    assert parts["train"] == [ids[i] for i in perm[4:]]
    assert random_split(ids, seed=3) == parts
    assert random_split(ids, seed=4) != parts
    with pytest.raises(ValueError, match="summing to 1"):
        random_split(ids, 0, (0.5, 0.2, 0.2))


def test_split_by_patient_disjoint_and_greedy():
    # 12 patients with 1..3 images each.
    rng = np.random.default_rng(0)
    ids, patient = [], {}
    for p in range(12):
        for k in range(int(rng.integers(1, 4))):
            ids.append(f"p{p}_{k}")
            patient[f"p{p}_{k}"] = f"p{p}"
    parts = split_by_patient(ids, patient, seed=5)
    sets = {s: {patient[i] for i in v} for s, v in parts.items()}
    assert not (sets["train"] & sets["validation"])
    assert not (sets["train"] & sets["test"])
    assert not (sets["validation"] & sets["test"])
    assert sorted(sum(parts.values(), [])) == sorted(ids)
    n = len(ids)
    # Greedy: each split reaches its target, and removing its last patient would not.
    for name, frac in (("test", 0.2), ("validation", 0.2)):
        assert len(parts[name]) >= round(frac * n)
        last = patient[parts[name][-1]]
        assert len(parts[name]) - sum(patient[i] == last for i in ids) < round(frac * n)
    assert split_by_patient(ids, patient.__getitem__, seed=5) == parts
    assert split_by_patient(ids, patient, seed=6) != parts


def test_subset_fraction_first_rows_with_python_round():
    ds = datasets.Dataset.from_dict({"id": [str(i) for i in range(16010)]})
    assert len(subset_fraction(ds, 0.01)) == 160
    assert len(subset_fraction(ds, 0.1)) == 1601
    assert subset_fraction(ds, 0.1)["id"][:3] == ["0", "1", "2"]
    assert len(subset_fraction(list(range(5337)), 0.1)) == 534
    assert len(subset_fraction(list(range(5)), 0.5)) == 2  # round half to even
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        subset_fraction(ds, 0.0)


def test_read_split_csv_detection_and_errors(tmp_path, files):
    path = files.text(
        tmp_path / "train.csv", "ID,boxes,classes\na,1.0;2.0;3.0;4.0|5;6;7;8,1|1\nb,,\n"
    )
    entries = read_split_csv(path)
    assert [e.id for e in entries] == ["a", "b"]
    np.testing.assert_allclose(entries[0].boxes, [[1, 2, 3, 4], [5, 6, 7, 8]])
    np.testing.assert_array_equal(entries[0].classes, [1, 1])
    assert entries[1].boxes.shape == (0, 4)
    assert entries[0].source.endswith("train.csv:2")
    files.text(tmp_path / "bad.csv", "ID,boxes,classes\na,1;2;3;4,1|1\n")
    with pytest.raises(AnnotationError, match=r"bad.csv:2: split CSV row malformed \(1 boxes but 2"):
        read_split_csv(tmp_path / "bad.csv")
    files.text(tmp_path / "dup.csv", "ID\na\na\n")
    with pytest.raises(AnnotationError, match=r"dup.csv:3: id listed twice"):
        read_split_csv(tmp_path / "dup.csv")
    files.text(tmp_path / "hdr.csv", "Image\na\n")
    with pytest.raises(AnnotationError, match="unknown split CSV header"):
        read_split_csv(tmp_path / "hdr.csv")


def test_load_split_folder_rejects_id_in_two_splits(tmp_path, files):
    files.split(tmp_path, ["a"], ["b"], ["a"])
    with pytest.raises(AnnotationError, match=r"test.csv:2: id in two splits \(a also at .*train.csv:2"):
        load_split_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere/train.csv does not exist"):
        load_split_folder(tmp_path / "nowhere")


def test_resolve_split_counts_every_unused_id(tmp_path, files):
    folder = files.split(tmp_path / "split", ["a", "b"], ["c"], ["x"])
    skipped = SkipCounter(noun="images")
    parts, entries, description = resolve_split(
        folder, "rsna",
        annotated=["a", "b", "c", "d", "e"],
        images=["a", "c", "d", "f"],
        make_random=None, skipped=skipped, unannotated_images=["a", "f"],
    )
    assert parts == {"train": ["a"], "validation": ["c"], "test": []}
    assert set(entries) == {"a", "b", "c", "x"}
    assert description == str(folder)
    assert skipped.as_dict() == {
        LISTED_BUT_MISSING: 2,  # b (no image), x (nothing)
        NOT_IN_SPLIT: 1,  # d
        NO_IMAGE_FILE: 1,  # e
        common.IMAGE_WITHOUT_ANNOTATION: 1,  # f
    }
    assert skipped.seen == 7
    skipped = SkipCounter()
    parts, entries, description = resolve_split(
        "random", "rsna", ["a", "b", "c"], ["a", "c"],
        lambda ids: {"train": ids, "validation": [], "test": []}, skipped,
    )
    assert parts["train"] == ["a", "c"] and entries == {} and description == "random"
    assert skipped.as_dict() == {NO_IMAGE_FILE: 1}


# ----------------------------------------------------------------------------- shipped files


@pytest.mark.parametrize(
    "name, counts",
    [
        ("rsna", (16010, 5337, 5337)),
        ("siim", (7229, 2409, 2409)),
        ("object_cxr", (6400, 1600, 1000)),
        ("nih", (588, 196, 196)),
        ("covid_rural", (133, 44, 44)),
    ],
)
def test_shipped_official_splits(name, counts):
    folder = official_split_folder(name)
    parts = load_split_folder(folder)  # also checks that no id is in two splits
    assert tuple(len(parts[s]) for s in ("train", "validation", "test")) == counts
    stats = json.loads((folder / "dataset_statistics.json").read_text())
    assert tuple(stats[s]["num_samples"] for s in ("train", "validation", "test")) == counts
    assert (folder.parent / "LICENSE").read_text().startswith("MIT License")
    assert "Philip" in (folder.parent / "LICENSE").read_text()


def test_official_split_folder_unknown():
    with pytest.raises(ValueError, match="no official split for 'mimic'"):
        official_split_folder("mimic")


def test_annotation_error_pickles_with_its_fields():
    import pickle

    error = pickle.loads(pickle.dumps(AnnotationError("a.csv:3", "malformed RLE", "odd")))
    assert (error.source, error.kind, error.detail) == ("a.csv:3", "malformed RLE", "odd")
    assert str(error) == "a.csv:3: malformed RLE (odd)"


@pytest.mark.large
def test_worker_processes_give_the_same_dataset(tmp_path, files):
    from lovt_keras.data.downstream.rsna import convert_rsna

    root = tmp_path / "rsna"
    ids = [f"p{k}" for k in range(6)]
    lines = [f"{i},1.0,2.0,3.0,4.0,1" if k % 2 else f"{i},,,,,0" for k, i in enumerate(ids)]
    files.text(root / "stage_2_train_labels.csv",
               "\n".join(["patientId,x,y,width,height,Target", *lines]) + "\n")
    rng = np.random.default_rng(0)
    for i in ids:
        files.dicom(root / "stage_2_train_images" / f"{i}.dcm", rng.integers(0, 255, (16, 16)))
    one = convert_rsna(root, tmp_path / "one", split="random", image_size=16)
    two = convert_rsna(root, tmp_path / "two", split="random", image_size=16, num_proc=2)
    assert one.counts == two.counts and one.stats["mean"] == two.stats["mean"]
    a, b = (datasets.load_from_disk(str(tmp_path / n)).with_format("numpy") for n in ("one", "two"))
    for split in ("train", "validation", "test"):
        assert list(a[split]["id"]) == list(b[split]["id"])
        for x, y in zip(a[split], b[split]):
            np.testing.assert_array_equal(x["image"], y["image"])
            np.testing.assert_array_equal(x["masks"], y["masks"])


def test_equalize_8bit_equals_equalize_histogram():
    from lovt_keras.data.downstream.common import equalize_8bit
    from lovt_keras.data.images import equalize_histogram

    rng = np.random.default_rng(3)
    cases = [
        rng.integers(0, 256, (64, 48)),  # all levels
        rng.integers(30, 90, (40, 40)),  # a narrow range: bins finer than the levels
        np.where(rng.random((20, 30)) < 0.3, 17, 200),  # two levels
        np.full((8, 8), 77),  # constant
    ]
    for codes in cases:
        image = codes.astype(np.float32) / np.float32(255.0)
        np.testing.assert_array_equal(equalize_8bit(image), equalize_histogram(image))
    # Not 8-bit (e.g. the mean of three channels): the direct route, same result.
    image = rng.integers(0, 766, (16, 16)).astype(np.float32) / np.float32(765.0)
    np.testing.assert_array_equal(equalize_8bit(image), equalize_histogram(image))
