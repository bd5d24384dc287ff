"""Tests of the SynthCXR generator: determinism, labels, reports, statistics, caching."""

import inspect
import json
import os
import re
import shutil

import datasets
import numpy as np
import pytest
import scipy.ndimage as ndi

from lovt_keras.data import synthcxr
from lovt_keras.data.synthcxr import (
    FINDING_CLASSES,
    decode_masks,
    generate_sample,
    generate_split,
    load_stats,
    load_synthcxr,
    sample_rng,
    synthcxr_dir,
)

# Words a sentence about a finding must contain (independent of the templates).
ZONE_WORDS = {
    "upper": ("upper", "apex", "apical"),
    "middle": ("mid", "middle", "perihilar"),
    "lower": ("lower", "base", "basilar", "costophrenic", "retrocardiac"),
}
KIND_WORDS = {
    "opacity": ("opacity", "consolidation", "airspace"),
    "pneumothorax": ("pneumothorax",),
    "nodule": ("nodule", "nodular", "mass", "masslike", "rounded opacity"),
    "effusion": ("effusion",),
    "cardiomegaly": ("heart", "cardiac", "cardiomegaly", "cardiomediastinal"),
    "foreign_object": ("foreign", "coin", "button", "wire", "tube", "catheter", "radiopaque"),
}
NEGATION = ("no ", "not ", "without", "normal", "sharp")


def _words(sentence: str) -> set:
    return set(re.findall(r"[a-z]+", sentence.lower()))


def _has_any(sentence: str, words, prefix: bool = False) -> bool:
    """Whether a word (or, with ``prefix``, a word start: "nodule" matches "nodules")."""
    low = sentence.lower()
    end = "" if prefix else r"\b"
    return any(re.search(rf"\b{re.escape(w)}{end}", low) for w in words)


@pytest.fixture(scope="module")
def samples_224():
    return [generate_sample(sample_rng(7, "train", i), 224) for i in range(300)]


# ----------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes():
    a = generate_sample(sample_rng(3, "train", 11), 224)
    b = generate_sample(sample_rng(3, "train", 11), 224)
    assert a["image"].tobytes() == b["image"].tobytes()
    assert a["masks"].tobytes() == b["masks"].tobytes()
    assert a["boxes"].tobytes() == b["boxes"].tobytes()
    assert a["report"] == b["report"]
    assert a["findings"] == b["findings"]


def test_different_index_split_or_seed_gives_different_images():
    base = generate_sample(sample_rng(3, "train", 11), 64)["image"]
    for rng in (sample_rng(3, "train", 12), sample_rng(3, "test", 11), sample_rng(4, "train", 11)):
        other = generate_sample(rng, 64)["image"]
        # Not just a few pixels: anatomy, exposure and noise all differ.
        assert np.mean(base != other) > 0.5


def test_sample_seed_depends_only_on_seed_split_index():
    a = sample_rng(5, "validation", 9).random(4)
    _ = [sample_rng(5, "validation", i).random() for i in range(9)]
    b = sample_rng(5, "validation", 9).random(4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sample_rng(5, "validation", 10).random(4))
    assert not np.array_equal(a, sample_rng(5, "train", 9).random(4))


# --------------------------------------------------------------- shapes, labels


@pytest.mark.parametrize("size", [64, 224])
def test_shapes_and_dtypes(size):
    for i in range(6):
        s = generate_sample(sample_rng(1, "train", i), size)
        k = len(s["findings"])
        assert s["image"].shape == (size, size) and s["image"].dtype == np.uint8
        assert s["masks"].shape == (len(FINDING_CLASSES), size, size)
        assert s["masks"].dtype == np.uint8 and set(np.unique(s["masks"])) <= {0, 1}
        assert s["boxes"].shape == (k, 4) and s["boxes"].dtype == np.float32
        assert s["box_classes"].shape == (k,) and s["box_classes"].dtype == np.int32
        assert all(isinstance(x, str) for x in s["sentences"])
        # Boxes lie inside the image.
        b = s["boxes"]
        assert np.all(b[:, :2] >= 0) and np.all(b[:, 0] + b[:, 2] <= size)
        assert np.all(b[:, 1] + b[:, 3] <= size) and np.all(b[:, 2:] >= 1)
        # The image uses a good part of the grey range (not blank or saturated).
        assert np.percentile(s["image"], 95) - np.percentile(s["image"], 5) > 80


