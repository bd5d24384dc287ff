"""SimCLR, BYOL and PixelPro pretrainers: outputs, named losses, the EMA target after a
``fit`` step, a loss that falls, serialization round trips, export by ``pretrain``."""

import math

import keras
import numpy as np
import pytest

from lovt_keras import keys
from lovt_keras.models import (
    BYOLPretrainer,
    PixelProPretrainer,
    ResNetImageEncoder,
    SimCLRPretrainer,
)
from lovt_keras.testing.test_case import assert_allclose_tree, to_numpy


def _batch(batch_size=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch_size, size, size, 1)).astype("float32")
    shifted = np.roll(images, 2, axis=2) + 0.1 * rng.normal(size=images.shape).astype("float32")
    # View 1 is the source, view 2 the source shifted 2 px right (x_source = x - 2).
    diagonal = size * math.sqrt(2)
    maps = np.array([[[1, 0, 0], [0, 1, 0]], [[1, 0, -2], [0, 1, 0]]], "float32") / diagonal
    return {keys.IMAGES: images, keys.SECOND_IMAGES: shifted,
            keys.VIEW_TO_SOURCE: np.tile(maps, (batch_size, 1, 1, 1))}


def _encoder(size=32):
    return ResNetImageEncoder(depth=18, image_size=size, width=8)


def _compile(model, lr=1e-3):
    model.compile(optimizer=keras.optimizers.Adam(lr), jit_compile=False)
    return model


def _round_trip(model, batch):
    expected = model(batch, training=False)
    clone = type(model).from_config(model.get_config())
    clone(batch, training=False)
    clone.set_weights(model.get_weights())
    assert clone.get_config() == model.get_config()
    assert_allclose_tree(clone(batch, training=False), expected, atol=1e-5, rtol=1e-5)
    serialized = keras.saving.serialize_keras_object(model)
    assert type(keras.saving.deserialize_keras_object(serialized)) is type(model)


def test_simclr_outputs_round_trip_and_a_fit_that_lowers_the_loss():
    model = SimCLRPretrainer(_encoder(), projection_dim=16)
    batch = _batch()
    outputs = model(batch, training=False)
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {
        "projections_1": (4, 16), "projections_2": (4, 16)}
    assert model.get_config()["temperature"] == 0.1
    _round_trip(model, batch)
    history = _compile(model).fit(batch, batch_size=4, epochs=4, verbose=0,
                                  shuffle=False).history
    assert set(history) == {"loss", "global_image_nt_xent_loss"}
    np.testing.assert_allclose(history["loss"], history["global_image_nt_xent_loss"], rtol=1e-6)
    assert history["loss"][-1] < history["loss"][0]


def _ema_check(model, batch, momentum):
    old_target = [np.array(to_numpy(v)) for v in model.target_variables]
    old_online = [np.array(to_numpy(v)) for v in model.online_variables]
    model.fit(batch, batch_size=len(batch[keys.IMAGES]), epochs=1, verbose=0, shuffle=False)
    new_online = [np.array(to_numpy(v)) for v in model.online_variables]
    new_target = [np.array(to_numpy(v)) for v in model.target_variables]
    moved = 0
    for t_old, o_old, o_new, t_new in zip(old_target, old_online, new_online, new_target):
        np.testing.assert_allclose(t_new, momentum * t_old + (1 - momentum) * o_new,
                                   rtol=1e-6, atol=1e-7)
        moved += not np.allclose(o_new, o_old)
    assert moved > len(new_online) // 2  # the online weights were trained


def test_byol_target_is_the_moving_average_after_one_fit_step():
    model = BYOLPretrainer(_encoder(), projection_dim=16, hidden_dim=32, target_momentum=0.9)
    batch = _batch()
    outputs = model(batch, training=False)
    assert sorted(outputs) == ["predictions_1", "predictions_2", "projections_1",
                               "projections_2", "targets_1", "targets_2"]
    # The target starts as a copy, is not trained, and mirrors encoder + projector.
    target_ids = {id(v) for v in model.target_variables}
    assert not target_ids & {id(v) for v in model.trainable_variables}
    assert len(model.target_variables) == len(model.image_encoder.trainable_variables) + len(
        model.projector.trainable_variables)
    for t, o in zip(model.target_variables, model.online_variables):
        np.testing.assert_array_equal(to_numpy(t), to_numpy(o))
    _round_trip(model, batch)
    _compile(model)
    _ema_check(model, batch, 0.9)
    logs = model.get_metrics_result()
    assert {"global_view1_to_view2_loss", "global_view2_to_view1_loss"} <= set(logs)


