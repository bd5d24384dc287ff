"""The evaluation program's gin files parse into the intended tasks and encoders."""

from pathlib import Path

import pytest

from lovt_keras.training import evaluation as ev
from lovt_keras.training import evaluation_program
from lovt_keras.training.tasks import PAPER_TASKS, SYNTH_TASKS
from tools import gin_registry, run

REPO = Path(__file__).resolve().parents[2]
EVAL_FILES = sorted(str(p.relative_to(REPO)) for p in (REPO / "experiments" / "eval").glob("*.gin"))
DATA_BINDINGS = [f"{key.upper()}_DATA = '/data/{key}'"
                 for key in ("rsna", "covid_rural", "siim", "object_cxr", "nih")]


@pytest.fixture(autouse=True, scope="module")
def _registered():
    gin_registry.register()


def _configure(files, bindings=()):
    paths = list(files)
    used = "\n".join((REPO / f).read_text() for f in paths)
    data = [b for b in DATA_BINDINGS if b.split(" ")[0] in used]
    return run.configure(paths, data + list(bindings))


def test_one_file_per_paper_task_and_per_synthetic_task():
    names = {Path(f).stem for f in EVAL_FILES}
    assert {f"task{n:02d}_{task.name}" for n, task in PAPER_TASKS.items()} <= names
    assert set(SYNTH_TASKS) <= names
    assert {"all_paper", "all_synth", "quickstart_synth", "quickstart",
            "ablations_synthcxr"} <= names
    assert len(names) == 18 + len(SYNTH_TASKS) + 5


@pytest.mark.parametrize("path", EVAL_FILES)
def test_eval_file_parses_into_its_tasks_and_opens_with_the_command(path):
    header = [line for line in (REPO / path).read_text().splitlines() if line.startswith("#")]
    text = "\n".join(header)
    assert "python -m tools.run --gin " + path in text
    assert "Expected:" in text and "Runtime:" in text
    spec = _configure([path])
    assert spec.program.__name__ == "evaluate"
    tasks = spec.train_data()
    stem = Path(path).stem
    if stem == "all_paper":
        assert [t.number for t in tasks] == list(range(1, 19))
        assert {t.dataset for t in tasks} == {f"/data/{k}" for k in
                                              ("rsna", "covid_rural", "siim", "object_cxr", "nih")}
    elif stem == "all_synth":
        assert [t.name for t in tasks] == list(SYNTH_TASKS)
    elif stem == "quickstart_synth":  # the quickstart's probe sizes, per-head recipes
        assert [t.name for t in tasks] == list(SYNTH_TASKS)
        sizes = {t.name: (t.dataset_options["num_train"], t.steps_per_epoch) for t in tasks}
        assert sizes["synth_opacity_linear_100"] == sizes["synth_findings_linear"] == (300, None)
        # 1 % / 10 % = the first 20 / 200 of 2000 images, epochs of ceil(300 / 16) batches.
        assert sizes["synth_opacity_linear_1"] == sizes["synth_opacity_yolov3_frozen_10"] == (2000, 19)
        recipes = {t.name: (t.lr_grid, t.max_epochs) for t in tasks}
        assert recipes["synth_opacity_linear_1"] == ((0.03, 0.3), 30)
        assert recipes["synth_pneumothorax_unet_finetune"] == ((3e-4,), 8)
        assert recipes["synth_foreign_object_yolov3_frozen"] == ((1e-3,), 30)
        assert recipes["synth_pneumothorax_unet_frozen"] == ((1e-3,), 8)
        assert spec.model()["Random"].width == 16
    elif stem in ("quickstart", "ablations_synthcxr"):  # the studies' evaluations
        linear = ["synth_opacity_linear_100", "synth_foreign_object_linear"]
        assert [t.name for t in tasks][:2] == linear
        for task in tasks:
            assert task.dataset_options["num_train"] == 300 and task.dataset_options["seed"] == 1
            if task.name in linear:
                assert task.max_epochs == 20 and task.patience == 5
        grids = [t.lr_grid for t in tasks[:2]]
        if stem == "quickstart":  # the official grids of tasks 8-9 (RSNA) and 17 (Object-CXR)
            assert grids == [PAPER_TASKS[9].lr_grid, PAPER_TASKS[17].lr_grid]
        else:
            assert grids == [(0.03, 0.1, 0.3)] * 2
        if stem == "ablations_synthcxr":
            assert [t.head for t in tasks] == ["linear", "linear", "unet", "yolov3"]
        assert gin_registry.bound_value("lovt.evaluate.seeds") == (5 if stem == "quickstart" else 1)
        encoders = spec.model()
        assert list(encoders) == ["Random init"] and encoders["Random init"].width == 16
        return
    elif stem.startswith("task"):
        number = int(stem[4:6])
        assert len(tasks) == 1 and tasks[0] == PAPER_TASKS[number].__class__(
            **dict(PAPER_TASKS[number].to_dict(), dataset=f"/data/{PAPER_TASKS[number].dataset}"))
    else:
        assert [t.name for t in tasks] == [stem]
        assert tasks[0].image_size == 224
        low_label = stem in ("synth_opacity_linear_1", "synth_opacity_linear_10",
                             "synth_opacity_yolov3_frozen_1", "synth_opacity_yolov3_frozen_10")
        assert tasks[0].dataset_options == dict(num_train=5000 if low_label else 1000,
                                                num_validation=200, num_test=300, seed=1,
                                                cache_dir=None)
        assert tasks[0].steps_per_epoch == (63 if low_label else None)
    encoders = spec.model()
    depth = 18 if "synth" in stem else 50
    assert list(encoders) == ["Random"] and encoders["Random"].depth == depth