def test_report_is_its_sentences_in_order():
    for i in range(20):
        s = generate_sample(sample_rng(2, "train", i), 64)
        head, tail = s["report"].split("\n\nIMPRESSION: ")
        assert head.startswith("FINDINGS: ")
        assert head[len("FINDINGS: ") :] + " " + tail == " ".join(s["sentences"])
        n_findings = len(head[len("FINDINGS: ") :].split(". ")) if head else 0
        assert n_findings >= 3 and len(s["sentences"]) - n_findings >= 1
        for sentence in s["sentences"]:
            assert sentence[0].isupper() and sentence.endswith(".")
            assert ". " not in sentence  # one sentence each (decimals like 1.5 are fine)


def test_masks_and_boxes_agree(samples_224):
    structure = np.ones((3, 3))  # 8-connectivity
    n_boxes = 0
    for s in samples_224[:80]:
        classes = s["box_classes"]
        for c in range(len(FINDING_CLASSES)):
            has_box = bool(np.any(classes == c))
            assert has_box == bool(s["masks"][c].any()), "a class mask without a box or vice versa"
        for box, c in zip(s["boxes"], classes):
            labels, _ = ndi.label(s["masks"][c], structure=structure)
            x, y, w, h = box
            found = False
            for ys, xs in ndi.find_objects(labels):
                if (
                    abs(xs.start - x) <= 2
                    and abs(ys.start - y) <= 2
                    and abs(xs.stop - (x + w)) <= 2
                    and abs(ys.stop - (y + h)) <= 2
                ):
                    found = True
            assert found, f"box {box} of class {c} bounds no connected part of its mask"
            n_boxes += 1
    assert n_boxes > 40


