"""``lovt.study``: several pretrainings and their evaluation, declared in one gin file.

A study is a sequence of ordinary ``python -m tools.run`` runs, each in a run directory
of its own under the study's ``--output_dir``:

    pretrain/<method>/seed_<s>/          one pretraining per method and seed
    pretrain/<method>/lr_<lr>/seed_<s>/  the learning-rate sweep, when one is declared
    evaluation/                          every encoder on every task (``lovt.evaluate``)

then the study's own outputs: ``results.md`` / ``results.csv`` (methods x tasks,
mean ± 95 % interval over the pretraining seeds, see ``lovt_keras.analysis.study``),
``results.png`` (bars with intervals), ``loss_curves.png`` and ``study.json`` (every
number, the chosen learning rates, the commands and their run times).

Each run is started as its own process (``sys.executable -m tools.run ...``, the
backend inherited through ``KERAS_BACKEND``), so every pretraining starts from the same
process state, and each can be rerun alone with the command recorded in its
``command.txt``. Rerunning the study's command resumes it: finished runs are skipped,
an interrupted one resumes from its checkpoint, the evaluation reuses its stored
results.

gin (see ``experiments/quickstart.gin``)::

    lovt.run.program = @lovt.study
    lovt.run.model = None
    lovt.run.train_data = None
    lovt.study.pretrain_gin = ['experiments/pretrain/quickstart.gin']
    lovt.study.methods = {'LoVT': {}, 'Global only': {'gin': ['gin/losses/global_only.gin']}}
    lovt.study.seeds = [0, 1, 2]
    lovt.study.evaluation_gin = ['experiments/eval/quickstart.gin']
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# The checkout whose ``tools/run.py`` runs each step (the study is a program of the
# repository, not of an installed package: its gin files live there too).
REPO_ROOT = Path(__file__).resolve().parents[2]
PRETRAIN_DIR = "pretrain"
EVALUATION_DIR = "evaluation"
RESULTS_FILE = "results"
STUDY_FILE = "study.json"
METHOD_KEYS = ("gin", "bind", "lr_sweep")


class StudyError(RuntimeError):
    """A run of the study failed (its command is named; rerun the study to resume)."""


def study(model: Any = None, train_data: Any = None, val_data: Any = None,
          output_dir: str | os.PathLike | None = None, verbose: int = 1,
          pretrain_gin: Sequence[str] = (), pretrain_bind: Sequence[str] = (),
          methods: Mapping[str, Mapping] | None = None,
          seeds: Sequence[int] | None = None, lr_sweep: Sequence[float] | None = None,
          evaluation_gin: Sequence[str] = (), evaluation_bind: Sequence[str] = (),
          title: str | None = None, dry_run: bool = False) -> dict:
    """Pretrains every method (with every seed), evaluates all encoders, writes the table.

    Args:
        model, train_data, val_data: unused (a study builds nothing itself); bind
            ``lovt.run.model`` and ``lovt.run.train_data`` to None.
        output_dir: the study directory.
        verbose: 0 prints only the table, 1 also the plan and progress.
        pretrain_gin: the gin files of every pretraining (a complete experiment); may
            be empty when every method names its own complete experiment in ``gin``
            (methods with different programs or models, e.g. the image-only baselines).
        pretrain_bind: bindings of every pretraining (before the method's own), e.g.
            ``['lovt.pretrain.epochs = 6']``.
        methods: method name (a table row) -> ``{'gin': [files added after
            pretrain_gin], 'bind': ['NAME = VALUE', ...], 'lr_sweep': [rates]}``; ``{}``
            = the experiment as it is. ``lr_sweep`` is that method's own sweep (in place
            of ``lr_sweep``; ``[]`` = none). The order is the table's.
        seeds: pretraining seeds (bound as ``SEED = s``, which seeds the model, the data
            order and the augmentations); None = one run with the experiment's own SEED.
        lr_sweep: pretraining learning rates to try per method: each is run with the
            first seed, the one with the lowest final validation loss of that method is
            kept for the other seeds (``lovt.pretrain.learning_rate``); None = no sweep.
        evaluation_gin: the gin files of the evaluation (``lovt.evaluate``); the study
            binds ``CHECKPOINTS`` to its encoders.
        evaluation_bind: extra bindings of the evaluation.
        title: title of the bar chart.
        dry_run: print the plan (every command) and return without running anything.

    Returns:
        The content of ``study.json``.

    Raises:
        ValueError: an unknown key in a method, no method, no gin file.
        StudyError: a run failed (the study stops; rerun it to resume).
    """
    del model, train_data, val_data
    methods = _check_methods(methods)
    without_gin = [name for name, spec in methods.items() if not spec.get("gin")]
    if not pretrain_gin and without_gin:
        raise ValueError(
            "lovt.study.pretrain_gin: give the pretraining experiment's gin file(s) (or a "
            f"'gin' list for every method; {without_gin} have none)")
    if not evaluation_gin:
        raise ValueError("lovt.study.evaluation_gin: give the evaluation's gin file(s)")
    out = Path(output_dir if output_dir is not None else "runs/study")
    seed_list = [None] if seeds is None else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("lovt.study.seeds: give at least one seed, or None")
    sweep = None if lr_sweep is None else [float(lr) for lr in lr_sweep]
    log = print if verbose or dry_run else (lambda *_: None)
    runner = _Runner(out, dry_run, log)
    start = time.time()

    own = [name for name, spec in methods.items() if spec.get("lr_sweep")]
    log(f"study: {len(methods)} method(s) x {len(seed_list)} pretraining seed(s)"
        f"{f', learning rates {sweep} swept with the first seed' if sweep else ''}"
        f"{f', own learning-rate sweeps for {own}' if own else ''}; then "
        f"the evaluation of every encoder; in {out}")
    checkpoints: dict[str, str] = {}
    first_runs: dict[str, Path] = {}
    chosen_lr: dict[str, dict] = {}
    for method, spec in methods.items():
        base = [*_gin_args(pretrain_gin), *_gin_args(spec.get("gin", ())),
                *_bind_args(pretrain_bind), *_bind_args(spec.get("bind", ()))]
        lr_binding: list[str] = []
        method_sweep = sweep
        if "lr_sweep" in spec:
            method_sweep = [float(lr) for lr in spec["lr_sweep"] or ()] or None
        if method_sweep:
            losses = {}
            for lr in method_sweep:
                run_dir = out / PRETRAIN_DIR / _safe(method) / f"lr_{lr:g}" / _seed_dir(seed_list[0])
                runner.run(f"{method}, lr {lr:g}, seed {seed_list[0]}",
                           base + _seed_args(seed_list[0]) + _bind_args([_lr(lr)]), run_dir)
                losses[lr] = None if dry_run else final_validation_loss(run_dir)
            best = None if dry_run else _lowest(losses)
            chosen_lr[method] = {"learning_rate": best,
                                 "final_validation_loss": {f"{k:g}": v for k, v in losses.items()}}
            if best is not None:
                lr_binding = [_lr(best)]
                log(f"study: {method}: learning rate {best:g} (final validation losses "
                    + ", ".join(f"{k:g}: {_fmt(v)}" for k, v in losses.items()) + ")")
        for seed in seed_list:
            if method_sweep:
                best = chosen_lr[method]["learning_rate"]
                run_dir = (out / PRETRAIN_DIR / _safe(method)
                           / f"lr_{(best if best is not None else method_sweep[0]):g}"
                           / _seed_dir(seed))
            else:
                run_dir = out / PRETRAIN_DIR / _safe(method) / _seed_dir(seed)
            runner.run(f"{method}, seed {seed if seed is not None else 'of the experiment'}",
                       base + _seed_args(seed) + _bind_args(lr_binding), run_dir)
            name = method if seed is None else encoder_name(method, seed)
            checkpoints[name] = str(run_dir)
            first_runs.setdefault(method, run_dir)

    eval_dir = out / EVALUATION_DIR
    binding = f"CHECKPOINTS = {json.dumps(checkpoints)}"
    runner.run("evaluation", [*_gin_args(evaluation_gin), *_bind_args(evaluation_bind),
                              *_bind_args([binding])], eval_dir)
    if dry_run:
        log("dry run: nothing was run")
        return {}

    summaries = json.loads((eval_dir / f"{RESULTS_FILE}.json").read_text())
    return write_study(out, summaries, first_runs, chosen_lr, runner.records,
                       time.time() - start, title=title, verbose=verbose)


def write_study(out: Path, summaries: list[dict], first_runs: Mapping[str, Path],
                chosen_lr: Mapping[str, dict], commands: list[dict], seconds: float,
                title: str | None = None, verbose: int = 1) -> dict:
    """Aggregates the evaluation over pretraining seeds and writes the study outputs."""
    from lovt_keras.analysis.plots import plot_loss_curves
    from lovt_keras.analysis.results_table import results_table, to_markdown, write_table
    from lovt_keras.analysis.study import aggregate_over_seeds, plot_study
    from lovt_keras.files import write_json
    from lovt_keras.training.callbacks import read_metrics
    from lovt_keras.training.pretrain import METRICS_FILE

    aggregated = aggregate_over_seeds(summaries)
    table = results_table(aggregated)
    write_table(table, out / RESULTS_FILE)
    plot_study(aggregated, out / f"{RESULTS_FILE}.png", title=title)
    histories = {m: read_metrics(d / METRICS_FILE) for m, d in first_runs.items()
                 if (d / METRICS_FILE).is_file()}
    if histories:
        plot_loss_curves(histories, out / "loss_curves.png")
    info = {
        "backend": os.environ.get("KERAS_BACKEND"),
        "seconds": round(seconds, 1),
        "results": aggregated,
        "learning_rate_sweep": dict(chosen_lr),
        "runs": commands,
        "pretraining_history": {m: h for m, h in histories.items()},
    }
    write_json(out / STUDY_FILE, info, default=str)
    failed = sum(len(r["failed_seeds"]) for r in aggregated)
    print(to_markdown(table), end="", flush=True)
    swept = sweep_notes(chosen_lr)
    if swept:
        print("\n".join(swept))
        with open(out / f"{RESULTS_FILE}.md", "a") as f:
            f.write("\n" + "\n".join(swept) + "\n")
    if failed:
        print(f"[k/n failed]: k of the n probe runs of a cell learned nothing (best validation "
              f"or test score 0); they are in the mean. {failed} such run(s) in all.")
    print(f"study written to {out} in {seconds / 60:.1f} min")
    return info


def sweep_notes(chosen_lr: Mapping[str, dict]) -> list[str]:
    """One line per swept method: the pretraining learning rate kept and the final
    validation loss of each rate tried (what the table's rows were trained with)."""
    lines = []
    for method, sweep in chosen_lr.items():
        tried = ", ".join(f"{lr}: {_fmt(loss)}"
                          for lr, loss in sweep["final_validation_loss"].items())
        kept = sweep["learning_rate"]
        lines.append(f"{method}: pretraining learning rate {'-' if kept is None else f'{kept:g}'}"
                     f" (final validation loss per rate tried with the first seed: {tried})")
    return lines


def encoder_name(method: str, seed: int) -> str:
    from lovt_keras.analysis.study import encoder_name as name

    return name(method, seed)


def final_validation_loss(run_dir: Path) -> float | None:
    """``val_loss`` of the last epoch of a pretraining run (None if it has none)."""
    from lovt_keras.training.callbacks import read_metrics
    from lovt_keras.training.pretrain import METRICS_FILE

    records = read_metrics(run_dir / METRICS_FILE)
    values = [r["val_loss"] for r in records if "val_loss" in r]
    return float(values[-1]) if values else None


def is_finished(run_dir: Path) -> bool:
    """A run directory whose ``tools.run`` ended normally (``run_info.json`` records it)."""
    info_path = run_dir / "run_info.json"
    if not info_path.is_file():
        return False
    try:
        return "finished" in json.loads(info_path.read_text())
    except json.JSONDecodeError:
        return False


class _Runner:
    """Starts ``python -m tools.run`` runs one after the other and records them."""

    def __init__(self, out: Path, dry_run: bool, log):
        self.out = out
        self.dry_run = dry_run
        self.log = log
        self.records: list[dict] = []
        self.count = 0

    def run(self, what: str, args: list[str], run_dir: Path) -> None:
        self.count += 1
        argv = [sys.executable, "-m", "tools.run", *args, "--output_dir", str(run_dir)]
        shown = "python -m tools.run " + shlex.join([*args, "--output_dir", str(run_dir)])
        record = {"what": what, "command": shown, "output_dir": str(run_dir)}
        if self.dry_run:
            self.log(f"[{self.count}] {what}:\n    {shown}")
            self.records.append(record)
            return
        if is_finished(run_dir):
            self.log(f"study [{self.count}] {what}: done before, kept ({run_dir})")
            record["seconds"] = None
            self.records.append(record)
            return
        self.log(f"study [{self.count}] {what}:\n    {shown}")
        if not (REPO_ROOT / "tools" / "run.py").is_file():
            raise StudyError(f"a study runs `python -m tools.run` in the lovt_keras checkout, "
                             f"but {REPO_ROOT} has no tools/run.py (an installed package "
                             "without its repository?)")
        start = time.time()
        completed = subprocess.run(argv, cwd=REPO_ROOT, check=False)
        record["seconds"] = round(time.time() - start, 1)
        self.records.append(record)
        if completed.returncode != 0:
            raise StudyError(
                f"study run [{self.count}] ({what}) failed with exit code "
                f"{completed.returncode}: {shown}\nrerun the study's command to resume from "
                "there"
            )
        self.log(f"study [{self.count}] {what}: {record['seconds'] / 60:.1f} min")


def _check_methods(methods: Mapping[str, Mapping] | None) -> dict[str, dict]:
    if not methods:
        raise ValueError("lovt.study.methods: declare at least one method, e.g. {'LoVT': {}}")
    checked = {}
    for name, spec in dict(methods).items():
        spec = dict(spec or {})
        unknown = sorted(set(spec) - set(METHOD_KEYS))
        if unknown:
            raise ValueError(f"lovt.study.methods[{name!r}]: unknown key(s) {unknown}; a method "
                             f"takes {list(METHOD_KEYS)}")
        for key in METHOD_KEYS:
            value = spec.get(key, ())
            if isinstance(value, str):
                raise ValueError(f"lovt.study.methods[{name!r}][{key!r}] must be a list, got "
                                 f"the string {value!r}")
        if "#" in name:
            raise ValueError(f"lovt.study.methods: a method name may not contain '#': {name!r}")
        checked[str(name)] = spec
    return checked


def _gin_args(files: Sequence[str]) -> list[str]:
    return [a for f in files for a in ("--gin", str(f))]


def _bind_args(bindings: Sequence[str]) -> list[str]:
    return [a for b in bindings for a in ("--bind", str(b))]


def _seed_args(seed: int | None) -> list[str]:
    return [] if seed is None else _bind_args([f"SEED = {int(seed)}"])


def _seed_dir(seed: int | None) -> str:
    return "run" if seed is None else f"seed_{int(seed)}"


def _lr(lr: float) -> str:
    return f"lovt.pretrain.learning_rate = {lr!r}"


def _lowest(losses: Mapping[float, float | None]) -> float:
    finite = {lr: v for lr, v in losses.items() if v is not None and math.isfinite(v)}
    if not finite:
        return next(iter(losses))
    return min(finite, key=lambda lr: (finite[lr], lr))


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
