"""Shared pytest configuration: markers for slow tests, the real-data folder and a fixed
seed per test."""

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# The real sample files (report, image and annotation excerpts) that the conformance tests
# read; a test whose file is absent skips, naming the path it looked for.
REALDATA_ENV = "LOVT_KERAS_REALDATA"
DEFAULT_REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


def pytest_addoption(parser):
    parser.addoption("--run_large", action="store_true", help="run tests marked large")
    parser.addoption(
        "--run_extra_large", action="store_true", help="run tests marked extra_large"
    )
    parser.addoption(
        "--realdata",
        metavar="DIR",
        help=f"folder of the real sample files (default: ${REALDATA_ENV}, else "
        f"{DEFAULT_REALDATA})",
    )


def pytest_configure(config):
    # Test modules read the folder when they are collected (some parametrize over its
    # files), so the choice goes to them through the environment, resolved once here.
    folder = config.getoption("--realdata") or os.environ.get(REALDATA_ENV) or DEFAULT_REALDATA
    os.environ[REALDATA_ENV] = str(Path(folder).expanduser().resolve())


def pytest_collection_modifyitems(config, items):
    skip_large = pytest.mark.skip(reason="large test: pass --run_large")
    skip_xl = pytest.mark.skip(reason="extra_large test: pass --run_extra_large")
    for item in items:
        if item.get_closest_marker("large") and not config.getoption("--run_large"):
            item.add_marker(skip_large)
        if item.get_closest_marker("extra_large") and not config.getoption("--run_extra_large"):
            item.add_marker(skip_xl)


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield
