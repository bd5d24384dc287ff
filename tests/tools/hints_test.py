"""Every error message that suggests a command names one that works: each suggested
command is parsed by its program (and a ``--bind`` applied to the configuration it was
suggested for), with placeholders such as ROOT filled in."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lovt_keras.data.downstream_batches import load_downstream_folder
from lovt_keras.data.pretraining_dataset import load_pretraining_dataset
from lovt_keras.data.tokenization import ReportTokenizer
from lovt_keras.models.report_encoder import bert_backbone_from_folder
from tools import gin_registry, prepare, run

REPO = Path(__file__).resolve().parents[2]
PLACEHOLDERS = ("ROOT", "REPORTS_DIR", "IMAGES_DIR", "OUTPUT_DIR", "ORIGINAL_DIR")


def _commands(message: str) -> list[str]:
    """The commands quoted in a message (between backticks)."""
    return re.findall(r"`(python -m [^`]+)`", message)


def _check_prepare_command(command: str, tmp_path: Path, names=prepare.DATASETS) -> list:
    """Parses a suggested ``python -m tools.prepare`` command (for NAME: every one of
    ``names``); returns the parsed arguments, or ``"help"`` for a ``--help`` form that
    exits 0."""
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "tools.prepare"], command
    words = [str(tmp_path / w.lower()) if w in PLACEHOLDERS else w for w in words[3:]]
    parsed = []
    for name in names if "NAME" in words else [None]:
        argv = [name if w == "NAME" else w for w in words]
        if "--help" in argv:
            with pytest.raises(SystemExit) as exit_:
                prepare.main(argv)
            assert exit_.value.code == 0, argv
            parsed.append("help")
        else:
            parsed.append(prepare.build_parser().parse_args(argv))
    return parsed


def test_a_missing_pretraining_folder_suggests_working_prepare_commands(tmp_path, capsys):
    folder = tmp_path / "mimic"
    with pytest.raises(FileNotFoundError) as error:
        load_pretraining_dataset(folder)
    commands = _commands(str(error.value))
    assert [c.split()[3] for c in commands] == ["mimic-cxr", "iu-xray", "synthcxr", "NAME"]
    for command in commands:
        for args in _check_prepare_command(command, tmp_path):
            if args != "help":  # the command writes the folder that was missing
                assert args.output_dir == str(folder)
    assert "usage: python -m tools.prepare" in capsys.readouterr().out


def test_a_downstream_folder_without_stats_suggests_working_commands(tmp_path):
    folder = tmp_path / "rsna"
    folder.mkdir()
    with pytest.raises(FileNotFoundError) as error:
        load_downstream_folder(folder)
    from lovt_keras.data.downstream.registry import CONVERTERS

    message = str(error.value)
    assert f"(NAME: {', '.join(CONVERTERS)};" in message
    commands = _commands(message)
    assert [c.split()[3:] for c in commands] == [["NAME", "ROOT", str(folder)],
                                                ["NAME", "--help"]]
    for command in commands:
        results = _check_prepare_command(command, tmp_path, names=list(CONVERTERS))
        assert len(results) == len(CONVERTERS)
        for args in results:
            if args != "help":
                assert args.output_dir == str(folder) and args.dataset in CONVERTERS


def test_the_missing_task_folder_hint_names_a_dataset_of_tools_prepare(tmp_path, capsys):
    # The dry run of lovt.evaluate names the whole command (ROOT, then the folder the
    # task reads) and its --help form.
    argv = ["--gin", "experiments/eval/task09_rsna_linear_100.gin", "--gin",
            "gin/debug/tiny_eval.gin", "--bind", "lovt.eval_encoders.random_init_depth = 18",
            "--bind", f"RSNA_DATA = '{tmp_path / 'rsna'}'", "--dry_run"]
    assert run.main(argv) == 2
    first, second = _commands(capsys.readouterr().err)
    (args,) = _check_prepare_command(first, tmp_path)
    assert args.dataset == "rsna" and args.root == str(tmp_path / "original_dir")
    assert args.output_dir == str(tmp_path / "rsna")
    assert _check_prepare_command(second, tmp_path) == ["help"]


def _bind_hint(message: str) -> str:
    (binding,) = re.findall(r"""--bind "([^"]+)\"""", message)
    return binding


def test_an_unset_required_macro_suggests_a_binding_that_sets_it(capsys):
    files = ["experiments/pretrain/lovt_mimic_30.gin", "gin/debug/tiny.gin"]
    assert run.main(["--gin", files[0], "--gin", files[1], "--dry_run"]) == 2
    binding = _bind_hint(capsys.readouterr().err)
    assert binding == "MIMIC_CXR_DIR = '...'"
    run.configure(files, [binding])  # accepted: no ConfigError
    assert gin_registry.bound_value("lovt.pretraining_batches.path") == "..."


def test_an_unset_task_folder_suggests_a_binding_that_sets_it():
    from lovt_keras.training.evaluation_program import paper_tasks

    with pytest.raises(ValueError) as error:
        paper_tasks([9], folders={})
    binding = _bind_hint(str(error.value))
    assert binding == "RSNA_DATA = '/data/rsna'"
    spec = run.configure(["experiments/eval/task09_rsna_linear_100.gin"], [binding])
    (task,) = spec.train_data()
    assert task.dataset == "/data/rsna"


def test_an_unquoted_value_suggests_the_quoted_binding(capsys):
    files = ["experiments/pretrain/lovt_mimic_30.gin"]
    argv = ["--gin", files[0], "--bind", "MIMIC_CXR_DIR = '/data/mimic'",
            "--bind", "BERT_FOLDER = /data/bert", "--dry_run"]
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert err == ("error: --bind 'BERT_FOLDER = /data/bert': syntax error: Unable to parse "
                   "value (gin values are Python literals: quote strings, --bind "
                   "\"BERT_FOLDER = '/data/bert'\")\n")
    run.configure(files, ["MIMIC_CXR_DIR = '/data/mimic'", _bind_hint(err)])
    assert gin_registry.bound_value("lovt.bert_backbone_from_folder.folder") == "/data/bert"


def test_an_unquoted_value_in_a_file_suggests_the_quoted_line(tmp_path, capsys):
    path = tmp_path / "mine.gin"
    path.write_text("include 'experiments/pretrain/lovt_mimic_30.gin'\n"
                    "MIMIC_CXR_DIR = /data/mimic\n")
    assert run.main(["--gin", str(path), "--dry_run"]) == 2
    assert capsys.readouterr().err == (
        f"error: {path}:2: syntax error: Unable to parse value (gin values are Python "
        "literals: quote strings, MIMIC_CXR_DIR = '/data/mimic')\n")


def test_a_bert_folder_that_does_not_exist_is_named_as_such(tmp_path, capsys):
    missing = tmp_path / "bert"
    expected = (f"{missing}: no such folder (a BERT model folder, with vocab.txt, "
                "config.json and the weights, is expected)")
    with pytest.raises(FileNotFoundError) as error:
        ReportTokenizer.from_model_folder(missing)
    assert str(error.value) == expected
    with pytest.raises(FileNotFoundError) as error:
        bert_backbone_from_folder(str(missing))
    assert str(error.value) == expected
    # An existing folder without a vocabulary keeps its own message.
    missing.mkdir()
    with pytest.raises(FileNotFoundError, match="no vocab.txt"):
        ReportTokenizer.from_model_folder(missing)
    # Through the program: one line, without gin's "In call to configurable" lines.
    argv = ["--gin", "experiments/pretrain/lovt_mimic_30.gin",
            "--bind", f"MIMIC_CXR_DIR = '{tmp_path / 'mimic'}'",
            "--bind", f"BERT_FOLDER = '{tmp_path / 'nope'}'", "--dry_run"]
    assert run.main(argv) == 2
    assert capsys.readouterr().err == f"error: {expected.replace(str(missing), str(tmp_path / 'nope'))}\n"


def test_an_unknown_keras_backend_is_one_line_naming_the_valid_ones():
    # A new process, as a user starts it: the check comes before Keras is imported.
    command = [sys.executable, "-m", "tools.run", "--gin",
               "experiments/pretrain/lovt_synthcxr.gin", "--dry_run"]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "KERAS_BACKEND": "pytorch"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        "error: KERAS_BACKEND=pytorch is not a backend of lovt_keras; use one of "
        "tensorflow, jax, torch (e.g. KERAS_BACKEND=jax, or --backend jax)\n")
    # The suggested flag is one the program takes.
    assert run.build_parser().parse_args(["--gin", "x.gin", "--backend", "jax"]).backend == "jax"
