import dataclasses
import inspect

import keras
import numpy as np
import pytest

from lovt_keras import keys
from lovt_keras.losses import global_contrastive_loss, local_image_loss, local_report_loss
from lovt_keras.models import LOSS_NAMES, VARIANTS, LoVTPretrainer, lovt_pretrainer
from lovt_keras.models.lovt_pretrainer import LOSSES, LossSpec
from lovt_keras.testing.fixtures import random_batch, tiny_pretrainer
from lovt_keras.testing.test_case import assert_allclose_tree, saved_and_loaded, to_numpy
from lovt_keras.training.callbacks import NonFiniteLossError, StopOnNonFiniteLoss


def _batch(batch_size=8, seed=1, **kwargs):
    return random_batch(batch_size=batch_size, image_size=64, max_tokens=32, max_sentences=4,
                        seed=seed, **kwargs)


def test_outputs_shapes_and_pooling_weights():
    model = tiny_pretrainer()
    batch = _batch(4, sentence_counts=[1, 2, 3, 4])
    out = to_numpy(model(batch))
    assert out[keys.IMAGE_GLOBAL].shape == (4, 32)
    assert out[keys.REPORT_GLOBAL].shape == (4, 32)
    assert out[keys.REGION_EMBEDDINGS].shape == (4, 4, 32)  # 64 px -> 2x2 conv5 grid
    assert out[keys.SENTENCE_EMBEDDINGS].shape == (4, 4, 32)
    assert out[keys.REPORT_TO_IMAGE].shape == (4, 4, 32)
    assert out[keys.IMAGE_TO_REPORT].shape == (4, 4, 32)
    np.testing.assert_allclose(out[keys.REGION_WEIGHTS].sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(out[keys.SENTENCE_WEIGHTS].sum(1), 1, atol=1e-5)
    mask = batch[keys.SENTENCE_MASK]
    assert np.all(out[keys.SENTENCE_WEIGHTS][~mask] == 0)
    assert np.all(out[keys.IMAGE_TO_REPORT][~mask] == 0)


def test_compute_loss_is_the_weighted_sum_of_components():
    model = tiny_pretrainer()
    batch = _batch(6)
    out = model(batch, training=False)
    total = float(to_numpy(model.compute_loss(batch, None, out, training=False)))
    # Independently assembled from the loss functions and the published weights.
    g = global_contrastive_loss(out[keys.IMAGE_GLOBAL], out[keys.REPORT_GLOBAL], 0.1)
    li = local_image_loss(out[keys.REGION_EMBEDDINGS], out[keys.REPORT_TO_IMAGE],
                          out[keys.REGION_WEIGHTS], grid_shape=(2, 2), temperature=0.3)
    lr = local_report_loss(out[keys.SENTENCE_EMBEDDINGS], out[keys.IMAGE_TO_REPORT],
                           batch[keys.SENTENCE_MASK], out[keys.SENTENCE_WEIGHTS], 0.3)
    c = {k: float(to_numpy(v)) for k, v in {**g, **li, **lr}.items()}
    expected = (0.75 * c["global_image_to_report_loss"] + 0.25 * c["global_report_to_image_loss"]
                + 0.375 * (c["local_image_l2att_loss"] + c["local_image_att2l_loss"])
                + 0.375 * (c["local_report_l2att_loss"] + c["local_report_att2l_loss"]))
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    results = {m.name: float(to_numpy(m.result())) for m in model.loss_trackers.values()}
    assert set(results) == set(LOSS_NAMES)
    for name in LOSS_NAMES:
        np.testing.assert_allclose(results[name], c[name], rtol=1e-5)


def test_the_losses_table_declares_names_weights_and_levels():
    assert LOSS_NAMES == (
        "global_image_to_report_loss", "global_report_to_image_loss",
        "local_image_l2att_loss", "local_image_att2l_loss",
        "local_report_l2att_loss", "local_report_att2l_loss",
    )
    parameters = inspect.signature(LoVTPretrainer.__init__).parameters
    assert all(spec.weight in parameters for spec in LOSSES)
    assert [spec.level for spec in LOSSES] == ["global", "local", "local"]
    with pytest.raises(ValueError, match="level='regional'"):
        dataclasses.replace(LOSSES[0], level="regional")
    model = tiny_pretrainer(local_image_loss_weight=0.0)
    config = model.get_config()
    assert config["local_image_loss_weight"] == 0.0 and config["global_loss_weight"] == 1.0
    assert [m.name for m in model.metrics if m.name in LOSS_NAMES] == [
        n for n in LOSS_NAMES if not n.startswith("local_image")]


def test_table_driven_total_is_the_hand_weighted_sum_with_other_weights():
    weights = dict(global_loss_weight=0.5, global_image_to_report_weight=0.6,
                   local_image_loss_weight=0.3, local_report_loss_weight=0.9)
    model = tiny_pretrainer(**weights)
    batch = _batch(4)
    out = model(batch, training=False)
    total = float(to_numpy(model.compute_loss(batch, None, out, training=False)))
    c = {m.name: float(to_numpy(m.result())) for m in model.loss_trackers.values()}
    assert tuple(c) == LOSS_NAMES
    expected = (0.5 * 0.6 * c["global_image_to_report_loss"]
                + 0.5 * 0.4 * c["global_report_to_image_loss"]
                + 0.15 * (c["local_image_l2att_loss"] + c["local_image_att2l_loss"])
                + 0.45 * (c["local_report_l2att_loss"] + c["local_report_att2l_loss"]))
    np.testing.assert_allclose(total, expected, rtol=1e-6)


def test_a_new_loss_is_one_entry_of_the_table(monkeypatch):
    """A made-up extra local loss, declared only in the table, is computed, weighted,
    tracked and logged; switched off with its weight, it disappears."""
    def region_norm_loss(model, inputs, outputs):
        region = keras.ops.cast(outputs[keys.REGION_EMBEDDINGS], "float32")
        return {"local_region_norm_loss": keras.ops.mean(keras.ops.square(region))}

    extra = LossSpec(weight="local_report_loss_weight", components=("local_region_norm_loss",),
                     component_weights=lambda model: (2 * model.local_report_loss_weight,),
                     level="local", compute=region_norm_loss)
    monkeypatch.setattr(lovt_pretrainer, "LOSSES", (*LOSSES, extra))
    model = tiny_pretrainer(global_loss_weight=0.0, local_image_loss_weight=0.0,
                            local_weighting="uniform")
    assert model.active_loss_names == (
        "local_report_l2att_loss", "local_report_att2l_loss", "local_region_norm_loss")
    batch = _batch(4)
    out = model(batch, training=False)
    total = float(to_numpy(model.compute_loss(batch, None, out, training=False)))
    region = to_numpy(out[keys.REGION_EMBEDDINGS]).astype(np.float64)
    results = {m.name: float(to_numpy(m.result())) for m in model.loss_trackers.values()}
    np.testing.assert_allclose(results["local_region_norm_loss"], (region**2).mean(), rtol=1e-5)
    expected = (0.375 * (results["local_report_l2att_loss"] + results["local_report_att2l_loss"])
                + 1.5 * results["local_region_norm_loss"])
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    history = model.fit(batch, batch_size=4, epochs=1, verbose=0).history
    # (training=True: batch statistics and dropout, so not the value above)
    assert history["local_region_norm_loss"][0] > 0
    assert "local_region_norm_loss" not in tiny_pretrainer(local_report_loss_weight=0.0).loss_trackers


def test_a_nan_batch_stops_fit_naming_the_step_and_the_components():
    model = tiny_pretrainer()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    batch = _batch(8)
    batch[keys.IMAGES][6] = np.nan  # in the second mini-batch of 4
    with pytest.raises(NonFiniteLossError) as error:
        model.fit(batch, batch_size=4, epochs=1, verbose=0, shuffle=False,
                  callbacks=[StopOnNonFiniteLoss()])
    message = str(error.value)
    assert message.startswith("non-finite training loss at epoch 1, batch 2: loss=nan"), message
    for name in LOSS_NAMES:
        assert f"{name}=nan" in message


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_builds_and_computes_its_losses(variant):
    model = tiny_pretrainer(**VARIANTS[variant])
    batch = _batch(4)
    out = model(batch, training=True)
    loss = float(to_numpy(model.compute_loss(batch, None, out)))
    assert np.isfinite(loss) and loss > 0
    names = set(model.active_loss_names)
    kwargs = VARIANTS[variant]
    assert ("global_image_to_report_loss" in names) == (kwargs.get("global_loss_weight", 1) > 0)
    assert ("local_image_l2att_loss" in names) == (kwargs.get("local_image_loss_weight", 1) > 0)
    assert ("local_report_l2att_loss" in names) == (kwargs.get("local_report_loss_weight", 1) > 0)
    if variant == "convirt":
        assert model.image_global_projection.norm is None
        assert model.image_attention_pooling is None and model.alignment is None


def test_invalid_configurations_are_named():
    with pytest.raises(ValueError, match="image_pooling='max'"):
        tiny_pretrainer(image_pooling="max")
    with pytest.raises(ValueError, match="local_weighting='attention' needs"):
        tiny_pretrainer(image_pooling="avg")
    with pytest.raises(ValueError, match="All loss weights are 0"):
        tiny_pretrainer(global_loss_weight=0, local_image_loss_weight=0,
                        local_report_loss_weight=0)


def test_tiny_lovt_fit_30_steps_learns_and_frozen_layers_stay():
    keras.utils.set_random_seed(0)
    model = tiny_pretrainer(num_frozen_layers=1)
    batch = _batch(8, seed=3, sentence_counts=[1, 2, 3, 4, 4, 3, 2, 4])
    frozen = model.report_encoder.backbone.transformer_layers[0]
    frozen_before = [to_numpy(w).copy() for w in frozen.weights]
    emb_before = to_numpy(model.report_encoder.backbone.token_embedding.embeddings).copy()
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-3, weight_decay=1e-6))
    history = model.fit(batch, batch_size=8, epochs=30, verbose=0, shuffle=False).history
    for name in ("loss", *LOSS_NAMES):
        assert np.all(np.isfinite(history[name])), name
    total = np.array(history["loss"])
    assert total[-5:].mean() <= 0.8 * total[:5].mean(), total
    g = np.array(history["global_image_to_report_loss"])
    assert g[-1] <= 0.5 * g[0], g
    # The local image loss is bounded below by the entropy of its soft targets
    # (on a 2x2 grid every region is a soft positive of every other).
    from lovt_keras.losses import spatial_positive_weights

    p = spatial_positive_weights(2, 2)
    floor = -(p * np.log(p)).sum(1).mean()
    assert np.all(np.array(history["local_image_l2att_loss"]) >= floor - 1e-4)
    assert all(np.array_equal(a, to_numpy(b)) for a, b in zip(frozen_before, frozen.weights))
    np.testing.assert_array_equal(
        emb_before, to_numpy(model.report_encoder.backbone.token_embedding.embeddings))
    # evaluate() and predict() work on the same compiled model.
    logs = model.evaluate(batch, batch_size=8, verbose=0, return_dict=True)
    assert set(LOSS_NAMES) <= set(logs) and np.isfinite(logs["loss"])
    pred = model.predict(batch, batch_size=4, verbose=0)
    assert pred[keys.REGION_EMBEDDINGS].shape == (8, 4, 32)