def test_pixelpro_pixel_pairs_losses_ema_and_round_trip():
    model = PixelProPretrainer(_encoder(64), projection_dim=16, hidden_dim=32,
                               target_momentum=0.5)
    batch = _batch(size=64)
    outputs = model(batch, training=False)
    assert tuple(outputs["propagated_1"].shape) == (4, 4, 16)  # 2x2 conv5 cells
    assert tuple(outputs["pixel_targets_2"].shape) == (4, 4, 16)
    # View 2 is shifted 2 px: its cells lie at source x 14 and 46 (view 1: 16 and 48).
    # Threshold 0.7 bin diagonals = 0.7 * 64 sqrt 2 / 2 = 31.7 px: a cell pairs with the
    # same cell (2 px) and, in the same row, view 1's left cell with view 2's right one
    # (30 px), not the reverse (34 px) nor across rows (>= 32.06 px).
    expected = np.eye(4, dtype=bool)
    expected[0, 1] = expected[2, 3] = True
    mask = to_numpy(model.positive_mask(batch))
    np.testing.assert_array_equal(mask, np.tile(expected, (4, 1, 1)))
    components = {k: float(to_numpy(v)) for k, v in model.loss_components(batch, outputs).items()}
    assert sorted(components) == sorted(model.LOSS_NAMES)
    assert all(-1 <= components[k] <= 1 for k in components if k.startswith("local"))
    assert model.loss_component_weights["local_view1_to_view2_loss"] == 0.5
    _round_trip(model, batch)
    _compile(model)
    _ema_check(model, batch, 0.5)
    assert len(model.target_variables) == sum(
        len(layer.trainable_variables) for layer in (
            model.image_encoder, model.pixel_projector, model.instance_projector))
    # The official configuration's 1x1 "pixel" (avgpool): one cell per view, positive.
    pooled = PixelProPretrainer(_encoder(64), projection_dim=8, hidden_dim=16,
                                pixel_feature_layer="avgpool")
    pooled_outputs = pooled(batch, training=False)
    assert tuple(pooled_outputs["propagated_1"].shape) == (4, 1, 8)
    assert to_numpy(pooled.positive_mask(batch)).all()


def test_invalid_arguments_are_named():
    with pytest.raises(TypeError, match="image_encoder must be a Keras layer.*from_config"):
        SimCLRPretrainer({"class_name": "ResNetImageEncoder"})
    with pytest.raises(ValueError, match="no feature map 'conv9'"):
        PixelProPretrainer(_encoder(), pixel_feature_layer="conv9")
    with pytest.raises(ValueError, match="target_momentum"):
        BYOLPretrainer(_encoder(), target_momentum=1.5)
    model = SimCLRPretrainer(_encoder())
    with pytest.raises(ValueError, match="lack \\['second_images'\\]"):
        model.build({keys.IMAGES: (None, 32, 32, 1)})


@pytest.mark.large
@pytest.mark.parametrize("cls", [BYOLPretrainer, PixelProPretrainer])
def test_momentum_pretrainers_fit_lowers_the_loss(cls):
    keras.utils.set_random_seed(0)
    model = _compile(cls(_encoder(64), projection_dim=16, hidden_dim=32), lr=3e-3)
    history = model.fit(_batch(8, 64), batch_size=8, epochs=12, verbose=0,
                        shuffle=False).history
    assert np.mean(history["loss"][-3:]) < np.mean(history["loss"][:3])


@pytest.mark.large
def test_pretrain_trains_an_image_only_model_and_exports_its_encoder(tmp_path):
    from lovt_keras.data.image_only_batches import ImageOnlyBatches
    from lovt_keras.data.pretraining_dataset import PretrainingBatches
    from lovt_keras.training.pretrain import pretrain
    from tests.data.image_only_batches_test import STATS, _dataset

    source = PretrainingBatches(_dataset(), None, STATS, batch_size=2, image_size=32,
                                workers=1)
    data = ImageOnlyBatches(source)
    result = pretrain(lambda: BYOLPretrainer(_encoder(), projection_dim=8, hidden_dim=16),
                      data, None, tmp_path, epochs=2, gradient_accumulation_steps=1,
                      early_stopping_patience=None, tensorboard=False,
                      export_checkpoint="last", verbose=0)
    assert result.image_encoder_path == tmp_path / "image_encoder.keras"
    assert result.report_encoder_path is None
    encoder = keras.saving.load_model(result.image_encoder_path, compile=False)
    assert isinstance(encoder, ResNetImageEncoder)
    for v, w in zip(encoder.weights, result.model.image_encoder.weights):
        np.testing.assert_array_equal(to_numpy(v), to_numpy(w))
    assert len(result.history) == 2
