import numpy as np
import pytest

from lovt_keras import keys
from lovt_keras.models.linear_segmentation import LinearSegmentationHead
from lovt_keras.testing.test_case import run_layer_test, run_serialization_test, to_numpy


def bilinear_resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """PyTorch ``F.interpolate(mode='bilinear', align_corners=False)`` in numpy, NHWC."""

    def axis(out_size, in_size):
        source = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
        source = np.clip(source, 0, in_size - 1)
        low = np.floor(source).astype(int)
        high = np.minimum(low + 1, in_size - 1)
        return low, high, source - low

    y0, y1, fy = axis(height, x.shape[1])
    x0, x1, fx = axis(width, x.shape[2])
    rows = x[:, y0] * (1 - fy)[None, :, None, None] + x[:, y1] * fy[None, :, None, None]
    return rows[:, :, x0] * (1 - fx)[None, None, :, None] + rows[:, :, x1] * fx[None, None, :, None]


def _features(batch=2, grid=7, channels=16, image=224, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv5": rng.normal(size=(batch, grid, grid, channels)).astype("float32"),
        keys.IMAGES: np.zeros((batch, image, image, 1), "float32"),
    }


@pytest.mark.parametrize("grid,image", [(7, 224), (3, 10)])
def test_head_is_a_1x1_conv_then_bilinear_upsampling(grid, image):
    head = LinearSegmentationHead(num_classes=3)
    features = _features(grid=grid, image=image)
    logits = to_numpy(head(features))
    assert logits.shape == (2, image, image, 3)
    kernel, bias = (to_numpy(w) for w in head.classifier.weights)
    assert kernel.shape == (1, 1, 16, 3) and bias.shape == (3,)
    coarse = features["conv5"] @ kernel[0, 0] + bias  # per-region linear classifier
    np.testing.assert_allclose(logits, bilinear_resize(coarse, image, image), atol=1e-4)
    # Bilinear interpolation never leaves the range of the coarse logits.
    assert logits.max() <= coarse.max() + 1e-5 and logits.min() >= coarse.min() - 1e-5


def test_output_size_config_and_errors():
    x = {"conv4": np.random.default_rng(0).normal(size=(1, 3, 2, 4)).astype("float32")}
    head, _ = run_layer_test(  # no images needed
        LinearSegmentationHead,
        {"num_classes": 2, "feature_layer": "conv4", "output_size": (12, 8)},
        x, expected_output_shape=(1, 12, 8, 2))
    clone = run_serialization_test(head)
    assert clone.output_size == (12, 8) and clone.feature_layer == "conv4"
    with pytest.raises(KeyError, match="conv4"):
        head({"conv5": np.ones((1, 3, 2, 4), "float32")})
    with pytest.raises(ValueError, match="output_size"):
        LinearSegmentationHead(num_classes=1)({"conv5": np.ones((1, 2, 2, 4), "float32")})
    with pytest.raises(ValueError, match="num_classes"):
        LinearSegmentationHead(num_classes=0)