def test_boxes_are_tight_around_union_of_masks(samples_224):
    # With one finding of a class, the box is exactly the mask's bounding box.
    for s in samples_224[:80]:
        for c in np.unique(s["box_classes"]):
            idx = np.flatnonzero(s["box_classes"] == c)
            if len(idx) != 1:
                continue
            rows = np.flatnonzero(s["masks"][c].any(1))
            cols = np.flatnonzero(s["masks"][c].any(0))
            expected = [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
            np.testing.assert_array_equal(s["boxes"][idx[0]], expected)


def test_side_and_zone_follow_pa_convention(samples_224):
    # Patient's left is on the image's right; zones go top to bottom.
    centres = {"upper": [], "middle": [], "lower": []}
    for s in samples_224:
        for f, (x, y, w, h) in zip(s["findings"], s["boxes"]):
            if f["kind"] not in ("opacity", "nodule", "foreign_object"):
                continue
            cx = x + w / 2
            assert (cx > 112) == (f["side"] == "left"), f
            centres[f["zone"]].append(y + h / 2)
    up, mid, low = (np.mean(centres[z]) for z in ("upper", "middle", "lower"))
    assert up + 15 < mid < low - 15


# ---------------------------------------------------------------------- reports


def test_report_mentions_side_zone_and_negatives(samples_224):
    for s in samples_224[:150]:
        sentences = s["sentences"]
        present = {f["kind"] for f in s["findings"]}
        for f in s["findings"]:
            described = [sentences[j] for j in f["sentence_ids"]]
            assert len(described) == 2  # one FINDINGS and one IMPRESSION sentence
            first = described[0]
            assert _has_any(first, KIND_WORDS[f["kind"]], prefix=True), (f, first)
            if f["kind"] == "cardiomegaly":
                assert _has_any(first, ("enlarged", "enlargement", "cardiomegaly"))
                continue
            assert f["side"] in _words(first), (f, first)
            assert _has_any(first, ZONE_WORDS[f["zone"]]), (f, first)
            assert f["side"] in _words(described[1]), (f, described[1])
        for kind in set(FINDING_CLASSES) - present:
            assert any(
                _has_any(x, KIND_WORDS[kind], prefix=True) and _has_any(x, NEGATION, prefix=True)
                for x in sentences
            ), (kind, s["report"])
        if not present:
            impression = s["report"].split("IMPRESSION: ")[1]
            normal = ("No acute", "Normal chest", "No radiographic evidence")
            assert any(x in impression for x in normal), impression


def test_size_in_cm_matches_box(samples_224):
    # "A 2.3 cm nodule": the number in the text is the box's larger side in cm.
    checked = 0
    for s in samples_224:
        for f in s["findings"]:
            if f["kind"] != "nodule":
                continue
            text = " ".join(s["sentences"][j] for j in f["sentence_ids"])
            numbers = [float(x) for x in re.findall(r"(\d+\.\d) cm", text)]
            assert numbers, text
            expected = max(f["box"][2], f["box"][3]) * synthcxr.FIELD_OF_VIEW_CM / 224
            assert all(abs(x - expected) <= 0.051 for x in numbers)
            checked += 1
    assert checked > 10


def test_sentence_order_varies():
    first = {generate_sample(sample_rng(9, "train", i), 32)["sentences"][0] for i in range(30)}
    assert len(first) > 10


# ------------------------------------------------------------------- statistics


def test_finding_statistics(samples_224):
    normal = [not s["findings"] for s in samples_224]
    assert 0.25 <= np.mean(normal) <= 0.45
    abnormal = [s for s in samples_224 if s["findings"]]
    places = [{(f["side"], f["zone"]) for f in s["findings"] if f["side"]} for s in abnormal]
    assert np.mean([len(p) >= 2 for p in places]) >= 1 / 3
    # The same kind in two places, only told apart by the location words.
    repeated = []
    for s in abnormal:
        kinds = [f["kind"] for f in s["findings"] if f["side"]]
        repeated.append(len(kinds) != len(set(kinds)))
    assert np.mean(repeated) >= 0.15
    # Most findings span at least one 32 px cell of the conv5 grid at 224 px.
    sizes = np.array([max(b[2], b[3]) for s in abnormal for b in s["boxes"]])
    assert np.mean(sizes >= 32) >= 0.7
    kinds = {f["kind"] for s in abnormal for f in s["findings"]}
    assert kinds == set(FINDING_CLASSES)


def test_findings_show_in_the_image():
    opacity, ptx, coin = [], [], []
    for i in range(8):
        side = ("left", "right")[i % 2]
        zone = ("upper", "middle", "lower")[i % 3]
        spec = [{"kind": "opacity", "side": side, "zone": zone, "severity": "moderate"}]
        sick = generate_sample(sample_rng(11, "train", i), 224, findings=spec)
        healthy = generate_sample(sample_rng(11, "train", i), 224, findings=[])
        assert healthy["findings"] == [] and healthy["boxes"].shape == (0, 4)
        mask = sick["masks"][0].astype(bool)
        assert mask.sum() > 200
        diff = sick["image"][mask].mean() - healthy["image"][mask].astype(float).mean()
        opacity.append(diff)
        # Outside the finding's box the two images are the same patient, same pixels.
        x, y, w, h = sick["boxes"][0].astype(int)
        far = np.ones((224, 224), bool)
        far[max(0, y - 3) : y + h + 3, max(0, x - 3) : x + w + 3] = False
        assert np.abs(sick["image"][far].astype(int) - healthy["image"][far]).max() <= 1

        spec = [{"kind": "pneumothorax", "side": side, "zone": "upper", "severity": "severe"}]
        sick = generate_sample(sample_rng(12, "train", i), 224, findings=spec)
        healthy = generate_sample(sample_rng(12, "train", i), 224, findings=[])
        mask = sick["masks"][1].astype(bool)
        ptx.append(sick["image"][mask].mean() - healthy["image"][mask].astype(float).mean())

        spec = [{"kind": "foreign_object", "side": side, "zone": zone, "subtype": "coin"}]
        sick = generate_sample(sample_rng(13, "train", i), 224, findings=spec)
        coin.append(np.median(sick["image"][sick["masks"][5].astype(bool)]))
    assert min(opacity) > 3 and np.mean(opacity) > 10  # consolidation is brighter
    assert max(ptx) < 0  # pneumothorax: darker, no lung markings
    assert min(coin) >= 235  # metal: near white


def test_bad_finding_spec_is_reported():
    with pytest.raises(ValueError, match="unknown finding kind 'tumour'"):
        generate_sample(sample_rng(0, "train", 0), findings=[{"kind": "tumour"}])
    with pytest.raises(ValueError, match="side must be in"):
        generate_sample(sample_rng(0, "train", 0), findings=[{"kind": "nodule", "side": "up"}])
    with pytest.raises(ValueError, match="image_size must be >= 32"):
        generate_sample(sample_rng(0, "train", 0), 16)


# ------------------------------------------------------------------ masks codec


def test_decode_masks_hand_computed():
    packed = np.array([[1, 2], [5, 0]], np.uint8)  # bit c = class c
    out = decode_masks({"masks": packed})
    assert out.shape == (6, 2, 2) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], [[1, 0], [1, 0]])
    np.testing.assert_array_equal(out[1], [[0, 1], [0, 0]])
    np.testing.assert_array_equal(out[2], [[0, 0], [1, 0]])
    assert out[3:].sum() == 0
    batch = decode_masks(np.stack([packed, packed * 0 + 32]).astype(np.int64).tolist())
    assert batch.shape == (2, 6, 2, 2) and batch[1, 5].sum() == 4 and batch[1, :5].sum() == 0


