import os

import keras
import numpy as np
import pytest

from lovt_keras.models import ResNetImageEncoder, flatten_regions, load_image_encoder_weights
from lovt_keras.testing.test_case import (
    assert_allclose_tree,
    run_saving_test,
    run_serialization_test,
    run_training_step,
    to_numpy,
)


@pytest.fixture(scope="module")
def encoder18():
    keras.utils.set_random_seed(0)
    return ResNetImageEncoder(depth=18, image_size=64)


def test_feature_maps_by_name_and_grayscale(encoder18):
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 1)).astype("float32")
    feats = to_numpy(encoder18(x))
    expected = {"conv1": (2, 32, 32, 64), "conv2": (2, 16, 16, 64), "conv3": (2, 8, 8, 128),
                "conv4": (2, 4, 4, 256), "conv5": (2, 2, 2, 512)}
    assert {k: v.shape for k, v in feats.items()} == expected
    assert encoder18.feature_dims["conv5"] == 512
    # Grayscale is repeated to RGB inside: same result as feeding the 3-channel image.
    rgb = ResNetImageEncoder(depth=18, image_size=64, input_channels=3)
    rgb.set_weights(encoder18.get_weights())
    assert_allclose_tree(rgb(np.repeat(x, 3, axis=-1)), feats, atol=1e-5)


def test_resnet50_has_paper_channels():
    enc = ResNetImageEncoder(depth=50, image_size=64)
    assert enc.feature_dims == {"conv1": 64, "conv2": 256, "conv3": 512, "conv4": 1024,
                                "conv5": 2048}
    # 224 px gives the paper's 7x7 grid of 49 regions.
    assert tuple(ResNetImageEncoder(depth=18, image_size=224).output["conv5"].shape[1:3]) == (7, 7)


def test_flatten_regions_is_row_major():
    fmap = np.arange(2 * 3 * 4 * 5, dtype="float32").reshape(2, 3, 4, 5)
    regions = to_numpy(flatten_regions(fmap))
    assert regions.shape == (2, 12, 5)
    np.testing.assert_array_equal(regions[1, 4 * 2 + 3], fmap[1, 2, 3])


def test_unsupported_depth_is_named():
    with pytest.raises(ValueError, match="Unsupported ResNet depth 19"):
        ResNetImageEncoder(depth=19)


def test_keras_round_trip_and_local_weights(encoder18, tmp_path):
    x = np.random.default_rng(1).normal(size=(1, 64, 64, 1)).astype("float32")
    expected = to_numpy(encoder18(x))
    loaded, _ = run_saving_test(encoder18, x, atol=1e-5)
    assert isinstance(loaded, ResNetImageEncoder) and loaded.depth == 18
    # Weights from a local .weights.h5 of the encoder or of its bare keras-hub backbone.
    path = str(tmp_path / "enc.weights.h5")
    encoder18.save_weights(path)
    fresh = ResNetImageEncoder(depth=18, image_size=64)
    load_image_encoder_weights(fresh, path)
    assert_allclose_tree(fresh(x), expected, atol=1e-5)
    bb_path = str(tmp_path / "backbone.weights.h5")
    encoder18.backbone.save_weights(bb_path)
    fresh2 = ResNetImageEncoder(depth=18, image_size=64)
    load_image_encoder_weights(fresh2, bb_path)
    assert_allclose_tree(fresh2(x), expected, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        load_image_encoder_weights(fresh, os.path.join(tmp_path, "missing.weights.h5"))


def _trainable_count(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _resnet18_trainable_params(width: int) -> int:
    """Hand count of a torchvision ResNet-18 without the classifier (weights, BN
    gamma/beta), stage i having width * 2**i filters."""
    total = 7 * 7 * 3 * width + 2 * width  # stem conv + BN
    fin = width
    for stage in range(4):
        f = width * 2**stage
        for block in range(2):
            total += 9 * fin * f + 2 * f + 9 * f * f + 2 * f
            if block == 0 and stage > 0:
                total += fin * f + 2 * f  # 1x1 projection shortcut + BN
            fin = f
    return total


def test_narrow_builder_reproduces_the_standard_resnets():
    from lovt_keras.models.image_encoder import build_resnet_backbone, build_resnet_features

    # torchvision's resnet18/resnet50 parameter counts minus their fc layers.
    assert _resnet18_trainable_params(64) == 11_689_512 - 513_000
    for depth, expected in ((18, 11_176_512), (50, 23_508_032)):
        ours = build_resnet_features(depth, 64, image_size=64)
        hub = build_resnet_backbone(depth, image_size=64)
        assert _trainable_count(ours) == _trainable_count(hub) == expected
        # Same multiset of weight shapes (trainable and BN statistics) as keras-hub's.
        shapes = sorted(tuple(w.shape) for w in ours.weights)
        assert shapes == sorted(tuple(w.shape) for w in hub.weights)


def test_narrow_encoder_shapes_params_and_round_trip(tmp_path):
    from lovt_keras.training.evaluation import from_checkpoint, random_init

    keras.utils.set_random_seed(0)
    enc = ResNetImageEncoder(depth=18, image_size=64, width=16)
    assert enc.width == 16
    assert enc.feature_dims == {"conv1": 16, "conv2": 16, "conv3": 32, "conv4": 64, "conv5": 128}
    assert _trainable_count(enc) == _resnet18_trainable_params(16)
    x = np.random.default_rng(2).normal(size=(2, 64, 64, 1)).astype("float32")
    feats = to_numpy(enc(x))
    assert {k: v.shape[1] for k, v in feats.items()} == {
        "conv1": 32, "conv2": 16, "conv3": 8, "conv4": 4, "conv5": 2}
    assert all((v >= 0).all() for v in feats.values())  # every stage ends in a ReLU
    assert run_serialization_test(enc).width == 16
    loaded, _ = run_saving_test(enc, x, atol=1e-5)
    assert isinstance(loaded, ResNetImageEncoder) and loaded.width == 16
    run_training_step(loaded, x)
    # The evaluation factories keep the width: a checkpoint's and the random baseline's.
    path = tmp_path / "image_encoder.keras"
    enc.save(path)
    again = from_checkpoint(path)(64)
    assert again.width == 16
    assert_allclose_tree(again(x), feats, atol=1e-5)
    assert random_init(18, width=16)(64).feature_dims["conv5"] == 128
    with pytest.raises(ValueError, match="width must be a positive"):
        ResNetImageEncoder(depth=18, image_size=64, width=0)
