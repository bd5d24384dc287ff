"""Reading chest X-ray images and the deterministic image transforms of the data pipeline.

Everything here works on numpy arrays with pixels in ``[0, 1]``:

- ``read_image`` / ``decode_image``: PNG, JPEG (any Pillow mode) and DICOM to a float32
  ``(H, W)`` grayscale array in ``[0, 1]``.
- ``pad_to_square``, ``resize``, ``pad_and_resize``: the evaluation geometry (pad to
  square, resize to 224: ``PadToSquare`` and ``Resize`` of the official
  ``src/models/image/scan_transforms.py``), moving boxes ``(x, y, w, h)`` and masks along.
- ``equalize_histogram``: numpy re-implementation of ``skimage.exposure.equalize_hist``
  (applied to COVID Rural, SIIM, Object-CXR and NIH by the official dataset scripts under
  ``src/data/datasets/``).
- ``compute_mean_std`` / ``normalize``: the dataset pixel statistics (computed once when a
  dataset is prepared and stored with it) and the normalization that uses them.
- ``to_uint8`` / ``from_uint8``: the 8-bit storage format of prepared images.

Coordinates: pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``; a box
``(x, y, w, h)`` has its top-left corner at ``(x, y)`` in these continuous coordinates, as in
the official split CSVs (under ``datasets/``). Resizing maps continuous coordinates linearly
(``x' = x * W' / W``), which is the convention of Pillow's resize (pixel centres at
``col + 0.5``), so images, masks and boxes stay aligned.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable

import numpy as np
import pydicom
import pydicom.errors
import pydicom.pixels
from PIL import Image

__all__ = [
    "ImageReadError",
    "read_image",
    "decode_image",
    "pad_to_square",
    "resize",
    "pad_and_resize",
    "equalize_histogram",
    "to_uint8",
    "from_uint8",
    "compute_mean_std",
    "normalize",
]

_DICOM_SUFFIXES = (".dcm", ".dicom")
_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# pydicom converts YBR to RGB when decoding (as_rgb=True), so all of these arrive as RGB.
_COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and the problem.

    Attributes:
        path: the file (or the name given to ``decode_image``).
        reason: what is wrong, in words.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path) if not isinstance(path, str) else path
        self.reason = reason
        super().__init__(f"cannot read image {self.path!r}: {reason}")

    def __reduce__(self):
        # Keeps the exception picklable across data-loader processes (the default
        # reduction would call __init__ with the formatted message only).
        return (type(self), (self.path, self.reason))


# --------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads a PNG, JPEG or DICOM file as a grayscale float32 ``(H, W)`` array in ``[0, 1]``.

    DICOM is recognised by the ``.dcm``/``.dicom`` suffix or the ``DICM`` marker at byte
    128; anything else goes to Pillow. See ``decode_image`` for the conversion rules.

    Raises:
        ImageReadError: missing file, truncated/corrupt data, unsupported mode or
            photometric interpretation, missing pixel data, or a compressed DICOM transfer
            syntax for which no decoder plugin is installed.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise ImageReadError(name, "file does not exist")
    if not os.path.isfile(name):
        raise ImageReadError(name, "not a regular file")
    try:
        with open(name, "rb") as f:
            head = f.read(_DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC))
    except OSError as e:
        raise ImageReadError(name, f"cannot open file ({e})") from e
    if name.lower().endswith(_DICOM_SUFFIXES) or _has_dicom_magic(head):
        return _read_dicom(name, name)
    return _read_pillow(name, name)


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decodes an encoded PNG/JPEG/DICOM file held in memory (e.g. a HF ``Image`` column
    stored with ``decode=False``) exactly like ``read_image``.

    Args:
        data: the bytes of the whole file.
        name: used in error messages only.

    Returns:
        float32 ``(H, W)`` in ``[0, 1]``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"decode_image expects bytes, got {type(data).__name__} for {name!r}")
    data = bytes(data)
    if not data:
        raise ImageReadError(name, "empty file (0 bytes)")
    if _has_dicom_magic(data) or name.lower().endswith(_DICOM_SUFFIXES):
        return _read_dicom(io.BytesIO(data), name)
    return _read_pillow(io.BytesIO(data), name)


def _has_dicom_magic(head: bytes) -> bool:
    end = _DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC)
    return len(head) >= end and head[_DICOM_MAGIC_OFFSET:end] == _DICOM_MAGIC


def _read_pillow(source, name: str) -> np.ndarray:
    try:
        with Image.open(source) as img:
            # load() forces the full decode here, so truncation is reported for this file
            # instead of surfacing later (the official code sets LOAD_TRUNCATED_IMAGES and
            # silently fills missing rows; we refuse).
            img.load()
            return _pil_to_gray(img, name)
    except ImageReadError:
        raise
    except Image.UnidentifiedImageError as e:
        raise ImageReadError(
            name, "not a recognised image format (expected PNG, JPEG or DICOM)"
        ) from e
    except Exception as e:  # Pillow raises OSError, SyntaxError, EOFError, zlib errors...
        raise ImageReadError(
            name, f"corrupt or truncated image data ({type(e).__name__}: {e})"
        ) from e


def _pil_to_gray(img: Image.Image, name: str) -> np.ndarray:
    """Pillow image -> float32 (H, W) in [0, 1]; colour -> mean of R, G, B."""
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.float32)
    if mode in ("L", "LA", "La"):
        arr = np.asarray(img)
        if arr.ndim == 3:  # drop alpha: X-rays carry no meaningful transparency
            arr = arr[..., 0]
        return arr.astype(np.float32) / np.float32(255.0)
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.float32) / np.float32(65535.0)
    if mode == "I":
        # Older Pillow versions open 16-bit PNGs as 32-bit "I"; accept that range only.
        arr = np.asarray(img)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise ImageReadError(
                name, f"32-bit integer pixels in [{lo}, {hi}] do not fit the 16-bit range"
            )
        return arr.astype(np.float32) / np.float32(65535.0)
    if mode in ("P", "PA", "CMYK", "YCbCr"):
        img = img.convert("RGB")
        mode = "RGB"
    if mode in ("RGB", "RGBA", "RGBa", "RGBX"):
        arr = np.asarray(img)
        # Channel mean as the official COVID preprocessing does. Three in-place adds are
        # ~8x faster than arr.sum(axis=-1) over the short last axis; the sum of three
        # uint8 values is exact in float32.
        out = arr[..., 0].astype(np.float32)
        out += arr[..., 1]
        out += arr[..., 2]
        out /= np.float32(3 * 255.0)
        return out
    raise ImageReadError(
        name,
        f"unsupported Pillow image mode {mode!r} (supported: 1, L, LA, I;16, I, P, RGB, "
        "RGBA, CMYK, YCbCr)",
    )


def _read_dicom(source, name: str) -> np.ndarray:
    try:
        ds = pydicom.dcmread(source)
    except pydicom.errors.InvalidDicomError as e:
        raise ImageReadError(
            name, "not a valid DICOM file (no 'DICM' marker / file meta header)"
        ) from e
    except Exception as e:
        raise ImageReadError(
            name, f"corrupt or truncated DICOM header ({type(e).__name__}: {e})"
        ) from e

    if "PixelData" not in ds:
        other = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        if other:
            raise ImageReadError(name, f"unsupported DICOM pixel data element {other[0]}")
        raise ImageReadError(
            name, "DICOM has no pixel data (PixelData element missing; truncated file?)"
        )
    meta = getattr(ds, "file_meta", None)
    tsuid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if tsuid is None:
        raise ImageReadError(name, "DICOM file meta has no Transfer Syntax UID")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in _MONOCHROME + _COLOR:
        raise ImageReadError(
            name,
            f"unsupported photometric interpretation {photometric or '<missing>'!r} "
            f"(supported: {', '.join(_MONOCHROME + _COLOR)})",
        )

    try:
        num_frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        num_frames = 1
    try:
        # Multi-frame: only the first frame is decoded and used (documented choice; chest
        # radiographs are single-frame, so more frames are rare and usually duplicates).
        if num_frames > 1:
            arr = pydicom.pixels.pixel_array(ds, index=0)
        else:
            arr = ds.pixel_array
    except Exception as e:
        ts_name = f"{tsuid.name} ({tsuid})"
        missing = isinstance(e, NotImplementedError) or "missing dependencies" in str(e)
        if tsuid.is_compressed and missing:
            raise ImageReadError(
                name,
                f"pixel data is compressed with transfer syntax {ts_name} and no installed "
                "decoder can read it; install a pydicom decoding plugin for it (e.g. "
                "pylibjpeg with pylibjpeg-libjpeg/pylibjpeg-openjpeg, pyjpegls, or "
                f"python-gdcm). pydicom said: {e}",
            ) from e
        raise ImageReadError(
            name, f"cannot decode pixel data ({ts_name}): {type(e).__name__}: {e}"
        ) from e

    if photometric in _COLOR:
        return _scale_dicom_color(ds, arr, name)
    if arr.ndim != 2:
        raise ImageReadError(
            name, f"expected a 2-D monochrome frame, decoded shape {tuple(arr.shape)}"
        )

    try:
        lo, hi = _modality_output_range(ds)
        if ds.get("VOILUTSequence") and _valid_voi_lut(ds):
            # The VOI LUT indexes integers; rescaled values are float64, so round first
            # (pydicom would truncate them and warn).
            arr = pydicom.pixels.apply_modality_lut(arr, ds)
            if not np.issubdtype(arr.dtype, np.integer):
                arr = np.rint(arr).astype(np.int64)
            arr = pydicom.pixels.apply_voi(arr, ds, index=0)
            lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
        else:
            arr = pydicom.pixels.apply_modality_lut(arr, ds)
            # Windowing maps onto the modality output range [lo, hi] (pydicom's y_min/y_max,
            # PS3.3 C.11.2.1.2), so the same range scales both cases. The first window is
            # used when several are given.
            arr = pydicom.pixels.apply_windowing(arr, ds, index=0)
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(
            name, f"invalid modality/VOI LUT attributes ({type(e).__name__}: {e})"
        ) from e

    if hi == lo:
        raise ImageReadError(name, f"degenerate DICOM output value range [{lo}, {hi}]")
    out = (np.asarray(arr, dtype=np.float64) - lo) / (hi - lo)
    # Stored values outside BitsStored (garbage in the unused high bits) are clipped.
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    if photometric == "MONOCHROME1":
        # MONOCHROME1: the minimum value is white; invert after VOI (the DICOM display
        # pipeline order), so that bone is bright as in MONOCHROME2 images.
        out = np.float32(1.0) - out
    return out


def _stored_range(ds) -> tuple[float, float]:
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        return 0.0, float(2**bits - 1)
    return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)


def _modality_output_range(ds) -> tuple[float, float]:
    """Value range after the Modality LUT / rescale (the y_min, y_max of pydicom)."""
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    lo, hi = _stored_range(ds)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return lo, hi


def _valid_voi_lut(ds) -> bool:
    item = ds.VOILUTSequence[0]
    return item.get("LUTDescriptor") is not None and item.get("LUTData") is not None


def _scale_dicom_color(ds, arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ImageReadError(
            name, f"expected an (H, W, 3) colour frame, decoded shape {tuple(arr.shape)}"
        )
    lo, hi = _stored_range(ds)
    gray = arr.astype(np.float64).mean(axis=-1)
    return np.clip((gray - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------
# Geometry: pad to square and resize, with boxes and masks
# --------------------------------------------------------------------------------------


def _check_geometry_inputs(image, boxes, masks):
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    if boxes is not None:
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4) as x, y, w, h; got shape {boxes.shape}")
    if masks is not None:
        masks = np.asarray(masks)
        if masks.ndim not in (2, 3) or masks.shape[:2] != image.shape[:2]:
            raise ValueError(
                f"masks must be (H, W) or (H, W, K) with the image's H, W = "
                f"{image.shape[:2]}; got shape {masks.shape}"
            )
    return image, boxes, masks


def pad_to_square(
    image: np.ndarray,
    boxes: np.ndarray | None = None,
    masks: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Zero-pads the image (and masks) to a centred square; shifts the boxes.

    The shorter side gets ``(S - side) // 2`` zeros before and the rest after, where
    ``S = max(H, W)``. The official ``PadToSquare`` pads ``int((S - side) / 2)`` on *both*
    sides, so for an odd difference its result is one pixel short of square (and the
    following resize stretches it by that pixel); we put the odd pixel at the end and stay
    exactly square. The top-left offset, hence the box shift, is the same as the official.

    Args:
        image: ``(H, W)`` or ``(H, W, C)``, any dtype.
        boxes: ``(N, 4)`` as ``x, y, w, h`` in pixels, or None.
        masks: ``(H, W)`` or ``(H, W, K)``, any dtype, or None.

    Returns:
        ``(image (S, S[, C]), boxes (N, 4) float64 | None, masks (S, S[, K]) | None)``.
    """
    image, boxes, masks = _check_geometry_inputs(image, boxes, masks)
    h, w = image.shape[:2]
    size = max(h, w)
    top, left = (size - h) // 2, (size - w) // 2

    def pad(a):
        out = np.zeros((size, size) + a.shape[2:], dtype=a.dtype)
        out[top : top + h, left : left + w] = a
        return out

    if boxes is not None:
        boxes = boxes.copy()
        boxes[:, 0] += left
        boxes[:, 1] += top
    return (
        image if size == h == w else pad(image),
        boxes,
        None if masks is None else (masks if size == h == w else pad(masks)),
    )


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        size = (int(size), int(size))
    height, width = (int(s) for s in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return height, width


def _resize_plane(plane: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    return np.asarray(img.resize((width, height), resample=resample), dtype=np.float32)


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    # Pillow's NEAREST: output pixel centre (i + 0.5) maps to input floor((i + 0.5) * n_in /
    # n_out), the same continuous mapping as the image and the boxes.
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def resize(
    image: np.ndarray,
    size: int | tuple[int, int],
    boxes: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    *,
    interpolation: str = "bilinear",
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Resizes the image (bilinear or box/area), masks (nearest) and boxes (scaled).

    Bilinear is Pillow's, which widens its filter support when shrinking (antialiasing),
    i.e. what torchvision's ``Resize`` does on the PIL images of the official pipeline.

    Args:
        image: ``(H, W)`` or ``(H, W, C)``; computed in float32.
        size: ``S`` for ``(S, S)`` or ``(height, width)``.
        boxes: ``(N, 4)`` ``x, y, w, h``; x and w scale by ``W'/W``, y and h by ``H'/H``.
        masks: ``(H, W)`` or ``(H, W, K)``; nearest neighbour, dtype kept.
        interpolation: ``"bilinear"`` or ``"area"`` (Pillow BOX filter).

    Returns:
        ``(image float32 (H', W'[, C]), boxes float64 | None, masks (H', W'[, K]) | None)``.
    """
    image, boxes, masks = _check_geometry_inputs(image, boxes, masks)
    height, width = _size_hw(size)
    resample = {"bilinear": Image.BILINEAR, "area": Image.BOX}.get(interpolation)
    if resample is None:
        raise ValueError(f"interpolation must be 'bilinear' or 'area', got {interpolation!r}")
    h, w = image.shape[:2]
    if image.ndim == 2:
        out = _resize_plane(image, height, width, resample)
    else:
        out = np.stack(
            [_resize_plane(image[..., c], height, width, resample) for c in range(image.shape[2])],
            axis=-1,
        )
    if boxes is not None:
        boxes = boxes * np.array([width / w, height / h, width / w, height / h])
    if masks is not None:
        masks = masks[_nearest_indices(h, height)[:, None], _nearest_indices(w, width)[None, :]]
    return out, boxes, masks


def pad_and_resize(
    image: np.ndarray,
    size: int = 224,
    boxes: np.ndarray | None = None,
    masks: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The evaluation geometry: ``pad_to_square`` then bilinear ``resize`` to ``size``.

    Args/returns as in ``pad_to_square`` and ``resize``; the image comes back float32
    ``(size, size[, C])``.
    """
    image, boxes, masks = pad_to_square(image, boxes, masks)
    return resize(image, size, boxes, masks)


# --------------------------------------------------------------------------------------
# Intensities
# --------------------------------------------------------------------------------------


def equalize_histogram(image: np.ndarray, nbins: int = 256) -> np.ndarray:
    """Histogram equalization with the semantics of ``skimage.exposure.equalize_hist``.

    Float input (the ``[0, 1]`` images of this package): ``nbins`` equal-width bins span
    ``[min, max]`` of the image (``np.histogram`` with ``range=None``; a constant image gets
    ``[v - 0.5, v + 0.5]``). With bin counts ``n_k``, centres ``c_k = (e_k + e_{k+1}) / 2``
    and ``cdf_k = (n_0 + ... + n_k) / N``, the output is the piecewise-linear interpolation
    ``out = interp(x, c, cdf)``, constant ``cdf_0`` below ``c_0`` and ``1`` above the last
    centre.

    Integer input follows skimage's integer path: ``nbins`` is ignored and there is one bin
    per integer value from min to max (centres at the integers), so ``out = cdf[x - min]``.

    Args:
        image: any shape, float or integer.
        nbins: number of bins for float input.

    Returns:
        float32 array of the input's shape with values in ``(0, 1]``.
    """
    arr = np.asarray(image)
    if arr.size == 0:
        raise ValueError("equalize_histogram: empty image")
    flat = arr.ravel()
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(flat.min()), int(flat.max())
        hist = np.bincount((flat.astype(np.int64) - lo), minlength=hi - lo + 1)
        centers = np.arange(lo, hi + 1, dtype=np.float64)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(flat)):
            raise ValueError("equalize_histogram: image contains NaN or inf")
        hist, edges = np.histogram(flat, bins=nbins)
        centers = (edges[:-1] + edges[1:]) / 2.0
    else:
        raise TypeError(f"equalize_histogram: unsupported dtype {arr.dtype}")
    cdf = np.cumsum(hist, dtype=np.float64)
    cdf /= cdf[-1]
    return np.interp(flat, centers, cdf).astype(np.float32).reshape(arr.shape)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """``[0, 1]`` floats -> uint8 ``rint(clip(x, 0, 1) * 255)`` (skimage ``img_as_ubyte``)."""
    arr = np.asarray(image, dtype=np.float32)
    return np.rint(np.clip(arr, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)


def from_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 ``x / 255`` in ``[0, 1]`` (the inverse of ``to_uint8`` on its range)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"from_uint8 expects uint8, got {arr.dtype}")
    return arr.astype(np.float32) / np.float32(255.0)


def compute_mean_std(images: Iterable[np.ndarray]) -> tuple[float, float]:
    """Pixel mean and standard deviation over all pixels of all images, streamed.

    Every pixel counts once (a large image weighs more than a small one), and the std is
    the population std (``ddof=0``) of the pooled pixels. Per-image mean and sum of squared
    deviations are computed in float64 and merged with Chan et al.'s pairwise update, so
    millions of images accumulate without cancellation.

    Args:
        images: iterable of float arrays with values in ``[0, 1]`` (any shape).

    Returns:
        ``(mean, std)`` as Python floats.

    Raises:
        ValueError: no images, an empty image, non-finite values or values outside
            ``[0, 1]`` (naming the image's index).
        TypeError: a non-float image (convert uint8 with ``from_uint8`` first).
    """
    count = 0
    mean = 0.0
    m2 = 0.0
    for index, image in enumerate(images):
        arr = np.asarray(image)
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(
                f"image {index}: dtype {arr.dtype}; statistics are defined on [0, 1] float "
                "pixels (use from_uint8 for uint8 images)"
            )
        if arr.size == 0:
            raise ValueError(f"image {index} is empty")
        arr = arr.astype(np.float64, copy=False)
        lo, hi = float(arr.min()), float(arr.max())
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise ValueError(f"image {index}: pixel values in [{lo}, {hi}], expected [0, 1]")
        n = arr.size
        image_mean = float(arr.mean())
        image_m2 = float(np.square(arr - image_mean).sum())
        total = count + n
        delta = image_mean - mean
        mean += delta * n / total
        m2 += image_m2 + delta * delta * count * n / total
        count = total
    if count == 0:
        raise ValueError("compute_mean_std: no images")
    return mean, math.sqrt(m2 / count)


def normalize(image: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``(image - mean) / std`` in float32 (elementwise, any shape)."""
    if not std > 0:
        raise ValueError(f"normalize: std must be > 0, got {std}")
    arr = np.asarray(image, dtype=np.float32)
    return (arr - np.float32(mean)) / np.float32(std)
