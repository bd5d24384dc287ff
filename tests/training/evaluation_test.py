import dataclasses
import json
import math

import keras
import numpy as np
import pytest

from lovt_keras import keys
from lovt_keras.models import ResNetImageEncoder
from lovt_keras.models.encoder_contract import (
    FEATURE_NAMES,
    check_image_encoder,
    describe_encoder,
)
from lovt_keras.models.linear_segmentation import LinearSegmentationHead
from lovt_keras.models.unet import UNetHead
from lovt_keras.models.yolov3 import YOLOv3Head
from lovt_keras.training import evaluation as ev
from lovt_keras.training.downstream_heads import (
    DOWNSTREAM_HEADS,
    DownstreamHead,
    downstream_head,
    register_downstream_head,
)
from lovt_keras.training.tasks import synth_task

SIZES = dict(num_train=12, num_validation=6, num_test=6, seed=1)


def _task(**overrides):
    fields = dict(name="t", dataset="synthcxr", task_type="segmentation", head="linear",
                  frozen=True, lr_grid=(1e-2, 1e-3), batch_size=4, max_epochs=1, metric="dice")
    fields.update(overrides)
    return ev.EvalTask(**fields)


# --------------------------------------------------------------------------------------
# Protocol arithmetic
# --------------------------------------------------------------------------------------


def test_confidence_interval_is_the_papers_formula():
    mean, ci = ev.confidence_interval([0.1, 0.2, 0.3, 0.4, 0.5])
    # std(ddof=1) = sqrt(0.025) = 0.1581139; 1.96 * 0.1581139 / sqrt(5) = 0.1385929
    assert mean == pytest.approx(0.3)
    assert ci == pytest.approx(0.1385929, abs=1e-7)
    assert ev.confidence_interval([0.46, 0.46, 0.46]) == (pytest.approx(0.46), 0.0)
    mean, ci = ev.confidence_interval([0.2])
    assert mean == 0.2 and math.isnan(ci)
    with pytest.raises(ValueError):
        ev.confidence_interval([])


def test_select_learning_rate_takes_the_best_validation_value():
    assert ev.select_learning_rate({3e-2: 0.41, 1e-2: 0.47, 3e-3: 0.45}) == 1e-2
    assert ev.select_learning_rate({1e-3: 0.3, 3e-4: 0.3}) == 1e-3  # tie: grid order
    assert ev.select_learning_rate({1e-3: float("nan"), 3e-4: 0.1}) == 3e-4
    assert ev.select_learning_rate({1e-3: float("nan"), 3e-4: float("nan")}) == 1e-3


class FakeRun:
    """Validation metric by lr, test metric by (lr, seed); records the calls."""

    def __init__(self, val_by_lr):
        self.val_by_lr = val_by_lr
        self.calls = []

    def __call__(self, task, factory, lr, seed, output_dir=None, **kwargs):
        self.calls.append((lr, seed))
        assert "feature_store" in kwargs
        return {"val_metric": self.val_by_lr[lr], "test_metric": 0.1 * seed + lr, "seed": seed,
                "learning_rate": lr}


def test_evaluate_task_searches_on_validation_then_runs_the_seeds(tmp_path):
    task = _task(lr_grid=(3e-2, 1e-2, 3e-3), number=7, label="7 RSNA Lin 1%")
    fake = FakeRun({3e-2: 0.40, 1e-2: 0.47, 3e-3: 0.45})
    summary = ev.evaluate_task(task, ev.random_init(18), seeds=3, output_dir=tmp_path, run=fake)
    # One run per lr at seed 0, then seeds 1 and 2 at the best lr (seed 0 is reused).
    assert fake.calls == [(3e-2, 0), (1e-2, 0), (3e-3, 0), (1e-2, 1), (1e-2, 2)]
    assert summary["learning_rate"] == 1e-2
    assert summary["lr_search"] == {"0.03": 0.40, "0.01": 0.47, "0.003": 0.45}
    assert summary["test"] == pytest.approx([0.01, 0.11, 0.21])
    assert summary["mean"] == pytest.approx(0.11)
    assert summary["ci95"] == pytest.approx(1.96 * 0.1 / math.sqrt(3))
    assert (summary["number"], summary["label"], summary["metric"]) == (7, "7 RSNA Lin 1%", "dice")
    # The summary is saved; a second call resumes from it without running anything.
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["mean"] == pytest.approx(summary["mean"])
    again = ev.evaluate_task(task, ev.random_init(18), seeds=3, output_dir=tmp_path, run=fake)
    assert len(fake.calls) == 5 and again["learning_rate"] == 1e-2


