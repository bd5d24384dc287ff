"""Tests of image decoding (PNG/JPEG/DICOM), pad/resize with boxes and masks, histogram
equalization and the pixel statistics."""

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from lovt_keras.data.images import (
    ImageReadError,
    compute_mean_std,
    decode_image,
    equalize_histogram,
    from_uint8,
    normalize,
    pad_and_resize,
    pad_to_square,
    read_image,
    resize,
    to_uint8,
)

REALDATA_IMAGES = Path(os.environ["LOVT_KERAS_REALDATA"]) / "images"  # set by tests/conftest.py


# --------------------------------------------------------------------------------------
# File writers
# --------------------------------------------------------------------------------------


def _write_dicom(
    path,
    pixels,
    *,
    photometric="MONOCHROME2",
    bits_stored=None,
    signed=False,
    transfer_syntax=ExplicitVRLittleEndian,
    pixel_data=None,
    **attributes,
):
    """Writes a minimal Secondary Capture DICOM; ``pixels`` is (H, W) or (F, H, W)."""
    pixels = np.asarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes() if pixel_data is None else pixel_data
    ds.save_as(path, enforce_file_format=True)
    return path


def _gradient(height, width):
    y, x = np.mgrid[0:height, 0:width]
    return ((x * 3 + y * 2) % 256).astype(np.uint8)


# --------------------------------------------------------------------------------------
# PNG / JPEG
# --------------------------------------------------------------------------------------


def test_png_8bit_exact(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, size=(17, 23), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.float32 and out.shape == (17, 23)
    np.testing.assert_array_equal(out, arr.astype(np.float32) / np.float32(255))


def test_png_16bit_exact(tmp_path):
    arr = np.random.default_rng(1).integers(0, 65536, size=(9, 11), dtype=np.uint16)
    arr[0, 0], arr[0, 1] = 0, 65535
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(str(tmp_path / "a.png"))
    np.testing.assert_array_equal(out, arr.astype(np.float32) / np.float32(65535))
    assert out[0, 0] == 0.0 and out[0, 1] == 1.0


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_png_color_is_channel_mean(tmp_path, mode):
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, size=(8, 6, len(mode)), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "c.png")
    expected = arr[..., :3].astype(np.float64).mean(-1) / 255.0  # alpha ignored
    np.testing.assert_allclose(read_image(tmp_path / "c.png"), expected, atol=1e-6)


def test_png_la_palette_and_bilevel(tmp_path):
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, size=(5, 7), dtype=np.uint8)
    alpha = rng.integers(0, 256, size=(5, 7), dtype=np.uint8)
    Image.fromarray(np.stack([gray, alpha], -1)).save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), gray / np.float32(255))

    palette_img = Image.fromarray(gray).convert("P")  # palette of grey levels
    palette_img.save(tmp_path / "p.png")
    np.testing.assert_allclose(read_image(tmp_path / "p.png"), gray / 255.0, atol=1e-6)

    bits = gray > 128
    Image.fromarray(bits).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_image(tmp_path / "b.png"), bits.astype(np.float32))


def test_jpeg_gray_and_rgb(tmp_path):
    gray = _gradient(40, 48)
    Image.fromarray(gray).save(tmp_path / "g.jpg", quality=95)
    out = read_image(tmp_path / "g.jpg")
    decoded = np.asarray(Image.open(tmp_path / "g.jpg"))
    np.testing.assert_array_equal(out, decoded / np.float32(255))
    # Lossy, but close to what was written.
    assert np.abs(out - gray / 255.0).mean() < 3 / 255

    rgb = np.stack([gray, gray, gray], -1)  # grayscale stored as RGB, as in the COVID JPEGs
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    out = read_image(tmp_path / "c.jpg")
    decoded = np.asarray(Image.open(tmp_path / "c.jpg")).astype(np.float64)
    assert out.shape == (40, 48)
    np.testing.assert_allclose(out, decoded.mean(-1) / 255.0, atol=1e-6)
    assert np.abs(out - gray / 255.0).mean() < 3 / 255


def test_decode_image_bytes_matches_read_image(tmp_path):
    arr = _gradient(12, 10)
    Image.fromarray(arr).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    np.testing.assert_array_equal(decode_image(data, "a.png"), read_image(tmp_path / "a.png"))
    dcm = _write_dicom(tmp_path / "a.dcm", arr)
    np.testing.assert_array_equal(decode_image(dcm.read_bytes()), arr / np.float32(255))


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


