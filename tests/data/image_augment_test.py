"""Tests of the ConVIRT augmentation and the evaluation transform."""

import math

import numpy as np
import pytest

from lovt_keras.data.image_augment import (
    AugmentationParameters,
    ConvirtAugmentation,
    EvalTransform,
    gaussian_kernel1d,
)
from lovt_keras.data.images import pad_and_resize, resize

# Everything random off: whole-image crop of a square input, no flip/affine/jitter/blur.
IDENTITY = dict(
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    flip_probability=0.0,
    rotation=0.0,
    translation=0.0,
    scale=None,
    brightness=None,
    contrast=None,
    blur_sigma=None,
)


def _image(height=96, width=96, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = 0.5 + 0.3 * np.sin(x / 7.0) * np.cos(y / 11.0)
    return np.clip(smooth + 0.1 * rng.random((height, width)), 0, 1).astype(np.float32)


def _bilinear_affine_reference(image, angle, translate, scale):
    """Independent inverse-mapping bilinear warp (Pillow's sampling rules, zero fill).

    Forward map about the centre c = (W/2, H/2): p' = c + t + s * R(angle) (p - c), with
    R the clockwise-on-screen rotation [[cos, -sin], [sin, cos]] in (x right, y down).
    """
    height, width = image.shape
    cx, cy = width / 2, height / 2
    rot = math.radians(angle)
    out = np.zeros((height, width))
    for r in range(height):
        for c in range(width):
            dx, dy = c + 0.5 - cx - translate[0], r + 0.5 - cy - translate[1]
            # Inverse rotation R(-angle), then undo the zoom.
            x = (math.cos(rot) * dx + math.sin(rot) * dy) / scale + cx
            y = (-math.sin(rot) * dx + math.cos(rot) * dy) / scale + cy
            if not (0 <= x < width and 0 <= y < height):
                continue
            x, y = x - 0.5, y - 0.5
            x0, y0 = math.floor(x), math.floor(y)
            fx, fy = x - x0, y - y0

            def px(yy, xx):
                return image[min(max(yy, 0), height - 1), min(max(xx, 0), width - 1)]

            out[r, c] = (1 - fy) * ((1 - fx) * px(y0, x0) + fx * px(y0, x0 + 1)) + fy * (
                (1 - fx) * px(y0 + 1, x0) + fx * px(y0 + 1, x0 + 1)
            )
    return out


def test_deterministic_shape_and_range():
    image = _image(120, 100)
    aug = ConvirtAugmentation(image_size=64)
    a = aug(image, np.random.default_rng(42))
    b = aug(image, np.random.default_rng(42))
    c = aug(image, np.random.default_rng(43))
    assert a.shape == (64, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.01
    assert a.min() >= 0.0 and a.max() <= 1.0
    # The input is not modified in place.
    np.testing.assert_array_equal(image, _image(120, 100))


def test_identity_config_returns_resized_image():
    image = _image(96, 96)
    aug = ConvirtAugmentation(image_size=40, **IDENTITY)
    out = aug(image, np.random.default_rng(0))
    np.testing.assert_array_equal(out, resize(image, 40)[0])


def test_flip_only_mirrors_exactly():
    image = _image(96, 96)
    aug = ConvirtAugmentation(image_size=48, **dict(IDENTITY, flip_probability=1.0))
    out = aug(image, np.random.default_rng(0))
    np.testing.assert_array_equal(out, resize(image, 48)[0][:, ::-1])


def test_crop_sampling_follows_torchvision():
    aug = ConvirtAugmentation()
    rng = np.random.default_rng(1)
    for _ in range(200):
        top, left, h, w = aug.sample_crop(300, 400, rng)
        assert 0 <= top <= 300 - h and 0 <= left <= 400 - w
        # Area fraction and aspect ratio within range, up to the rounding of h and w.
        area = h * w / (300 * 400)
        assert 0.6 - 0.02 <= area <= 1.0 + 1e-9
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    # Every try fails for a 10 x 1000 strip; the fallback is the centred crop with the
    # largest in-range ratio: h = 10, w = round(10 * 4/3) = 13, left = (1000 - 13) // 2.
    assert aug.sample_crop(10, 1000, rng) == (0, 493, 10, 13)
    assert aug.sample_crop(1000, 10, rng) == (493, 0, 13, 10)


def test_crop_is_resized_crop():
    image = _image(80, 90)
    aug = ConvirtAugmentation(image_size=32, **IDENTITY)
    params = AugmentationParameters(crop=(5, 7, 60, 50))
    out = aug.apply(image, params)
    np.testing.assert_array_equal(out, resize(image[5:65, 7:57], 32)[0])


def test_affine_90_degrees_and_translation_exact():
    image = _image(64, 64)
    aug = ConvirtAugmentation(image_size=64, **IDENTITY)
    base = resize(image, 64)[0]
    crop = (0, 0, 64, 64)
    rotated = aug.apply(image, AugmentationParameters(crop=crop, angle=90.0))
    # Positive angle = clockwise on screen, i.e. np.rot90 with k=-1.
    np.testing.assert_allclose(rotated, np.rot90(base, k=-1), atol=1e-5)

    shifted = aug.apply(image, AugmentationParameters(crop=crop, translate=(5, -3)))
    expected = np.zeros_like(base)
    expected[: 64 - 3, 5:] = base[3:, : 64 - 5]  # right by 5, up by 3, zero fill
    np.testing.assert_allclose(shifted, expected, atol=1e-6)


@pytest.mark.parametrize("angle,translate,scale", [(17.0, (4, -2), 1.03), (-12.5, (0, 3), 0.95)])
def test_affine_matches_numpy_reference(angle, translate, scale):
    image = _image(40, 40, seed=3)
    aug = ConvirtAugmentation(image_size=40, **IDENTITY)
    params = AugmentationParameters(
        crop=(0, 0, 40, 40), angle=angle, translate=translate, scale=scale
    )
    out = aug.apply(image, params)
    reference = _bilinear_affine_reference(resize(image, 40)[0], angle, translate, scale)
    np.testing.assert_allclose(out, reference, atol=1e-5)


def test_brightness_contrast_match_torchvision_definition():
    image = _image(50, 50, seed=4)
    base = resize(image, 50)[0].astype(np.float64)
    aug = ConvirtAugmentation(image_size=50, **IDENTITY)
    crop = (0, 0, 50, 50)
    for b, c, contrast_first in [(1.3, 0.7, False), (1.3, 0.7, True), (0.6, 1.4, False)]:
        params = AugmentationParameters(
            crop=crop, brightness=b, contrast=c, contrast_first=contrast_first
        )
        out = aug.apply(image, params)

        # torchvision on tensors: brightness = _blend(img, 0, b), contrast =
        # _blend(img, mean(img), c), with _blend(x, y, r) = clamp(r x + (1 - r) y, 0, 1).
        def brightness(x, b=b):
            return np.clip(b * x, 0, 1)

        def contrast(x, c=c):
            return np.clip(c * x + (1 - c) * x.mean(), 0, 1)

        expected = brightness(contrast(base)) if contrast_first else contrast(brightness(base))
        np.testing.assert_allclose(out, expected, atol=2e-6)
    # Clipping makes the order matter for b = 1.3.
    first = aug.apply(image, AugmentationParameters(crop=crop, brightness=1.3, contrast=0.7))
    second = aug.apply(
        image,
        AugmentationParameters(crop=crop, brightness=1.3, contrast=0.7, contrast_first=True),
    )
    assert np.abs(first - second).max() > 1e-3


def test_blur_kernel_and_reference():
    assert ConvirtAugmentation(image_size=224).kernel_size == 23
    assert ConvirtAugmentation(image_size=128).kernel_size == 13  # int(12.8) = 12 -> 13
    assert ConvirtAugmentation(image_size=100).kernel_size == 11  # int(10.0) = 10 -> 11
    assert ConvirtAugmentation(image_size=100, blur_kernel=5).kernel_size == 5

    kernel = gaussian_kernel1d(5, 1.0)
    raw = np.exp(-0.5 * np.array([4.0, 1.0, 0.0, 1.0, 4.0]))
    np.testing.assert_allclose(kernel, raw / raw.sum())


@pytest.mark.parametrize("kernel_size,sigma", [(7, 1.5), (23, 0.4), (23, 3.0)])
def test_blur_matches_direct_convolution(kernel_size, sigma):
    image = _image(30, 30, seed=5)
    aug = ConvirtAugmentation(image_size=30, blur_kernel=kernel_size, **IDENTITY)
    out = aug.apply(image, AugmentationParameters(crop=(0, 0, 30, 30), blur_sigma=sigma))
    # Direct 2-D correlation with the full torchvision kernel and torch-style "reflect"
    # padding (edge not repeated).
    x = np.arange(kernel_size) - (kernel_size - 1) / 2
    k1 = np.exp(-(x**2) / (2 * sigma**2))
    k2 = np.outer(k1, k1) / k1.sum() ** 2
    r = kernel_size // 2
    padded = np.pad(resize(image, 30)[0].astype(np.float64), r, mode="reflect")
    expected = np.zeros((30, 30))
    for dy in range(kernel_size):
        for dx in range(kernel_size):
            expected += k2[dy, dx] * padded[dy : dy + 30, dx : dx + 30]
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_blur_preserves_mean_and_constants():
    # A blob far from the border of a zero-padded image: blurring redistributes intensity
    # without losing any.
    image = np.zeros((224, 224), np.float32)
    image[90:130, 80:150] = _image(40, 70, seed=6)
    aug = ConvirtAugmentation(image_size=224, **IDENTITY)
    out = aug.apply(image, AugmentationParameters(crop=(0, 0, 224, 224), blur_sigma=3.0))
    assert out.mean() == pytest.approx(image.mean(), rel=1e-5)
    assert np.abs(out - image).max() > 0.01  # it did blur
    constant = np.full((64, 64), 0.3, np.float32)
    out = ConvirtAugmentation(image_size=64, **IDENTITY).apply(
        constant, AugmentationParameters(crop=(0, 0, 64, 64), blur_sigma=2.0)
    )
    np.testing.assert_allclose(out, 0.3, atol=1e-6)


def test_sampled_parameters_stay_in_range():
    aug = ConvirtAugmentation(image_size=224)
    rng = np.random.default_rng(7)
    draws = [aug.sample_parameters((512, 480), rng) for _ in range(400)]
    flips = np.mean([p.flip for p in draws])
    assert 0.4 < flips < 0.6
    assert all(-20 <= p.angle <= 20 for p in draws)
    assert all(abs(t) <= 22 for p in draws for t in p.translate)  # 0.1 * 224 = 22.4
    assert all(0.95 <= p.scale <= 1.05 for p in draws)
    assert all(0.6 <= p.brightness <= 1.4 and 0.6 <= p.contrast <= 1.4 for p in draws)
    assert all(0.1 <= p.blur_sigma <= 3.0 for p in draws)
    assert 0.4 < np.mean([p.contrast_first for p in draws]) < 0.6
    # Angles spread over the whole range (uniform, not a constant).
    assert np.std([p.angle for p in draws]) > 10


def test_config_round_trip():
    aug = ConvirtAugmentation(
        image_size=32, rotation=(-5.0, 10.0), blur_kernel=3, affine_interpolation="nearest"
    )
    config = aug.get_config()
    assert config["image_size"] == 32 and config["rotation"] == (-5.0, 10.0)
    clone = ConvirtAugmentation.from_config(config)
    assert clone.get_config() == config
    image = _image(50, 60)
    np.testing.assert_array_equal(
        aug(image, np.random.default_rng(9)), clone(image, np.random.default_rng(9))
    )


def test_bad_inputs():
    aug = ConvirtAugmentation(image_size=16)
    with pytest.raises(TypeError, match="float pixels"):
        aug(np.zeros((20, 20), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="grayscale"):
        aug(np.zeros((20, 20, 3), np.float32), np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        aug(np.zeros((20, 20), np.float32), 0)
    with pytest.raises(ValueError, match="crop_scale"):
        ConvirtAugmentation(crop_scale=(0.6, 1.2))
    with pytest.raises(ValueError, match="blur_kernel"):
        ConvirtAugmentation(blur_kernel=4)


def test_eval_transform():
    image = _image(100, 70)
    transform = EvalTransform(image_size=32)
    out = transform(image, np.random.default_rng(0))
    assert out.shape == (32, 32)
    np.testing.assert_array_equal(out, pad_and_resize(image, 32)[0])
    np.testing.assert_array_equal(transform(image), out)  # no randomness
    assert EvalTransform.from_config(transform.get_config()).image_size == 32
