import math

import datasets
import numpy as np
import pytest

from lovt_keras.data.downstream.common import (
    LISTED_BUT_MISSING,
    AnnotationError,
    load_split_folder,
    official_split_folder,
)
from lovt_keras.data.downstream.object_cxr import (
    convert_object_cxr,
    object_cxr_target,
    parse_object_annotation,
    read_object_cxr_csv,
)
from tools import prepare


def _tree(tmp_path, files, train, dev, size=(32, 40), nested=False):
    """``train``/``dev``: {image name stem: annotation}; images H x W = ``size``."""
    root = tmp_path / "object-CXR"
    base = root / "input" if nested else root
    pixels = np.tile(np.linspace(20, 230, size[1]).astype(np.uint8), (size[0], 1))
    for part, rows in (("train", train), ("dev", dev)):
        lines = ["image_name,annotation"] + [f"{stem}.jpg,{a}" for stem, a in rows.items()]
        files.text(base / f"{part}.csv", "\n".join(lines) + "\n")
        for stem in rows:
            files.image(base / part / f"{stem}.jpg", pixels, quality=95)
    return root


def _rows(path):
    ds = datasets.load_from_disk(str(path)).with_format("numpy")
    return {r["id"]: r for s in ("train", "validation", "test") for r in ds[s]}


def test_boxes_masks_and_the_official_wh_swap(tmp_path, files):
    # 32 x 40 (H x W) images: padded to 40 x 40 (4 rows on top), resized x2 to 80.
    train = {
        "00001": "0 4 6 14 10",  # rectangle x1 y1 x2 y2: box (4, 6, 10, 4)
        "00002": "1 20 2 36 12;2 2 20 8 20 8 30 2 30",  # ellipse + polygon
        "00003": "",
    }
    root = _tree(tmp_path, files, train, {"08001": "0 1 1 5 9"})
    # A split file as the official converter writes it: (x1, y1, y2 - y1, x2 - x1).
    split = files.split(
        tmp_path / "split",
        ["00001,4;6;4;10,1", "00002,20;2;10;16|2;20;10;6,1|1"],
        ["00003,,"],
        ["08001,1;1;8;4,1"],
        header="ID,boxes,classes",
    )
    result = convert_object_cxr(root, tmp_path / "out", split=split, image_size=80)
    rows = _rows(tmp_path / "out")
    assert result.counts == {"train": 2, "validation": 1, "test": 1}
    np.testing.assert_allclose(rows["00001"]["boxes"], [[8, 20, 20, 8]])
    np.testing.assert_allclose(rows["00002"]["boxes"], [[40, 12, 32, 20], [4, 48, 12, 20]])
    np.testing.assert_allclose(rows["08001"]["boxes"], [[2, 10, 8, 16]])
    np.testing.assert_array_equal(rows["00002"]["box_classes"], [0, 0])
    # Rectangle mask: rows [6, 10) + 4 padding, cols [4, 14), x2 nearest.
    expected = np.zeros((80, 80), np.uint8)
    expected[20:28, 8:28] = 1
    np.testing.assert_array_equal(rows["00001"]["masks"], expected)
    assert rows["00003"]["masks"].max() == 0 and len(rows["00003"]["boxes"]) == 0
    # Every image with boxes matches the official CSV only after swapping w and h back.
    assert result.notes == {
        "images whose boxes equal the split CSV's only with w and h swapped": 3,
        "images whose boxes equal the split CSV's": 1,  # the empty one
    }
    stats = result.stats
    assert stats["class_names"] == ["foreign_object"] and stats["ellipse_masks"] == "box"
    # Equalized: a horizontal ramp becomes a near-uniform ramp over the image.
    image = rows["00003"]["image"][8:72]  # without the padding rows
    assert image[:, 0].mean() < 20 and image[:, -1].mean() > 240


def test_rectangle_ellipse_polygon_masks_at_original_size():
    # Polygon: a tall thin quadrilateral, x in [5, 7], y in [2, 20].
    boxes, original, mask, clipped = object_cxr_target("2 5 2 7 2 7 20 5 20", 24, 16, "r")
    np.testing.assert_allclose(boxes, [[5, 2, 2, 18]])
    rows, cols = np.nonzero(mask)
    # PIL fills the boundary too: 3 columns x 19 rows, tall (not transposed as cv2 with
    # (y, x) points would give).
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 20, 5, 7)
    assert mask.sum() == 57 and clipped == 0
    # Ellipse: bounding box filled (official) or the ellipse itself.
    _, _, box_mask, _ = object_cxr_target("1 2 4 14 20", 24, 16, "r", ellipse_masks="box")
    expected = np.zeros((24, 16), np.uint8)
    expected[4:20, 2:14] = 1
    np.testing.assert_array_equal(box_mask, expected)
    _, _, ellipse, _ = object_cxr_target("1 2 4 14 20", 24, 16, "r", ellipse_masks="ellipse")
    assert not (ellipse & (1 - box_mask)).any()  # inside the box
    assert ellipse.sum() == pytest.approx(math.pi * 6 * 8, rel=0.15)
    assert ellipse[12, 8] == 1 and ellipse[4, 2] == 0  # centre in, corner out