def test_missing_file_error(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(ImageReadError, match="nope.png.*does not exist"):
        read_image(path)


def test_truncated_png_error(tmp_path):
    arr = np.random.default_rng(4).integers(0, 256, size=(64, 64), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.png.*(truncated|corrupt)") as info:
        read_image(tmp_path / "cut.png")
    assert isinstance(info.value, ValueError)
    assert info.value.path.endswith("cut.png")


def test_not_an_image_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(ImageReadError, match=r"x\.png.*not a recognised image format"):
        read_image(tmp_path / "x.png")


def test_garbage_dicom_error(tmp_path):
    (tmp_path / "g.dcm").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ImageReadError, match=r"g\.dcm.*not a valid DICOM"):
        read_image(tmp_path / "g.dcm")


def test_error_is_picklable():
    err = ImageReadError("/x/y.dcm", "bad things")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, ImageReadError) and str(back) == str(err)
    assert back.path == "/x/y.dcm" and back.reason == "bad things"


def test_dicom_without_pixel_data(tmp_path):
    path = _write_dicom(tmp_path / "np.dcm", np.zeros((2, 2), np.uint8))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(ImageReadError, match=r"np\.dcm.*no pixel data"):
        read_image(path)


def test_dicom_truncated_pixel_data(tmp_path):
    pixels = np.arange(20, dtype=np.uint16).reshape(4, 5)
    path = _write_dicom(tmp_path / "t.dcm", pixels, pixel_data=pixels.tobytes()[:20])
    with pytest.raises(ImageReadError, match=r"t\.dcm.*cannot decode pixel data.*less than"):
        read_image(path)


def test_dicom_unsupported_photometric(tmp_path):
    path = _write_dicom(
        tmp_path / "pal.dcm", np.zeros((2, 2), np.uint8), photometric="PALETTE COLOR"
    )
    with pytest.raises(
        ImageReadError, match=r"pal\.dcm.*photometric interpretation 'PALETTE COLOR'"
    ):
        read_image(path)


def test_dicom_unsupported_compression(tmp_path):
    if pydicom.pixels.get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder plugin is installed; the missing-plugin path is untestable")
    path = _write_dicom(
        tmp_path / "ls.dcm",
        np.zeros((4, 4), np.uint8),
        transfer_syntax=JPEGLSLossless,
        pixel_data=encapsulate([b"\xff\xd8\xff\xd9"]),
    )
    with pytest.raises(
        ImageReadError, match=r"ls\.dcm.*JPEG-LS Lossless.*1\.2\.840\.10008\.1\.2\.4\.80.*plugin"
    ):
        read_image(path)


# --------------------------------------------------------------------------------------
# DICOM values
# --------------------------------------------------------------------------------------


def test_dicom_12bit_in_16_monochrome2_and_1(tmp_path):
    stored = np.array([[0, 1, 2048], [4000, 4094, 4095]], dtype=np.uint16)
    m2 = read_image(_write_dicom(tmp_path / "m2.dcm", stored, bits_stored=12))
    # Scaled by the stored bit depth (2^12 - 1), not by the 16 allocated bits.
    np.testing.assert_array_equal(m2, (stored / 4095.0).astype(np.float32))
    m1 = read_image(
        _write_dicom(tmp_path / "m1.dcm", stored, bits_stored=12, photometric="MONOCHROME1")
    )
    np.testing.assert_allclose(m1, 1.0 - stored / 4095.0, atol=1e-7)
    assert m1[0, 0] == 1.0 and m1[1, 2] == 0.0


def test_dicom_rescale_cancels_without_window(tmp_path):
    stored = np.array([[0, 100, 4095]], dtype=np.uint16)
    out = read_image(
        _write_dicom(
            tmp_path / "r.dcm", stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024
        )
    )
    # Range after rescale is [-1024, 2 * 4095 - 1024]; (2v - 1024 + 1024) / 8190 = v / 4095.
    np.testing.assert_allclose(out, stored / 4095.0, atol=1e-7)


def _linear_window(m, center, width):
    """DICOM PS3.3 C.11.2.1.2.1 'LINEAR' window, as a fraction of the output range."""
    c, w = center - 0.5, width - 1.0
    out = (m - c) / w + 0.5
    out = np.where(m <= c - w / 2, 0.0, out)
    return np.where(m > c + w / 2, 1.0, out)


