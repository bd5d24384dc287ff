"""The localized evaluation as a program (``experiments/eval/*.gin``).

``tools.gin_registry`` registers these functions under the gin module ``lovt``:

- ``lovt.evaluate`` (:func:`evaluate`): the program. ``lovt.run.model`` is bound to
  ``@lovt.eval_encoders`` (the encoders to evaluate, the table's rows) and
  ``lovt.run.train_data`` to ``@lovt.paper_tasks`` or ``@lovt.synth_tasks`` (the tasks,
  its columns);
- ``lovt.eval_encoders``: method name -> encoder factory (random init, weights files,
  pretraining checkpoints);
- ``lovt.paper_tasks``: paper tasks by number on the prepared dataset folders;
- ``lovt.synth_tasks``: SynthCXR tasks by name, with the SynthCXR size settings.

:func:`describe_evaluation` is what ``python -m tools.run --dry_run`` prints for it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

TABLE_NAME = "results"
INCLUDE = ("all", "baselines", "checkpoints")


@dataclasses.dataclass
class EvaluationResult:
    """What ``lovt.evaluate`` returns.

    Attributes:
        results: one task summary per (method, task) (see ``evaluate_encoders``).
        table: the results table (methods x tasks, "mean ± ci" in %).
        table_paths: the CSV and Markdown files (None without output directory).
    """

    results: list[dict]
    table: Any
    table_paths: tuple[Path, Path] | None = None


def evaluate(model: Callable[[], Mapping[str, Callable]], train_data: Sequence,
             val_data: Any = None, output_dir: str | None = None, verbose: int = 1,
             seeds: int = 5, table_name: str = TABLE_NAME,
             fit_verbose: int | None = 0) -> EvaluationResult:
    """The evaluation program: every encoder on every task, then the table.

    Args:
        model: zero-argument callable returning ``{method: encoder factory}``
            (``lovt.run.model = @lovt.eval_encoders``).
        train_data: the tasks (``lovt.run.train_data = @lovt.paper_tasks``).
        val_data: unused (the tasks bring their splits); must be None.
        output_dir: run directory; results under ``<output_dir>/<method>/<task>/``, the
            table as ``<output_dir>/<table_name>.csv`` and ``.md`` (both paths are
            printed after the table), the task summaries as ``<table_name>.json``.
        verbose: progress lines per task when > 0.
        seeds: runs at the selected learning rate (5 in the paper).
        table_name: file stem of the table.
        fit_verbose: Keras ``fit`` verbosity of each run (None: ``verbose``).
    """
    from lovt_keras.analysis.results_table import results_table, to_markdown, write_table
    from lovt_keras.training.evaluation import EvalTask, evaluate_encoders

    if val_data is not None:
        raise ValueError("lovt.evaluate takes its data from the tasks; leave lovt.run.validation_data unset")
    tasks = list(train_data)
    bad = [type(t).__name__ for t in tasks if not isinstance(t, EvalTask)]
    if bad or not tasks:
        raise ValueError(
            "lovt.evaluate expects lovt.run.train_data to give EvalTasks (e.g. "
            f"@lovt.paper_tasks or @lovt.synth_tasks), got {bad or 'no task'}"
        )
    encoders = model() if callable(model) else model
    if not encoders:  # lovt.eval_encoders.include = 'baselines' and none declared
        print("lovt.evaluate: no encoder to evaluate (no baseline declared)", flush=True)
        if output_dir is not None:
            from lovt_keras.files import write_json

            write_json(Path(output_dir) / f"{table_name}.json", [])
        return EvaluationResult([], None, None)
    results = evaluate_encoders(
        encoders, tasks, seeds=seeds, output_dir=output_dir,
        verbose=verbose if fit_verbose is None else fit_verbose,
        log=(lambda line: print(line, flush=True)) if verbose else None,
    )
    table = results_table(results)
    paths = None
    if output_dir is not None:
        paths = write_table(table, Path(output_dir) / table_name)
        # Every task summary without its per-run details (those are in the task
        # folders), for programs that read the results (e.g. lovt.study).
        compact = [{k: v for k, v in r.items() if k not in ("runs", "task_config")}
                   for r in results]
        from lovt_keras.files import write_json

        write_json(Path(output_dir) / f"{table_name}.json", compact)
    print(to_markdown(table), end="", file=sys.stdout, flush=True)
    if paths is not None:
        csv_path, md_path = paths
        print(f"table written to {md_path} and {csv_path}; every task's runs are in "
              f"{Path(output_dir)}/<method>/<task>/", file=sys.stdout, flush=True)
    return EvaluationResult(results, table, paths)


def eval_encoders(checkpoints: Mapping[str, str] | None = None,
                  weights_files: Mapping[str, str] | None = None,
                  random_init_depth: int | None = 50, weights_depth: int = 50,
                  random_name: str = "Random", random_init_width: int = 64,
                  include: str = "all") -> dict[str, Callable]:
    """The encoders to evaluate, in table order: random init, weights files, checkpoints.

    Args:
        checkpoints: method name -> pretraining run directory, ``image_encoder.keras``,
            or a torchvision ResNet state dict / official LoVT checkpoint (``.pt``,
            ``.pth``, ``.ckpt``, ``.safetensors``; its depth read from the file).
        weights_files: method name -> local weights file of a ResNet of
            ``weights_depth`` (e.g. ``{'ImageNet': '/weights/resnet50.weights.h5'}``; a
            torchvision state dict too).
        random_init_depth: depth of the randomly initialized baseline; None = none.
        random_init_width: its first-stage filters (64 = the standard ResNet).
        weights_depth: depth of the ``weights_files`` ResNets.
        random_name: row name of the random baseline.
        include: 'all'; 'baselines' = only the random init and the weights files (none
            is then no error: the evaluation has nothing to do); 'checkpoints' = only the
            checkpoints. ``lovt.study`` evaluates its baselines and each of its encoders
            in runs of their own.
    """
    from lovt_keras.training.evaluation import from_checkpoint, from_weights_file, random_init
    from lovt_keras.weights import is_state_dict_file, torchvision_depth

    if include not in INCLUDE:
        raise ValueError(f"lovt.eval_encoders.include: one of {INCLUDE}, got {include!r}")
    if include == "baselines":
        checkpoints = None
    elif include == "checkpoints":
        random_init_depth, weights_files = None, None
    encoders: dict[str, Callable] = {}
    if random_init_depth is not None:
        encoders[random_name] = random_init(int(random_init_depth), int(random_init_width))
    for name, path in dict(weights_files or {}).items():
        encoders[name] = from_weights_file(path, depth=weights_depth)
    for name, path in dict(checkpoints or {}).items():
        if name in encoders:
            raise ValueError(f"two encoders named {name!r}")
        if is_state_dict_file(path):  # a PyTorch file: a ResNet of the file's depth
            encoders[name] = from_weights_file(path, depth=torchvision_depth(path))
        else:
            encoders[name] = from_checkpoint(path)
    if not encoders and include != "baselines":
        raise ValueError("lovt.eval_encoders: no encoder (set CHECKPOINTS, WEIGHTS_FILES or "
                         "random_init_depth)")
    return encoders


def paper_tasks(numbers: Sequence[int] | None = None,
                folders: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> list:
    """Paper tasks ``numbers`` (None = all 18) on the prepared dataset folders.

    Args:
        numbers: task numbers of the paper table.
        folders: dataset name (``PaperTask.dataset``: ``rsna``, ``covid_rural``, ``siim``,
            ``object_cxr``, ``nih``) -> its prepared folder; only the datasets of the
            chosen tasks are required. The experiment files bind them through macros,
            ``lovt.paper_tasks.folders = {'siim': %SIIM_DATA}``.
        overrides: ``EvalTask`` fields set on every task (e.g. ``{'max_epochs': 1}``).
    """
    from lovt_keras.training.tasks import DATASET_KEYS, PAPER_TASKS, paper_task

    folders = dict(folders or {})
    chosen = sorted(PAPER_TASKS) if numbers is None else [int(n) for n in numbers]
    unknown = sorted(set(folders) - set(DATASET_KEYS))
    if unknown:
        raise ValueError(f"lovt.paper_tasks.folders names {unknown}; the datasets are "
                         f"{list(DATASET_KEYS)}")
    tasks = []
    for number in chosen:
        if number not in PAPER_TASKS:
            raise ValueError(f"lovt.paper_tasks: no task {number}; the tasks are numbered 1-18")
        key = PAPER_TASKS[number].dataset
        folder = folders.get(key)
        # An unset folder is missing from the mapping or an unset %gin.REQUIRED macro.
        if not isinstance(folder, (str, os.PathLike)):
            raise ValueError(
                f"lovt.paper_tasks: task {number} needs the {key} dataset folder: set "
                f"{key.upper()}_DATA (e.g. --bind \"{key.upper()}_DATA = '/data/{key}'\")"
            )
        tasks.append(paper_task(number, os.fspath(folder), **dict(overrides or {})))
    return tasks


def synth_tasks(names: Sequence[str] | None = None, image_size: int = 224,
                num_train: int = 1000, num_validation: int = 200, num_test: int = 300,
                seed: int = 1, cache_dir: str | None = None,
                low_label_num_train: int | None = None,
                overrides: Mapping[str, Any] | None = None,
                task_overrides: Mapping[str, Mapping[str, Any]] | None = None) -> list:
    """SynthCXR tasks ``names`` (None = all) on a SynthCXR set of the given size.

    Args:
        names: keys of ``lovt_keras.training.tasks.SYNTH_TASKS``.
        image_size: image size of the generated set and the models.
        num_train, num_validation, num_test, seed: the generated evaluation set
            (seed 1: not the pretraining images, which use seed 0).
        low_label_num_train: train images of the set that the 1 % and 10 % opacity
            tasks draw their labelled rows from (same validation and test images; see
            ``lovt_keras.training.tasks``); None = ``SYNTHCXR_LOW_LABEL_TRAIN`` (5000).
            Their epochs have the 100 % task's number of batches.
        cache_dir: SynthCXR cache (default ``$LOVT_KERAS_CACHE/synthcxr``).
        overrides: other ``EvalTask`` fields set on every task.
        task_overrides: task name -> ``EvalTask`` fields set on that task only (after
            ``overrides``), e.g. ``{'synth_pneumothorax_unet_finetune': {'lr_grid':
            (3e-4,)}}``.
    """
    from lovt_keras.training.tasks import SYNTH_TASKS, synth_task

    chosen = list(SYNTH_TASKS) if names is None else list(names)
    by_task = {name: dict(fields) for name, fields in dict(task_overrides or {}).items()}
    unknown = sorted(set(by_task) - set(chosen))
    if unknown:
        raise ValueError(f"task_overrides names {unknown}, which are not among the chosen "
                         f"tasks {chosen}")
    data = dict(num_train=num_train, num_validation=num_validation, num_test=num_test,
                seed=seed, cache_dir=cache_dir)
    return [synth_task(name, num_train=num_train, low_label_num_train=low_label_num_train,
                       image_size=image_size, dataset_options=data,
                       **{**dict(overrides or {}), **by_task.get(name, {})})
            for name in chosen]


def _dataset_text(task: Any) -> str:
    from lovt_keras.training.evaluation import SYNTHCXR

    if task.dataset != SYNTHCXR:
        return f"dataset folder {task.dataset}"
    options = task.dataset_options
    sizes = "/".join(str(options.get(k, "?")) for k in ("num_train", "num_validation", "num_test"))
    cache = f", cache {options['cache_dir']}" if options.get("cache_dir") else ""
    return (f"SynthCXR {sizes} train/validation/test images at {task.image_size} px, "
            f"seed {options.get('seed', '?')}{cache}")


def _missing_folder_hint(task: Any) -> str:
    """How to provide a paper task's dataset folder."""
    from lovt_keras.training.tasks import PAPER_TASKS

    if task.number not in PAPER_TASKS:
        return ""
    key = PAPER_TASKS[task.number].dataset
    name = key.replace("_", "-")
    return (f" (the {key} folder of task {task.number}: prepare it from the original files "
            f"with `python -m tools.prepare {name} ORIGINAL_DIR {task.dataset}` (`python -m "
            f"tools.prepare {name} --help` says what ORIGINAL_DIR holds) and bind "
            f"{key.upper()}_DATA)")


