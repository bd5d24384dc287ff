"""``lovt.analyze``: the alignment attention it recomputes, and one tiny run of the program."""

import csv
import json

import keras
import numpy as np
import pytest
from keras import ops

from lovt_keras.analysis import model_outputs
from lovt_keras.layers import CrossModalAlignment
from lovt_keras.training.checkpoints import TrainingState, save_checkpoint
from tools import run

EXPERIMENT = "experiments/analysis/synthcxr_lovt.gin"
TINY = "gin/debug/tiny.gin"


def test_recomputed_attention_reproduces_the_alignment_output():
    rng = np.random.default_rng(0)
    regions = rng.normal(size=(3, 6, 8)).astype("float32")
    sentences = rng.normal(size=(3, 4, 8)).astype("float32")
    mask = np.array([[True, False, False, False], [True] * 4, [True, True, False, False]])
    alignment = CrossModalAlignment()
    _, image_to_report = alignment(regions, sentences, mask, training=False)
    beta = model_outputs.alignment_attention(alignment, regions, sentences, mask)
    np.testing.assert_allclose(ops.convert_to_numpy(ops.sum(beta, axis=-1)), mask, atol=1e-5)
    # image->report = BN(W_o sum_i beta_ji W_v z^I_i): the layer's own output.
    values = alignment.value_projection(regions)
    mixed = alignment.output_projection(ops.einsum("bsn,bnd->bsd", beta, values))
    expected = alignment.norm(mixed, training=False) * ops.cast(mask, "float32")[..., None]
    np.testing.assert_allclose(ops.convert_to_numpy(expected),
                               ops.convert_to_numpy(image_to_report), atol=1e-4)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.large  # about 30 s of CPU: SynthCXR, tokenizer, two models, figures
def test_the_program_on_a_tiny_checkpoint_writes_everything(tmp_path, capsys):
    data = [
        "--bind", f"lovt.synthcxr_folder.cache_dir = '{tmp_path / 'cache'}'",
        "--bind", "lovt.synthcxr_folder.num_train = 16",
        "--bind", "lovt.synthcxr_folder.num_validation = 4",
        "--bind", "lovt.synthcxr_folder.num_test = 8",
    ]
    # A "pretraining run" of the tiny configuration: its model, saved as a finished run.
    checkpoint = tmp_path / "pretrain"
    spec = run.configure([EXPERIMENT, TINY], [*data[1::2], "CHECKPOINT = 'unused'"])
    batches = run._build_data(spec)[0]
    keras.utils.set_random_seed(7)
    model = spec.model()
    model({k: v[:2] for k, v in batches[0].items()}, training=False)
    state = TrainingState(finished=True, seed=7)
    save_checkpoint(checkpoint / "checkpoints" / "last.npz", model, state, optimizer=False,
                    metrics=False)

    out = tmp_path / "analysis"
    argv = ["--gin", EXPERIMENT, "--gin", TINY, *data,
            "--bind", f"CHECKPOINT = '{checkpoint}'", "--output_dir", str(out)]
    assert run.main(argv) == 0
    printed = capsys.readouterr().out
    assert "pretrained: alignment attention in the finding's mask" in printed
    assert {p.name for p in out.iterdir()} >= {
        "embedding_metrics.csv", "embedding_metrics.png", "grounding.csv",
        "grounding_summary.csv", "retrieval.csv", "zero_shot.csv", "spatial_smoothness.csv",
        "spatial_smoothness.png", "summary.json", "attention_pretrained.html",
        "attention_random_init.html", "config.gin", "run_info.json"}

    # Every sentence that names a finding is scored, for both models; the tiny model's
    # 2 x 2 regions of 32 px tile the 64 px image, so uniform attention's share is the
    # mask's area fraction.
    rows = _rows(out / "grounding.csv")
    for row in rows:
        assert float(row["uniform_share"]) == pytest.approx(float(row["area_fraction"]))
        assert 0.0 <= float(row["share"]) <= 1.0 and row["hit"] in ("0.0", "1.0")
    alignment = [r for r in rows if r["source"] == "alignment" and r["model"] == "pretrained"]
    assert alignment and len(alignment) == len(
        [r for r in rows if r["source"] == "alignment" and r["model"] == "random init"])
    # The checkpoint's weights were loaded: the random model (seed 1) attends elsewhere.
    shares = {m: [float(r["share"]) for r in rows if r["model"] == m and r["source"] == "alignment"]
              for m in ("pretrained", "random init")}
    assert shares["pretrained"] != shares["random init"]

    recall = {r["metric"]: float(r["value"]) for r in _rows(out / "retrieval.csv")
              if r["model"] == "pretrained"}
    assert set(recall) == {f"{d}_recall@{k}" for d in ("image_to_report", "report_to_image")
                           for k in (1, 5, 10)}
    # 8 analyzed pairs (2 full batches): every true report ranks in the top 10.
    assert recall["image_to_report_recall@10"] == recall["report_to_image_recall@10"] == 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pretrained"]["grounding_alignment"]["count"] == len(alignment)
    html = (out / "attention_pretrained.html").read_text()
    assert html.count("data:image/png;base64,") == len(list((out / "attention" / "pretrained").glob("*.png")))
