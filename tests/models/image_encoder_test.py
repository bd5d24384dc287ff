import os

import keras
import numpy as np
import pytest

from lovt_keras.models import ResNetImageEncoder, flatten_regions, load_image_encoder_weights
from lovt_keras.testing.test_case import assert_allclose_tree, saved_and_loaded, to_numpy


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
    loaded = saved_and_loaded(encoder18)
    assert isinstance(loaded, ResNetImageEncoder) and loaded.depth == 18
    assert_allclose_tree(loaded(x), expected, atol=1e-5)
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
