import dataclasses
import sys
import types

import pytest

from lovt_keras.data.downstream import CONVERTERS
from tools import prepare

COMMON_DESTS = ["help", "root", "output_dir", "split", "seed", "image_size", "on_error",
                "num_proc", "overwrite"]


def _subparsers(parser):
    return next(a for a in parser._subparsers._group_actions if a.dest == "dataset").choices


def test_subcommands_are_the_pretraining_datasets_and_the_table():
    choices = _subparsers(prepare.build_parser())
    assert list(choices) == list(prepare.DATASETS)
    assert list(choices) == ["synthcxr", "mimic-cxr", "iu-xray", *CONVERTERS]
    downstream = [name for name in choices if name not in prepare.PRETRAINING]
    assert downstream == list(CONVERTERS)


@pytest.mark.parametrize("name", list(CONVERTERS))
def test_downstream_subcommand_is_built_from_its_entry(name):
    converter = CONVERTERS[name]
    parser = _subparsers(prepare.build_parser())[name]
    actions = {a.dest: a for a in parser._actions}
    assert list(actions) == COMMON_DESTS + [o.name for o in converter.options]
    assert parser.description == converter.description
    assert actions["root"].help == converter.root_help
    assert f"'random' ({converter.random_split_help}) or a folder" in actions["split"].help
    for option in converter.options:
        action = actions[option.name]
        assert action.option_strings == [f"--{option.name}"]
        assert (action.default, action.help) == (option.default, option.help)
        assert action.choices == option.choices
    args = parser.parse_args(["ROOT", "OUT"])
    assert (args.split, args.seed, args.image_size, args.on_error, args.num_proc,
            args.overwrite) == ("official", 0, 224, "raise", 1, False)


class _Result:
    stats = {"mean": 0.25, "std": 0.5}

    def summary(self):
        return "fake summary"


@pytest.fixture
def fake_nih(monkeypatch):
    """Points the nih entry at a recording stand-in converter."""
    calls = []

    def convert(root, output_dir, **kwargs):
        calls.append((root, output_dir, kwargs))
        if root == "bad":
            raise FileNotFoundError("bad/BBox_List_2017.csv does not exist")
        return _Result()

    module = types.ModuleType("fake_converter")
    module.convert = convert
    monkeypatch.setitem(sys.modules, "fake_converter", module)
    monkeypatch.setitem(
        CONVERTERS, "nih", dataclasses.replace(CONVERTERS["nih"], convert="fake_converter:convert")
    )
    return calls


def test_main_passes_the_common_and_extra_options(fake_nih, capsys):
    assert prepare.main(["nih", "r", "o", "--split", "random", "--seed", "3",
                         "--num_no_finding", "7", "--num_proc", "2", "--overwrite"]) == 0
    assert fake_nih == [("r", "o", {
        "split": "random", "seed": 3, "image_size": 224, "overwrite": True,
        "on_error": "raise", "num_proc": 2, "num_no_finding": 7,
    })]
    assert capsys.readouterr().out == "fake summary\ntrain pixel mean 0.2500, std 0.5000\n"


def test_main_reports_bad_input(fake_nih, capsys):
    assert prepare.main(["nih", "bad", "o"]) == 1
    assert capsys.readouterr().err == "error: bad/BBox_List_2017.csv does not exist\n"


def test_main_lets_import_errors_surface(monkeypatch, tmp_path):
    broken = dataclasses.replace(
        CONVERTERS["rsna"], convert="lovt_keras.data.downstream.no_such_module:convert_rsna"
    )
    monkeypatch.setitem(CONVERTERS, "rsna", broken)
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        prepare.main(["rsna", str(tmp_path), str(tmp_path / "out")])

