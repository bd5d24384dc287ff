import keras
import numpy as np
import pytest

from lovt_keras import keys
from lovt_keras.models import ResNetImageEncoder
from lovt_keras.models.encoder_contract import (
    FEATURE_NAMES,
    FEATURE_STRIDES,
    check_image_encoder,
    describe_encoder,
    feature_shapes,
    image_encoder_problems,
    rebuild_image_encoder,
)


def conv_stages(image_size=64, strides=(2, 2, 2, 2, 2), names=FEATURE_NAMES):
    """A plain functional model with named stride-2 stages (no image_size, unregistered)."""
    images = keras.Input((image_size, image_size, 1), name=keys.IMAGES)
    x, outputs = images, {}
    for name, stride in zip(names, strides):
        x = keras.layers.Conv2D(4, 3, strides=stride, padding="same")(x)
        outputs[name] = x
    return keras.Model(images, outputs, name="stages")


def test_resnet_image_encoder_meets_the_contract():
    encoder = ResNetImageEncoder(depth=18, image_size=64, width=8)
    check_image_encoder(encoder)
    assert describe_encoder(encoder) == "ResNet-18 (width 8)"
    # Grid sizes read from the outputs' shapes: ceil(64 / stride), channels 8 * 2**k.
    shapes = feature_shapes(encoder, FEATURE_NAMES)
    assert shapes == {name: (-(-64 // FEATURE_STRIDES[name]),) * 2 + (8 * 2 ** max(k - 1, 0),)
                      for k, name in enumerate(FEATURE_NAMES)}
    # Rebuilt from its config at another size: same architecture, fresh instance entries.
    rebuilt = rebuild_image_encoder(type(encoder), encoder.get_config(), 96)
    assert type(rebuilt) is ResNetImageEncoder and rebuilt.image_size == 96
    assert (rebuilt.depth, rebuilt.width, rebuilt.input_channels) == (18, 8, 1)
    assert rebuilt.name != encoder.name
    rebuilt.set_weights(encoder.get_weights())
    images = np.random.default_rng(0).normal(size=(1, 64, 64, 1)).astype("float32")
    any_size = rebuild_image_encoder(type(encoder), encoder.get_config(), None)
    any_size.set_weights(encoder.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(any_size(images)["conv5"]),
                               keras.ops.convert_to_numpy(encoder(images)["conv5"]), atol=1e-5)


@pytest.mark.large
def test_standard_resnet_description_and_odd_sizes():
    encoder = ResNetImageEncoder(depth=50, image_size=100)
    check_image_encoder(encoder)  # ceil(100 / 32) = 4
    assert describe_encoder(encoder) == "ResNet-50"


def test_problems_are_named():
    stages = conv_stages()
    # Usable as is (what a head reads), but not rebuildable: no image_size, unregistered.
    check_image_encoder(stages, rebuildable=False)
    assert describe_encoder(stages) == "Functional model 'stages'"
    problems = "; ".join(image_encoder_problems(stages))
    assert "no image_size attribute" in problems and "is not registered" in problems
    with pytest.raises(TypeError, match="not an image encoder"):
        check_image_encoder(stages)
    missing = conv_stages(strides=(2, 2, 8), names=("conv1", "conv2", "conv5"))
    check_image_encoder(missing, ("conv5",), rebuildable=False)
    with pytest.raises(TypeError, match=r"no feature map\(s\) \['conv3', 'conv4'\]"):
        check_image_encoder(missing, rebuildable=False)
    # conv2 at stride 2 instead of 4 (and every later map one level off).
    wrong = conv_stages(strides=(2, 1, 2, 2, 2))
    assert "feature map 'conv2' has shape (None, 32, 32, 4): stride 4" in "; ".join(
        image_encoder_problems(wrong, rebuildable=False))
    images = keras.Input((64, 64, 1))
    as_list = keras.Model(images, [keras.layers.Conv2D(2, 1)(images)])
    assert "a dict of named feature maps" in image_encoder_problems(as_list)[0]
    assert image_encoder_problems(keras.layers.Dense(2)) == ["it is a Dense, not a keras.Model"]
    assert describe_encoder(keras.layers.Dense(2)) == "Dense"
