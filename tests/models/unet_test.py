import numpy as np
import pytest

from lovt_keras import keys
from lovt_keras.models.unet import UNetHead
from lovt_keras.testing.test_case import (
    run_saving_test,
    run_serialization_test,
    run_training_step,
    to_numpy,
)

CHANNELS = {"conv1": 2, "conv2": 3, "conv3": 4, "conv4": 5, "conv5": 7}
STRIDES = {"conv1": 2, "conv2": 4, "conv3": 8, "conv4": 16, "conv5": 32}
EPS = 1e-5


def _features(batch=2, image=64, seed=0):
    rng = np.random.default_rng(seed)
    features = {name: rng.normal(size=(batch, image // STRIDES[name], image // STRIDES[name], c))
                .astype("float32") for name, c in CHANNELS.items()}
    features[keys.IMAGES] = rng.normal(size=(batch, image, image, 1)).astype("float32")
    return features


# numpy reference ---------------------------------------------------------------------


def conv(x, kernel, bias=None):
    """'same' convolution (odd kernel), NHWC, kernel (kh, kw, in, out)."""
    kh, kw = kernel.shape[:2]
    padded = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for a in range(kh):
        for b in range(kw):
            out += padded[:, a:a + x.shape[1], b:b + x.shape[2]] @ kernel[a, b]
    return out if bias is None else out + bias


def transposed_conv_2x2(x, kernel, bias):
    """ConvTranspose2d(kernel 2, stride 2): each input pixel paints a 2x2 patch.

    Keras kernel layout (kh, kw, out, in)."""
    batch, h, w, _ = x.shape
    out = np.zeros((batch, 2 * h, 2 * w, kernel.shape[2]))
    for a in range(2):
        for b in range(2):
            out[:, a::2, b::2] = x @ kernel[a, b].T
    return out + bias


def batch_norm(x, gamma, beta, mean, variance):
    return (x - mean) / np.sqrt(variance + EPS) * gamma + beta


def reference_unet(head, features):
    layers = {}  # sub-layer name -> its weights in order (kernel, bias; gamma, beta, mean, var)
    for w in head.weights:
        layers.setdefault(w.path.split("/")[-2], []).append(to_numpy(w).astype(np.float64))

    def block(x, name):
        return np.maximum(batch_norm(conv(x, *layers[f"{name}_conv"]), *layers[f"{name}_bn"]), 0)

    x = features["conv5"].astype(np.float64)
    x = block(block(x, "bridge_0"), "bridge_1")
    for i, skip in enumerate(("conv4", "conv3", "conv2", "conv1", keys.IMAGES)):
        up = transposed_conv_2x2(x, *layers[f"up{i + 1}_transpose"])
        skip = features[skip]
        if skip.shape[-1] == 1:
            skip = np.repeat(skip, 3, axis=-1)  # the official input skip is RGB
        x = np.concatenate([up, skip], axis=-1)  # upsampled first
        x = block(block(x, f"up{i + 1}_0"), f"up{i + 1}_1")
    return conv(x, *layers["classifier"])


# tests ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def head():
    layer = UNetHead(num_classes=2, bridge_filters=6, up_filters=(5, 4, 4, 3, 3))
    layer(_features())
    # Random weights and BatchNorm statistics, so that every parameter matters.
    rng = np.random.default_rng(1)
    for w in layer.weights:
        if "variance" in w.path:
            w.assign(rng.uniform(0.5, 1.5, size=w.shape).astype("float32"))
        else:
            w.assign((0.3 * rng.normal(size=w.shape)).astype("float32"))
    return layer


def test_unet_matches_numpy_reference(head):
    features = _features(seed=2)
    logits = to_numpy(head(features, training=False))
    assert logits.shape == (2, 64, 64, 2)
    np.testing.assert_allclose(logits, reference_unet(head, features), rtol=1e-4, atol=1e-4)


def test_unet_widths_and_skips(head):
    kernels = {w.path.split("/")[-2]: tuple(w.shape) for w in head.weights if "kernel" in w.path}
    assert kernels["bridge_0_conv"] == (3, 3, 7, 6)
    assert kernels["up1_transpose"] == (2, 2, 5, 6)  # (kh, kw, out, in)
    assert kernels["up1_0_conv"] == (3, 3, 5 + 5, 5)  # + conv4
    assert kernels["up4_0_conv"] == (3, 3, 3 + 2, 3)  # + conv1
    assert kernels["up5_0_conv"] == (3, 3, 3 + 3, 3)  # + the RGB input
    assert kernels["classifier"] == (1, 1, 3, 2)
    # Official widths by default.
    default = UNetHead(num_classes=1)
    assert default.bridge_filters == 2048 and default.up_filters == (1024, 512, 256, 128, 64)


def test_unet_config_round_trip_and_errors(head):
    run_serialization_test(head)
    features = _features(seed=3)
    loaded, data = run_saving_test(head, features, atol=1e-5)
    # The BatchNorms subtract the batch mean, which removes the biases of the
    # convolutions before them.
    run_training_step(loaded, data, allow_unchanged=("_conv/bias",))
    with pytest.raises(ValueError, match="same length"):
        UNetHead(up_filters=(8, 4), skip_layers=("conv4",))
    with pytest.raises(KeyError, match="conv2"):
        head({k: v for k, v in features.items() if k != "conv2"})
