import keras
import numpy as np
import pytest

from lovt_keras import keys
from lovt_keras.metrics import mean_average_precision, pooled_dice
from lovt_keras.models import ResNetImageEncoder
from lovt_keras.models.downstream import (
    BOX_CLASSES,
    BOX_MASK,
    BOXES,
    MASKS,
    DetectionMetricsCallback,
    DetectionTask,
    SegmentationTask,
    downstream_callbacks,
    downstream_optimizer,
    fit_with_warmup,
    iterate_batches,
    predict_boxes,
)
from lovt_keras.models.image_encoder import FEATURE_NAMES
from lovt_keras.models.linear_segmentation import LinearSegmentationHead
from lovt_keras.models.unet import UNetHead
from lovt_keras.models.yolov3 import LOSS_COMPONENTS, YOLOv3Head, yolo_loss_components
from lovt_keras.testing.test_case import saved_and_loaded, to_numpy


def tiny_encoder(image_size=64):
    """A stand-in for the ResNet with the same outputs (conv1..conv5, strides 2..32) and
    BatchNorm in every stage; much faster to compile than a ResNet-18."""
    images = keras.Input((image_size, image_size, 1), name=keys.IMAGES)
    x, outputs = images, {}
    for name, width in zip(FEATURE_NAMES, (4, 4, 6, 8, 8)):
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        outputs[name] = x
    return keras.Model(images, outputs, name="tiny_encoder")


def segmentation_batch(n=4, size=64, classes=2, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, size, size, 1)).astype("float32")
    masks = np.zeros((n, size, size, classes), "float32")
    for i in range(n):
        for c in range(classes):
            y, x = rng.integers(0, size - 20, size=2)
            masks[i, y:y + 20, x:x + 16, c] = 1.0
    return {keys.IMAGES: images, MASKS: masks}


def detection_batch(n=4, size=64, seed=0):
    rng = np.random.default_rng(seed)
    boxes = np.zeros((n, 3, 4), "float32")
    mask = np.zeros((n, 3), bool)
    for i in range(n):
        count = 1 + i % 3
        xy = rng.uniform(0, size / 2, size=(count, 2))
        wh = rng.uniform(8, size / 2, size=(count, 2))
        boxes[i, :count] = np.concatenate([xy, wh], 1)
        mask[i, :count] = True
    return {
        keys.IMAGES: rng.normal(size=(n, size, size, 1)).astype("float32"),
        BOXES: boxes,
        BOX_CLASSES: rng.integers(0, 2, size=(n, 3)).astype("int32"),
        BOX_MASK: mask,
    }


def snapshot(layer):
    """Every weight, including BatchNorm moving statistics, by path."""
    return {w.path: to_numpy(w).copy() for w in layer.weights}


def changed(before, layer):
    return {path for path, value in snapshot(layer).items() if not np.array_equal(value, before[path])}


def _dice_loss_reference(masks, logits):
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return 1.0 - 2.0 * np.sum(probs * masks) / np.sum(probs + masks)


# --------------------------------------------------------------------------------------
# Frozen mode
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18():
    keras.utils.set_random_seed(0)
    return ResNetImageEncoder(depth=18, image_size=64)


def test_frozen_linear_segmentation_on_resnet18_trains_only_the_head(resnet18):
    task = SegmentationTask(resnet18, LinearSegmentationHead(num_classes=2), frozen=True)
    task(keras.Input((64, 64, 1)))  # builds the head without computing anything
    assert [w.path.split("/")[-1] for w in task.trainable_weights] == ["kernel", "bias"]
    encoder_before, head_before = snapshot(resnet18), snapshot(task.head)
    assert any("moving_mean" in path for path in encoder_before)
    task.compile(optimizer=downstream_optimizer(1e-2))
    history = task.fit(segmentation_batch(), batch_size=2, epochs=1, verbose=0,
                       shuffle=False).history
    assert np.isfinite(history["loss"][0]) and 0.0 <= history["dice"][0] <= 1.0
    # Neither the weights nor the BatchNorm statistics of the encoder moved; the head did.
    assert changed(encoder_before, resnet18) == set()
    assert changed(head_before, task.head) == set(head_before)


