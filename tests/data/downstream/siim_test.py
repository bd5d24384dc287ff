import shutil

import datasets
import numpy as np
import pytest

from lovt_keras.data.downstream.common import (
    LISTED_BUT_MISSING,
    AnnotationError,
    decode_rle,
    load_split_folder,
    official_split_folder,
)
from lovt_keras.data.downstream.siim import convert_siim, parse_siim_rle

HEADER = "ImageId, EncodedPixels"  # the Kaggle header, with its space


def _tree(tmp_path, files, rows, images):
    root = tmp_path / "siim"
    files.text(root / "train-rle.csv", "\n".join([HEADER, *rows]) + "\n")
    for k, (image_id, pixels) in enumerate(images.items()):
        files.dicom(root / "dicom-images-train" / f"study{k}" / f"series{k}" / f"{image_id}.dcm",
                    pixels)
    return root


def _two_level(height, width):
    pixels = np.full((height, width), 50, np.uint8)
    pixels[:, width // 2 :] = 150
    return pixels


def test_rle_masks_or_and_equalized_image(tmp_path, files):
    # 8 x 8 images; pixel k of the RLE is (row k % 8, col k // 8).
    rows = [
        "1.2.3, 9 3",  # pixels 9..11: col 1, rows 1..3
        "1.2.4, -1",
        "1.2.3, 17 2 5 1",  # pixels 17, 18 (col 2, rows 1, 2) and 24 (col 3, row 0)
        "1.2.5, -1",
    ]
    pixels = _two_level(8, 8)
    root = _tree(tmp_path, files, rows, {"1.2.3": pixels, "1.2.4": pixels})
    split = files.split(tmp_path / "split", ["1.2.3"], ["1.2.4"], ["1.2.5"])
    result = convert_siim(root, tmp_path / "out", split=split, image_size=16)
    ds = datasets.load_from_disk(str(tmp_path / "out")).with_format("numpy")
    row = ds["train"][0]
    mask = np.zeros((8, 8), np.uint8)
    mask[1:4, 1] = 1
    mask[1:3, 2] = 1
    mask[0, 3] = 1
    # x2 nearest resize of the OR of both rows.
    np.testing.assert_array_equal(row["masks"], np.kron(mask, np.ones((2, 2), np.uint8)))
    assert ds["validation"][0]["masks"].max() == 0
    # equalize_hist of a two-level image: cdf 0.5 and 1.0 -> 128 and 255.
    np.testing.assert_array_equal(np.unique(row["image"][:, :7]), [128])
    np.testing.assert_array_equal(np.unique(row["image"][:, 9:]), [255])
    assert len(row["boxes"]) == 0 and len(row["box_classes"]) == 0
    assert result.counts == {"train": 1, "validation": 1, "test": 0}
    assert result.skipped["images"].as_dict() == {LISTED_BUT_MISSING: 1}
    assert result.stats["class_names"] == ["pneumothorax"] and result.stats["equalize_hist"]


def test_non_square_image_uses_its_own_size(tmp_path, files):
    # 4 rows x 6 cols: pixel 5 is (row 1, col 1); the mask follows the DICOM size.
    root = _tree(tmp_path, files, ["a, 5 2"], {"a": np.zeros((4, 6), np.uint8)})
    convert_siim(root, tmp_path / "out", split="random", seed=0, image_size=6)
    row = next(r for s in ("train", "validation", "test")
               for r in datasets.load_from_disk(str(tmp_path / "out"))[s].with_format("numpy"))
    expected = np.zeros((6, 6), np.uint8)  # padded: 1 row on top
    expected[2:4, 1] = 1
    np.testing.assert_array_equal(row["masks"], expected)


def test_header_with_and_without_space(tmp_path, files):
    path = files.text(tmp_path / "a.csv", "ImageId,EncodedPixels\nx,-1\nx, 1 2\ny, -1\n")
    parsed = parse_siim_rle(path)
    assert list(parsed) == ["x", "y"]
    assert [r for r, _ in parsed["x"]] == ["-1", "1 2"]
    assert parsed["x"][1][1].endswith("a.csv:3")
    files.text(tmp_path / "b.csv", "ImageId,Mask\nx,-1\n")
    with pytest.raises(AnnotationError, match=r"b.csv:1: unexpected header"):
        parse_siim_rle(tmp_path / "b.csv")


@pytest.mark.parametrize(
    "rle, detail",
    [("3 2 1", "odd number of values"), ("60 10", "past the end of the 8x8 image")],
)
def test_malformed_rle_raises_naming_the_row_or_is_counted(tmp_path, files, rle, detail):
    pixels = np.zeros((8, 8), np.uint8)
    root = _tree(tmp_path, files, ["good, -1", f"bad, {rle}"], {"good": pixels, "bad": pixels})
    split = files.split(tmp_path / "split", ["good", "bad"], [], [])
    with pytest.raises(AnnotationError, match=rf"train-rle.csv:3: malformed RLE \(.*{detail}"):
        convert_siim(root, tmp_path / "out", split=split, image_size=8)
    result = convert_siim(root, tmp_path / "out", split=split, image_size=8, on_error="skip")
    assert result.counts["train"] == 1
    assert result.skipped["images"].as_dict() == {"malformed RLE": 1}
    assert "train-rle.csv:3" in result.summary()


def test_missing_dicom_is_counted(tmp_path, files):
    root = _tree(tmp_path, files, ["a, -1", "b, -1"], {"a": np.zeros((8, 8), np.uint8)})
    result = convert_siim(root, tmp_path / "out", split="random", image_size=8)
    assert sum(result.counts.values()) == 1
    assert result.skipped["images"].as_dict() == {"no image file": 1}


def test_duplicate_dicom_names_are_an_error(tmp_path, files):
    root = _tree(tmp_path, files, ["a, -1"], {"a": np.zeros((8, 8), np.uint8)})
    files.dicom(root / "dicom-images-train" / "other" / "s" / "a.dcm", np.zeros((8, 8), np.uint8))
    with pytest.raises(AnnotationError, match="duplicate image file"):
        convert_siim(root, tmp_path / "out", split="random")


def test_real_rle_row_decodes_to_the_documented_area(realdata):
    parsed = parse_siim_rle(realdata("annotations", "siim_acr", "train-rle_excerpt.csv"))
    rle, source = parsed["1.2.276.0.7230010.3.1.4.8323329.13666.1517875247.117800"][0]
    mask = decode_rle(rle, 1024, 1024, source)
    assert int(mask.sum()) == 30859  # PROVENANCE.md: 30,859 foreground pixels
    values = np.array(rle.split(), int)
    assert int(values.sum()) == 814459  # ... and the final position
    # Column-major: the flat run start is (row start % 1024, col start // 1024).
    first = int(values[0])
    assert mask[first % 1024, first // 1024] == 1 and mask[(first - 1) % 1024, (first - 1) // 1024] == 0


def test_real_dicom_and_rle_excerpt_with_the_official_split(tmp_path, files, realdata):
    image_id = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819"
    dicom = realdata("images", "siim_acr_pneumothorax_dicom", f"{image_id}.dcm")
    excerpt = realdata("annotations", "siim_acr", "train-rle_excerpt.csv")
    root = tmp_path / "siim"
    (root / "dicom-images-train" / "study" / "series").mkdir(parents=True)
    shutil.copy(dicom, root / "dicom-images-train" / "study" / "series" / dicom.name)
    # The real image is in the official validation split; a synthetic DICOM with the id
    # of the first official train image keeps the train split non-empty.
    official = load_split_folder(official_split_folder("siim"))
    train_id = official["train"][0].id
    files.dicom(root / "dicom-images-train" / "s2" / "r2" / f"{train_id}.dcm",
                np.zeros((16, 16), np.uint8))
    (root / "train-rle.csv").write_text(excerpt.read_text() + f"{train_id},-1\n")
    result = convert_siim(root, tmp_path / "out")
    split = next(s for s, entries in official.items() if any(e.id == image_id for e in entries))
    assert split == "validation"
    assert result.counts == {"train": 1, "validation": 1, "test": 0}
    # Every other listed image is counted as missing: 12047 - 2.
    assert result.skipped["images"].as_dict() == {LISTED_BUT_MISSING: 12045}
    row = datasets.load_from_disk(str(tmp_path / "out"))[split].with_format("numpy")[0]
    assert row["masks"].max() == 0  # its row is -1
    # Equalized: the pixel distribution of the 1024^2 image is near-uniform, so the
    # stored mean is close to 0.5 (the official stats give 0.504 for the train split).
    assert abs(row["image"].mean() / 255 - 0.5) < 0.05


def test_tool_entry_point(tmp_path, files, capsys):
    from tools import prepare

    root = _tree(tmp_path, files, ["a, 1 2", "b, 3 1 2 x"],
                 {"a": np.zeros((4, 4), np.uint8), "b": np.zeros((4, 4), np.uint8)})
    args = ["siim", str(root), str(tmp_path / "out"), "--split", "random", "--image_size", "4"]
    assert prepare.main(args) == 1
    assert "train-rle.csv:3: malformed RLE" in capsys.readouterr().err
    assert prepare.main([*args, "--on_error", "skip"]) == 0
    out = capsys.readouterr().out
    assert "1 malformed RLE" in out and "train pixel mean" in out
