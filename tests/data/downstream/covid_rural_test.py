import csv

import datasets
import numpy as np
import pytest
from PIL import Image

from lovt_keras.data.downstream.common import (
    LISTED_BUT_MISSING,
    AnnotationError,
    load_split_folder,
    official_split_folder,
)
from lovt_keras.data.downstream.covid_rural import convert_covid_rural, patient_id, read_mask
from lovt_keras.data.images import pad_and_resize
from tools import prepare


def _name(patient, day):
    return f"COVID-19-AR-{patient}_0{day}-01-2012-XR"


def _colour(height, width, seed=0):
    rng = np.random.default_rng(seed)
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = rng.integers(0, 120, (height, width))
    pixels[..., 1] = rng.integers(60, 200, (height, width))
    pixels[..., 2] = rng.integers(100, 255, (height, width))
    return pixels


def _tree(tmp_path, files, masks, images_only=(), size=(12, 16)):
    """``masks``: {name: 0/1 mask}; every name gets a colour JPG, ``images_only`` too."""
    root = tmp_path / "opacity_segmentation_covid_chest_X_ray"
    base = root / "covid_rural_annot"
    for k, name in enumerate([*masks, *images_only]):
        files.image(base / "jpgs" / f"{name}.jpg", _colour(*size, seed=k), quality=95)
    for name, mask in masks.items():
        files.image(base / "pngs_masks" / f"{name}.png", mask)
    return root


def _equalize_reference(image, nbins=256):
    """skimage.exposure.equalize_hist for float images, written out."""
    hist, edges = np.histogram(image.ravel(), bins=nbins)
    centres = (edges[:-1] + edges[1:]) / 2
    cdf = np.cumsum(hist) / image.size
    return np.interp(image.ravel(), centres, cdf).reshape(image.shape)


def test_gray_equalized_image_and_mask(tmp_path, files):
    mask = np.zeros((12, 16), np.uint8)
    mask[2:6, 3:11] = 1
    a, b = _name(16406541, 1), _name(16406542, 2)
    root = _tree(tmp_path, files, {a: mask, b: np.zeros((12, 16), np.uint8)},
                 images_only=[_name(16406543, 3)])
    split = files.split(tmp_path / "split", [a], [b], [])
    result = convert_covid_rural(root, tmp_path / "out", split=split, image_size=32)
    ds = datasets.load_from_disk(str(tmp_path / "out")).with_format("numpy")
    row = ds["train"][0]
    assert row["id"] == a
    # Padded 12 x 16 -> 16 x 16 (2 rows on top), then x2 nearest.
    padded = np.zeros((16, 16), np.uint8)
    padded[2:14] = mask
    np.testing.assert_array_equal(row["masks"], np.kron(padded, np.ones((2, 2), np.uint8)))
    assert ds["validation"][0]["masks"].max() == 0
    # Gray = mean of the decoded channels, equalized at full size, padded and resized.
    rgb = np.asarray(Image.open(root / "covid_rural_annot" / "jpgs" / f"{a}.jpg"), np.float64)
    gray = _equalize_reference(rgb.mean(axis=-1) / 255.0)
    expected, _, _ = pad_and_resize(gray.astype(np.float32), 32)
    np.testing.assert_allclose(row["image"], np.rint(expected * 255), atol=1)
    assert result.skipped["images"].as_dict() == {"image without mask": 1}
    assert result.stats["class_names"] == ["opacity"] and result.stats["equalize_hist"]


def test_read_mask_values_and_sizes(tmp_path, files):
    path = files.image(tmp_path / "m.png", np.array([[0, 255], [255, 0]], np.uint8))
    np.testing.assert_array_equal(read_mask(path, 2, 2), [[0, 1], [1, 0]])
    path = files.image(tmp_path / "n.png", np.array([[0, 1], [2, 0]], np.uint8))
    with pytest.raises(AnnotationError, match=r"n.png: mask is not binary \(values \[0, 1, 2\]"):
        read_mask(path, 2, 2)
    with pytest.raises(AnnotationError,
                       match=r"m.png: mask size differs from the image \(mask 2x2, image 3x2"):
        read_mask(tmp_path / "m.png", 2, 3)