@pytest.mark.large
def test_frozen_unet_on_resnet18_trains_only_the_decoder(resnet18):
    head = UNetHead(2, bridge_filters=8, up_filters=(8, 8, 8, 8, 4))
    task = SegmentationTask(resnet18, head, frozen=True)
    assert tuple(task(keras.Input((64, 64, 1), batch_size=2)).shape) == (2, 64, 64, 2)
    assert len(task.trainable_weights) == len(head.trainable_weights)
    # The ResNet-18 widths reach the decoder: conv5 (512) and the conv1 skip (64).
    kernels = {w.path.split("/")[-2]: tuple(w.shape) for w in head.weights if "kernel" in w.path}
    assert kernels["bridge_0_conv"] == (3, 3, 512, 8) and kernels["up4_0_conv"] == (3, 3, 72, 8)
    encoder_before, head_before = snapshot(resnet18), snapshot(head)
    assert any("moving_mean" in path for path in encoder_before)
    task.compile(optimizer=downstream_optimizer(1e-2))
    history = task.fit(segmentation_batch(), batch_size=2, epochs=1, verbose=0,
                       shuffle=False).history
    assert np.isfinite(history["loss"][0]) and 0.0 <= history["dice"][0] <= 1.0
    # Neither the weights nor the BatchNorm statistics of the encoder moved; the decoder,
    # BatchNorm statistics included, did.
    assert changed(encoder_before, resnet18) == set()
    assert changed(head_before, head) == set(head_before)


@pytest.mark.large
def test_heads_on_resnet18_feature_maps(resnet18):
    images = keras.Input((64, 64, 1), batch_size=2)
    linear = SegmentationTask(resnet18, LinearSegmentationHead(2))
    assert tuple(linear(images).shape) == (2, 64, 64, 2)
    yolo = DetectionTask(resnet18, YOLOv3Head(num_classes=2, filters=(8, 8, 8)))
    shapes = {k: tuple(v.shape) for k, v in yolo(images).items()}
    assert shapes == {"yolo_conv5": (2, 2, 2, 3, 7), "yolo_conv4": (2, 4, 4, 3, 7),
                      "yolo_conv3": (2, 8, 8, 3, 7)}
    # ResNet-18 widths reach the heads: conv5 (512), conv4 (256) next to the lateral.
    kernels = {w.path.split("/")[-2]: tuple(w.shape) for w in yolo.head.weights
               if "kernel" in w.path}
    assert kernels["scale0_0_conv"] == (1, 1, 512, 8)
    assert kernels["scale1_0_conv"] == (1, 1, 8 + 256, 8)
    assert tuple(linear.head.classifier.kernel.shape) == (1, 1, 512, 2)


def test_frozen_task_uses_inference_batch_norm_and_pooled_dice():
    keras.utils.set_random_seed(0)
    encoder = tiny_encoder()
    task = SegmentationTask(encoder, LinearSegmentationHead(num_classes=2), frozen=True)
    batch = segmentation_batch()
    # Even with training=True the frozen encoder runs its BatchNorm in inference mode.
    features = encoder(batch[keys.IMAGES], training=False)
    expected = to_numpy(task.head({"conv5": features["conv5"], keys.IMAGES: batch[keys.IMAGES]}))
    np.testing.assert_allclose(to_numpy(task(batch, training=True)), expected, atol=1e-5)
    # evaluate(): the Dice loss (smp binary, per batch) and the pooled Dice of the set.
    task.compile(optimizer=downstream_optimizer(1e-3))
    logs = task.evaluate(batch, batch_size=2, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["dice"], np.mean(pooled_dice(batch[MASKS], expected,
                                                                 from_logits=True)), atol=1e-5)
    per_batch = [_dice_loss_reference(batch[MASKS][i:i + 2], expected[i:i + 2]) for i in (0, 2)]
    np.testing.assert_allclose(logs["loss"], np.mean(per_batch), rtol=1e-4)
    # Early stopping on val_dice restores the best epoch: the model tested scores its Dice.
    history = task.fit(batch, validation_data=batch, batch_size=2, epochs=4, verbose=0,
                       shuffle=False, callbacks=downstream_callbacks("val_dice")).history
    assert len(history["val_dice"]) == 4 and "learning_rate" in history
    logs = task.evaluate(batch, batch_size=2, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["dice"], max(history["val_dice"]), atol=1e-6)


