import shutil

import datasets
import numpy as np
import pytest

from lovt_keras.data.downstream.common import (
    LISTED_BUT_MISSING,
    AnnotationError,
    compare_boxes,
    load_split_folder,
    official_split_folder,
    unpack_masks,
)
from lovt_keras.data.downstream.nih import (
    CLASS_NAMES,
    convert_nih,
    parse_nih_boxes,
    patient_id,
    read_no_finding_candidates,
)
from tools import prepare

BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


def _entry(name, labels):
    return f"{name},{labels},0,{int(name[:8])},50,M,PA,2500,2048,0.168,0.168"


def _tree(tmp_path, files, boxes, images, entries=(), test_list=()):
    """``boxes``: BBox_List data lines; ``images``: {stem: pixels} spread over two folders."""
    root = tmp_path / "nih"
    files.text(root / "BBox_List_2017.csv", "\n".join([BBOX_HEADER, *boxes]) + "\n")
    for k, (stem, pixels) in enumerate(images.items()):
        files.image(root / f"images_00{k % 2 + 1}" / "images" / f"{stem}.png", pixels)
    if entries:
        files.text(root / "Data_Entry_2017_v2020.csv", "\n".join([ENTRY_HEADER, *entries]) + "\n")
    if test_list:
        files.text(root / "test_list.txt", "\n".join(test_list) + "\n")
    return root