def test_tiny_overlay_and_encoder_bindings(tmp_path):
    spec = _configure(["experiments/eval/all_synth.gin", "gin/debug/tiny_eval.gin"])
    tasks = spec.train_data()
    assert {(t.image_size, t.max_epochs) for t in tasks} == {(64, 1)}
    sizes = {t.name: t.dataset_options["num_train"] for t in tasks}
    assert sizes["synth_opacity_linear_100"] == 100 and sizes["synth_opacity_linear_1"] == 200
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "image_encoder.keras").write_bytes(b"")
    spec = _configure(["experiments/eval/task09_rsna_linear_100.gin"],
                      [f"CHECKPOINTS = {{'LoVT': '{tmp_path / 'run'}'}}",
                       "lovt.eval_encoders.random_init_depth = None"])
    encoders = spec.model()
    assert list(encoders) == ["LoVT"] and encoders["LoVT"].path == tmp_path / "run" / "image_encoder.keras"


def test_include_splits_the_baselines_from_the_checkpoints(tmp_path, capsys):
    """What a study runs: the baselines alone (none declared is no error, an empty
    result), then each checkpoint alone."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "image_encoder.keras").write_bytes(b"")
    checkpoints = {"LoVT": str(tmp_path / "run")}
    both = evaluation_program.eval_encoders(checkpoints, random_init_depth=18,
                                            random_name="Random init")
    assert list(both) == ["Random init", "LoVT"]
    baselines = evaluation_program.eval_encoders(checkpoints, random_init_depth=18,
                                                 random_name="Random init", include="baselines")
    assert list(baselines) == ["Random init"] and baselines["Random init"].depth == 18
    only = evaluation_program.eval_encoders(checkpoints, random_init_depth=18,
                                            include="checkpoints")
    assert list(only) == ["LoVT"]
    assert evaluation_program.eval_encoders(checkpoints, random_init_depth=None,
                                            include="baselines") == {}
    with pytest.raises(ValueError, match="no encoder"):
        evaluation_program.eval_encoders({}, random_init_depth=None)
    with pytest.raises(ValueError, match="include"):
        evaluation_program.eval_encoders(checkpoints, include="some")
    result = evaluation_program.evaluate(dict, [_a_task()],
                                         output_dir=str(tmp_path / "eval"))
    assert result.results == [] and (tmp_path / "eval" / "results.json").read_text() == "[]\n"
    assert "no encoder to evaluate" in capsys.readouterr().out


def _a_task():
    return evaluation_program.synth_tasks(["synth_opacity_linear_100"])[0]


def test_task_overrides_apply_per_task_and_unknown_names_fail():
    tasks = evaluation_program.synth_tasks(
        ["synth_opacity_linear_1", "synth_foreign_object_linear"], overrides={"max_epochs": 7},
        task_overrides={"synth_foreign_object_linear": {"max_epochs": 3, "lr_grid": (0.5,)}})
    assert [(t.max_epochs, t.lr_grid) for t in tasks] == [
        (7, SYNTH_TASKS["synth_opacity_linear_1"].lr_grid), (3, (0.5,))]
    with pytest.raises(ValueError, match="synth_nothing"):
        evaluation_program.synth_tasks(["synth_opacity_linear_1"], task_overrides={"synth_nothing": {}})


def test_paper_tasks_take_one_folder_per_dataset():
    tasks = evaluation_program.paper_tasks([12, 18, 13], folders={"covid_rural": "/c", "nih": "/n",
                                                                "siim": "/s"})
    assert [(t.number, t.dataset) for t in tasks] == [(12, "/c"), (18, "/n"), (13, "/s")]
    with pytest.raises(ValueError, match=r"task 9 needs the rsna dataset folder: set RSNA_DATA"):
        evaluation_program.paper_tasks([12, 9], folders={"covid_rural": "/c"})
    with pytest.raises(ValueError, match=r"names \['chexpert'\]"):
        evaluation_program.paper_tasks([12], folders={"covid_rural": "/c", "chexpert": "/x"})


def test_missing_dataset_folder_is_named():
    spec = run.configure(["experiments/eval/task05_rsna_yolov3_frozen_10.gin"], [])
    with pytest.raises(gin_registry.MissingValueError, match=r"folders\['rsna'\].*RSNA_DATA"):
        spec.train_data()


@pytest.mark.large
def test_run_main_evaluates_and_writes_the_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LOVT_KERAS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "eval"
    code = run.main(["--gin", "experiments/eval/synth_opacity_linear_100.gin",
                     "--gin", "gin/debug/tiny_eval.gin", "--bind", "lovt.synth_tasks.num_train = 16",
                     "--output_dir", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| method | S Opac Lin 100% |" in printed and "| Random |" in printed
    assert (out / "results.csv").is_file() and (out / "results.md").is_file()
    assert (out / "Random" / "synth_opacity_linear_100" / "summary.json").is_file()
    assert len(list(ev.Path(out).rglob("result.json"))) == 3  # 2 lr at seed 0 + seed 1


def test_evaluate_prints_where_the_table_was_written(tmp_path, capsys, monkeypatch):
    def fake_evaluate_encoders(encoders, tasks, **kwargs):
        return [{"method": name, "task": tasks[0].name, "label": tasks[0].label,
                 "mean": 0.25, "ci95": 0.01} for name in encoders]

    monkeypatch.setattr(ev, "evaluate_encoders", fake_evaluate_encoders)
    tasks = evaluation_program.synth_tasks(["synth_opacity_linear_100"], image_size=64)
    result = evaluation_program.evaluate(lambda: {"Random": None}, tasks, output_dir=str(tmp_path))
    printed = capsys.readouterr().out
    assert result.table_paths == (tmp_path / "results.csv", tmp_path / "results.md")
    assert printed.endswith(
        "| Random | 25.0 ± 1.0 |\n"
        f"table written to {tmp_path / 'results.md'} and {tmp_path / 'results.csv'}; every "
        f"task's runs are in {tmp_path}/<method>/<task>/\n")
    assert (tmp_path / "results.md").read_text().endswith("| Random | 25.0 ± 1.0 |\n")
