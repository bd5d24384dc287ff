"""Tests for lovt_keras.data.dataset_writer: atomic dataset folders with stats.json."""

import json
import math

import datasets
import numpy as np
import pytest
from PIL import Image

from lovt_keras.data import dataset_writer
from lovt_keras.data.dataset_writer import (
    ConversionResult,
    EmptyTrainSplitError,
    OutputExistsError,
    flatten_skips,
    format_report,
    imap_ordered,
    load_images,
    load_square_image,
    read_stats,
    write_dataset,
)
from lovt_keras.data.reports import SkipCounter, extract_sections

SIZE = 6


def _features():
    return datasets.Features({
        "image": datasets.Array2D((SIZE, SIZE), "uint8"),
        "id": datasets.Value("string"),
        "sentences": datasets.Sequence(datasets.Value("string")),
    })


def _rows(n, seed, prefix):
    rng = np.random.default_rng(seed)
    return [
        {
            "image": rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8),
            "id": f"{prefix}{i}",
            "sentences": [f"sentence {j} of {prefix}{i}." for j in range(i % 3 + 1)],
        }
        for i in range(n)
    ]


def _leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}"))


def test_write_and_load_round_trip_with_exact_stats(tmp_path):
    train, validation, test = _rows(7, 0, "t"), _rows(2, 1, "v"), _rows(3, 2, "s")
    out = tmp_path / "ds"
    stats = write_dataset(
        out, {"train": iter(train), "validation": validation, "test": (r for r in test)},
        _features(), {"source": "unit test"},
    )
    loaded = datasets.load_from_disk(str(out))
    assert list(loaded) == ["train", "validation", "test"]
    for name, rows in (("train", train), ("validation", validation), ("test", test)):
        split = loaded[name].with_format("numpy")
        assert len(split) == len(rows)
        np.testing.assert_array_equal(np.stack(split["image"]), np.stack([r["image"] for r in rows]))
        assert list(loaded[name]["id"]) == [r["id"] for r in rows]
        assert list(loaded[name]["sentences"]) == [r["sentences"] for r in rows]

    pixels = np.stack([r["image"] for r in train]).astype(np.float64) / 255.0
    assert stats["mean"] == pytest.approx(pixels.mean(), abs=1e-12)
    assert stats["std"] == pytest.approx(pixels.std(), abs=1e-12)
    assert stats["num_pixels"] == 7 * SIZE * SIZE
    assert stats["counts"] == {"train": 7, "validation": 2, "test": 3}
    assert stats["image_size"] == SIZE
    assert stats["source"] == "unit test"
    assert read_stats(out) == json.loads((out / "stats.json").read_text()) == stats
    assert _leftovers(tmp_path, "ds") == []


def test_stats_extra_callable_runs_after_all_rows(tmp_path):
    seen = []

    def counting(rows):
        for row in rows:
            seen.append(row["id"])
            yield row

    stats = write_dataset(
        tmp_path / "ds",
        {"train": counting(_rows(4, 0, "t")), "validation": counting(_rows(2, 1, "v")),
         "test": counting([])},
        _features(),
        lambda: {"rows_seen": len(seen)},
    )
    assert stats["rows_seen"] == 6
    loaded = datasets.load_from_disk(str(tmp_path / "ds"))
    assert len(loaded["test"]) == 0  # an empty split still loads
    assert loaded["test"].features == _features()


def test_refuses_existing_folder_and_overwrites_when_asked(tmp_path):
    out = tmp_path / "ds"
    write_dataset(out, {"train": _rows(3, 0, "a")}, _features())
    with pytest.raises(OutputExistsError, match=str(out)):
        write_dataset(out, {"train": _rows(5, 1, "b")}, _features())
    assert list(datasets.load_from_disk(str(out))["train"]["id"]) == ["a0", "a1", "a2"]

    (out / "stale.txt").write_text("from the old folder")
    stats = write_dataset(out, {"train": _rows(5, 1, "b")}, _features(), overwrite=True)
    assert stats["counts"] == {"train": 5}
    assert list(datasets.load_from_disk(str(out))["train"]["id"]) == [f"b{i}" for i in range(5)]
    assert not (out / "stale.txt").exists()
    assert _leftovers(tmp_path, "ds") == []


def test_folder_that_appears_during_the_conversion_is_kept(tmp_path):
    out = tmp_path / "ds"

    def rows_while_someone_creates_the_folder():
        yield from _rows(2, 0, "x")
        out.mkdir()  # e.g. another conversion into the same folder
        (out / "theirs.txt").write_text("not ours to delete")
        yield from _rows(1, 1, "y")

    with pytest.raises(OutputExistsError, match="appeared during the conversion"):
        write_dataset(out, {"train": rows_while_someone_creates_the_folder()}, _features())
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert _leftovers(tmp_path, "ds") == []


def test_failed_write_leaves_nothing(tmp_path):
    def broken():
        yield from _rows(2, 0, "x")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_dataset(tmp_path / "ds", {"train": broken()}, _features())
    assert not (tmp_path / "ds").exists()
    assert _leftovers(tmp_path, "ds") == []