def test_keras_round_trip_gives_identical_outputs():
    model = tiny_pretrainer()
    batch = _batch(4)
    expected = model(batch, training=False)
    loaded = saved_and_loaded(model)
    assert isinstance(loaded, LoVTPretrainer)
    assert loaded.get_config()["local_image_loss_weight"] == 0.75
    assert_allclose_tree(loaded(batch, training=False), expected, atol=1e-5, rtol=1e-5)
    clone = LoVTPretrainer.from_config(model.get_config())
    assert clone.report_encoder.num_frozen_layers == model.report_encoder.num_frozen_layers
    assert clone.get_config() == model.get_config()
    # The constructor takes encoder objects; configs go through from_config.
    with pytest.raises(TypeError, match="image_encoder must be a Keras layer.*from_config"):
        LoVTPretrainer(model.get_config()["image_encoder"], model.report_encoder)


# Large: the mechanics run by default in tests/training/pretrain_test.py (accumulation on a
# tiny model, a mixed_bfloat16 build); this is the LoVT model under both (45-110 s on JAX).
@pytest.mark.large
def test_gradient_accumulation_and_mixed_precision():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = tiny_pretrainer()
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.image_global_projection.compute_dtype == "bfloat16"
    batch = _batch(8)
    model(batch)  # build
    # Two mini-batches of 4 per optimizer step; negatives stay within each mini-batch.
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, gradient_accumulation_steps=2))
    kernel = model.image_global_projection.output_dense.kernel
    before = to_numpy(kernel).copy()
    model.fit({k: v[:4] for k, v in batch.items()}, batch_size=4, epochs=1, verbose=0)
    np.testing.assert_array_equal(before, to_numpy(kernel))  # accumulated, not applied
    history = model.fit(batch, batch_size=4, epochs=1, verbose=0, shuffle=False).history
    assert not np.allclose(before, to_numpy(kernel))
    assert all(np.isfinite(v[-1]) for v in history.values())
    assert int(to_numpy(model.optimizer.iterations)) == 1


@pytest.mark.large
def test_mixed_float16_fit_is_finite():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = tiny_pretrainer()
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    history = model.fit(_batch(8), batch_size=8, epochs=2, verbose=0).history
    assert all(np.all(np.isfinite(v)) for v in history.values())


def test_build_from_shapes_creates_every_weight():
    batch = _batch(4)
    built = tiny_pretrainer()
    built.build({k: v.shape for k, v in batch.items()})
    called = tiny_pretrainer()
    called(batch)
    assert built.built and len(built.weights) == len(called.weights) > 0
    shapes = sorted(tuple(w.shape) for w in built.weights)
    assert shapes == sorted(tuple(w.shape) for w in called.weights)
    with pytest.raises(ValueError, match="lack"):
        tiny_pretrainer().build({keys.IMAGES: (2, 64, 64, 1)})


class _Batches(keras.utils.PyDataset):
    """Batches of unknown size at trace time, as a data pipeline yields them."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        return (_batch(4, seed=index),)


def test_fit_on_a_pydataset_with_unknown_batch_size():
    model = tiny_pretrainer()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    history = model.fit(_Batches(), epochs=1, verbose=0).history
    assert all(np.isfinite(v[-1]) for v in history.values())