# --------------------------------------------------------------------- datasets


def test_generate_split_rows_match_samples():
    ds = generate_split(5, seed=4, image_size=64, split="validation")
    assert isinstance(ds, datasets.Dataset) and len(ds) == 5
    assert ds.features["masks"] == datasets.Array2D((64, 64), "uint8")
    for i in (0, 3):
        row = ds.with_format("numpy")[i]
        s = generate_sample(sample_rng(4, "validation", i), 64)
        assert row["study_id"] == f"synthcxr-4-validation-{i:06d}"
        np.testing.assert_array_equal(row["image"], s["image"])
        np.testing.assert_array_equal(decode_masks(row), s["masks"])
        np.testing.assert_array_equal(np.asarray(row["box_classes"]), s["box_classes"])
        boxes = np.array(ds[i]["boxes"], np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(boxes, s["boxes"])
        assert list(row["sentences"]) == s["sentences"] and row["report"] == s["report"]
        assert json.loads(ds[i]["findings"]) == json.loads(json.dumps(s["findings"]))


def test_generate_split_independent_of_num_proc(tmp_path, monkeypatch):
    one = generate_split(6, seed=1, image_size=32)

    def no_fork():  # workers are spawned: a fork beside a backend's threads can deadlock
        raise AssertionError("os.fork() called")

    monkeypatch.setattr(os, "fork", no_fork)
    two = generate_split(6, seed=1, image_size=32, num_proc=2, cache_dir=tmp_path / "b")
    assert one["study_id"] == two["study_id"] and one["report"] == two["report"]
    np.testing.assert_array_equal(
        one.with_format("numpy")["image"], two.with_format("numpy")["image"]
    )


def test_load_synthcxr_builds_once_and_caches(tmp_path, monkeypatch):
    kwargs = dict(num_train=12, num_validation=3, num_test=4, image_size=64, seed=2)
    ds = load_synthcxr(tmp_path, **kwargs)
    assert {k: len(v) for k, v in ds.items()} == {"train": 12, "validation": 3, "test": 4}
    folder = synthcxr_dir(tmp_path, **kwargs)
    assert folder.is_dir() and (folder / "stats.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temp folder left
    mtime = (folder / "stats.json").stat().st_mtime_ns

    def no_generation(*args, **kw):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(synthcxr, "generate_split", no_generation)
    again = load_synthcxr(tmp_path, **kwargs)
    assert (folder / "stats.json").stat().st_mtime_ns == mtime
    for split in ("train", "validation", "test"):
        assert again[split]["study_id"] == ds[split]["study_id"]
        np.testing.assert_array_equal(
            again[split].with_format("numpy")["image"], ds[split].with_format("numpy")["image"]
        )
    # Train split is the seed's train samples.
    np.testing.assert_array_equal(
        again["train"].with_format("numpy")[7]["image"],
        generate_sample(sample_rng(2, "train", 7), 64)["image"],
    )


def test_interrupted_build_leaves_nothing_that_loads(tmp_path, monkeypatch):
    kwargs = dict(num_train=4, num_validation=2, num_test=2, image_size=32, seed=0)
    real = synthcxr.generate_split

    def fail_on_test(n, seed, image_size=224, *, split="train", **kw):
        if split == "test":
            raise KeyboardInterrupt
        return real(n, seed, image_size, split=split, **kw)

    monkeypatch.setattr(synthcxr, "generate_split", fail_on_test)
    with pytest.raises(KeyboardInterrupt):
        load_synthcxr(tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synthcxr, "generate_split", real)
    # A folder in the final place that a complete run did not write is an error.
    folder = synthcxr_dir(tmp_path, **kwargs)
    folder.mkdir()
    with pytest.raises(FileExistsError, match="has no stats.json"):
        load_synthcxr(tmp_path, **kwargs)
    folder.rmdir()
    assert len(load_synthcxr(tmp_path, **kwargs)["test"]) == 2


def test_build_accepts_a_complete_folder_from_a_concurrent_build(tmp_path, monkeypatch):
    kwargs = dict(num_train=4, num_validation=2, num_test=2, image_size=32, seed=0)
    other = load_synthcxr(tmp_path / "other", **kwargs)  # what the other process writes
    folder = synthcxr_dir(tmp_path / "cache", **kwargs)
    real_stats = synthcxr._pixel_stats

    def stats_while_another_build_wins(ds):
        shutil.copytree(synthcxr_dir(tmp_path / "other", **kwargs), folder)
        (folder / "theirs.txt").write_text("x")
        return real_stats(ds)

    monkeypatch.setattr(synthcxr, "_pixel_stats", stats_while_another_build_wins)
    ds = load_synthcxr(tmp_path / "cache", **kwargs)
    assert ds["train"]["study_id"] == other["train"]["study_id"]
    assert (folder / "theirs.txt").is_file()  # theirs was kept, ours discarded
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]

    # A folder without stats.json that appears meanwhile is an error, and is kept.
    shutil.rmtree(folder)

    def stats_while_a_stranger_writes(ds):
        folder.mkdir()
        (folder / "theirs.txt").write_text("x")
        return real_stats(ds)

    monkeypatch.setattr(synthcxr, "_pixel_stats", stats_while_a_stranger_writes)
    with pytest.raises(FileExistsError, match="already exists"):
        load_synthcxr(tmp_path / "cache", **kwargs)
    assert [p.name for p in folder.iterdir()] == ["theirs.txt"]
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]