# --------------------------------------------------------------------------------------
# Fine-tuning with warm-up
# --------------------------------------------------------------------------------------


class _Capture(keras.callbacks.Callback):
    def __init__(self, encoder, head):
        super().__init__()
        self.encoder, self.head = encoder, head

    def on_train_begin(self, logs=None):
        self.encoder_at_start = snapshot(self.encoder)
        self.head_at_start = snapshot(self.head)
        self.learning_rate = float(to_numpy(self.model.optimizer.learning_rate))
        self.iterations = int(to_numpy(self.model.optimizer.iterations))
        self.trainable = len(self.model.trainable_weights)


def test_fit_with_warmup_freezes_then_trains_the_encoder():
    keras.utils.set_random_seed(0)
    encoder = tiny_encoder()
    head = LinearSegmentationHead(2)
    task = SegmentationTask(encoder, head, frozen=False)
    batch = segmentation_batch()
    task(batch)
    encoder_before, head_before = snapshot(encoder), snapshot(head)
    capture = _Capture(encoder, head)
    result = fit_with_warmup(task, batch, warmup_steps=3, learning_rate=3e-4, epochs=2,
                             callbacks=[capture], batch_size=2, verbose=0, shuffle=False)
    # Phase 1: 3 steps (over 2 epochs of 2 batches), encoder weights and BN stats kept.
    assert result.warmup_steps == 3 and len(result.warmup_history["loss"]) == 2
    assert changed(encoder_before, encoder) - set(capture.encoder_at_start) == set()
    assert all(np.array_equal(capture.encoder_at_start[p], v) for p, v in encoder_before.items())
    assert {p for p in head_before
            if not np.array_equal(capture.head_at_start[p], head_before[p])} == set(head_before)
    # Phase 2: a fresh Adam at the task lr, encoder trainable, its BN statistics move.
    assert capture.learning_rate == pytest.approx(3e-4) and capture.iterations == 0
    assert capture.trainable == len(encoder.trainable_weights) + len(head.trainable_weights)
    assert len(result.history.history["loss"]) == 2
    moved = changed(encoder_before, encoder)
    assert moved == set(encoder_before), set(encoder_before) - moved
    assert task.frozen is False and encoder.trainable


def test_fit_with_warmup_needs_a_finetune_task():
    task = SegmentationTask(tiny_encoder(), LinearSegmentationHead(2), frozen=True)
    with pytest.raises(ValueError, match="frozen=False"):
        fit_with_warmup(task, segmentation_batch(), warmup_steps=1, learning_rate=1e-4, epochs=1)
    assert task.frozen and not task.encoder.trainable


# --------------------------------------------------------------------------------------
# Detection task
# --------------------------------------------------------------------------------------


def _truth(batch):
    return [(b[m], c[m]) for b, c, m in zip(batch[BOXES], batch[BOX_CLASSES], batch[BOX_MASK])]


