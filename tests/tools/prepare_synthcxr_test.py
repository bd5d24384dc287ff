import argparse
import json

import numpy as np

from lovt_keras.data import synthcxr
from lovt_keras.data.pretraining_dataset import SYNTHCXR_VOCAB_FILE, load_pretraining_dataset
from lovt_keras.data.synthcxr import load_synthcxr, synthcxr_dir
from tools import prepare, prepare_synthcxr

SIZES = ["--num_train", "8", "--num_validation", "2", "--num_test", "3", "--image_size", "64"]


def test_prepare_synthcxr_writes_a_loadable_folder_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "synth"
    assert prepare.main(["synthcxr", "--output_dir", str(out), *SIZES]) == 0
    printed = capsys.readouterr().out
    assert "train 8, validation 2, test 3" in printed and str(out) in printed

    dataset_dict, stats = load_pretraining_dataset(out)
    assert {split: len(ds) for split, ds in dataset_dict.items()} == {
        "train": 8, "validation": 2, "test": 3,
    }
    assert stats["counts"] == {"train": 8, "validation": 2, "test": 3}
    assert stats["skipped"] == {} and stats["image_size"] == 64
    assert stats["source"].startswith("SynthCXR")
    pixels = np.asarray(dataset_dict["train"].with_format("numpy")["image"], np.float64) / 255
    assert pixels.shape == (8, 64, 64)
    np.testing.assert_allclose([stats["mean"], stats["std"]], [pixels.mean(), pixels.std()],
                               rtol=1e-9)
    vocabulary = (out / SYNTHCXR_VOCAB_FILE).read_text().split("\n")
    assert vocabulary[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # Only the output folder is left in the parent: the scratch folder is gone.
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]

    # An existing folder is kept unless --overwrite is given.
    marker = out / "marker"
    marker.write_text("x")
    assert prepare.main(["synthcxr", "--output_dir", str(out), *SIZES]) == 1
    assert f"{out} already exists; pass --overwrite" in capsys.readouterr().err
    assert marker.is_file()
    args = ["synthcxr", "--output_dir", str(out), *SIZES, "--num_train", "5", "--overwrite"]
    assert prepare.main(args) == 0
    assert not marker.exists()
    assert json.loads((out / "stats.json").read_text())["counts"]["train"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]


def test_default_output_is_the_load_synthcxr_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOVT_KERAS_CACHE", str(tmp_path))
    assert prepare.main(["synthcxr", *SIZES, "--seed", "3"]) == 0
    folder = synthcxr_dir(None, num_train=8, num_validation=2, num_test=3, image_size=64, seed=3)
    assert folder.parent == tmp_path / "synthcxr" and (folder / "stats.json").is_file()
    mtime = (folder / "stats.json").stat().st_mtime_ns
    # load_synthcxr with the same parameters reuses the folder instead of regenerating.
    reloaded = load_synthcxr(None, num_train=8, num_validation=2, num_test=3, image_size=64,
                             seed=3)
    assert len(reloaded["train"]) == 8
    assert (folder / "stats.json").stat().st_mtime_ns == mtime


def test_folder_that_appears_during_generation_is_kept_without_overwrite(
    tmp_path, monkeypatch, capsys
):
    out = tmp_path / "synth"
    from lovt_keras.data import pretraining_dataset

    real_tokenizer = pretraining_dataset.synthcxr_tokenizer

    def tokenizer_while_someone_creates_the_folder(*args, **kwargs):
        out.mkdir()
        (out / "theirs.txt").write_text("x")
        return real_tokenizer(*args, **kwargs)

    monkeypatch.setattr(pretraining_dataset, "synthcxr_tokenizer",
                        tokenizer_while_someone_creates_the_folder)
    assert prepare.main(["synthcxr", "--output_dir", str(out), *SIZES]) == 1
    assert f"{out} already exists; pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]


def test_flag_defaults_are_the_synthcxr_defaults():
    args = prepare.build_parser().parse_args(["synthcxr"])
    assert (args.num_train, args.num_validation, args.num_test, args.image_size, args.seed) == (
        synthcxr.DEFAULT_NUM_TRAIN, synthcxr.DEFAULT_NUM_VALIDATION, synthcxr.DEFAULT_NUM_TEST,
        synthcxr.DEFAULT_IMAGE_SIZE, synthcxr.DEFAULT_SEED,
    )
    parser = argparse.ArgumentParser()
    prepare_synthcxr.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert f"train images ({synthcxr.DEFAULT_NUM_TRAIN})" in text
    assert f"validation images ({synthcxr.DEFAULT_NUM_VALIDATION})" in text
    assert f"test images ({synthcxr.DEFAULT_NUM_TEST})" in text
    assert f"stored image side ({synthcxr.DEFAULT_IMAGE_SIZE})" in text
