"""``lovt.study``: several pretrainings and their evaluation, declared in one gin file.

A study is a sequence of ordinary ``python -m tools.run`` runs, each in a run directory
of its own under the study's ``--output_dir``:

    pretrain/<method>/seed_<s>/          one pretraining per method and seed
    pretrain/<method>/lr_<lr>/seed_<s>/  the learning-rate sweep, when one is declared
    evaluation/baselines/                the evaluation's own encoders (random init,
                                         weights files) on every task (``lovt.evaluate``)
    evaluation/<method>/[lr_<lr>/]seed_<s>/  each pretrained encoder on every task,
                                         started after its pretraining (pretrainings first)
    logs/                                each run's output, when runs go side by side

then the study's own outputs: ``results.md`` / ``results.csv`` (methods x tasks,
mean ± 95 % interval over the pretraining seeds, see ``lovt_keras.analysis.study``),
``results.png`` (bars with intervals), ``loss_curves.png`` and ``study.json`` (every
number, the chosen learning rates, the commands and their run times).

Each run is started as its own process (``sys.executable -m tools.run ...``, the
backend inherited through ``KERAS_BACKEND``), so every pretraining starts from the same
process state, and each can be rerun alone with the command recorded in its
``command.txt``. ``lovt.study.parallel = 2`` runs two at once, each on half of the CPUs
(``tools.run --cpus``): on 2 cores two one-thread pretrainings do more steps per second
than one two-thread pretraining. Rerunning the study's command resumes it: finished runs are skipped,
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
BASELINES_DIR = "baselines"
LOGS_DIR = "logs"
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
          title: str | None = None, parallel: int = 1, dry_run: bool = False) -> dict:
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
        evaluation_gin: the gin files of the evaluation (``lovt.evaluate``). The
            baselines it declares (random init, weights files) are evaluated in one run,
            each encoder of the study in a run of its own (``CHECKPOINTS`` bound to it),
            after its pretraining: a free slot takes the first run that can start, in
            the order pretrainings (as declared), then evaluations.
        evaluation_bind: extra bindings of the evaluation.
        title: title of the bar chart.
        parallel: runs at once. With more than 1, the CPUs this process may use are
            split evenly between the runs (``tools.run --cpus``; each run's output goes
            to ``logs/`` under the study directory). The numbers are reproducible for a
            given ``parallel`` and machine: the CPUs per run can change how a kernel
            sums, so 1 and 2 need not print the same table.
        dry_run: print the plan (every command) and return without running anything.

    Returns:
        The content of ``study.json``.

    Raises:
        ValueError: an unknown key in a method, no method, no gin file.
        StudyError: a run failed (the study stops once the runs under way have ended;
            rerun it to resume).
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
    parallel = int(parallel)
    if parallel < 1:
        raise ValueError(f"lovt.study.parallel: 1 or more runs at once, got {parallel}")
    out = Path(output_dir if output_dir is not None else "runs/study")
    seed_list = [None] if seeds is None else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("lovt.study.seeds: give at least one seed, or None")
    sweep = None if lr_sweep is None else [float(lr) for lr in lr_sweep]
    log = print if verbose or dry_run else (lambda *_: None)
    start = time.time()

    own = [name for name, spec in methods.items() if spec.get("lr_sweep")]
    log(f"study: {len(methods)} method(s) x {len(seed_list)} pretraining seed(s)"
        f"{f', learning rates {sweep} swept with the first seed' if sweep else ''}"
        f"{f', own learning-rate sweeps for {own}' if own else ''}; then "
        f"the evaluation of every encoder; in {out}"
        f"{f'; {parallel} runs at once' if parallel > 1 else ''}")
    plan = _Plan(out, pretrain_gin, pretrain_bind, evaluation_gin, evaluation_bind,
                 dry_run, log)
    for method, spec in methods.items():
        method_sweep = sweep
        if "lr_sweep" in spec:
            method_sweep = [float(lr) for lr in spec["lr_sweep"] or ()] or None
        plan.add_method(method, spec, seed_list, method_sweep)
    runner = _Runner(out, dry_run, log, parallel)
    runner.run_all(plan.jobs)
    if dry_run:
        log("dry run: nothing was run")
        return {}

    summaries = []
    for job in plan.evaluations:
        summaries += json.loads((job.run_dir / f"{RESULTS_FILE}.json").read_text())
    first_runs = {method: job.run_dir for method, job in plan.first_runs.items()}
    records = sorted(runner.records, key=lambda r: r["number"])
    return write_study(out, summaries, first_runs, plan.chosen_lr, records,
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


class _Job:
    """One ``tools.run`` run of the study: started once the jobs in ``after`` have
    finished, when ``prepare`` (called then) has set its arguments and directory."""

    def __init__(self, what: str, args: list[str] | None = None, run_dir: Path | None = None,
                 after: Sequence[_Job] = (), prepare=None):
        self.what = what
        self.args = args
        self.run_dir = run_dir
        self.after = list(after)
        self.prepare = prepare
        self.done = False
        self.number = 0

    def command(self) -> tuple[list[str], str]:
        args = [*self.args, "--output_dir", str(self.run_dir)]
        return args, "python -m tools.run " + shlex.join(args)


class _Plan:
    """The study's jobs: pretrainings (a swept method's seeds after its sweep), the
    evaluation of the baselines, and each encoder's evaluation after its pretraining."""

    def __init__(self, out: Path, pretrain_gin, pretrain_bind, evaluation_gin,
                 evaluation_bind, dry_run: bool, log):
        self.out = out
        self.pretrain = (list(pretrain_gin), list(pretrain_bind))
        self.evaluation_args = [*_gin_args(evaluation_gin), *_bind_args(evaluation_bind)]
        self.dry_run = dry_run
        self.log = log
        self.first_runs: dict[str, Path] = {}
        self.chosen_lr: dict[str, dict] = {}
        self.pretrainings: list[_Job] = []
        self.evaluations = [_Job("evaluation of the baselines",
                                 self.evaluation_args + _bind_args(
                                     ["CHECKPOINTS = {}",
                                      'lovt.eval_encoders.include = "baselines"']),
                                 out / EVALUATION_DIR / BASELINES_DIR)]

    @property
    def jobs(self) -> list[_Job]:
        """Pretrainings in the declared order, then the evaluations (a job that is
        ready starts in this order)."""
        return self.pretrainings + self.evaluations

    def add_method(self, method: str, spec: Mapping, seeds: list, sweep: list | None) -> None:
        pretrain_gin, pretrain_bind = self.pretrain
        base = [*_gin_args(pretrain_gin), *_gin_args(spec.get("gin", ())),
                *_bind_args(pretrain_bind), *_bind_args(spec.get("bind", ()))]
        method_dir = self.out / PRETRAIN_DIR / _safe(method)
        sweep_jobs: dict[float, _Job] = {}
        for lr in sweep or ():
            job = _Job(f"{method}, lr {lr:g}, seed {seeds[0]}",
                       base + _seed_args(seeds[0]) + _bind_args([_lr(lr)]),
                       method_dir / f"lr_{lr:g}" / _seed_dir(seeds[0]))
            sweep_jobs[lr] = job
            self.pretrainings.append(job)
        for seed in seeds:
            what = f"{method}, seed {seed if seed is not None else 'of the experiment'}"
            if sweep:
                job = _Job(what, after=list(sweep_jobs.values()),
                           prepare=self._swept_seed(method, base, seed, sweep_jobs, method_dir))
            else:
                job = _Job(what, base + _seed_args(seed), method_dir / _seed_dir(seed))
            self.pretrainings.append(job)
            name = method if seed is None else encoder_name(method, seed)
            self.evaluations.append(_Job(f"evaluation of {name}", after=[job],
                                         prepare=self._encoder_evaluation(name, job)))
            if seed == seeds[0]:
                self.first_runs[method] = job

    def _swept_seed(self, method, base, seed, sweep_jobs, method_dir):
        def prepare(job: _Job) -> None:
            if method not in self.chosen_lr:
                losses = {lr: None if self.dry_run else final_validation_loss(j.run_dir)
                          for lr, j in sweep_jobs.items()}
                best = None if self.dry_run else _lowest(losses)
                self.chosen_lr[method] = {
                    "learning_rate": best,
                    "final_validation_loss": {f"{k:g}": v for k, v in losses.items()}}
                if best is not None:
                    self.log(f"study: {method}: learning rate {best:g} (final validation "
                             "losses " + ", ".join(f"{k:g}: {_fmt(v)}"
                                                   for k, v in losses.items()) + ")")
            best = self.chosen_lr[method]["learning_rate"]
            job.args = base + _seed_args(seed) + _bind_args([] if best is None else [_lr(best)])
            job.run_dir = (method_dir / f"lr_{(best if best is not None else next(iter(sweep_jobs))):g}"
                           / _seed_dir(seed))
        return prepare

    def _encoder_evaluation(self, name: str, pretraining: _Job):
        def prepare(job: _Job) -> None:
            # The evaluation's folder mirrors the pretraining's (a swept method's
            # encoders move with the rate kept, and so do their results).
            relative = pretraining.run_dir.relative_to(self.out / PRETRAIN_DIR)
            job.run_dir = self.out / EVALUATION_DIR / relative
            job.args = self.evaluation_args + _bind_args([
                f"CHECKPOINTS = {json.dumps({name: str(pretraining.run_dir)})}",
                'lovt.eval_encoders.include = "checkpoints"'])
        return prepare