def test_bad_rows_name_split_and_row(tmp_path):
    rows = _rows(3, 0, "t")
    del rows[2]["sentences"]
    with pytest.raises(ValueError, match=r"split 'train' row 2: .*missing \['sentences'\]"):
        write_dataset(tmp_path / "a", {"train": rows}, _features())

    rows = _rows(3, 0, "t")
    rows[1]["image"] = rows[1]["image"].astype(np.float32)
    with pytest.raises(TypeError, match=r"split 'train' row 1: column 'image' has shape \(6, 6\) and dtype float32"):
        write_dataset(tmp_path / "b", {"train": rows}, _features())

    rows = _rows(3, 0, "t")
    rows[1]["image"] = np.zeros((SIZE + 1, SIZE), np.uint8)
    with pytest.raises(ValueError, match=r"split 'train' row 1: column 'image' has shape \(7, 6\)"):
        write_dataset(tmp_path / "c", {"train": rows}, _features())

    rows = _rows(3, 0, "t")
    rows[2]["sentences"] = 5
    with pytest.raises(ValueError, match=r"split 'train' row 2: does not fit the features"):
        write_dataset(tmp_path / "d", {"train": rows}, _features())
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_empty_train_split_raises_after_consuming_every_split(tmp_path):
    consumed = []

    def rows(name, n):
        for row in _rows(n, 0, name):
            consumed.append(row["id"])
            yield row

    with pytest.raises(EmptyTrainSplitError, match="train split received no rows"):
        write_dataset(
            tmp_path / "ds", {"train": rows("t", 0), "validation": rows("v", 2), "test": rows("s", 1)},
            _features(),
        )
    assert consumed == ["v0", "v1", "s0"]
    assert not (tmp_path / "ds").exists()
    assert _leftovers(tmp_path, "ds") == []


def test_stats_extra_may_not_override_computed_keys(tmp_path):
    with pytest.raises(ValueError, match=r"computed key\(s\) \['mean'\]"):
        write_dataset(tmp_path / "ds", {"train": _rows(1, 0, "t")}, _features(), {"mean": 0.5})
    assert not (tmp_path / "ds").exists()


def test_load_square_image_pads_centred(tmp_path):
    # 30 rows x 40 columns of 255: padding to 40 x 40 adds 5 zero rows above and below;
    # at size 40 there is no resize, so the result is exact.
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((30, 40), 255, np.uint8)).save(path)
    image = load_square_image(path, 40)
    expected = np.zeros((40, 40), np.uint8)
    expected[5:35] = 255
    np.testing.assert_array_equal(image, expected)
    small = load_square_image(path, 8)
    assert small.shape == (8, 8) and small.dtype == np.uint8
    # Bilinear resizing keeps the mean brightness: 30/40 of the square is white.
    assert small.astype(np.float64).mean() / 255 == pytest.approx(0.75, abs=0.02)
    assert small[0].max() < 255 and small[4].min() == 255


def test_load_images_reports_missing_and_corrupt_in_order(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((10, 10), 128, np.uint8)).save(good)
    noisy = tmp_path / "noisy.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(noisy)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(noisy.read_bytes()[:2000])  # truncated inside the pixel data
    results = list(load_images([good, tmp_path / "missing.png", corrupt, good], 4))
    assert [r[0] is None for r in results] == [False, True, True, False]
    np.testing.assert_array_equal(results[0][0], np.full((4, 4), 128, np.uint8))
    assert results[1][1:] == ("file does not exist", True)
    assert results[2][2] is False and "truncated" in results[2][1]


def test_imap_ordered_keeps_input_order_with_workers():
    values = list(range(40))
    assert list(imap_ordered(math.sqrt, values, num_proc=2, chunksize=3)) == [
        math.sqrt(v) for v in values
    ]
    assert list(imap_ordered(math.sqrt, values, num_proc=1)) == [math.sqrt(v) for v in values]


def test_flatten_skips_summary_and_format_report(tmp_path):
    studies, images = SkipCounter(noun="studies"), SkipCounter(noun="images")
    studies.seen, images.seen = 4, 9
    studies.add("no report file", source="p10/p1/s5.txt")
    images.add("view LATERAL", n=2)
    images.add(dataset_writer.NO_IMAGE_FILE, source="a.jpg")
    skipped = {"studies": studies, "images": images}
    assert flatten_skips(skipped) == {
        "studies: no report file": 1, "images: no image file": 1, "images: view LATERAL": 2,
    }
    result = ConversionResult(tmp_path / "out", {"train": 3}, skipped, notes={"filled": 2})
    lines = result.summary().splitlines()
    assert lines[0] == f"wrote {tmp_path / 'out'}: train 3 rows"
    assert lines[1] == "  studies: skipped 1 of 4 studies: 1 no report file (e.g. p10/p1/s5.txt)"
    assert lines[2] == "  images: skipped 3 of 9 images: 2 view LATERAL; 1 no image file (e.g. a.jpg)"
    assert lines[3] == "  note: 2 filled"

    report = format_report(" Lungs are\n clear. ", "No  effusion.")
    assert report == "FINDINGS: Lungs are clear.\n\nIMPRESSION: No effusion."
    assert extract_sections(report) == {"findings": "Lungs are clear.", "impression": "No effusion."}
    assert format_report("", "Normal.") == "IMPRESSION: Normal."


@pytest.mark.large  # spawned workers import the package (keras via lovt_keras.data): ~10 s
def test_load_images_in_worker_processes_match_in_process(tmp_path):
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (9 + i, 12), dtype=np.uint8)).save(
            paths[-1]
        )
    paths.insert(2, tmp_path / "missing.png")
    serial = list(load_images(paths, 8, num_proc=1))
    parallel = list(load_images(paths, 8, num_proc=2))
    assert [r[0] is None for r in parallel] == [p.name == "missing.png" for p in paths]
    for (a, ra, ma), (b, rb, mb) in zip(serial, parallel):
        assert (ra, ma) == (rb, mb)
        if a is not None:
            np.testing.assert_array_equal(a, b)
