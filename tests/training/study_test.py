"""``lovt.study``: aggregation over pretraining seeds, the sequence of runs it starts
(learning-rate sweep, seeds, evaluation), resuming, and the quickstart end to end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lovt_keras.analysis.results_table import results_table
from lovt_keras.analysis.study import aggregate_over_seeds, encoder_name, split_encoder_name
from lovt_keras.training import study
from tools import run

REPO = Path(__file__).resolve().parents[2]


def _summary(method, task, test, failed=(), lr=0.1):
    values = np.asarray(test, np.float64)
    return {"method": method, "task": task, "label": task.upper(), "number": None,
            "metric": "dice", "mean": float(values.mean()),
            "ci95": float(1.96 * values.std(ddof=1) / np.sqrt(values.size)),
            "test": list(test), "failed_seeds": list(failed), "learning_rate": lr}


def test_encoder_names_round_trip():
    assert encoder_name("Global only", 2) == "Global only #2"
    assert split_encoder_name("Global only #2") == ("Global only", 2)
    assert split_encoder_name("Random init") == ("Random init", None)


def test_aggregate_over_pretraining_seeds_by_hand():
    results = [
        _summary("Random init", "a", [0.1, 0.2, 0.3]),
        _summary("LoVT #0", "a", [0.2, 0.4, 0.0], failed=[2]),
        _summary("LoVT #1", "a", [0.4, 0.4, 0.4]),
        _summary("LoVT #2", "a", [0.5, 0.5, 0.5], lr=0.3),
    ]
    out = aggregate_over_seeds(results)
    assert [r["method"] for r in out] == ["Random init", "LoVT"]
    random, lovt = out
    # One encoder: its probe-seed interval is kept.
    assert random["mean"] == pytest.approx(0.2)
    assert random["ci95"] == pytest.approx(1.96 * 0.1 / np.sqrt(3))
    # Three pretraining seeds: encoder means 0.2, 0.4, 0.5 -> mean 11/30, std(ddof=1)
    # sqrt(((0.2-11/30)^2 + (0.4-11/30)^2 + (0.5-11/30)^2) / 2) = 0.152753.
    assert lovt["encoder_means"] == pytest.approx([0.2, 0.4, 0.5])
    assert lovt["mean"] == pytest.approx(11 / 30)
    assert lovt["ci95"] == pytest.approx(1.96 * 0.1527525 / np.sqrt(3), rel=1e-6)
    assert lovt["pretraining_seeds"] == [0, 1, 2]
    assert lovt["learning_rates"] == [0.1, 0.1, 0.3]
    assert lovt["failed_seeds"] == ["#0/2"] and lovt["num_runs"] == 9
    table = results_table(out)
    assert table.loc["LoVT", "A"] == "36.7 ± 17.3 [1/9 failed]"
    assert table.loc["Random init", "A"] == "20.0 ± 11.3"
    with pytest.raises(ValueError, match="same seed"):
        aggregate_over_seeds([_summary("LoVT #0", "a", [0.1, 0.2])] * 2)


class FakeRuns:
    """Stands in for ``python -m tools.run``: records the argv, writes what a finished
    run writes (run_info, metrics with a final val_loss, the evaluation's summaries)."""

    def __init__(self, val_loss):
        self.val_loss = val_loss
        self.calls = []

    def __call__(self, argv, cwd=None, check=False):
        # Each step runs `python -m tools.run` in the checkout (where tools/ lives).
        assert argv[1:3] == ["-m", "tools.run"] and (Path(cwd) / "tools" / "run.py").is_file()
        args = argv[3:]
        self.calls.append(args)
        out = Path(args[args.index("--output_dir") + 1])
        out.mkdir(parents=True, exist_ok=True)
        bindings = [args[i + 1] for i, a in enumerate(args) if a == "--bind"]
        checkpoints = [b for b in bindings if b.startswith("CHECKPOINTS = ")]
        if checkpoints:
            names = json.loads(checkpoints[0][len("CHECKPOINTS = "):])
            summaries = [_summary("Random init", "t", [0.1, 0.1])]
            for k, name in enumerate(names):
                summaries.append(_summary(name, "t", [0.2 + 0.1 * k, 0.2 + 0.1 * k]))
            (out / "results.json").write_text(json.dumps(summaries))
        else:
            lr = next((float(b.split("= ")[1]) for b in bindings
                       if b.startswith("lovt.pretrain.learning_rate")), None)
            records = [{"epoch": 1, "loss": 3.0, "val_loss": 3.0},
                       {"epoch": 2, "loss": 2.0, "val_loss": self.val_loss(args, lr)}]
            (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (out / "run_info.json").write_text(json.dumps({"finished": "now"}))
        return subprocess.CompletedProcess(argv, 0)


def test_study_sweeps_each_methods_rate_then_runs_the_seeds_and_evaluates(tmp_path, monkeypatch):
    # LoVT is best at 1e-3, global only at 3e-3 (lowest final validation loss).
    best = {"LoVT": 1e-3, "Global": 3e-3}

    def val_loss(args, lr):
        method = "Global" if "gin/losses/global_only.gin" in args else "LoVT"
        return 1.0 + abs(np.log(lr / best[method]))

    fake = FakeRuns(val_loss)
    monkeypatch.setattr(study.subprocess, "run", fake)
    methods = {"LoVT": {}, "Global only": {"gin": ["gin/losses/global_only.gin"],
                                           "bind": ["lovt.pretrain.epochs = 3"]}}
    out = tmp_path / "study"
    info = study.study(output_dir=out, pretrain_gin=["p.gin"], methods=methods, seeds=[0, 1],
                       lr_sweep=[1e-3, 3e-3], evaluation_gin=["e.gin"], verbose=0)
    # Per method: the sweep at seed 0 (2 runs), seed 1 at the chosen rate; then one
    # evaluation. Seed 0 at the chosen rate is the sweep's run, not a new one.
    assert len(fake.calls) == 2 * 3 + 1
    assert info["learning_rate_sweep"]["LoVT"]["learning_rate"] == 1e-3
    assert info["learning_rate_sweep"]["Global only"]["learning_rate"] == 3e-3
    global_seed1 = fake.calls[5]
    assert global_seed1[:6] == ["--gin", "p.gin", "--gin", "gin/losses/global_only.gin",
                                "--bind", "lovt.pretrain.epochs = 3"]
    assert "SEED = 1" in global_seed1 and "lovt.pretrain.learning_rate = 0.003" in global_seed1
    evaluation = fake.calls[-1]
    assert evaluation[:2] == ["--gin", "e.gin"]
    checkpoints = json.loads(evaluation[evaluation.index("--output_dir") - 1][14:])
    assert checkpoints == {
        "LoVT #0": str(out / "pretrain/LoVT/lr_0.001/seed_0"),
        "LoVT #1": str(out / "pretrain/LoVT/lr_0.001/seed_1"),
        "Global only #0": str(out / "pretrain/Global_only/lr_0.003/seed_0"),
        "Global only #1": str(out / "pretrain/Global_only/lr_0.003/seed_1"),
    }
    # The fake evaluation scores the encoders 0.2, 0.3, 0.4, 0.5 in that order.
    rows = {r["method"]: r for r in info["results"]}
    assert rows["LoVT"]["mean"] == pytest.approx(0.25)
    assert rows["Global only"]["mean"] == pytest.approx(0.45)
    assert rows["LoVT"]["ci95"] == pytest.approx(1.96 * np.std([0.2, 0.3], ddof=1) / np.sqrt(2))
    table = (out / "results.md").read_text()
    # 1.96 * std([0.2, 0.3], ddof=1) / sqrt(2) = 1.96 * 0.0707 / 1.414 = 0.098.
    assert "| LoVT | 25.0 ± 9.8 |" in table and "| Random init | 10.0 ± 0.0 |" in table
    for name in ("results.csv", "results.png", "loss_curves.png", "study.json"):
        assert (out / name).is_file(), name

    # Rerunning resumes: every finished run is kept, nothing is started again.
    fake.calls.clear()
    study.study(output_dir=out, pretrain_gin=["p.gin"], methods=methods, seeds=[0, 1],
                lr_sweep=[1e-3, 3e-3], evaluation_gin=["e.gin"], verbose=0)
    assert fake.calls == []


def test_a_method_may_sweep_its_own_rates(tmp_path, monkeypatch, capsys):
    """Only ConVIRT sweeps (its loss stayed at chance at the experiment's rate); LoVT
    runs as declared, with no learning-rate binding; the notes name the rate kept."""
    fake = FakeRuns(lambda args, lr: {None: 2.0, 1e-4: 3.1, 3e-4: 2.5, 1e-3: 3.4}[lr])
    monkeypatch.setattr(study.subprocess, "run", fake)
    methods = {"LoVT": {}, "ConVIRT": {"bind": ["X = 1"], "lr_sweep": [1e-4, 3e-4, 1e-3]}}
    out = tmp_path / "study"
    info = study.study(output_dir=out, pretrain_gin=["p.gin"], methods=methods, seeds=[0, 1, 2],
                       evaluation_gin=["e.gin"], verbose=0)
    # LoVT: 3 seeds; ConVIRT: 3 rates at seed 0, then seeds 1 and 2 at 3e-4; evaluation.
    assert len(fake.calls) == 3 + 3 + 2 + 1
    assert not any("lovt.pretrain.learning_rate" in " ".join(c) for c in fake.calls[:3])
    assert all("lovt.pretrain.learning_rate = 0.0003" in c for c in fake.calls[6:8])
    assert list(info["learning_rate_sweep"]) == ["ConVIRT"]
    assert info["learning_rate_sweep"]["ConVIRT"]["learning_rate"] == 3e-4
    evaluation = fake.calls[-1]
    checkpoints = json.loads(evaluation[evaluation.index("--output_dir") - 1][14:])
    assert checkpoints["LoVT #2"] == str(out / "pretrain/LoVT/seed_2")
    assert checkpoints["ConVIRT #0"] == str(out / "pretrain/ConVIRT/lr_0.0003/seed_0")
    note = ("ConVIRT: pretraining learning rate 0.0003 (final validation loss per rate tried "
            "with the first seed: 0.0001: 3.1000, 0.0003: 2.5000, 0.001: 3.4000)")
    assert note in capsys.readouterr().out and note in (out / "results.md").read_text()
    # An empty sweep of its own switches a study-wide sweep off for that method.
    fake.calls.clear()
    study.study(output_dir=tmp_path / "s2", pretrain_gin=["p.gin"], seeds=[0],
                methods={"LoVT": {"lr_sweep": []}}, lr_sweep=[1e-3, 3e-3],
                evaluation_gin=["e.gin"], verbose=0)
    assert len(fake.calls) == 2 and "lovt.pretrain.learning_rate" not in " ".join(fake.calls[0])


def test_study_stops_naming_the_failed_run(tmp_path, monkeypatch):
    monkeypatch.setattr(study.subprocess, "run",
                        lambda argv, **_: subprocess.CompletedProcess(argv, 2))
    with pytest.raises(study.StudyError, match=r"\[1\] \(LoVT, seed 0\) failed with exit code 2"):
        study.study(output_dir=tmp_path, pretrain_gin=["p.gin"], methods={"LoVT": {}},
                    seeds=[0], evaluation_gin=["e.gin"], verbose=0)
    with pytest.raises(ValueError, match="unknown key"):
        study.study(output_dir=tmp_path, pretrain_gin=["p.gin"], methods={"LoVT": {"bnd": []}},
                    evaluation_gin=["e.gin"])
    with pytest.raises(ValueError, match=r"\['BYOL'\] have none"):
        study.study(output_dir=tmp_path, methods={"SimCLR": {"gin": ["s.gin"]}, "BYOL": {}},
                    evaluation_gin=["e.gin"])


@pytest.mark.parametrize("path", ["experiments/quickstart.gin",
                                  "experiments/studies/ablations_synthcxr.gin",
                                  "experiments/studies/image_only_synthcxr.gin"])
def test_study_files_dry_run_lists_every_command(path, capsys, tmp_path):
    assert run.main(["--gin", path, "--output_dir", str(tmp_path / "s"), "--dry_run"]) == 0
    printed = capsys.readouterr().out
    commands = [line.strip() for line in printed.splitlines()
                if line.strip().startswith("python -m tools.run")]
    assert commands[-1].startswith("python -m tools.run --gin experiments/eval/")
    if path.endswith("image_only_synthcxr.gin"):  # every method its own experiment
        for command, name in zip(commands[:-1], ["simclr"] * 3 + ["byol"] * 3 + ["pixelpro"] * 3):
            assert command.startswith(
                f"python -m tools.run --gin experiments/baselines/{name}_synthcxr.gin")
        assert len(commands) == 10 and not (tmp_path / "s").exists()
        return
    for command in commands[:-1]:
        assert command.startswith("python -m tools.run --gin experiments/pretrain/quickstart.gin")
    if path == "experiments/quickstart.gin":
        assert len(commands) == 3
    else:
        assert "SEED = 2" in printed and len(commands) >= 9 * 3 + 1
    assert not (tmp_path / "s").exists()


@pytest.mark.large
def test_tiny_quickstart_study_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("LOVT_KERAS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "quickstart"
    argv = ["--gin", "experiments/quickstart.gin", "--output_dir", str(out),
            "--bind", "lovt.study.pretrain_gin = ['experiments/pretrain/quickstart.gin', "
                      "'gin/debug/tiny.gin']",
            "--bind", "lovt.study.evaluation_gin = ['experiments/eval/quickstart.gin', "
                      "'gin/debug/tiny_eval.gin']"]
    assert run.main(argv) == 0
    info = json.loads((out / "study.json").read_text())
    assert [r["method"] for r in info["results"]][::2] == ["Random init", "LoVT", "Global only"]
    for r in info["results"]:
        assert 0 <= r["mean"] <= 1 and len(r["probe_values"][0]) == 2
    assert (out / "pretrain/LoVT/run/image_encoder.keras").is_file()
    assert (out / "pretrain/Global_only/run/image_encoder.keras").is_file()


ABLATION_VARIANTS = {
    "LoVT": "lovt", "Global only": "ablation_no_l", "No G": "ablation_no_g",
    "No local image": "ablation_no_l_scan", "No local report": "ablation_no_l_report",
    "No spatial smoothing": "ablation_no_spatial", "No attention weighting": "ablation_noweight",
    "ConVIRT": "convirt", "CLIP*": "clip",
}


def test_ablation_study_methods_are_the_papers_variants():
    import gin

    from lovt_keras.models import VARIANTS, LoVTPretrainer

    run.configure(["experiments/studies/ablations_synthcxr.gin"], [])
    pretrain_gin = gin.query_parameter("lovt.study.pretrain_gin")
    methods = gin.query_parameter("lovt.study.methods")
    assert list(methods) == list(ABLATION_VARIANTS)
    defaults = {name: p.default for name, p in
                __import__("inspect").signature(LoVTPretrainer).parameters.items()}
    for method, spec in methods.items():
        files = [*pretrain_gin, *spec.get("gin", []), "gin/debug/tiny.gin"]
        model = run.build_model(run.configure(files, list(spec.get("bind", []))))
        expected = {**{k: defaults[k] for k in VARIANTS["convirt"]}, **VARIANTS["lovt"],
                    "global_loss_weight": 1.0, "spatial_smoothing": True,
                    "local_weighting": "attention"}
        expected.update(VARIANTS[ABLATION_VARIANTS[method]])
        config = model.get_config()
        for name, value in expected.items():
            assert config[name] == value, (method, name)
        text = gin.query_parameter("%TEXT_AUGMENTATION")
        assert text == ("random_sentence" if method in ("ConVIRT", "CLIP*") else "random_swaps")
