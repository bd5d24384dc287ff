"""The ConVIRT image augmentation of LoVT pretraining and the evaluation transform.

Official code: ``ScanAugmentationConfig`` and ``ScanDataTransform`` in
``src/models/image/scan_transforms.py``.

Plain callables on numpy arrays (Pillow for resampling, scipy for the blur): no Keras layer
and no backend, so they run in data-loader threads/processes for every backend. Randomness
comes only from the ``np.random.Generator`` passed to each call.

The official pipeline (``src/models/image/scan_transforms.py``) is a torchvision ``Compose``
on PIL images; each step below follows the torchvision definition it uses:

1. ``RandomResizedCrop(224, scale=(0.6, 1), ratio=(3/4, 4/3))``: torchvision's sampling,
   10 tries then the centre-crop fallback; crop then bilinear (antialiased) resize.
2. ``RandomHorizontalFlip(0.5)``.
3. ``RandomAffine(degrees=(-20, 20), translate=(0.1, 0.1), scale=(0.95, 1.05))``: integer
   translations, rotation about ``(W/2, H/2)``, zero fill. A positive angle turns the image
   clockwise on screen (torchvision's ``F.affine`` convention).
4. ``ColorJitter(brightness=(0.6, 1.4), contrast=(0.6, 1.4))``: ``clip(b * x)`` and
   ``clip(c * x + (1 - c) * mean(x))``, applied in a random order as ``ColorJitter`` does.
5. ``GaussianBlur(23, sigma=(0.1, 3.0))``: kernel ``int(0.1 * size)`` made odd,
   ``exp(-x^2 / (2 sigma^2))`` normalized, reflect padding (edge not repeated).

Differences from the official run, all below 8-bit quantization: the official images are
8-bit PIL images (every step rounds to uint8 and ``ImageEnhance.Contrast`` blends with the
mean rounded to an integer grey level); here all steps stay in float32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import scipy.ndimage
from PIL import Image

from lovt_keras.data.images import pad_and_resize

__all__ = ["AugmentationParameters", "ConvirtAugmentation", "EvalTransform"]

_RESAMPLE = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


@dataclasses.dataclass(frozen=True)
class AugmentationParameters:
    """One draw of the random parameters of ``ConvirtAugmentation``.

    Attributes:
        crop: ``(top, left, height, width)`` of the crop in input pixels.
        flip: whether to mirror left-right.
        angle: rotation in degrees (positive = clockwise on screen).
        translate: ``(tx, ty)`` integer pixel shift (right, down) at output size.
        scale: isotropic zoom factor of the affine step.
        brightness: brightness factor, or None to skip.
        contrast: contrast factor, or None to skip.
        contrast_first: apply contrast before brightness (ColorJitter's random order).
        blur_sigma: Gaussian sigma in output pixels, or None to skip the blur.
    """

    crop: tuple[int, int, int, int]
    flip: bool = False
    angle: float = 0.0
    translate: tuple[int, int] = (0, 0)
    scale: float = 1.0
    brightness: float | None = None
    contrast: float | None = None
    contrast_first: bool = False
    blur_sigma: float | None = None


def _pair(name: str, value, *, low: float | None = None) -> tuple[float, float] | None:
    if value is None:
        return None
    lo, hi = (float(v) for v in value)
    if not lo <= hi:
        raise ValueError(f"{name} must be (min, max) with min <= max, got {value}")
    if low is not None and lo < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return lo, hi


def gaussian_kernel1d(kernel_size: int, sigma: float) -> np.ndarray:
    """torchvision's ``_get_gaussian_kernel1d``: ``exp(-0.5 (x / sigma)^2)`` on the
    ``kernel_size`` integer offsets centred on 0, normalized to sum 1. Shape ``(k,)``."""
    half = (kernel_size - 1) * 0.5
    x = np.linspace(-half, half, kernel_size)
    pdf = np.exp(-0.5 * np.square(x / sigma))
    return pdf / pdf.sum()


def _inverse_affine_matrix(
    center: tuple[float, float], angle: float, translate: tuple[float, float], scale: float
) -> tuple[float, ...]:
    """Output -> input pixel mapping for Pillow's ``Image.transform(AFFINE)``.

    The forward map is ``T * C * R(angle) * S(scale) * C^-1`` (translate, rotate and zoom
    about ``center``); Pillow needs its inverse, as torchvision's
    ``_get_inverse_affine_matrix`` with zero shear computes it.
    """
    rot = math.radians(angle)
    cx, cy = center
    tx, ty = translate
    a, b, c, d = math.cos(rot), -math.sin(rot), math.sin(rot), math.cos(rot)
    m = [d / scale, -b / scale, 0.0, -c / scale, a / scale, 0.0]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty) + cy
    return tuple(m)


class ConvirtAugmentation:
    """Random ConVIRT augmentation of a grayscale image (pretraining only).

    ``__call__(image, rng)`` samples parameters with ``sample_parameters`` and applies them
    with ``apply``; both are public so tests and visualizations can fix the parameters.

    Args:
        image_size: side of the square output.
        crop_scale: area fraction range of the random crop.
        crop_ratio: aspect-ratio (w/h) range of the random crop (log-uniform).
        flip_probability: probability of a horizontal flip.
        rotation: ``r`` for a uniform angle in ``[-r, r]`` degrees, or ``(min, max)``.
        translation: maximal shift as a fraction of the output size, both axes.
        scale: zoom range of the affine step, or None for no zoom.
        brightness: brightness factor range, or None to skip.
        contrast: contrast factor range, or None to skip.
        blur_sigma: Gaussian sigma range, or None to skip the blur.
        blur_kernel: odd kernel size; None for ``int(0.1 * image_size)`` made odd (23 at
            224).
        affine_interpolation: ``"bilinear"`` or ``"nearest"`` for the affine step. The
            official code leaves torchvision's ``RandomAffine`` default, which is nearest;
            bilinear avoids its jagged edges.

    Input: float32 ``(H, W)`` in ``[0, 1]``. Output: float32 ``(image_size, image_size)`` in
    ``[0, 1]``, not yet normalized (``images.normalize`` does that with the dataset stats).
    """

    def __init__(
        self,
        image_size: int = 224,
        crop_scale: tuple[float, float] = (0.6, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_probability: float = 0.5,
        rotation: float | tuple[float, float] = 20.0,
        translation: float = 0.1,
        scale: tuple[float, float] | None = (0.95, 1.05),
        brightness: tuple[float, float] | None = (0.6, 1.4),
        contrast: tuple[float, float] | None = (0.6, 1.4),
        blur_sigma: tuple[float, float] | None = (0.1, 3.0),
        blur_kernel: int | None = None,
        affine_interpolation: str = "bilinear",
    ):
        if int(image_size) <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size = int(image_size)
        self.crop_scale = _pair("crop_scale", crop_scale)
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {crop_scale}")
        self.crop_ratio = _pair("crop_ratio", crop_ratio)
        if self.crop_ratio[0] <= 0:
            raise ValueError(f"crop_ratio must be positive, got {crop_ratio}")
        if not 0 <= flip_probability <= 1:
            raise ValueError(f"flip_probability must be in [0, 1], got {flip_probability}")
        self.flip_probability = float(flip_probability)
        if isinstance(rotation, int | float):
            if rotation < 0:
                raise ValueError(f"rotation must be >= 0, got {rotation}")
            self.rotation = float(rotation)
        else:
            self.rotation = _pair("rotation", rotation)
        if not 0 <= translation <= 1:
            raise ValueError(f"translation must be in [0, 1], got {translation}")
        self.translation = float(translation)
        self.scale = _pair("scale", scale)
        if self.scale is not None and self.scale[0] <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.brightness = _pair("brightness", brightness, low=0.0)
        self.contrast = _pair("contrast", contrast, low=0.0)
        self.blur_sigma = _pair("blur_sigma", blur_sigma)
        if self.blur_sigma is not None and self.blur_sigma[0] <= 0:
            raise ValueError(f"blur_sigma must be positive, got {blur_sigma}")
        if blur_kernel is None:
            kernel = int(0.1 * self.image_size)
            self._kernel_size = kernel + 1 if kernel % 2 == 0 else kernel
        else:
            if int(blur_kernel) <= 0 or int(blur_kernel) % 2 == 0:
                raise ValueError(f"blur_kernel must be a positive odd int, got {blur_kernel}")
            self._kernel_size = int(blur_kernel)
        self.blur_kernel = blur_kernel
        if affine_interpolation not in _RESAMPLE:
            raise ValueError(
                f"affine_interpolation must be one of {sorted(_RESAMPLE)}, "
                f"got {affine_interpolation!r}"
            )
        self.affine_interpolation = affine_interpolation

    @property
    def kernel_size(self) -> int:
        """The Gaussian kernel size actually used."""
        return self._kernel_size

    def get_config(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "crop_scale": self.crop_scale,
            "crop_ratio": self.crop_ratio,
            "flip_probability": self.flip_probability,
            "rotation": self.rotation,
            "translation": self.translation,
            "scale": self.scale,
            "brightness": self.brightness,
            "contrast": self.contrast,
            "blur_sigma": self.blur_sigma,
            "blur_kernel": self.blur_kernel,
            "affine_interpolation": self.affine_interpolation,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ConvirtAugmentation:
        return cls(**config)

    # ----------------------------------------------------------------------------------

    def sample_crop(
        self, height: int, width: int, rng: np.random.Generator
    ) -> tuple[int, int, int, int]:
        """torchvision ``RandomResizedCrop.get_params``: ``(top, left, h, w)``."""
        area = height * width
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        for _ in range(10):
            target_area = area * rng.uniform(*self.crop_scale)
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        # Fallback: the largest centred crop whose ratio is within range.
        in_ratio = width / height
        if in_ratio < self.crop_ratio[0]:
            w, h = width, int(round(width / self.crop_ratio[0]))
        elif in_ratio > self.crop_ratio[1]:
            h, w = height, int(round(height * self.crop_ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def sample_parameters(
        self, image_shape: tuple[int, ...], rng: np.random.Generator
    ) -> AugmentationParameters:
        """Draws all random parameters, in the order of the torchvision pipeline."""
        height, width = int(image_shape[0]), int(image_shape[1])
        crop = self.sample_crop(height, width, rng)
        flip = bool(rng.random() < self.flip_probability)
        rot = self.rotation
        angle = (
            float(rng.uniform(*rot)) if isinstance(rot, tuple) else float(rng.uniform(-rot, rot))
        )
        max_d = self.translation * self.image_size
        tx = int(round(rng.uniform(-max_d, max_d)))
        ty = int(round(rng.uniform(-max_d, max_d)))
        scale = 1.0 if self.scale is None else float(rng.uniform(*self.scale))
        contrast_first = bool(rng.random() < 0.5)
        brightness = None if self.brightness is None else float(rng.uniform(*self.brightness))
        contrast = None if self.contrast is None else float(rng.uniform(*self.contrast))
        sigma = None if self.blur_sigma is None else float(rng.uniform(*self.blur_sigma))
        return AugmentationParameters(
            crop=crop,
            flip=flip,
            angle=angle,
            translate=(tx, ty),
            scale=scale,
            brightness=brightness,
            contrast=contrast,
            contrast_first=contrast_first,
            blur_sigma=sigma,
        )

    def apply(self, image: np.ndarray, params: AugmentationParameters) -> np.ndarray:
        """Applies fixed parameters: ``(H, W)`` float in ``[0, 1]`` ->
        ``(image_size, image_size)`` float32 in ``[0, 1]``."""
        image = self._check_image(image)
        size = self.image_size
        top, left, h, w = params.crop
        img = Image.fromarray(image)
        # Crop first, then resize, as torchvision's resized_crop does on PIL images (so the
        # resize filter does not reach beyond the crop).
        img = img.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
        if params.flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if params.angle != 0.0 or params.translate != (0, 0) or params.scale != 1.0:
            matrix = _inverse_affine_matrix(
                (size * 0.5, size * 0.5), params.angle, params.translate, params.scale
            )
            img = img.transform(
                (size, size),
                Image.AFFINE,
                matrix,
                resample=_RESAMPLE[self.affine_interpolation],
                fillcolor=0.0,
            )
        out = np.array(img, dtype=np.float32)

        ops = [("brightness", params.brightness), ("contrast", params.contrast)]
        if params.contrast_first:
            ops.reverse()
        for name, factor in ops:
            if factor is None:
                continue
            if name == "brightness":
                out *= np.float32(factor)
            else:
                mean = np.float32(out.mean(dtype=np.float64))
                out *= np.float32(factor)
                out += np.float32(1.0 - factor) * mean
            np.clip(out, 0.0, 1.0, out=out)

        if params.blur_sigma is not None:
            kernel = gaussian_kernel1d(self._kernel_size, params.blur_sigma)
            # Drop the symmetric tails that weigh < 1e-9 (small sigmas): the result moves by
            # < 1e-8, the blur gets up to 3x cheaper. Normalization stays torchvision's.
            radius = (len(kernel) - 1) // 2
            keep = int(np.count_nonzero(kernel[: radius + 1] >= 1e-9))
            kernel = kernel[radius + 1 - keep : radius + keep].astype(np.float32)
            # scipy's "mirror" is torch's "reflect" (d c b | a b c d | c b a).
            out = scipy.ndimage.correlate1d(out, kernel, axis=0, mode="mirror")
            out = scipy.ndimage.correlate1d(out, kernel, axis=1, mode="mirror")
        return np.clip(out, 0.0, 1.0, out=out)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augments one image.

        Args:
            image: float ``(H, W)`` in ``[0, 1]``.
            rng: the generator all randomness is drawn from (seed it for determinism).

        Returns:
            float32 ``(image_size, image_size)`` in ``[0, 1]``.
        """
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy Generator, got {type(rng).__name__}")
        image = self._check_image(image)
        return self.apply(image, self.sample_parameters(image.shape, rng))

    @staticmethod
    def _check_image(image: np.ndarray) -> np.ndarray:
        arr = np.asarray(image)
        if arr.ndim != 2:
            raise ValueError(f"expected a grayscale (H, W) image, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(
                f"expected float pixels in [0, 1], got dtype {arr.dtype} (use from_uint8)"
            )
        return np.ascontiguousarray(arr, dtype=np.float32)


class EvalTransform:
    """The validation/test transform: pad to square, then bilinear resize (no randomness).

    ``__call__(image, rng=None)`` has the signature of ``ConvirtAugmentation`` so the two are
    interchangeable; ``rng`` is ignored. For boxes and masks use ``images.pad_and_resize``.

    Args:
        image_size: side of the square output.
    """

    def __init__(self, image_size: int = 224):
        if int(image_size) <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size = int(image_size)

    def get_config(self) -> dict[str, Any]:
        return {"image_size": self.image_size}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> EvalTransform:
        return cls(**config)

    def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """float ``(H, W)`` in ``[0, 1]`` -> float32 ``(image_size, image_size)``."""
        arr = np.asarray(image)
        if arr.ndim != 2:
            raise ValueError(f"expected a grayscale (H, W) image, got shape {arr.shape}")
        return pad_and_resize(arr, self.image_size)[0]