def _two_level(size=16):
    pixels = np.full((size, size), 40, np.uint8)
    pixels[size // 2 :] = 90
    return pixels


def test_eight_class_masks_boxes_and_no_finding_from_the_split(tmp_path, files):
    boxes = [
        "00000001_000.png,Atelectasis,2.0,3.0,4.0,5.0",
        "00000001_000.png,Effusion,8.0,8.0,6.0,2.0",
        "00000002_000.png,Pneumothorax,1.5,0.5,3.0,3.0",
    ]
    images = {s: _two_level() for s in ("00000001_000", "00000002_000", "00000003_000")}
    root = _tree(tmp_path, files, boxes, images)
    split = files.split(
        tmp_path / "split",
        ["00000001_000,2.0;3.0;4.0;5.0|8.0;8.0;6.0;2.0,0|2"],
        ["00000002_000,1.5;0.5;3.0;3.0,7"],
        ["00000003_000,,", "00000004_000,,"],
        header="ID,boxes,classes",
    )
    result = convert_nih(root, tmp_path / "out", split=split, image_size=32)
    ds = datasets.load_from_disk(str(tmp_path / "out")).with_format("numpy")
    assert result.counts == {"train": 1, "validation": 1, "test": 1}
    row = ds["train"][0]
    np.testing.assert_allclose(row["boxes"], [[4, 6, 8, 10], [16, 16, 12, 4]])
    np.testing.assert_array_equal(row["box_classes"], [0, 2])
    planes = unpack_masks(row, 8)
    expected = np.zeros((8, 16, 16), np.uint8)
    expected[0, 3:8, 2:6] = 1
    expected[2, 8:10, 8:14] = 1
    np.testing.assert_array_equal(planes, np.kron(expected, np.ones((1, 2, 2), np.uint8)))
    # Official rounding: y 0.5 -> 0, y + h 3.5 -> 4, x 1.5 -> 2, x + w 4.5 -> 4.
    pneumothorax = unpack_masks(ds["validation"][0], 8)[7]
    expected_pt = np.zeros((16, 16), np.uint8)
    expected_pt[0:4, 2:4] = 1
    np.testing.assert_array_equal(pneumothorax, np.kron(expected_pt, np.ones((2, 2), np.uint8)))
    no_finding = ds["test"][0]
    assert no_finding["id"] == "00000003_000" and no_finding["masks"].max() == 0
    # Equalized two-level image: 128 and 255.
    np.testing.assert_array_equal(np.unique(row["image"][:14]), [128])  # away from the edge
    np.testing.assert_array_equal(np.unique(row["image"][18:]), [255])
    assert result.skipped["images"].as_dict() == {LISTED_BUT_MISSING: 1}
    assert result.notes == {"images whose boxes equal the split CSV's": 3}
    assert result.stats["class_names"] == list(CLASS_NAMES)


def test_random_split_by_patient_with_no_finding_sample(tmp_path, files):
    boxes, images = [], {}
    for p in range(1, 11):
        for k in range(p % 3 + 1):
            name = f"{p:08d}_{k:03d}"
            boxes.append(f"{name}.png,Mass,1.0,1.0,2.0,2.0")
            images[name] = _two_level(8)
    # Six "No Finding" patients, and a no-finding image of each of patients 1 and 2,
    # which have annotated images too.
    normals = [f"{p:08d}_000" for p in range(20, 26)] + ["00000001_009", "00000002_009"]
    for name in normals:
        images[name] = _two_level(8)
    entries = [_entry(f"{n}.png", "No Finding") for n in normals]
    entries.append(_entry("00000030_000.png", "Mass"))  # in test_list, not No Finding
    entries.append(_entry("00000031_000.png", "No Finding"))  # not in test_list
    test_list = [f"{n}.png" for n in normals] + ["00000030_000.png"]
    root = _tree(tmp_path, files, boxes, images, entries, test_list)
    result = convert_nih(root, tmp_path / "out", split="random", seed=2, image_size=8,
                         num_no_finding=8)
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    ids = {s: list(ds[s]["id"]) for s in ("train", "validation", "test")}
    patients = {s: {patient_id(i) for i in v} for s, v in ids.items()}
    assert not (patients["train"] & patients["validation"])
    assert not (patients["train"] & patients["test"])
    assert not (patients["validation"] & patients["test"])
    everything = sum(ids.values(), [])
    assert len(everything) == len(boxes) + 8
    assert set(everything) - set(normals) == {b.split(".")[0] for b in boxes}
    assert len(set(everything) & set(normals)) == 8
    assert result.stats["num_no_finding"] == 8 and result.stats["seed"] == 2
    convert_nih(root, tmp_path / "again", split="random", seed=2, image_size=8, num_no_finding=8)
    again = datasets.load_from_disk(str(tmp_path / "again"))
    assert {s: list(again[s]["id"]) for s in ids} == ids


def test_no_finding_candidates(tmp_path, files):
    root = _tree(
        tmp_path, files, [], {},
        [_entry("00000001_000.png", "No Finding"), _entry("00000002_000.png", "Mass|Nodule"),
         _entry("00000003_000.png", "No Finding")],
        ["00000001_000.png", "00000002_000.png"],
    )
    assert read_no_finding_candidates(root) == ["00000001_000"]
    (root / "test_list.txt").unlink()
    with pytest.raises(FileNotFoundError, match="test_list.txt does not exist"):
        convert_nih(root, tmp_path / "out", split="random")


@pytest.mark.parametrize(
    "line, message",
    [
        ("00000001_000.png,Infiltration,1,2,3,4", r"BBox_List_2017.csv:2: unknown finding label \('Infiltration'"),
        ("00000001_000.png,Mass,1,2,3", r"BBox_List_2017.csv:2: row is not"),
        ("00000001_000.png,Mass,1,2,3,4,5", r"BBox_List_2017.csv:2: row is not"),
        ("00000001_000.png,Mass,1,2,x,4", r"BBox_List_2017.csv:2: non-numeric box"),
    ],
)
def test_malformed_bbox_rows_name_the_line(tmp_path, files, line, message):
    path = files.text(tmp_path / "BBox_List_2017.csv", f"{BBOX_HEADER}\n{line}\n")
    with pytest.raises(AnnotationError, match=message):
        parse_nih_boxes(path)


def test_trailing_empty_cells_and_header_check(tmp_path, files):
    path = files.text(tmp_path / "BBox_List_2017.csv",
                      f"{BBOX_HEADER}\n00000001_000.png,Nodule,1.5,2.5,3.5,4.5,,,\n")
    parsed = parse_nih_boxes(path)
    np.testing.assert_allclose(parsed["00000001_000"][0], [[1.5, 2.5, 3.5, 4.5]])
    np.testing.assert_array_equal(parsed["00000001_000"][1], [5])
    files.text(tmp_path / "bad.csv", "Image Index,Label,x,y,w,h\n")
    with pytest.raises(AnnotationError, match="bad.csv:1: unexpected header"):
        parse_nih_boxes(tmp_path / "bad.csv")


def test_box_outside_the_image(tmp_path, files):
    root = _tree(tmp_path, files, ["00000001_000.png,Mass,20.0,1.0,2.0,2.0"],
                 {"00000001_000": _two_level(16)})
    split = files.split(tmp_path / "split", ["00000001_000"], [], [])
    with pytest.raises(AnnotationError, match=r"BBox_List_2017.csv:2: box outside the image"):
        convert_nih(root, tmp_path / "out", split=split)


def test_patient_id():
    assert patient_id("00030394_001") == 30394
    with pytest.raises(ValueError, match="8-digit"):
        patient_id("abc_001")


def test_tool_help(capsys):
    with pytest.raises(SystemExit):
        prepare.main(["nih", "--help"])
    out = capsys.readouterr().out
    assert "--num_no_finding" in out and "--split" in out


def test_official_split_is_by_patient_within_each_group():
    parts = load_split_folder(official_split_folder("nih"))
    total = {"train": set(), "validation": set(), "test": set()}
    for boxed in (True, False):
        patients = {s: {patient_id(e.id) for e in v if (len(e.boxes) > 0) == boxed}
                    for s, v in parts.items()}
        assert not (patients["train"] & patients["validation"])
        assert not (patients["train"] & patients["test"])
        assert not (patients["validation"] & patients["test"])
        for s in total:
            total[s] |= patients[s]
    # The groups were split independently: 12 + 13 + 5 patients are in two splits.
    pairs = [("train", "validation"), ("train", "test"), ("validation", "test")]
    assert [len(total[a] & total[b]) for a, b in pairs] == [12, 13, 5]
    no_box = sum(len(e.boxes) == 0 for v in parts.values() for e in v)
    assert no_box == 100 and sum(len(v) for v in parts.values()) == 980


def test_real_bbox_excerpt_matches_official_split(realdata):
    parsed = parse_nih_boxes(realdata("annotations", "nih_chestxray14", "BBox_List_2017_excerpt.csv"))
    assert len(parsed) == 12 and sum(len(b) for b, _, _ in parsed.values()) == 12
    # One row per label: the 8 class ids in order of the first 8 rows.
    assert [int(c[0]) for _, c, _ in list(parsed.values())[:8]] == list(range(8))
    entries = {e.id: e for v in load_split_folder(official_split_folder("nih")).values() for e in v}
    compared = 0
    for image_id, (boxes, classes, _) in parsed.items():
        entry = entries[image_id]
        if len(entry.boxes) == len(boxes):  # the excerpt may hold only some rows of an image
            assert compare_boxes(boxes, entry.boxes) == "match"
            np.testing.assert_array_equal(np.sort(classes), np.sort(entry.classes))
            compared += 1
    assert compared >= 8


def test_real_data_entry_and_image(tmp_path, files, realdata):
    entry = realdata("annotations", "nih_chestxray14", "Data_Entry_2017_v2020_excerpt.csv")
    image = realdata("images", "nih_chestxray14", "00000001_000.png")
    root = tmp_path / "nih"
    (root / "images_001" / "images").mkdir(parents=True)
    shutil.copy(entry, root / "Data_Entry_2017_v2020.csv")
    shutil.copy(image, root / "images_001" / "images" / image.name)
    files.text(root / "test_list.txt", "00000002_000.png\n00000001_000.png\n00027426_000.png\n")
    # The irregular Data_Entry header parses; only the No Finding test images remain.
    assert read_no_finding_candidates(root) == ["00000002_000", "00027426_000"]
    # The real (512 x 512) image with a synthetic box, through the converter.
    files.text(root / "BBox_List_2017.csv",
               f"{BBOX_HEADER}\n00000001_000.png,Cardiomegaly,128.0,256.0,256.0,128.0\n")
    split = files.split(tmp_path / "split", ["00000001_000"], [], [])
    convert_nih(root, tmp_path / "out", split=split)
    row = datasets.load_from_disk(str(tmp_path / "out"))["train"].with_format("numpy")[0]
    np.testing.assert_allclose(row["boxes"], [[56, 112, 112, 56]])
    assert unpack_masks(row, 8)[1].sum() == 112 * 56
    assert abs(row["image"].mean() / 255 - 0.5) < 0.05  # equalized
