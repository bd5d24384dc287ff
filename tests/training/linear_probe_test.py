import json
import os

import keras
import numpy as np
import pytest

from lovt_keras import keys
from lovt_keras.data.downstream_batches import MASKS, downstream_splits
from lovt_keras.data.synthcxr import load_synthcxr, synthcxr_dir
from lovt_keras.models.image_encoder import FEATURE_NAMES
from lovt_keras.models.linear_segmentation import LinearSegmentationHead
from lovt_keras.models.segmentation_task import SegmentationTask
from lovt_keras.training.evaluation import run_task
from lovt_keras.training.linear_probe import CachedFeatureBatches, FeatureStore
from lovt_keras.training.tasks import synth_task

SIZES = dict(num_train=12, num_validation=6, num_test=6, image_size=64, seed=1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    cache = tmp_path_factory.mktemp("synthcxr")
    load_synthcxr(cache, **SIZES)
    return synthcxr_dir(cache, **SIZES)


def tiny_encoder(image_size: int = 64) -> keras.Model:
    """A stand-in for the ResNet (feature maps conv1..conv5 at strides 2..32, BatchNorm in
    every stage) that builds and compiles in a fraction of the time."""
    images = keras.Input((image_size, image_size, 1), name=keys.IMAGES)
    x, outputs = images, {}
    for name, width in zip(FEATURE_NAMES, (4, 4, 6, 8, 16)):
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        outputs[name] = x
    return keras.Model(images, outputs, name="tiny_encoder")


@pytest.fixture(scope="module")
def encoder():
    keras.utils.set_random_seed(0)
    model = tiny_encoder()
    # Non-trivial BatchNorm statistics, as in a pretrained encoder.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.1, np.float32))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 2.0, np.float32))
    return model


def test_cached_batches_hold_the_encoder_features_of_the_same_rows(folder, encoder):
    base = downstream_splits(folder, "segmentation", classes=["opacity", "effusion"],
                             batch_size=5, seed=7)["train"]
    store = FeatureStore()
    features = store.get("key", encoder, base, ["conv5", "conv4"])
    assert features["conv5"].shape == (12, 2, 2, 16) and features["conv4"].shape == (12, 4, 4, 8)
    assert store.get("key", None, base, ["conv5"]) is features  # cached: nothing computed
    direct = encoder(base.images(np.arange(12)), training=False)
    direct = {name: keras.ops.convert_to_numpy(direct[name]) for name in ("conv4", "conv5")}
    cached = CachedFeatureBatches(base, features)
    assert len(cached) == len(base) == 3
    for epoch in (0, 1):
        cached.set_epoch(epoch)
        base.set_epoch(epoch)
        for index in range(3):
            got, want = cached[index], base[index]
            rows = base.batch_rows(index)
            np.testing.assert_array_equal(got[MASKS], want[MASKS])
            for name in ("conv4", "conv5"):
                np.testing.assert_allclose(got[name], direct[name][rows], rtol=1e-5, atol=1e-6)
    # Epochs advance after a complete epoch only.
    cached.set_epoch(0)
    cached.on_epoch_end()
    assert cached.epoch == 0
    cached.on_epoch_begin()
    for index in range(3):
        cached[index]
    cached.on_epoch_end()
    assert cached.epoch == 1
    # Fixed-length epochs of the base (low-label tasks) carry over.
    stream = downstream_splits(folder, "segmentation", batch_size=4, label_fraction=0.5,
                               train_steps_per_epoch=3, seed=2)["train"]
    cached = CachedFeatureBatches(stream, store.get("half", encoder, stream, ["conv5"]))
    assert len(cached) == len(stream) == 3 and stream.num_rows == 6
    cached.set_epoch(4)
    stream.set_epoch(4)
    np.testing.assert_array_equal(cached[2][MASKS], stream[2][MASKS])


def test_masks_read_once_give_the_same_batches(folder, encoder):
    splits = downstream_splits(folder, "segmentation", classes=["effusion", "opacity"],
                               batch_size=5, seed=3)
    base = splits["train"]
    store = FeatureStore()
    packed = store.packed_masks((base.name, base.num_rows), base)
    assert packed.dtype == np.uint8 and packed.shape == (12, 64, 64)
    # Counted apart from the feature maps' budgets.
    assert store.mask_bytes == 12 * 64 * 64 and store.memory_bytes == store.disk_bytes == 0
    assert store.packed_masks((base.name, base.num_rows), None) is packed  # kept
    # Two classes of the stored ones: bit c of a packed pixel is class c.
    names = base.class_names
    bits = [names.index("effusion"), names.index("opacity")]
    assert any((packed >> b & 1).any() for b in bits)
    features = store.get("key", encoder, base, ["conv5"])
    read, kept = CachedFeatureBatches(base, features), CachedFeatureBatches(base, features, packed)
    for epoch in (0, 1):
        read.set_epoch(epoch)
        kept.set_epoch(epoch)
        base.set_epoch(epoch)
        for index in range(len(base)):
            rows = base.batch_rows(index)
            want = np.stack([(packed[rows] >> b) & 1 for b in bits], -1).astype(np.float32)
            np.testing.assert_array_equal(kept[index][MASKS], want)
            np.testing.assert_array_equal(read[index][MASKS], want)
            np.testing.assert_array_equal(base.targets(rows, packed_masks=packed)[MASKS], want)
    with pytest.raises(ValueError, match="packed_masks has 6 rows"):
        CachedFeatureBatches(base, features, packed[:6])
    with pytest.raises(ValueError, match="packed_masks has 6 rows"):
        base.targets([0], packed_masks=packed[:6])
    detection = downstream_splits(folder, "detection", batch_size=4)["train"]
    with pytest.raises(ValueError, match="detection task has no masks"):
        detection.packed_masks([0])


def test_feature_store_spills_to_memory_maps_beyond_its_budget(folder, encoder):
    base = downstream_splits(folder, "segmentation", batch_size=4)["validation"]
    in_memory = FeatureStore().get(0, encoder, base, ["conv5"])["conv5"]
    store = FeatureStore(max_memory_bytes=0, chunk_size=4)
    on_disk = store.get(0, encoder, base, ["conv5"])["conv5"]
    assert isinstance(on_disk, np.memmap) and store.memory_bytes == 0
    assert store.disk_bytes == on_disk.size * 4
    np.testing.assert_allclose(on_disk, in_memory, rtol=1e-5, atol=1e-6)
    folder_path = store._folder
    assert os.path.isdir(folder_path)
    store.close()
    assert not os.path.exists(folder_path) and len(store) == 0


def test_cached_task_needs_its_feature_maps(encoder):
    head = LinearSegmentationHead(1, output_size=(64, 64))
    task = SegmentationTask(encoder, head, feature_inputs=["conv5"])
    assert task.frozen and not encoder.trainable and task.input_keys == ("conv5",)
    conv5 = np.random.default_rng(0).normal(size=(2, 2, 2, 16)).astype(np.float32)
    logits = task({"conv5": conv5})
    assert tuple(logits.shape) == (2, 64, 64, 1)
    # The head on the maps equals the head on the images' maps (same head object).
    on_images = SegmentationTask(encoder, head)
    images = np.random.default_rng(1).normal(size=(2, 64, 64, 1)).astype(np.float32)
    maps = keras.ops.convert_to_numpy(encoder(images, training=False)["conv5"])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(task({"conv5": maps})),
                               keras.ops.convert_to_numpy(on_images(images)), atol=1e-5)
    with pytest.raises(KeyError, match="no feature map"):
        task({keys.IMAGES: np.zeros((2, 64, 64, 1), np.float32)})
    with pytest.raises(ValueError, match="frozen"):
        SegmentationTask(encoder, head, frozen=False, feature_inputs=("conv5",))
    with pytest.raises(ValueError, match="stays frozen"):
        task.frozen = False
    encoder.trainable = True


