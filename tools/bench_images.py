"""Single-core throughput of image decoding and the image transforms.

    python -m tools.bench_images [--seconds 1.0]

Prints images/s for ``read_image`` on PNG (512 and 1024 px, 8-bit), a 16-bit PNG, a JPEG,
a DICOM (12-bit, written here) and the real sample files when ``../shared/realdata`` exists,
then for ``pad_and_resize`` to 224 and ``ConvirtAugmentation`` at 224 (input 512 px and
1024 px). Target: the augmentation at >= 300 images/s on one core for ~512 px inputs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from lovt_keras.data.image_augment import ConvirtAugmentation
from lovt_keras.data.images import pad_and_resize, read_image

REALDATA_IMAGES = Path(__file__).resolve().parents[1] / ".." / "shared" / "realdata" / "images"


def _synthetic_xray(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth structure plus noise, so that PNG/JPEG compress like a radiograph would."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    body = np.exp(-((x - 0.5) ** 2 + (y - 0.55) ** 2) / 0.08)
    ribs = 0.1 * np.sin(40 * y) * body
    return np.clip(0.15 + 0.6 * body + ribs + 0.03 * rng.normal(size=(height, width)), 0, 1)


def _write_dicom_12bit(path: Path, pixels: np.ndarray) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _rate(fn: Callable[[], object], seconds: float) -> float:
    fn()  # warm-up (imports, caches)
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or count < 3:
        fn()
        count += 1
    return count / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args(argv)
    rows: list[tuple[str, float]] = []

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {}
        for size in (512, 1024):
            img = (_synthetic_xray(size, size) * 255).round().astype(np.uint8)
            Image.fromarray(img).save(tmp / f"png{size}.png")
            files[f"read_image PNG 8-bit {size}^2"] = tmp / f"png{size}.png"
        big = _synthetic_xray(1024, 1024)
        Image.fromarray((big * 65535).round().astype(np.uint16)).save(tmp / "png16.png")
        files["read_image PNG 16-bit 1024^2"] = tmp / "png16.png"
        Image.fromarray((big * 255).round().astype(np.uint8)).save(tmp / "j.jpg", quality=90)
        files["read_image JPEG 1024^2"] = tmp / "j.jpg"
        _write_dicom_12bit(tmp / "d.dcm", (big * 4095).round())
        files["read_image DICOM 12-bit 1024^2 (raw)"] = tmp / "d.dcm"
        if REALDATA_IMAGES.is_dir():
            for path in sorted(p for p in REALDATA_IMAGES.rglob("*") if p.is_file()):
                shape = read_image(path).shape
                files[
                    f"read_image real {path.suffix} {shape[1]}x{shape[0]} ({path.parent.name})"
                ] = path
        for name, path in files.items():
            rows.append((name, _rate(lambda p=path: read_image(p), args.seconds)))

    img512, img1024 = _synthetic_xray(512, 512).astype(np.float32), big.astype(np.float32)
    nonsquare = _synthetic_xray(1024, 850).astype(np.float32)
    rows.append(
        ("pad_and_resize 1024x850 -> 224", _rate(lambda: pad_and_resize(nonsquare), args.seconds))
    )
    rows.append(
        ("pad_and_resize 512^2 -> 224", _rate(lambda: pad_and_resize(img512), args.seconds))
    )
    aug = ConvirtAugmentation(image_size=224)
    rng = np.random.default_rng(0)
    rows.append(("ConvirtAugmentation 512^2 -> 224", _rate(lambda: aug(img512, rng), args.seconds)))
    rows.append(
        ("ConvirtAugmentation 1024^2 -> 224", _rate(lambda: aug(img1024, rng), args.seconds))
    )

    print(f"images/s on one core (pid {os.getpid()}, {args.seconds:.1f} s per row)")
    width = max(len(name) for name, _ in rows)
    for name, rate in rows:
        print(f"{name:<{width}}  {rate:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
