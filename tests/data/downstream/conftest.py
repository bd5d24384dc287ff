"""Writers of tiny original-layout files for the downstream converter tests."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def write_dicom(path, pixels) -> Path:
    """A minimal 8-bit MONOCHROME2 Secondary Capture DICOM (the RSNA/SIIM pixel format)."""
    pixels = np.asarray(pixels, dtype=np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_image(path, pixels, **save_kwargs) -> Path:
    """PNG/JPG by suffix; ``pixels`` uint8 (H, W) or (H, W, 3)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path, **save_kwargs)
    return path


def write_text(path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_split(folder, train, validation, test, header="ID") -> Path:
    """A split folder; each split is a list of CSV lines (without the header)."""
    folder = Path(folder)
    for name, lines in (("train", train), ("validation", validation), ("test", test)):
        write_text(folder / f"{name}.csv", "\n".join([header, *lines]) + "\n")
    return folder


@pytest.fixture
def files():
    """The file writers, as attributes."""

    class Files:
        dicom = staticmethod(write_dicom)
        image = staticmethod(write_image)
        text = staticmethod(write_text)
        split = staticmethod(write_split)

    return Files


@pytest.fixture
def realdata():
    """Path to a real sample file (skips the test when absent).

    The folder is ``--realdata`` or ``$LOVT_KERAS_REALDATA`` (default ../shared/realdata),
    set by tests/conftest.py after this file may have been imported: read it here.
    """

    def get(*parts: str) -> Path:
        path = Path(os.environ["LOVT_KERAS_REALDATA"]).joinpath(*parts)
        if not path.exists():
            pytest.skip(f"real data file {path} not present")
        return path

    return get