def test_dicom_rescale_and_window(tmp_path):
    stored = np.array([[0, 1000, 1999, 2000, 2100], [2500, 2999, 3000, 3100, 4095]], np.uint16)
    kwargs = dict(
        bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=3000, WindowWidth=2001
    )
    out = read_image(_write_dicom(tmp_path / "w.dcm", stored, **kwargs))
    rescaled = stored.astype(np.float64) * 2 - 1000
    expected = _linear_window(rescaled, 3000, 2001)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # Hand values: m = 2*2000 - 1000 = 3000 -> (3000 - 2999.5) / 2000 + 0.5 = 0.50025.
    assert out[0, 3] == pytest.approx(0.50025, abs=1e-6)
    assert out[0, 1] == 0.0 and out[1, 4] == 1.0  # m = 1000 below, m = 7190 above the window

    inverted = read_image(
        _write_dicom(tmp_path / "w1.dcm", stored, photometric="MONOCHROME1", **kwargs)
    )
    np.testing.assert_allclose(inverted, 1.0 - expected, atol=1e-6)


def test_dicom_voi_lut_sequence(tmp_path):
    stored = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], dtype=np.uint8)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]  # 4 entries, first input value 0, 8-bit output
    item.LUTData = [0, 100, 200, 255]
    item["LUTDescriptor"].VR = "US"
    item["LUTData"].VR = "US"
    out = read_image(_write_dicom(tmp_path / "v.dcm", stored, bits_stored=8, VOILUTSequence=[item]))
    lut = np.array([0, 100, 200, 255]) / 255.0
    np.testing.assert_allclose(out, lut[stored], atol=1e-7)


def test_dicom_signed_8bit_multiframe_and_magic(tmp_path):
    signed = np.array([[-32768, -1, 0, 32767]], dtype=np.int16)
    out = read_image(_write_dicom(tmp_path / "s.dcm", signed, signed=True))
    np.testing.assert_allclose(out, (signed.astype(np.float64) + 32768) / 65535, atol=1e-7)

    frames = np.stack([_gradient(6, 7), 255 - _gradient(6, 7)])
    out = read_image(_write_dicom(tmp_path / "mf.dcm", frames))
    np.testing.assert_array_equal(out, frames[0] / np.float32(255))  # first frame

    # No .dcm suffix: recognised by the DICM marker at byte 128.
    path = _write_dicom(tmp_path / "noext.bin", frames[1])
    np.testing.assert_array_equal(read_image(path), frames[1] / np.float32(255))


def test_dicom_jpeg_baseline_written_here(tmp_path):
    gray = _gradient(32, 40)
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="JPEG", quality=90)
    path = _write_dicom(
        tmp_path / "j.dcm",
        gray,
        transfer_syntax=JPEGBaseline8Bit,
        pixel_data=encapsulate([buf.getvalue()]),
    )
    out = read_image(path)
    reference = np.asarray(Image.open(io.BytesIO(buf.getvalue()))) / 255.0
    np.testing.assert_allclose(out, reference, atol=1.5 / 255)


# --------------------------------------------------------------------------------------
# Real files
# --------------------------------------------------------------------------------------


def _real_files():
    if not REALDATA_IMAGES.is_dir():
        return []
    return sorted(p for p in REALDATA_IMAGES.rglob("*") if p.is_file())


@pytest.mark.parametrize("path", _real_files() or [None], ids=lambda p: p.name if p else "none")
def test_real_files(path):
    if path is None:
        pytest.skip(f"real sample images not found under {REALDATA_IMAGES}")
    out = read_image(path)
    assert out.dtype == np.float32 and out.ndim == 2
    assert min(out.shape) >= 256
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.std() > 0.05  # a radiograph, not a constant
    if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
        with Image.open(path) as img:
            assert out.shape == (img.size[1], img.size[0])


def test_real_siim_dicom_values():
    files = sorted((REALDATA_IMAGES / "siim_acr_pneumothorax_dicom").glob("1.2.*.dcm"))
    if not files:
        pytest.skip(f"real SIIM DICOM not present under {REALDATA_IMAGES}")
    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit  # decoded through Pillow
    out = read_image(files[0])
    assert out.shape == (1024, 1024)
    # MONOCHROME2, 8-bit, no rescale or window: plain pixel / 255 (the official SIIM step).
    np.testing.assert_array_equal(out, ds.pixel_array / np.float32(255))
    fake_m1 = files[0].parent / "Fake_MONOHR1.dcm"
    if fake_m1.exists():
        np.testing.assert_allclose(read_image(fake_m1), 1.0 - out, atol=1e-7)