def test_coordinates_outside_the_image_are_clipped():
    boxes, original, mask, clipped = object_cxr_target("0 -4 2 6 8;0 1 1 3 3", 10, 10, "r")
    np.testing.assert_allclose(original, [[-4, 2, 10, 6], [1, 1, 2, 2]])
    np.testing.assert_allclose(boxes, [[0, 2, 6, 6], [1, 1, 2, 2]])
    assert clipped == 1 and mask[2:8, 0:6].all() and mask.sum() == 36 + 2  # + row 1, cols 1-2


@pytest.mark.parametrize(
    "annotation, message",
    [
        ("0 1 2 3 4;3 1 2 3 4", r"train.csv:5 object 2 '3 1 2 3 4': unknown object type \(3;"),
        ("0 1 2 3", r"object 1 '0 1 2 3': malformed object \(3 coordinates"),
        ("2 1 2 3 4", r"malformed object \(polygon with 4 coordinates"),
        ("2 1 2 3 4 5", r"malformed object \(polygon with 5 coordinates"),
        ("0 a b c d", r"malformed object \(not numbers"),
    ],
)
def test_bad_objects_name_the_row(annotation, message):
    with pytest.raises(AnnotationError, match=message):
        parse_object_annotation(annotation, "train.csv:5")


@pytest.mark.parametrize(
    "annotation, kind",
    [("3 1 1 4 4", "unknown object type"), ("0 50 50 60 60", "box outside the image"),
     ("0 5 5 5 9", "box with non-positive size")],
)
def test_bad_object_raises_or_is_counted(tmp_path, files, annotation, kind):
    root = _tree(tmp_path, files, {"00001": annotation, "00002": ""}, {"08001": ""})
    with pytest.raises(AnnotationError, match=rf"train.csv:2.*{kind}"):
        convert_object_cxr(root, tmp_path / "out", split="random", image_size=40)
    assert not (tmp_path / "out").exists()
    result = convert_object_cxr(root, tmp_path / "out", split="random", seed=1, image_size=40,
                                on_error="skip", validation_fraction=0.5)
    assert result.skipped["images"].as_dict() == {kind: 1}
    assert sum(result.counts.values()) == 2


def test_random_split_80_20_and_dev_as_test(tmp_path, files):
    train = {f"{k:05d}": "" for k in range(1, 11)}
    dev = {f"{k:05d}": "" for k in range(8001, 8004)}
    root = _tree(tmp_path, files, train, dev, size=(8, 8), nested=True)
    result = convert_object_cxr(root, tmp_path / "out", split="random", seed=3, image_size=8)
    assert result.counts == {"train": 8, "validation": 2, "test": 3}
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert set(ds["train"]["id"]) | set(ds["validation"]["id"]) == set(train)
    assert list(ds["test"]["id"]) == list(dev)
    convert_object_cxr(root, tmp_path / "again", split="random", seed=3, image_size=8)
    assert list(datasets.load_from_disk(str(tmp_path / "again"))["train"]["id"]) == list(
        ds["train"]["id"]
    )


def test_default_is_the_official_split(tmp_path, files):
    official = load_split_folder(official_split_folder("object_cxr"))
    empty = {s: next(e.id for e in official[s] if len(e.boxes) == 0) for s in official}
    root = _tree(
        tmp_path, files,
        {empty["train"]: "", empty["validation"]: "", "99999": ""}, {empty["test"]: ""}, size=(8, 8),
    )
    result = convert_object_cxr(root, tmp_path / "out", image_size=8)
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert {s: list(ds[s]["id"]) for s in empty} == {s: [i] for s, i in empty.items()}
    assert result.skipped["images"].as_dict() == {
        LISTED_BUT_MISSING: 9000 - 3, "present but not in any split": 1,
    }


def test_csv_errors(tmp_path, files):
    files.text(tmp_path / "a.csv", "image_name,annotation\n00001.jpg,\n00001.jpg,0 1 1 2 2\n")
    with pytest.raises(AnnotationError, match=r"a.csv:3: image listed twice"):
        read_object_cxr_csv(tmp_path / "a.csv")
    files.text(tmp_path / "b.csv", "name,boxes\n")
    with pytest.raises(AnnotationError, match=r"b.csv:1: unexpected header"):
        read_object_cxr_csv(tmp_path / "b.csv")
    rows = read_object_cxr_csv(files.text(tmp_path / "c.csv", "image_name,annotation\n00001.jpg,\n"))
    assert rows[0][:2] == ("00001.jpg", "")


def test_tool_entry_point(tmp_path, files, capsys):
    root = _tree(tmp_path, files, {"00001": "1 2 4 14 20", "00002": ""}, {"08001": ""})
    code = prepare.main(["object-cxr", str(root), str(tmp_path / "out"), "--split", "random",
                         "--ellipse_masks", "ellipse", "--image_size", "40"])
    assert code == 0
    out = capsys.readouterr().out
    assert "train 2, validation 0, test 1 rows" in out
    assert datasets.load_from_disk(str(tmp_path / "out"))  # loads
    assert '"ellipse_masks": "ellipse"' in (tmp_path / "out" / "stats.json").read_text()