def test_detection_task_loss_and_predicted_boxes():
    keras.utils.set_random_seed(0)
    task = DetectionTask(tiny_encoder(), YOLOv3Head(num_classes=2, filters=(8, 8, 8)))
    batch = detection_batch()
    outputs = task.predict(batch[keys.IMAGES], batch_size=2, verbose=0)
    total = float(to_numpy(task.compute_loss(batch, None, outputs, training=False)))
    components = to_numpy(yolo_loss_components(outputs, batch[BOXES], batch[BOX_CLASSES],
                                               batch[BOX_MASK], image_size=64))
    expected = (2.5 * sum(components[k] for k in ("yolo_x_loss", "yolo_y_loss", "yolo_w_loss",
                                                  "yolo_h_loss"))
                + components["yolo_confidence_loss"] + components["yolo_class_loss"])
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    for name in LOSS_COMPONENTS:
        np.testing.assert_allclose(to_numpy(task.loss_trackers[name].result()), components[name],
                                   rtol=1e-5)
    # Boxes: decoded + NMS-ed per image; the validation callback scores the same boxes.
    detections = predict_boxes(task, batch[keys.IMAGES], conf_threshold=0.0, batch_size=2)
    assert len(detections) == 4
    boxes, scores, classes = detections[0]
    assert boxes.shape[1] == 4 and len(boxes) == len(scores) == len(classes) > 0
    assert np.all(np.diff(scores[classes == classes[0]]) <= 0)
    callback = DetectionMetricsCallback(batch, metric="map", batch_size=2, conf_threshold=0.0)
    expected_map = mean_average_precision(detections, _truth(batch), num_classes=2)
    assert callback.compute(task) == pytest.approx(expected_map)
    logs = {}
    callback.set_model(task)
    callback.on_epoch_end(0, logs)
    assert logs["val_mAP"] == pytest.approx(expected_map["mAP"]) and "val_class_1_mAP" in logs
    froc = DetectionMetricsCallback(batch, metric="froc", batch_size=2).compute(task)
    assert set(froc) == {"froc"} and 0.0 <= froc["froc"] <= 1.0


@pytest.mark.large
def test_detection_fit_restores_the_best_validation_map():
    keras.utils.set_random_seed(0)
    encoder = tiny_encoder()
    task = DetectionTask(encoder, YOLOv3Head(num_classes=2, filters=(8, 8, 8)), frozen=True)
    batch = detection_batch()
    task(batch)
    encoder_before = snapshot(encoder)
    metric = DetectionMetricsCallback(batch, metric="map", batch_size=2, conf_threshold=0.0)
    task.compile(optimizer=downstream_optimizer(1e-2))
    history = task.fit(batch, validation_data=batch, batch_size=2, epochs=3, verbose=0,
                       shuffle=False,
                       callbacks=downstream_callbacks("val_mAP", validation_metric=metric)).history
    assert set(LOSS_COMPONENTS) <= set(history) and "val_mAP@0.5" in history
    assert changed(encoder_before, encoder) == set()
    detections = predict_boxes(task, batch[keys.IMAGES], conf_threshold=0.0, batch_size=2)
    score = mean_average_precision(detections, _truth(batch), num_classes=2)["mAP"]
    np.testing.assert_allclose(score, max(history["val_mAP"]), atol=1e-6)


# --------------------------------------------------------------------------------------
# Serialization, recipe helpers, errors
# --------------------------------------------------------------------------------------


def test_tasks_keras_round_trip():
    keras.utils.set_random_seed(0)
    segmentation = SegmentationTask(tiny_encoder(), LinearSegmentationHead(2), frozen=True)
    detection = DetectionTask(tiny_encoder(), YOLOv3Head(2, filters=(8, 8, 8)), frozen=False,
                              matching="yolov3", image_size=(64, 64))
    batch = detection_batch()
    for task in (segmentation, detection):
        expected = to_numpy(task(batch))
        loaded = saved_and_loaded(task)
        assert type(loaded) is type(task) and loaded.frozen == task.frozen
        assert loaded.encoder.trainable == (not task.frozen)
        got = to_numpy(loaded(batch))
        for key in expected if isinstance(expected, dict) else [None]:
            np.testing.assert_allclose(got[key] if key else got, expected[key] if key else expected,
                                       atol=1e-5)
    assert loaded.matching == "yolov3" and loaded.image_size == (64, 64)