# --------------------------------------------------------------------------------------
# pad / resize
# --------------------------------------------------------------------------------------


def test_pad_to_square_hand_case():
    image = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    boxes = np.array([[0.5, 1.0, 2.0, 1.0]])
    masks = np.ones((2, 3), bool)
    out, out_boxes, out_masks = pad_to_square(image, boxes, masks)
    # (3 - 2) // 2 = 0 rows on top, 1 at the bottom.
    np.testing.assert_array_equal(out, [[1, 2, 3], [4, 5, 6], [0, 0, 0]])
    np.testing.assert_array_equal(out_boxes, boxes)
    assert out_masks.dtype == bool and out_masks.sum() == 6 and not out_masks[2].any()

    tall = np.ones((6, 2), np.float32)
    out, out_boxes, out_masks = pad_to_square(tall, [[0, 1, 2, 3]], tall > 0)
    # 2 columns left, 2 right.
    assert out.shape == (6, 6)
    np.testing.assert_array_equal(out.sum(0), [0, 0, 6, 6, 0, 0])
    np.testing.assert_array_equal(out_boxes, [[2, 1, 2, 3]])
    np.testing.assert_array_equal(out_masks, out > 0)


def test_resize_bilinear_matches_antialiased_reference():
    rng = np.random.default_rng(5)
    image = rng.random((8, 8)).astype(np.float32)
    out, _, _ = resize(image, 4)
    # Halving with a triangle filter widened to support 2: output centre 2i + 1 sees input
    # centres at distances 0.5, 0.5, 1.5, 1.5 -> weights 3/8, 3/8, 1/8, 1/8, renormalized
    # where the support leaves the image.
    weights = np.zeros((4, 8))
    for i in range(4):
        for j, wgt in zip((2 * i - 1, 2 * i, 2 * i + 1, 2 * i + 2), (1, 3, 3, 1)):
            if 0 <= j < 8:
                weights[i, j] = wgt
    weights /= weights.sum(1, keepdims=True)
    np.testing.assert_allclose(out, weights @ image @ weights.T, atol=1e-5)

    area, _, _ = resize(image, 4, interpolation="area")
    np.testing.assert_allclose(area, image.reshape(4, 2, 4, 2).mean((1, 3)), atol=1e-6)


def test_resize_masks_nearest_and_boxes():
    masks = np.arange(16, dtype=np.uint8).reshape(4, 4)
    image = np.zeros((4, 4), np.float32)
    _, boxes, small = resize(image, 2, boxes=[[1, 2, 2, 1]], masks=masks)
    # Output centre 0.5 -> input 1.0 -> index 1; 1.5 -> 3.0 -> index 3.
    np.testing.assert_array_equal(small, [[5, 7], [13, 15]])
    assert small.dtype == np.uint8
    np.testing.assert_allclose(boxes, [[0.5, 1.0, 1.0, 0.5]])

    _, boxes, big = resize(image[:2, :2], (4, 6), boxes=[[1, 1, 1, 1]], masks=masks[:2, :2])
    np.testing.assert_array_equal(big, np.repeat(np.repeat(masks[:2, :2], 2, 0), 3, 1))
    np.testing.assert_allclose(boxes, [[3, 2, 3, 2]])


def test_constant_image_stays_constant():
    out, _, _ = pad_and_resize(np.full((300, 200), 0.25, np.float32), 224)
    # The padded columns are 0, the centre is untouched.
    assert out.shape == (224, 224)
    assert out[:, 112] == pytest.approx(0.25, abs=1e-6)
    assert out[:, 0].max() == 0.0