def test_stored_results_of_another_recipe_are_not_reused(tmp_path):
    task = _task(lr_grid=(1e-2,), label="old label", description="old")
    fake = FakeRun({1e-2: 0.5})
    ev.evaluate_task(task, ev.random_init(18), seeds=2, output_dir=tmp_path, run=fake)
    # Naming fields may change; the summary is reused.
    renamed = _task(lr_grid=(1e-2,), label="new label", description="new", number=3)
    ev.evaluate_task(renamed, ev.random_init(18), seeds=2, output_dir=tmp_path, run=fake)
    assert len(fake.calls) == 2
    # Another recipe, encoder or seed list is refused, naming the file and the fields.
    changed = {
        "max_epochs: stored 1, now 5": (_task(lr_grid=(1e-2,), max_epochs=5), ev.random_init(18), 2),
        "steps_per_epoch: stored None, now 7":
            (_task(lr_grid=(1e-2,), steps_per_epoch=7), ev.random_init(18), 2),
        "encoder: stored 'random init ResNet-18', now 'random init ResNet-50'":
            (_task(lr_grid=(1e-2,)), ev.random_init(50), 2),
        "seeds: stored [0, 1], now [0, 1, 2]": (_task(lr_grid=(1e-2,)), ev.random_init(18), 3),
    }
    for message, (other, factory, seeds) in changed.items():
        with pytest.raises(ev.StaleResultError) as error:
            ev.evaluate_task(other, factory, seeds=seeds, output_dir=tmp_path, run=fake)
        assert str(tmp_path / "summary.json") in str(error.value) and message in str(error.value)
    assert len(fake.calls) == 2
    # A file written before a field existed counts it at its default.
    saved = json.loads((tmp_path / "summary.json").read_text())
    del saved["task_config"]["steps_per_epoch"]
    (tmp_path / "summary.json").write_text(json.dumps(saved))
    ev.evaluate_task(task, ev.random_init(18), seeds=2, output_dir=tmp_path, run=fake)
    with pytest.raises(ev.StaleResultError, match="steps_per_epoch"):
        ev.evaluate_task(_task(lr_grid=(1e-2,), steps_per_epoch=7), ev.random_init(18),
                         seeds=2, output_dir=tmp_path, run=fake)


def test_a_single_rate_needs_no_search():
    fake = FakeRun({1e-3: 0.2})
    summary = ev.evaluate_task(_task(lr_grid=(1e-3,)), ev.random_init(18), seeds=[4, 5], run=fake)
    assert fake.calls == [(1e-3, 4), (1e-3, 5)] and summary["lr_search"] == {}
    assert summary["seeds"] == [4, 5]


def test_runs_that_learned_nothing_are_counted_not_dropped():
    assert ev.failed_run({"val_metric": 0.0, "test_metric": 0.2})
    assert ev.failed_run({"val_metric": 0.3, "test_metric": 0.0})
    assert ev.failed_run({"val_metric": float("nan"), "test_metric": 0.2})
    assert not ev.failed_run({"val_metric": 1e-4, "test_metric": 1e-4})
    fake = FakeRun({1e-3: 0.0})
    summary = ev.evaluate_task(_task(lr_grid=(1e-3,)), ev.random_init(18), seeds=[0, 1, 2],
                               run=fake)
    assert summary["failed_seeds"] == [0, 1, 2]  # every run's validation value is 0
    # They stay in the mean: (0.001 + 0.101 + 0.201) / 3.
    assert summary["mean"] == pytest.approx(0.101)
    from lovt_keras.analysis.results_table import results_table

    table = results_table([dict(summary, method="M")])
    assert table.iloc[0, 0].endswith(" [3/3 failed]")