def test_default_sizes_are_the_constants(tmp_path):
    # Changing them renames every default cache folder (and the quickstart's numbers).
    assert (synthcxr.DEFAULT_NUM_TRAIN, synthcxr.DEFAULT_NUM_VALIDATION,
            synthcxr.DEFAULT_NUM_TEST, synthcxr.DEFAULT_IMAGE_SIZE,
            synthcxr.DEFAULT_SEED) == (2000, 200, 500, 224, 0)
    assert synthcxr_dir(tmp_path).name == (
        f"synthcxr-v{synthcxr.GENERATOR_VERSION}-seed0-px224-n2000-200-500"
    )
    defaults = {name: p.default for name, p in
                inspect.signature(load_synthcxr).parameters.items()}
    assert defaults["num_train"] == 2000 and defaults["num_validation"] == 200
    assert defaults["num_test"] == 500 and defaults["image_size"] == 224
    assert defaults["seed"] == 0


def test_stats_match_numpy(tmp_path):
    ds = load_synthcxr(tmp_path, num_train=10, num_validation=2, num_test=2, image_size=32)
    images = np.stack([np.asarray(x, np.uint8) for x in ds["train"]["image"]]) / 255.0
    for source in (ds, synthcxr_dir(tmp_path, 10, 2, 2, 32), ds["validation"]):
        stats = load_stats(source)
        assert stats["mean"] == pytest.approx(images.mean(), abs=1e-12)
        assert stats["std"] == pytest.approx(images.std(), abs=1e-12)
        assert stats["num_pixels"] == images.size
    with pytest.raises(FileNotFoundError, match="no SynthCXR stats file"):
        load_stats(tmp_path)


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LOVT_KERAS_CACHE", str(tmp_path))
    folder = synthcxr_dir(None, 5, 6, 7, 64, 3)
    assert (
        folder
        == tmp_path / "synthcxr" / f"synthcxr-v{synthcxr.GENERATOR_VERSION}-seed3-px64-n5-6-7"
    )


def test_bench_tool_reports_rates():
    from tools import bench_synthcxr

    rates = bench_synthcxr.main(
        ["--num", "4", "--sizes", "32", "--split_num", "4", "--split_size", "32"]
    )
    assert set(rates) == {
        "generate_sample_32px",
        "generate_sample_32px_cpu",
        "generate_split_32px",
        "generate_split_32px_cpu",
    }
    assert all(r > 0 for r in rates.values())