def _cached_and_on_images(task, tmp_path, learning_rate, seed, logged):
    """Runs ``task`` on cached maps and on the images (same seed; the tiny encoder is
    built under the run's seed, so it is the same in both runs) and asserts the same
    per-epoch logs (``logged`` among them), validation and test metrics, and that the
    head learned (the loss moved)."""
    results, histories = {}, {}
    for cached in (True, False):
        out = tmp_path / str(cached)
        results[cached] = run_task(task, tiny_encoder, learning_rate, seed=seed,
                                   output_dir=out, use_feature_cache=cached)
        histories[cached] = json.loads((out / "history.json").read_text())
    assert results[True]["cached_features"] and not results[False]["cached_features"]
    assert set(histories[True]) == set(histories[False]) >= set(logged)
    for name in histories[True]:
        np.testing.assert_allclose(histories[True][name], histories[False][name], rtol=1e-4,
                                   atol=1e-5, err_msg=name)
    for split in ("val", "test"):
        assert results[True][split].keys() == results[False][split].keys()
        for name, value in results[True][split].items():
            np.testing.assert_allclose(value, results[False][split][name], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{split} {name}")
    assert histories[True]["loss"][0] != histories[True]["loss"][1]


def test_cached_path_equals_training_on_the_images(folder, tmp_path):
    """Same seed: the same losses, validation Dice per epoch and test Dice."""
    task = synth_task(
        "synth_opacity_linear_100", image_size=64, batch_size=4, max_epochs=2,
        dataset_options=dict(SIZES, cache_dir=str(folder.parent)),
    )
    task.dataset_options.pop("image_size")
    _cached_and_on_images(task, tmp_path, 1e-2, 3, {"loss", "dice", "val_loss", "val_dice"})


@pytest.mark.large
def test_cached_detection_equals_training_on_the_images(folder, tmp_path):
    """Frozen YOLOv3 on cached conv3-conv5 maps: the same losses, validation and test mAP."""
    task = synth_task(
        "synth_opacity_yolov3_frozen_100", image_size=64, batch_size=4, max_epochs=2,
        head_options=dict(filters=(8, 8, 8)),
        dataset_options=dict(SIZES, cache_dir=str(folder.parent)),
    )
    task.dataset_options.pop("image_size")
    _cached_and_on_images(task, tmp_path, 1e-3, 2, {
        "loss", "yolo_confidence_loss", "val_loss", "val_mAP", "val_mAP@0.5"})


def test_cache_is_skipped_when_it_does_not_fit_the_budget(folder):
    task = synth_task("synth_opacity_linear_100", image_size=64, batch_size=4, max_epochs=1,
                      dataset_options=dict(SIZES, cache_dir=str(folder.parent)))
    task.dataset_options.pop("image_size")
    small = FeatureStore(max_memory_bytes=1000, max_disk_bytes=0)
    result = run_task(task, tiny_encoder, 1e-2, seed=0, feature_store=small)
    assert not result["cached_features"] and len(small) == 0
    result = run_task(task, tiny_encoder, 1e-2, seed=0, feature_store=FeatureStore())
    assert result["cached_features"]


def test_store_passes_the_images_as_a_map(folder, encoder):
    base = downstream_splits(folder, "segmentation", classes=["opacity"], batch_size=5)["test"]
    features = FeatureStore().get("key", encoder, base, ["conv1", keys.IMAGES])
    np.testing.assert_array_equal(features[keys.IMAGES], base.images(np.arange(base.num_rows)))
    assert features["conv1"].shape == (6, 32, 32, 4)
    assert not FeatureStore(max_memory_bytes=10, max_disk_bytes=10**9).can_hold(100, disk=False)
    assert FeatureStore(max_memory_bytes=10, max_disk_bytes=10**9).can_hold(100)


def _unet_task(folder, max_epochs=2):
    # The opacity task (findings in most images) with a U-Net head: 12 train images
    # hold too few pneumothoraces for a loss that moves.
    task = synth_task(
        "synth_opacity_linear_100", image_size=64, batch_size=4, max_epochs=max_epochs,
        head="unet",
        head_options=dict(bridge_filters=8, up_filters=(8, 8, 8, 8, 8)),
        dataset_options=dict(SIZES, cache_dir=str(folder.parent)),
    )
    task.dataset_options.pop("image_size")
    return task


def test_cached_unet_equals_training_on_the_images(folder, tmp_path):
    """Frozen U-Net on cached conv1-conv5 maps and images: the same losses, validation
    and test Dice (its head has BatchNorm in training mode, fed the same batches)."""
    _cached_and_on_images(_unet_task(folder), tmp_path, 1e-2, 4, {"loss", "dice", "val_dice"})


def test_unet_cache_stays_in_memory(folder):
    """The U-Net's maps are cached only within the memory budget, never on disk; the
    linear head's may spill to disk."""
    task = _unet_task(folder, max_epochs=1)
    # 12 + 6 + 6 rows of conv1..conv5 (4x32x32 + 4x16x16 + 6x8x8 + 8x4x4 + 16x2x2 floats)
    # and the 64 x 64 images: 4 * 24 * (4096 + 1024 + 384 + 128 + 64 + 4096) bytes.
    needed = 4 * 24 * (4096 + 1024 + 384 + 128 + 64 + 4096)
    disk_only = FeatureStore(max_memory_bytes=needed - 1, max_disk_bytes=10**9)
    result = run_task(task, tiny_encoder, 1e-2, seed=0, feature_store=disk_only)
    assert not result["cached_features"] and len(disk_only) == 0
    enough = FeatureStore(max_memory_bytes=needed, max_disk_bytes=0)
    result = run_task(task, tiny_encoder, 1e-2, seed=0, feature_store=enough)
    assert result["cached_features"] and enough.memory_bytes == needed and enough.disk_bytes == 0


def test_cached_detection_metrics_equal_the_image_path(folder, encoder):
    from lovt_keras.models.detection_metrics_callback import DetectionMetricsCallback
    from lovt_keras.models.detection_task import DetectionTask
    from lovt_keras.models.yolov3 import YOLOv3Head
    from lovt_keras.training.evaluation import scaled_anchors

    base = downstream_splits(folder, "detection", batch_size=3)["test"]
    features = FeatureStore().get(0, encoder, base, ["conv3", "conv4", "conv5"])
    head = YOLOv3Head(base.num_classes, filters=(8, 8, 8))
    common = dict(anchors=scaled_anchors(64), image_size=(64, 64))
    on_images = DetectionTask(encoder, head, frozen=True, **common)
    on_features = DetectionTask(encoder, head, feature_inputs=head.feature_layers, **common)
    assert on_features.image_size_of({}) == (64, 64)
    with pytest.raises(ValueError, match="image_size"):
        DetectionTask(encoder, head, feature_inputs=head.feature_layers)
    for metric in ("map", "froc"):
        # Threshold 0: every prediction survives to NMS, so the mAP is non-trivial.
        # One callback class scores both: the model reads the entries it needs.
        want = DetectionMetricsCallback(base, metric=metric, conf_threshold=0.0).compute(on_images)
        got = DetectionMetricsCallback(CachedFeatureBatches(base, features), metric=metric,
                                       conf_threshold=0.0).compute(on_features)
        assert got.keys() == want.keys()
        assert metric == "froc" or want["mAP@0.5"] > 0
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, err_msg=name)
    encoder.trainable = True