def test_evaluate_encoders_runs_every_pair_and_makes_the_table(tmp_path):
    from lovt_keras.analysis.results_table import results_table

    fake = FakeRun({1e-2: 0.5, 1e-3: 0.6})
    tasks = [_task(name="a"), _task(name="b", lr_grid=(1e-2,), label="B")]
    encoders = {"Random": ev.random_init(18), "LoVT": ev.random_init(18)}
    lines = []
    results = ev.evaluate_encoders(encoders, tasks, seeds=2, output_dir=tmp_path, run=fake,
                                   log=lines.append)
    assert [(r["method"], r["task"]) for r in results] == [
        ("Random", "a"), ("Random", "b"), ("LoVT", "a"), ("LoVT", "b")]
    assert (tmp_path / "LoVT" / "b" / "summary.json").is_file()
    assert lines[0] == "Random | a: dice 5.1 ± 9.8 (lr 0.001, 0 s)"
    table = results_table(results)
    assert table.loc["LoVT"].tolist() == ["5.1 ± 9.8", "6.0 ± 9.8"]
    with pytest.raises(ValueError, match="unique"):
        ev.evaluate_encoders(encoders, [tasks[0], tasks[0]], run=fake)


def test_task_definitions_are_checked():
    with pytest.raises(ValueError, match="a yolov3 head is a detection head"):
        _task(head="yolov3")
    with pytest.raises(ValueError, match="metric of a segmentation task"):
        _task(metric="mAP")
    with pytest.raises(ValueError, match="label_fraction"):
        _task(label_fraction=0.0)
    with pytest.raises(ValueError, match="no warm-up"):
        _task(warmup_steps=20)
    task = _task(lr_grid=[1, 2e-3])
    assert task.lr_grid == (1.0, 2e-3) and task.monitor == "val_dice" and task.column == "t"


def test_heads_come_from_one_registry():
    assert {name: head.task_type for name, head in DOWNSTREAM_HEADS.items()} == {
        "linear": "segmentation", "unet": "segmentation", "yolov3": "detection"}
    assert [name for name, head in DOWNSTREAM_HEADS.items() if head.cacheable] == [
        "linear", "unet", "yolov3"]
    assert [name for name, head in DOWNSTREAM_HEADS.items() if not head.cache_on_disk] == ["unet"]
    assert DOWNSTREAM_HEADS["unet"].reads_images(UNetHead(1))
    assert not DOWNSTREAM_HEADS["unet"].reads_images(
        UNetHead(1, up_filters=(8, 8, 8, 8), skip_layers=("conv4", "conv3", "conv2", "conv1")))
    assert not DOWNSTREAM_HEADS["yolov3"].reads_images(YOLOv3Head(1))
    linear = ev.build_head(_task(image_size=64, head_options=dict(feature_layer="conv4")), 2)
    assert isinstance(linear, LinearSegmentationHead) and linear.output_size == (64, 64)
    assert (linear.num_classes, linear.feature_layer) == (2, "conv4")
    assert DOWNSTREAM_HEADS["linear"].feature_layers(linear) == ("conv4",)
    assert DOWNSTREAM_HEADS["unet"].feature_layers(UNetHead(1)) == FEATURE_NAMES[::-1]
    assert DOWNSTREAM_HEADS["yolov3"].feature_layers(YOLOv3Head(1)) == ("conv5", "conv4", "conv3")
    assert ev.uses_feature_cache(_task()) and ev.uses_feature_cache(_task(head="unet"))
    assert not ev.uses_feature_cache(_task(head="unet", frozen=False, lr_grid=(1e-3,)))
    with pytest.raises(ValueError, match="the heads are"):
        downstream_head("fpn")
    with pytest.raises(ValueError, match="head must be one of"):
        _task(head="fpn")
    with pytest.raises(ValueError, match="already registered"):
        register_downstream_head("linear", DOWNSTREAM_HEADS["linear"])
    with pytest.raises(ValueError, match="task_type"):
        DownstreamHead(build=UNetHead, task_type="classification", feature_layers=tuple)


def test_anchors_scale_with_the_image_size():
    from lovt_keras.models.yolov3 import LOVT_ANCHORS

    np.testing.assert_allclose(ev.scaled_anchors(224), LOVT_ANCHORS)
    np.testing.assert_allclose(ev.scaled_anchors(64)[0, 0], (64.64 * 64 / 224, 48.6 * 64 / 224))


# --------------------------------------------------------------------------------------
# Encoder factories
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_encoder(tmp_path_factory):
    keras.utils.set_random_seed(5)
    encoder = ResNetImageEncoder(depth=18, image_size=64)
    folder = tmp_path_factory.mktemp("run")
    encoder.save(folder / "image_encoder.keras")
    encoder.save_weights(folder / "encoder.weights.h5")
    return encoder, folder