def test_tasks_on_cached_feature_maps_are_the_same_models():
    """``feature_inputs``: the head reads the frozen encoder's maps from the batch."""
    keras.utils.set_random_seed(0)
    encoder = tiny_encoder()
    batch = segmentation_batch()
    maps = {k: to_numpy(v) for k, v in encoder(batch[keys.IMAGES], training=False).items()}
    head = LinearSegmentationHead(2, output_size=(64, 64))
    task = SegmentationTask(encoder, head, feature_inputs=("conv5",))
    cached = {"conv5": maps["conv5"], MASKS: batch[MASKS]}
    expected = to_numpy(task(cached))
    np.testing.assert_allclose(expected, to_numpy(SegmentationTask(encoder, head)(batch)),
                               atol=1e-5)
    assert "feature_inputs" not in SegmentationTask(encoder, head).get_config()
    loaded = saved_and_loaded(task)
    assert type(loaded) is SegmentationTask and loaded.feature_inputs == ("conv5",)
    assert loaded.frozen and loaded.input_keys == ("conv5",)
    np.testing.assert_allclose(to_numpy(loaded(cached)), expected, atol=1e-5)
    with pytest.raises(KeyError, match="conv5"):
        task.compute_loss(batch, None, expected)
    # Training moves the head only; the encoder is not even run.
    encoder_before, head_before = snapshot(encoder), snapshot(head)
    task.compile(optimizer=downstream_optimizer(1e-2))
    task.fit(cached, batch_size=2, epochs=1, verbose=0, shuffle=False)
    assert changed(encoder_before, encoder) == set()
    assert changed(head_before, head) == set(head_before)
    # Detection on cached maps needs the image size for the anchor strides.
    yolo = YOLOv3Head(2, filters=(8, 8, 8))
    detection = DetectionTask(encoder, yolo, feature_inputs=yolo.feature_layers,
                              image_size=(64, 64))
    boxes = detection_batch()
    maps = encoder(boxes[keys.IMAGES], training=False)
    on_maps = detection({name: to_numpy(maps[name]) for name in yolo.feature_layers})
    on_images = DetectionTask(encoder, yolo)(boxes)
    for name in on_images:
        np.testing.assert_allclose(to_numpy(on_maps[name]), to_numpy(on_images[name]), atol=1e-5)
    assert saved_and_loaded(detection).feature_inputs == ("conv5", "conv4", "conv3")
    with pytest.raises(ValueError, match="runs on images"):
        detection.predict_boxes(boxes[keys.IMAGES])


def test_recipe_helpers():
    optimizer = downstream_optimizer(3e-4)
    assert isinstance(optimizer, keras.optimizers.Adam)
    assert optimizer.weight_decay == pytest.approx(1e-6)
    assert float(to_numpy(optimizer.learning_rate)) == pytest.approx(3e-4)
    metric = DetectionMetricsCallback({}, metric="froc")
    plateau, stopping, checkpoint = downstream_callbacks(
        "val_froc", checkpoint_path="/tmp/best.keras", validation_metric=metric)[1:]
    assert downstream_callbacks("val_froc", validation_metric=metric)[0] is metric
    assert (plateau.monitor, plateau.factor, plateau.patience) == ("val_loss", 0.5, 4)
    assert (stopping.monitor, stopping.patience, stopping.restore_best_weights) == (
        "val_froc", 10, True)
    assert checkpoint.monitor == "val_froc" and checkpoint.save_best_only
    assert [type(c).__name__ for c in downstream_callbacks(reduce_lr=False)] == ["EarlyStopping"]
    batches = list(iterate_batches({"a": np.arange(5), "b": np.arange(5)}, batch_size=2))
    assert [b["a"].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    assert list(iterate_batches([({"a": 1}, None)])) == [{"a": 1}]


def test_errors_name_the_problem():
    task = SegmentationTask(tiny_encoder(), LinearSegmentationHead(2))
    batch = segmentation_batch()
    with pytest.raises(KeyError, match="masks"):
        task.compute_loss({keys.IMAGES: batch[keys.IMAGES]}, None, task(batch))
    with pytest.raises(ValueError, match="anchors must have shape"):
        DetectionTask(tiny_encoder(), YOLOv3Head(2), anchors=[[[1, 2]]])
    with pytest.raises(ValueError, match="matching"):
        DetectionTask(tiny_encoder(), YOLOv3Head(2), matching="ssd")
    with pytest.raises(ValueError, match="metric"):
        DetectionMetricsCallback({}, metric="auc")
    with pytest.raises(ValueError, match="different lengths"):
        list(iterate_batches({"a": np.arange(3), "b": np.arange(2)}))