def test_mask_size_mismatch_raises_or_is_counted(tmp_path, files):
    good, bad = _name(16406541, 1), _name(16406542, 1)
    root = _tree(tmp_path, files, {good: np.zeros((12, 16), np.uint8),
                                   bad: np.zeros((12, 15), np.uint8)})
    split = files.split(tmp_path / "split", [good, bad], [], [])
    with pytest.raises(AnnotationError, match=rf"{bad}.png: mask size differs from the image"):
        convert_covid_rural(root, tmp_path / "out", split=split, image_size=16)
    result = convert_covid_rural(root, tmp_path / "out", split=split, image_size=16,
                                 on_error="skip")
    assert result.counts["train"] == 1
    assert result.skipped["images"].as_dict() == {"mask size differs from the image": 1}


def test_random_split_by_patient(tmp_path, files):
    masks = {_name(16406500 + p, d): np.zeros((4, 4), np.uint8)
             for p in range(10) for d in range(1 + p % 3)}
    root = _tree(tmp_path, files, masks, size=(4, 4))
    result = convert_covid_rural(root, tmp_path / "out", split="random", seed=4, image_size=4)
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    ids = {s: list(ds[s]["id"]) for s in ("train", "validation", "test")}
    patients = {s: {patient_id(i) for i in v} for s, v in ids.items()}
    assert not (patients["train"] & patients["validation"])
    assert not (patients["train"] & patients["test"])
    assert not (patients["validation"] & patients["test"])
    assert sorted(sum(ids.values(), [])) == sorted(masks)
    n = len(masks)
    assert len(ids["test"]) >= round(0.2 * n) and len(ids["validation"]) >= round(0.2 * n)
    assert sum(result.counts.values()) == n


def test_default_is_the_official_split(tmp_path, files):
    official = load_split_folder(official_split_folder("covid_rural"))
    picks = {s: official[s][0].id for s in official}
    root = _tree(tmp_path, files, {i: np.zeros((4, 4), np.uint8) for i in picks.values()},
                 size=(4, 4))
    result = convert_covid_rural(root, tmp_path / "out", image_size=4)
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert {s: list(ds[s]["id"]) for s in picks} == {s: [i] for s, i in picks.items()}
    assert result.skipped["images"].as_dict() == {LISTED_BUT_MISSING: 221 - 3}


def test_official_split_is_by_patient():
    parts = load_split_folder(official_split_folder("covid_rural"))
    patients = {s: {patient_id(e.id) for e in v} for s, v in parts.items()}
    assert [len(patients[s]) for s in ("train", "validation", "test")] == [63, 23, 18]
    assert not (patients["train"] & patients["validation"])
    assert not (patients["train"] & patients["test"])
    assert not (patients["validation"] & patients["test"])


def test_real_notes_patients_are_split_patients(realdata):
    notes = realdata("annotations", "covid_rural", "covid_rural_radiologist_notes_excerpt.csv")
    with open(notes, newline="") as f:
        noted = {row["patient_id"] for row in csv.DictReader(f)}
    parts = load_split_folder(official_split_folder("covid_rural"))
    split_patients = {patient_id(e.id) for v in parts.values() for e in v}
    # The radiologist notes name patients the same way as the image files.
    assert noted and noted <= split_patients


def test_missing_folders_and_tool(tmp_path, files, capsys):
    with pytest.raises(FileNotFoundError, match="jpgs does not exist"):
        convert_covid_rural(tmp_path, tmp_path / "out")
    root = _tree(tmp_path, files, {_name(16406541, 1): np.zeros((4, 4), np.uint8)}, size=(4, 4))
    assert prepare.main(["covid-rural", str(root), str(tmp_path / "out"), "--split", "random",
                         "--image_size", "8"]) == 0
    assert "train 1, validation 0, test 0 rows" in capsys.readouterr().out
