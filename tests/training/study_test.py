"""``lovt.study``: aggregation over pretraining seeds, the sequence of runs it starts
(learning-rate sweep, seeds, evaluation), resuming, and the quickstart end to end."""

from __future__ import annotations

import json
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


class _Ended:
    """A ``subprocess.Popen`` that has already ended with ``returncode``."""

    def __init__(self, returncode):
        self.returncode = returncode

    def poll(self):
        return self.returncode


class FakeRuns:
    """Stands in for ``python -m tools.run``: records the argv, writes what a finished
    run writes (run_info, metrics with a final val_loss, the evaluation's summaries).
    An encoder's score is ``scores[name]``; the baselines' run scores Random init 0.1."""

    def __init__(self, val_loss, scores=None):
        self.val_loss = val_loss
        self.scores = scores or {}
        self.calls = []
        self.argvs = []

    def __call__(self, argv, cwd=None, stdout=None, stderr=None):
        # Each step runs `python -m tools.run` in the checkout (where tools/ lives).
        assert argv[1:3] == ["-m", "tools.run"] and (Path(cwd) / "tools" / "run.py").is_file()
        self.argvs.append(argv)
        args = argv[3:]
        if "--cpus" in args:
            args = args[:args.index("--cpus")]
        self.calls.append(args)
        out = Path(args[args.index("--output_dir") + 1])
        out.mkdir(parents=True, exist_ok=True)
        bindings = [args[i + 1] for i, a in enumerate(args) if a == "--bind"]
        checkpoints = [b for b in bindings if b.startswith("CHECKPOINTS = ")]
        if checkpoints:
            names = json.loads(checkpoints[0][len("CHECKPOINTS = "):])
            if 'lovt.eval_encoders.include = "baselines"' in bindings:
                assert names == {}
                summaries = [_summary("Random init", "t", [0.1, 0.1])]
            else:
                assert 'lovt.eval_encoders.include = "checkpoints"' in bindings
                summaries = [_summary(name, "t", [self.scores.get(name, 0.5)] * 2)
                             for name in names]
            (out / "results.json").write_text(json.dumps(summaries))
        else:
            lr = next((float(b.split("= ")[1]) for b in bindings
                       if b.startswith("lovt.pretrain.learning_rate")), None)
            records = [{"epoch": 1, "loss": 3.0, "val_loss": 3.0},
                       {"epoch": 2, "loss": 2.0, "val_loss": self.val_loss(args, lr)}]
            (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (out / "run_info.json").write_text(json.dumps({"finished": "now"}))
        return _Ended(0)

    def evaluations(self):
        """{encoder name or 'baselines': checkpoint dir} of the evaluation runs."""
        found = {}
        for args in self.calls:
            bindings = [args[i + 1] for i, a in enumerate(args) if a == "--bind"]
            for b in bindings:
                if b.startswith("CHECKPOINTS = "):
                    names = json.loads(b[len("CHECKPOINTS = "):])
                    found.update(names or {"baselines": None})
        return found


SCORES = {"LoVT #0": 0.2, "LoVT #1": 0.3, "Global only #0": 0.4, "Global only #1": 0.5}


@pytest.mark.parametrize("parallel", [1, 2])
def test_study_sweeps_each_methods_rate_then_runs_the_seeds_and_evaluates(
        tmp_path, monkeypatch, parallel):
    # LoVT is best at 1e-3, global only at 3e-3 (lowest final validation loss).
    best = {"LoVT": 1e-3, "Global": 3e-3}

    def val_loss(args, lr):
        method = "Global" if "gin/losses/global_only.gin" in args else "LoVT"
        return 1.0 + abs(np.log(lr / best[method]))

    fake = FakeRuns(val_loss, SCORES)
    monkeypatch.setattr(study, "_launch", fake)
    methods = {"LoVT": {}, "Global only": {"gin": ["gin/losses/global_only.gin"],
                                           "bind": ["lovt.pretrain.epochs = 3"]}}
    out = tmp_path / "study"
    info = study.study(output_dir=out, pretrain_gin=["p.gin"], methods=methods, seeds=[0, 1],
                       lr_sweep=[1e-3, 3e-3], evaluation_gin=["e.gin"], verbose=0,
                       parallel=parallel)
    # Per method: the sweep at seed 0 (2 runs), seed 1 at the chosen rate; then the
    # baselines' evaluation and one per encoder. Seed 0 at the chosen rate is the
    # sweep's run, not a new one.
    assert len(fake.calls) == 2 * 3 + 1 + 4
    pretrainings = [c for c in fake.calls if not any(a.startswith("CHECKPOINTS") for a in c)]
    assert len(pretrainings) == 6
    assert info["learning_rate_sweep"]["LoVT"]["learning_rate"] == 1e-3
    assert info["learning_rate_sweep"]["Global only"]["learning_rate"] == 3e-3
    global_seed1 = pretrainings[5]
    assert global_seed1[:6] == ["--gin", "p.gin", "--gin", "gin/losses/global_only.gin",
                                "--bind", "lovt.pretrain.epochs = 3"]
    assert "SEED = 1" in global_seed1 and "lovt.pretrain.learning_rate = 0.003" in global_seed1
    for args in fake.calls:
        if any(a.startswith("CHECKPOINTS") for a in args):
            assert args[:2] == ["--gin", "e.gin"]
    assert fake.evaluations() == {
        "baselines": None,
        "LoVT #0": str(out / "pretrain/LoVT/lr_0.001/seed_0"),
        "LoVT #1": str(out / "pretrain/LoVT/lr_0.001/seed_1"),
        "Global only #0": str(out / "pretrain/Global_only/lr_0.003/seed_0"),
        "Global only #1": str(out / "pretrain/Global_only/lr_0.003/seed_1"),
    }
    # Each encoder's evaluation folder mirrors its pretraining's.
    assert (out / "evaluation/Global_only/lr_0.003/seed_1/results.json").is_file()
    assert (out / "evaluation/baselines/results.json").is_file()
    # With 2 at once, each run gets its own CPUs (an even split of this process's).
    cpus = [a[a.index("--cpus") + 1] if "--cpus" in a else None for a in fake.argvs]
    import os

    if parallel == 1 or len(os.sched_getaffinity(0)) < 2:
        assert cpus == [None] * len(cpus)
    else:
        assert set(cpus) <= {",".join(map(str, sorted(os.sched_getaffinity(0))[k::2]))
                             for k in range(2)}
        assert (out / "logs/pretrain/LoVT/lr_0.001/seed_0.log").is_file()
    rows = {r["method"]: r for r in info["results"]}
    assert rows["LoVT"]["mean"] == pytest.approx(0.25)
    assert rows["Global only"]["mean"] == pytest.approx(0.45)
    assert rows["LoVT"]["ci95"] == pytest.approx(1.96 * np.std([0.2, 0.3], ddof=1) / np.sqrt(2))
    assert [r["method"] for r in info["results"]] == ["Random init", "LoVT", "Global only"]
    assert [r["number"] for r in info["runs"]] == sorted(r["number"] for r in info["runs"])
    table = (out / "results.md").read_text()
    # 1.96 * std([0.2, 0.3], ddof=1) / sqrt(2) = 1.96 * 0.0707 / 1.414 = 0.098.
    assert "| LoVT | 25.0 ± 9.8 |" in table and "| Random init | 10.0 ± 0.0 |" in table
    for name in ("results.csv", "results.png", "loss_curves.png", "study.json"):
        assert (out / name).is_file(), name

    # Rerunning resumes: every finished run is kept, nothing is started again.
    fake.calls.clear()
    study.study(output_dir=out, pretrain_gin=["p.gin"], methods=methods, seeds=[0, 1],
                lr_sweep=[1e-3, 3e-3], evaluation_gin=["e.gin"], verbose=0, parallel=parallel)
    assert fake.calls == []


def test_pretrainings_go_first_and_each_evaluation_follows_its_own(tmp_path, monkeypatch):
    """With 2 at once: both pretrainings start together, the baselines' evaluation
    takes the first free slot, each encoder's evaluation starts only after its own
    pretraining has ended, whichever ends first."""
    events = []

    class Slow(_Ended):
        def __init__(self, name, polls):
            super().__init__(None)
            self.name, self.polls = name, polls

        def poll(self):
            self.polls -= 1
            if self.polls <= 0 and self.returncode is None:
                self.returncode = 0
                events.append(("end", self.name))
            return self.returncode

    fake = FakeRuns(lambda args, lr: 1.0)

    def launch(argv, cwd=None, stdout=None, stderr=None):
        fake(argv, cwd, stdout, stderr)
        args = fake.calls[-1]
        name = Path(args[args.index("--output_dir") + 1]).relative_to(tmp_path).as_posix()
        events.append(("start", name))
        # LoVT pretrains for long, global only ends quickly.
        return Slow(name, {"pretrain/LoVT/run": 6, "pretrain/Global_only/run": 2}.get(name, 1))

    monkeypatch.setattr(study, "_launch", launch)
    monkeypatch.setattr(study.time, "sleep", lambda _: None)
    study.study(output_dir=tmp_path, pretrain_gin=["p.gin"],
                methods={"LoVT": {}, "Global only": {"gin": ["g.gin"]}},
                evaluation_gin=["e.gin"], verbose=0, parallel=2)
    assert events[:2] == [("start", "pretrain/LoVT/run"), ("start", "pretrain/Global_only/run")]
    assert events.index(("start", "evaluation/Global_only/run")) > events.index(
        ("end", "pretrain/Global_only/run"))
    assert events.index(("start", "evaluation/LoVT/run")) > events.index(
        ("end", "pretrain/LoVT/run"))
    # Global only ended first: its slot took the baselines' evaluation, then its own
    # evaluation, both before LoVT's pretraining ended.
    assert events.index(("start", "evaluation/baselines")) < events.index(
        ("end", "pretrain/LoVT/run"))
    assert events.index(("start", "evaluation/Global_only/run")) < events.index(
        ("end", "pretrain/LoVT/run"))


def test_a_method_may_sweep_its_own_rates(tmp_path, monkeypatch, capsys):
    """Only ConVIRT sweeps (its loss stayed at chance at the experiment's rate); LoVT
    runs as declared, with no learning-rate binding; the notes name the rate kept."""
    fake = FakeRuns(lambda args, lr: {None: 2.0, 1e-4: 3.1, 3e-4: 2.5, 1e-3: 3.4}[lr])
    monkeypatch.setattr(study, "_launch", fake)
    methods = {"LoVT": {}, "ConVIRT": {"bind": ["X = 1"], "lr_sweep": [1e-4, 3e-4, 1e-3]}}
    out = tmp_path / "study"
    info = study.study(output_dir=out, pretrain_gin=["p.gin"], methods=methods, seeds=[0, 1, 2],
                       evaluation_gin=["e.gin"], verbose=0)
    pretrainings = [c for c in fake.calls if not any(a.startswith("CHECKPOINTS") for a in c)]
    # LoVT: 3 seeds; ConVIRT: 3 rates at seed 0, then seeds 1 and 2 at 3e-4; then the
    # baselines' evaluation and 6 encoders'.
    assert len(pretrainings) == 3 + 3 + 2 and len(fake.calls) == 8 + 1 + 6
    assert not any("lovt.pretrain.learning_rate" in " ".join(c) for c in pretrainings[:3])
    assert all("lovt.pretrain.learning_rate = 0.0003" in c for c in pretrainings[6:8])
    assert list(info["learning_rate_sweep"]) == ["ConVIRT"]
    assert info["learning_rate_sweep"]["ConVIRT"]["learning_rate"] == 3e-4
    checkpoints = fake.evaluations()
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
    assert len(fake.calls) == 3 and "lovt.pretrain.learning_rate" not in " ".join(fake.calls[0])


def test_study_stops_naming_the_failed_run(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "_launch", lambda argv, **_: _Ended(2))
    with pytest.raises(study.StudyError, match=r"\[1\] \(LoVT, seed 0\) failed with exit code 2"):
        study.study(output_dir=tmp_path, pretrain_gin=["p.gin"], methods={"LoVT": {}},
                    seeds=[0], evaluation_gin=["e.gin"], verbose=0)
    # With 2 at once the run under way ends first; the failed run's output is shown.
    fake = FakeRuns(lambda args, lr: 1.0)

    def launch(argv, cwd=None, stdout=None, stderr=None):
        fake(argv, cwd, stdout, stderr)
        if "SEED = 1" in argv:
            stdout.write("Traceback ...\nValueError: the reason\n")
            stdout.flush()
            return _Ended(1)
        return _Ended(0)

    monkeypatch.setattr(study, "_launch", launch)
    with pytest.raises(study.StudyError, match=r"(?s)\(LoVT, seed 1\) failed.*"
                                               r"ValueError: the reason"):
        study.study(output_dir=tmp_path / "p", pretrain_gin=["p.gin"], methods={"LoVT": {}},
                    seeds=[0, 1, 2], evaluation_gin=["e.gin"], verbose=0, parallel=2)
    started = [c for c in fake.calls if "SEED = 2" in c]
    assert len(started) <= 1  # nothing new starts after a failure
    with pytest.raises(ValueError, match="unknown key"):
        study.study(output_dir=tmp_path, pretrain_gin=["p.gin"], methods={"LoVT": {"bnd": []}},
                    evaluation_gin=["e.gin"])
    with pytest.raises(ValueError, match=r"\['BYOL'\] have none"):
        study.study(output_dir=tmp_path, methods={"SimCLR": {"gin": ["s.gin"]}, "BYOL": {}},
                    evaluation_gin=["e.gin"])
    with pytest.raises(ValueError, match="parallel"):
        study.study(output_dir=tmp_path, pretrain_gin=["p.gin"], methods={"LoVT": {}},
                    evaluation_gin=["e.gin"], parallel=0)


@pytest.mark.parametrize("path", ["experiments/quickstart.gin",
                                  "experiments/studies/ablations_synthcxr.gin",
                                  "experiments/studies/image_only_synthcxr.gin"])
def test_study_files_dry_run_lists_every_command(path, capsys, tmp_path):
    assert run.main(["--gin", path, "--output_dir", str(tmp_path / "s"), "--dry_run"]) == 0
    printed = capsys.readouterr().out
    commands = [line.strip() for line in printed.splitlines()
                if line.strip().startswith("python -m tools.run")]
    evaluations = [c for c in commands if c.startswith("python -m tools.run --gin experiments/eval/")]
    pretrainings = [c for c in commands if c not in evaluations]
    # The baselines' evaluation, then one per encoder, after every pretraining.
    assert commands[len(pretrainings):] == evaluations
    assert 'lovt.eval_encoders.include = "baselines"' in evaluations[0]
    assert len(evaluations) == len(pretrainings) + 1 or "lr_" in printed
    if path.endswith("image_only_synthcxr.gin"):  # every method its own experiment
        for command, name in zip(pretrainings, ["simclr"] * 3 + ["byol"] * 3 + ["pixelpro"] * 3):
            assert command.startswith(
                f"python -m tools.run --gin experiments/baselines/{name}_synthcxr.gin")
        assert len(commands) == 9 + 10 and not (tmp_path / "s").exists()
        return
    for command in pretrainings:
        assert command.startswith("python -m tools.run --gin experiments/pretrain/quickstart.gin")
    if path == "experiments/quickstart.gin":
        assert len(pretrainings) == 2 and len(evaluations) == 3
    else:
        assert "SEED = 2" in printed and len(pretrainings) >= 9 * 3
        assert len(evaluations) == 9 * 3 + 1
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
