import dataclasses
import importlib
import inspect

import pytest

from lovt_keras.data.downstream import CONVERTERS, Converter
from lovt_keras.data.downstream.common import OFFICIAL_SPLIT_NAMES, official_split_folder

# The keywords tools/prepare.py passes to every converter.
COMMON = ("split", "seed", "image_size", "overwrite", "on_error", "num_proc")


def test_names_are_the_five_datasets_in_cli_order():
    assert list(CONVERTERS) == ["rsna", "siim", "object-cxr", "nih", "covid-rural"]
    assert all(name == c.name for name, c in CONVERTERS.items())
    assert [c.dataset for c in CONVERTERS.values()] == [
        "rsna", "siim", "object_cxr", "nih", "covid_rural"
    ]


@pytest.mark.parametrize("name", list(CONVERTERS))
def test_converter_imports_and_takes_the_cli_options(name):
    converter = CONVERTERS[name]
    convert = converter.load()
    assert callable(convert)
    assert convert.__name__ == f"convert_{converter.dataset}"
    assert convert.__module__ == f"lovt_keras.data.downstream.{converter.dataset}"
    params = inspect.signature(convert).parameters
    assert list(params)[:2] == ["root", "output_dir"]
    for keyword in COMMON:
        assert keyword in params, keyword
    # The command line's default of an extra option is the converter's default.
    for option in converter.options:
        assert params[option.name].default == option.default, option.name
        if option.choices is not None:
            assert option.default in option.choices


@pytest.mark.parametrize("name", list(CONVERTERS))
def test_official_split_folder_comes_from_the_table(name):
    converter = CONVERTERS[name]
    assert OFFICIAL_SPLIT_NAMES[converter.dataset] == converter.official_split
    assert official_split_folder(converter.dataset).name == converter.official_split
    assert (official_split_folder(converter.dataset) / "train.csv").is_file()


def test_import_errors_surface():
    broken = dataclasses.replace(
        CONVERTERS["rsna"], convert="lovt_keras.data.downstream.no_such_module:convert"
    )
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        broken.load()
    missing = dataclasses.replace(
        CONVERTERS["rsna"], convert="lovt_keras.data.downstream.rsna:nope"
    )
    with pytest.raises(AttributeError, match="nope"):
        missing.load()


def test_entries_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CONVERTERS["nih"].description = "x"  # type: ignore[misc]
    assert isinstance(CONVERTERS["nih"], Converter)
    assert importlib.import_module("lovt_keras.data.downstream.registry").CONVERTERS is CONVERTERS