def _same_weights(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def test_checkpoint_and_weights_file_factories_copy_the_weights(saved_encoder):
    encoder, folder = saved_encoder
    for factory in (ev.from_checkpoint(folder), ev.from_checkpoint(folder / "image_encoder.keras"),
                    ev.from_weights_file(folder / "encoder.weights.h5", depth=18)):
        assert factory.deterministic
        built = factory(32)  # any evaluation size: the weights do not depend on it
        assert isinstance(built, ResNetImageEncoder) and built.image_size == 32
        assert built.depth == 18 and _same_weights(built, encoder)
    with pytest.raises(FileNotFoundError, match="image_encoder.keras"):
        ev.from_checkpoint(folder / "missing")
    with pytest.raises(FileNotFoundError):
        ev.from_weights_file(folder / "missing.weights.h5")


def test_random_init_follows_the_global_seed():
    factory = ev.random_init(18)
    assert not factory.deterministic and factory.description == "random init ResNet-18"
    keras.utils.set_random_seed(1)
    a = factory(32)
    keras.utils.set_random_seed(1)
    b = factory(32)
    keras.utils.set_random_seed(2)
    c = factory(32)
    assert _same_weights(a, b) and not _same_weights(a, c)


# --------------------------------------------------------------------------------------
# End to end on SynthCXR
# --------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="lovt_keras_tests")
class PlainConvEncoder(keras.Model):
    """A backbone that is not a ResNet but meets the image encoder contract: five
    stride-2 conv + BatchNorm + ReLU stages named conv1..conv5, an ``image_size``, a
    ``get_config`` of its constructor arguments, registered for loading."""

    def __init__(self, image_size=64, widths=(4, 4, 6, 8, 16), **kwargs):
        images = keras.Input((image_size, image_size, 1), name=keys.IMAGES)
        x, outputs = images, {}
        for name, width in zip(FEATURE_NAMES, widths):
            x = keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False,
                                    name=f"{name}_conv")(x)
            x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
            outputs[name] = keras.layers.ReLU(name=f"{name}_relu")(x)
            x = outputs[name]
        super().__init__(images, outputs, **kwargs)
        self.image_size = image_size
        self.widths = tuple(int(w) for w in widths)

    def get_config(self):
        return {"image_size": self.image_size, "widths": list(self.widths), "name": self.name,
                "trainable": self.trainable}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def test_a_new_backbone_and_a_new_head_plug_into_the_evaluation(tmp_path):
    """No evaluation code names the backbone or the head: the contract and one registry
    entry suffice. A saved PlainConvEncoder is rebuilt per run at the task's size, and a
    linear probe on its conv4 map trains on cached features and on the images alike."""
    keras.utils.set_random_seed(3)
    encoder = PlainConvEncoder(image_size=48)
    check_image_encoder(encoder)
    assert describe_encoder(encoder) == "PlainConvEncoder"
    (tmp_path / "run").mkdir()
    encoder.save(tmp_path / "run" / "image_encoder.keras")
    factory = ev.from_checkpoint(tmp_path / "run")
    rebuilt = factory(64)
    assert type(rebuilt) is PlainConvEncoder and rebuilt.image_size == 64
    assert _same_weights(rebuilt, encoder)
    register_downstream_head("linear_conv4", DownstreamHead(
        build=lambda num_classes, image_size, **options: LinearSegmentationHead(
            num_classes, feature_layer="conv4", output_size=(image_size, image_size), **options),
        task_type="segmentation", feature_layers=lambda head: (head.feature_layer,),
        cacheable=True,
    ))
    try:
        task = synth_task("synth_opacity_linear_100", image_size=64, batch_size=4, max_epochs=2,
                          lr_grid=(1e-2,), head="linear_conv4",
                          dataset_options=dict(SIZES, cache_dir=str(tmp_path / "c")))
        results = {cached: ev.run_task(task, factory, 1e-2, seed=0, use_feature_cache=cached)
                   for cached in (True, False)}
    finally:
        DOWNSTREAM_HEADS.pop("linear_conv4")
    assert results[True]["cached_features"] and not results[False]["cached_features"]
    for split in ("val", "test"):
        for name, value in results[True][split].items():
            np.testing.assert_allclose(value, results[False][split][name], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{split} {name}")
    assert 0.0 <= results[True]["test_metric"] <= 1.0 and results[True]["epochs"] == 2
    assert results[True]["encoder"] == f"checkpoint {tmp_path / 'run' / 'image_encoder.keras'}"


def test_an_encoder_without_the_heads_maps_is_refused(tmp_path):
    images = keras.Input((64, 64, 1))
    conv5 = keras.layers.Conv2D(4, 3, strides=32, padding="same")(images)
    only_conv5 = keras.Model(images, {"conv5": conv5})
    task = synth_task("synth_opacity_yolov3_frozen_100", image_size=64, batch_size=4,
                      max_epochs=1, dataset_options=dict(SIZES, cache_dir=str(tmp_path / "c")))
    with pytest.raises(TypeError, match=r"no feature map\(s\) \['conv4', 'conv3'\]"):
        ev.run_task(task, lambda image_size: only_conv5, 1e-3, seed=0)
    saved = tmp_path / "not_an_encoder.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)]).save(saved)
    with pytest.raises(TypeError, match="not an image encoder"):
        ev.from_checkpoint(saved)(64)


def test_evaluate_task_end_to_end_on_a_tiny_synthcxr(tmp_path):
    """ResNet-18 at 64 px, frozen linear opacity segmentation, 2 seeds of 2 epochs."""
    task = synth_task("synth_opacity_linear_100", image_size=64, batch_size=4, max_epochs=2,
                      lr_grid=(1e-2,), dataset_options=dict(SIZES, cache_dir=str(tmp_path / "c")))
    summary = ev.evaluate_task(task, ev.random_init(18), seeds=2, output_dir=tmp_path / "out")
    assert summary["seeds"] == [0, 1] and len(summary["runs"]) == 2
    for run in summary["runs"]:
        assert run["cached_features"] and run["epochs"] == 2 and run["train_rows"] == 12
        assert run["train_batches_per_epoch"] == 3
        assert 0.0 <= run["test_metric"] <= 1.0 and 0.0 <= run["val_metric"] <= 1.0
        assert run["test"]["dice"] == run["test_metric"] == run["test"]["dice/opacity"]
        assert np.isfinite(run["test"]["loss"])
    assert np.isfinite(summary["mean"]) and np.isfinite(summary["ci95"])
    assert summary["mean"] == pytest.approx(np.mean(summary["test"]))
    assert (tmp_path / "out" / "lr_0.01" / "seed_1" / "result.json").is_file()
    # Low-label recipe: 25 % of 12 rows, but the epoch of the 100 % task on 12 rows
    # (3 batches of 4).
    low = synth_task("synth_opacity_linear_10", image_size=64, batch_size=4, max_epochs=1,
                     label_fraction=0.25, dataset_options=dict(SIZES, cache_dir=str(tmp_path / "c")),
                     num_train=12, low_label_num_train=12)
    assert low.steps_per_epoch == 3 and low.dataset_options["num_train"] == 12
    result = ev.run_task(low, ev.random_init(18), 1e-2, seed=0, output_dir=tmp_path / "low")
    assert result["train_rows"] == 3 and result["train_batches_per_epoch"] == 3
    assert result["task_config"]["steps_per_epoch"] == 3
    history = json.loads((tmp_path / "low" / "history.json").read_text())
    assert len(history["loss"]) == 1
    with pytest.raises(ev.StaleResultError, match="label_fraction"):
        ev.run_task(dataclasses.replace(low, label_fraction=0.5), ev.random_init(18), 1e-2,
                    seed=0, output_dir=tmp_path / "low")


@pytest.mark.large
@pytest.mark.parametrize("name", ["synth_opacity_yolov3_frozen_100",
                                  "synth_foreign_object_yolov3_frozen",
                                  "synth_pneumothorax_unet_finetune",
                                  "synth_findings_linear"])
def test_every_task_type_runs_end_to_end(tmp_path, name):
    task = synth_task(name, image_size=64, batch_size=4, max_epochs=2, lr_grid=(1e-3,),
                      dataset_options=dict(SIZES, cache_dir=str(tmp_path / "c")))
    result = ev.run_task(task, ev.random_init(18), 1e-3, seed=0)
    assert result["epochs"] == 2 and np.isfinite(result["test_metric"])
    assert 0.0 <= result["test_metric"] <= 1.0
    expected = {"mAP": "mAP@0.5", "froc": "froc", "dice": f"dice/{task.classes[0]}"}[task.metric]
    assert expected in result["test"]
    if task.warmup_steps:
        assert result["warmup_steps"] == task.warmup_steps