class _Runner:
    """Runs the jobs, up to ``parallel`` at once, each ``python -m tools.run`` in a
    process of its own, and records them."""

    def __init__(self, out: Path, dry_run: bool, log, parallel: int = 1):
        self.out = out
        self.dry_run = dry_run
        self.log = log
        self.parallel = parallel
        self.records: list[dict] = []
        self.count = 0
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        # Each slot's CPUs (tools.run --cpus): an even split, none when there is one slot
        # or fewer CPUs than slots (then the runs share them).
        self.slots = ([cpus[k::parallel] for k in range(parallel)]
                      if parallel > 1 and len(cpus) >= parallel else [None] * parallel)

    def run_all(self, jobs: Sequence[_Job]) -> None:
        pending = list(jobs)
        running: dict[int, tuple[_Job, Any, float, Any]] = {}  # slot -> job, process
        failed: list[tuple[_Job, int]] = []
        while pending or running:
            while pending and not failed and len(running) < self.parallel:
                job = next((j for j in pending if all(d.done for d in j.after)), None)
                if job is None:
                    break
                pending.remove(job)
                slot = min(set(range(self.parallel)) - set(running))
                started = self._start(job, self.slots[slot])
                if started is not None:
                    running[slot] = started
            if not running:
                if pending and not failed:  # cannot happen: every job's "after" is earlier
                    raise StudyError(f"study: {len(pending)} run(s) wait for runs that never ran")
                break
            finished = self._wait(running)
            for slot in finished:
                job, process, started_at, log_file = running.pop(slot)
                code = process.returncode
                if log_file is not None:
                    log_file.close()
                self._record(job, round(time.time() - started_at, 1))
                if code != 0:
                    failed.append((job, code))
                    if running:
                        self.log(f"study [{job.number}] {job.what} failed; waiting for the "
                                 f"{len(running)} run(s) under way to end")
                else:
                    job.done = True
                    self.log(f"study [{job.number}] {job.what}: "
                             f"{self.records[-1]['seconds'] / 60:.1f} min")
        if failed:
            job, code = failed[0]
            _, shown = job.command()
            log_path = self._log_path(job)
            where = ""
            if self.parallel > 1 and log_path.is_file():
                tail = log_path.read_text(errors="replace").splitlines()[-20:]
                where = f"\nits output is in {log_path}; the end of it:\n" + "\n".join(tail)
            raise StudyError(
                f"study run [{job.number}] ({job.what}) failed with exit code {code}: "
                f"{shown}{where}\nrerun the study's command to resume from there")

    def _start(self, job: _Job, cpus: list[int] | None):
        if job.prepare is not None:  # its arguments wait for the runs it comes after
            job.prepare(job)
        self.count += 1
        job.number = self.count
        args, shown = job.command()
        if self.dry_run:
            self.log(f"[{job.number}] {job.what}:\n    {shown}")
            self._record(job, None)
            job.done = True
            return None
        if is_finished(job.run_dir):
            self.log(f"study [{job.number}] {job.what}: done before, kept ({job.run_dir})")
            self._record(job, None)
            job.done = True
            return None
        if not (REPO_ROOT / "tools" / "run.py").is_file():
            raise StudyError(f"a study runs `python -m tools.run` in the lovt_keras checkout, "
                             f"but {REPO_ROOT} has no tools/run.py (an installed package "
                             "without its repository?)")
        argv = [sys.executable, "-m", "tools.run", *args]
        if cpus is not None:
            argv += ["--cpus", ",".join(map(str, cpus))]
        log_file = None
        if self.parallel > 1:
            path = self._log_path(job)
            path.parent.mkdir(parents=True, exist_ok=True)
            log_file = open(path, "a", encoding="utf-8")
            on = f"CPUs {','.join(map(str, cpus))}; " if cpus is not None else ""
            self.log(f"study [{job.number}] {job.what} ({on}output in {path}):\n    {shown}")
        else:
            self.log(f"study [{job.number}] {job.what}:\n    {shown}")
        process = _launch(argv, cwd=REPO_ROOT, stdout=log_file,
                          stderr=subprocess.STDOUT if log_file is not None else None)
        return job, process, time.time(), log_file

    def _wait(self, running: Mapping[int, tuple]) -> list[int]:
        """Blocks until at least one running process has ended; their slots."""
        while True:
            ended = [slot for slot, (_, process, _, _) in running.items()
                     if process.poll() is not None]
            if ended:
                return ended
            time.sleep(0.5)

    def _record(self, job: _Job, seconds: float | None) -> None:
        _, shown = job.command()
        self.records.append({"number": job.number, "what": job.what, "command": shown,
                             "output_dir": str(job.run_dir), "seconds": seconds})

    def _log_path(self, job: _Job) -> Path:
        relative = job.run_dir.relative_to(self.out)
        return self.out / LOGS_DIR / relative.with_name(relative.name + ".log")


def _launch(argv: list[str], cwd: Path, stdout=None, stderr=None):
    """Starts one run (``subprocess.Popen``; the tests replace it)."""
    return subprocess.Popen(argv, cwd=cwd, stdout=stdout, stderr=stderr)


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