@pytest.mark.parametrize("shape,size", [((300, 200), 224), ((150, 410), 64), ((97, 97), 224)])
def test_boxes_and_masks_stay_consistent(shape, size):
    rng = np.random.default_rng(sum(shape) + size)
    height, width = shape
    boxes, planes = [], []
    for _ in range(5):
        w, h = int(rng.integers(10, width // 2)), int(rng.integers(10, height // 2))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        plane = np.zeros(shape, np.uint8)
        plane[y : y + h, x : x + w] = 1
        boxes.append([x, y, w, h])
        planes.append(plane)
    image = rng.random(shape).astype(np.float32)
    out, out_boxes, out_masks = pad_and_resize(image, size, np.array(boxes), np.stack(planes, -1))
    assert out.shape == (size, size) and out_masks.shape == (size, size, 5)
    for k, (x, y, w, h) in enumerate(out_boxes):
        rows = np.flatnonzero(out_masks[..., k].any(1))
        cols = np.flatnonzero(out_masks[..., k].any(0))
        # Mask bounding box [first, last + 1) vs the transformed box, within one pixel.
        np.testing.assert_allclose([cols[0], rows[0]], [x, y], atol=1.0)
        np.testing.assert_allclose([cols[-1] + 1, rows[-1] + 1], [x + w, y + h], atol=1.0)


def test_geometry_input_errors():
    with pytest.raises(ValueError, match="boxes must be"):
        pad_to_square(np.zeros((3, 4)), boxes=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="masks must be"):
        pad_and_resize(np.zeros((3, 4)), 8, masks=np.zeros((4, 3)))


# --------------------------------------------------------------------------------------
# equalization, uint8, statistics
# --------------------------------------------------------------------------------------


def test_equalize_histogram_hand_cases():
    # 4 bins over [0, 1]: counts 2, 1, 0, 1 -> cdf .5, .75, .75, 1 at centres
    # .125, .375, .625, .875; 0 is below the first centre (cdf 0.5), 0.25 is halfway
    # between the first two centres (0.625), 1 is above the last (1).
    x = np.array([[0.0, 0.0], [0.25, 1.0]], np.float32)
    np.testing.assert_allclose(equalize_histogram(x, nbins=4), [[0.5, 0.5], [0.625, 1.0]])
    # 256 bins, values {0, 1}: 3 zeros, 1 one.
    np.testing.assert_allclose(equalize_histogram(np.array([0, 0, 0, 1.0])), [0.75, 0.75, 0.75, 1])
    # Integer path: one bin per value from min to max.
    out = equalize_histogram(np.array([10, 10, 12, 200], np.uint8))
    np.testing.assert_allclose(out, [0.5, 0.5, 0.75, 1.0])
    assert out.dtype == np.float32


def test_equalize_histogram_monotone_and_flat():
    rng = np.random.default_rng(6)
    image = rng.beta(2, 5, size=(64, 80)).astype(np.float32)
    out = equalize_histogram(image)
    order = np.argsort(image, axis=None)
    assert np.all(np.diff(out.ravel()[order]) >= 0)
    assert out.max() == 1.0 and out.min() > 0
    # Equalized values approximate the rank / N of each pixel (a flat histogram).
    ranks = np.empty(image.size)
    ranks[order] = (np.arange(image.size) + 1) / image.size
    assert np.abs(out.ravel() - ranks).max() < 2.5 / 256


def test_uint8_round_trip():
    values = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8(from_uint8(values)), values)
    np.testing.assert_array_equal(
        to_uint8(np.array([-0.1, 0.4 / 255, 0.6 / 255, 0.5, 1.2])), [0, 0, 1, 128, 255]
    )
    with pytest.raises(TypeError, match="uint8"):
        from_uint8(np.zeros(3, np.float32))


def test_compute_mean_std_streaming_matches_pooled():
    rng = np.random.default_rng(7)
    images = [rng.random((h, w)).astype(np.float32) ** 2 for h, w in [(10, 20), (33, 7), (64, 64)]]
    pooled = np.concatenate([im.ravel().astype(np.float64) for im in images])
    mean, std = compute_mean_std(im for im in images)  # a generator: single pass
    assert mean == pytest.approx(pooled.mean(), rel=1e-12)
    assert std == pytest.approx(pooled.std(), rel=1e-12)
    # Hand case: pixels {0, 1, 1, 0, 0, 0} -> mean 1/3, std sqrt(2/9).
    mean, std = compute_mean_std([np.array([0.0, 1.0, 1.0]), np.zeros((1, 3))])
    assert (mean, std) == pytest.approx((1 / 3, np.sqrt(2 / 9)))


def test_compute_mean_std_errors():
    with pytest.raises(ValueError, match="no images"):
        compute_mean_std([])
    with pytest.raises(ValueError, match=r"image 1: pixel values in \[0.0, 2.0\]"):
        compute_mean_std([np.zeros(3), np.array([0.0, 2.0])])
    with pytest.raises(TypeError, match="image 0: dtype uint8"):
        compute_mean_std([np.zeros(3, np.uint8)])


def test_normalize():
    out = normalize(np.array([0.0, 0.5, 1.0]), mean=0.5, std=0.25)
    np.testing.assert_allclose(out, [-2.0, 0.0, 2.0])
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="std must be > 0"):
        normalize(np.zeros(2), 0.5, 0.0)