def describe_evaluation(encoders: Mapping[str, Callable], tasks: Sequence, seeds: int,
                        log: Callable[[str], None] = print) -> list[str]:
    """Prints what ``lovt.evaluate`` would run, without training: every encoder (built
    once) and every task with its recipe and its data (built: the split sizes after the
    label fraction, the stored image size, the classes).

    SynthCXR sets are generated into their cache on first use, as the run would do;
    nothing else is written.

    Args:
        encoders: method name -> encoder factory (``lovt.eval_encoders``).
        tasks: the ``EvalTask``s (``lovt.paper_tasks`` / ``lovt.synth_tasks``).
        seeds: runs per task at the selected learning rate.
        log: where the lines go.

    Returns:
        One line per encoder or task that could not be built (naming the file or
        folder); empty when everything can be built.
    """
    from lovt_keras.data.downstream_batches import DownstreamDataError
    from lovt_keras.models import describe_encoder
    from lovt_keras.training.evaluation import DETECTION, dataset_folder, task_data

    problems = []
    runs = sum(len(t.lr_grid) + seeds - 1 for t in tasks)
    log(f"evaluation: {len(encoders)} encoder(s) x {len(tasks)} task(s); per task the lr grid "
        f"at seed 0, then {seeds - 1} more seed(s) at the best lr ({runs} runs per encoder)")
    log("encoders:")
    image_size = tasks[0].image_size if tasks else 224
    for name, factory in encoders.items():
        try:
            encoder = factory(image_size)
        except (OSError, ValueError, TypeError) as error:
            problems.append(f"encoder {name!r} ({factory!r}): {error}")
            log(f"  {name}: {getattr(factory, 'description', factory)}: ERROR {error}")
            continue
        description = str(getattr(factory, "description", factory))
        architecture = describe_encoder(encoder)
        if architecture not in description:  # e.g. a checkpoint: its architecture is in the file
            description += f": {architecture}"
        log(f"  {name}: {description}, {encoder.count_params():,} parameters")
        del encoder
    log("tasks:")
    for task in tasks:
        log(f"  {task.name} [{task.column}]: {task.head} head, "
            f"{'frozen' if task.frozen else 'fine-tuned'} encoder, {task.task_type} "
            f"({task.metric}); classes {', '.join(task.classes) if task.classes else 'all'}")
        log(f"    {_dataset_text(task)}; label fraction {task.label_fraction:g}, validation "
            f"fraction {task.validation_fraction:g}; lr grid "
            f"{', '.join(f'{lr:g}' for lr in task.lr_grid)}; batch {task.batch_size}; up to "
            f"{task.max_epochs} epoch(s)"
            f"{f' of {task.steps_per_epoch} batches' if task.steps_per_epoch else ''}, patience "
            f"{task.patience}{f', warm-up {task.warmup_steps} steps' if task.warmup_steps else ''}; "
            f"{seeds} seed(s)")
        try:
            folder = dataset_folder(task)
            data = task_data(task)
        except (OSError, DownstreamDataError, ValueError) as error:
            hint = _missing_folder_hint(task) if isinstance(error, FileNotFoundError) else ""
            problems.append(f"task {task.name}: {error}{hint}")
            log(f"    data: ERROR {error}{hint}")
            continue
        train = data["train"]
        counts = ", ".join(f"{split} {len(b.ids)}" for split, b in data.items())
        boxes = f", up to {train.max_boxes} boxes per image" if task.task_type == DETECTION else ""
        names = [train.class_names[i] for i in train.class_ids]
        log(f"    data: {folder}: {counts} images ({len(train)} train batches), "
            f"{train.image_size} px, {train.num_classes} class(es) {names}{boxes}")
    return problems
