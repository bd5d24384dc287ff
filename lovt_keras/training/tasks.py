"""The evaluation tasks: the paper's 18 localized tasks and their SynthCXR counterparts.

Paper tasks (values from the official ``configs/evaluation_model/*``, ``configs/experiment/eval/*``
and the lr grids of ``src/analysis/evaluation_job.py``), numbered as in the paper table.
Their ``dataset`` is a placeholder key (``rsna``, ``covid_rural``, ``siim``,
``object_cxr``, ``nih``); :func:`paper_task` puts a prepared dataset folder in its place.
Common to all: 224 px, Adam (weight decay 1e-6), ReduceLROnPlateau (frozen tasks),
early stopping patience 10 (20 for the 1 % RSNA and the COVID tasks), frozen warm-up of
100 steps (detection, SIIM) or 20 steps (COVID) before fine-tuning. RSNA validates on
the first 10 % of its validation split.

SynthCXR tasks (not in the paper): the same task types on SynthCXR images
(``lovt_keras.data.synthcxr``) generated with seed 1, so no image of the pretraining set
(seed 0) is evaluated on. They are sized for a CPU: 1000 / 200 / 300 train / validation
/ test images at 224 px (the U-Net tasks train on the first 300), two learning rates per
grid, at most 15-20 epochs (100 for the linear probes; these and the frozen YOLOv3 tasks
run on cached encoder features) and narrower U-Net and YOLOv3 heads (``head_options``);
the heads' structure, losses, metrics and training recipe are the paper's.

The 1 % and 10 % opacity tasks (``LOW_LABEL_TASKS``) differ in two ways, so that they
measure label efficiency instead of noise:

- their labelled rows are the first 1 % / 10 % of a larger generated train split
  (5000 images: 50 and 500 labelled images; 1 % of 1000 would be 10 images, two or three
  of them with an opacity). SynthCXR samples depend only on (seed, split, index), so
  the first train images and all validation and test images are those of the other
  tasks: 1 %, 10 % and 100 % are nested, as in the paper.
- an epoch is ``steps_per_epoch`` full batches drawn from those rows, as many as the
  100 % task's epoch, so every label fraction gets the same optimizer steps and
  validations (the paper instead raises the epoch limit of its 1 % and 10 % tasks to
  500 and 100; on a few images one pass would be a single step).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from lovt_keras.training.evaluation import SYNTHCXR, EvalTask

RSNA, COVID, SIIM, OBJECT_CXR, NIH = "rsna", "covid_rural", "siim", "object_cxr", "nih"
DATASET_KEYS = (RSNA, COVID, SIIM, OBJECT_CXR, NIH)


def _rsna_detection(number, name, frozen, fraction, grid, batch, epochs, label):
    return EvalTask(
        name=name, dataset=RSNA, task_type="detection", head="yolov3", frozen=frozen,
        lr_grid=grid, batch_size=batch, max_epochs=epochs, metric="mAP",
        label_fraction=fraction, validation_fraction=0.1,
        patience=20 if fraction == 0.01 else 10, warmup_steps=0 if frozen else 100,
        number=number, label=label,
        description=f"RSNA pneumonia detection, YOLOv3, {'frozen' if frozen else 'fine-tuned'}, "
        f"{fraction:.0%} of the labels",
    )


def _rsna_linear(number, name, fraction, batch, epochs, grid, label):
    return EvalTask(
        name=name, dataset=RSNA, task_type="segmentation", head="linear", frozen=True,
        lr_grid=grid, batch_size=batch, max_epochs=epochs, metric="dice",
        label_fraction=fraction, validation_fraction=0.1,
        patience=20 if fraction == 0.01 else 10, number=number, label=label,
        description=f"RSNA opacity segmentation (boxes as masks), linear, frozen, "
        f"{fraction:.0%} of the labels",
    )


_LINEAR_GRID = (3e-2, 1e-2, 3e-3, 1e-3)

PAPER_TASKS: dict[int, EvalTask] = {
    t.number: t
    for t in (
        _rsna_detection(1, "rsna_yolov3_finetune_1", False, 0.01, (3e-4, 1e-4), 8, 500,
                        "1 RSNA YOLO-FT 1%"),
        _rsna_detection(2, "rsna_yolov3_finetune_10", False, 0.1, (3e-4, 1e-3), 64, 100,
                        "2 RSNA YOLO-FT 10%"),
        _rsna_detection(3, "rsna_yolov3_finetune_100", False, 1.0, (3e-4, 1e-4), 64, 50,
                        "3 RSNA YOLO-FT 100%"),
        _rsna_detection(4, "rsna_yolov3_frozen_1", True, 0.01, (1e-3, 3e-4), 8, 500,
                        "4 RSNA YOLO-Frz 1%"),
        _rsna_detection(5, "rsna_yolov3_frozen_10", True, 0.1, (1e-3,), 64, 100,
                        "5 RSNA YOLO-Frz 10%"),
        _rsna_detection(6, "rsna_yolov3_frozen_100", True, 1.0, (3e-4, 1e-3), 64, 50,
                        "6 RSNA YOLO-Frz 100%"),
        _rsna_linear(7, "rsna_linear_1", 0.01, 8, 500, (3e-2, 1e-2, 3e-3, 1e-4),
                     "7 RSNA Lin 1%"),
        _rsna_linear(8, "rsna_linear_10", 0.1, 64, 100, _LINEAR_GRID, "8 RSNA Lin 10%"),
        _rsna_linear(9, "rsna_linear_100", 1.0, 64, 50, _LINEAR_GRID, "9 RSNA Lin 100%"),
        EvalTask(
            name="covid_unet_finetune", dataset=COVID, task_type="segmentation", head="unet",
            frozen=False, lr_grid=(1e-4, 3e-4), batch_size=8, max_epochs=100, metric="dice",
            patience=20, warmup_steps=20, number=10, label="10 COVID UNet-FT",
            description="COVID rural opacity segmentation, U-Net, fine-tuned",
        ),
        EvalTask(
            name="covid_unet_frozen", dataset=COVID, task_type="segmentation", head="unet",
            frozen=True, lr_grid=(1e-4, 3e-4, 1e-3), batch_size=8, max_epochs=100,
            metric="dice", patience=20, number=11, label="11 COVID UNet-Frz",
            description="COVID rural opacity segmentation, U-Net, frozen",
        ),
        EvalTask(
            name="covid_linear", dataset=COVID, task_type="segmentation", head="linear",
            frozen=True, lr_grid=_LINEAR_GRID, batch_size=8, max_epochs=100, metric="dice",
            patience=20, number=12, label="12 COVID Lin",
            description="COVID rural opacity segmentation, linear, frozen",
        ),
        EvalTask(
            name="siim_unet_finetune", dataset=SIIM, task_type="segmentation", head="unet",
            frozen=False, lr_grid=(3e-5, 1e-5), batch_size=64, max_epochs=50, metric="dice",
            warmup_steps=100, number=13, label="13 SIIM UNet-FT",
            description="SIIM-ACR pneumothorax segmentation, U-Net, fine-tuned",
        ),
        EvalTask(
            name="siim_unet_frozen", dataset=SIIM, task_type="segmentation", head="unet",
            frozen=True, lr_grid=(3e-5, 1e-5), batch_size=64, max_epochs=50, metric="dice",
            number=14, label="14 SIIM UNet-Frz",
            description="SIIM-ACR pneumothorax segmentation, U-Net, frozen",
        ),
        EvalTask(
            name="object_cxr_yolov3_finetune", dataset=OBJECT_CXR, task_type="detection",
            head="yolov3", frozen=False, lr_grid=(1e-3, 3e-4), batch_size=64, max_epochs=100,
            metric="froc", warmup_steps=100, number=15, label="15 Obj YOLO-FT",
            description="Object-CXR foreign-object detection, YOLOv3, fine-tuned",
        ),
        EvalTask(
            name="object_cxr_yolov3_frozen", dataset=OBJECT_CXR, task_type="detection",
            head="yolov3", frozen=True, lr_grid=(1e-3, 3e-3), batch_size=64, max_epochs=100,
            metric="froc", number=16, label="16 Obj YOLO-Frz",
            description="Object-CXR foreign-object detection, YOLOv3, frozen",
        ),
        EvalTask(
            name="object_cxr_linear", dataset=OBJECT_CXR, task_type="segmentation",
            head="linear", frozen=True, lr_grid=(3e-1, 1e-1, 3e-2, 1e-2), batch_size=64,
            max_epochs=100, metric="dice", number=17, label="17 Obj Lin",
            description="Object-CXR foreign-object segmentation, linear, frozen",
        ),
        EvalTask(
            name="nih_linear", dataset=NIH, task_type="segmentation", head="linear",
            frozen=True, lr_grid=(1e-1, 3e-2, 1e-2), batch_size=64, max_epochs=100,
            metric="dice", number=18, label="18 NIH Lin",
            description="NIH ChestX-ray8 8-class box segmentation, linear, frozen (avg Dice)",
        ),
    )
}
PAPER_TASKS_BY_NAME: dict[str, EvalTask] = {t.name: t for t in PAPER_TASKS.values()}


def paper_task(number: int, dataset: str | os.PathLike, **overrides) -> EvalTask:
    """Paper task ``number`` (1-18) on the prepared dataset folder ``dataset``.

    Args:
        number: the task number of the paper table.
        dataset: the folder written by ``python -m tools.prepare <name>`` for the
            task's dataset (RSNA, COVID rural, SIIM, Object-CXR or NIH).
        **overrides: any other ``EvalTask`` field (e.g. ``max_epochs`` for a smoke test).
    """
    if number not in PAPER_TASKS:
        raise ValueError(f"no paper task {number}; the tasks are numbered 1-18")
    return dataclasses.replace(PAPER_TASKS[number], dataset=os.fspath(dataset), **overrides)


# --------------------------------------------------------------------------------------
# SynthCXR
# --------------------------------------------------------------------------------------

# Seed 1: other patients than the pretraining set (seed 0).
SYNTHCXR_EVAL_DATA = dict(num_train=1000, num_validation=200, num_test=300, seed=1)
# The low-label tasks draw their labelled rows from a larger train split (module docstring).
LOW_LABEL_TASKS = tuple(f"synth_opacity_{head}_{p}" for head in ("yolov3_frozen", "linear")
                        for p in (1, 10))
SYNTHCXR_LOW_LABEL_TRAIN = 5000
# Narrower heads than the paper's for CPU runs (same structure): the U-Net bridge and
# up-blocks at 1/4 to 1/8 of the paper's widths, YOLOv3 embeddings at 1/4.
SYNTH_UNET = dict(bridge_filters=256, up_filters=(128, 64, 32, 16, 16))
SYNTH_YOLO = dict(filters=(128, 64, 32))


def _synth(name: str, head: str, frozen: bool, classes: Sequence[str], metric: str,
           grid: Sequence[float], epochs: int, label: str, description: str,
           fraction: float = 1.0, batch: int = 16, patience: int = 5, warmup: int = 0,
           head_options: dict | None = None) -> EvalTask:
    task = EvalTask(
        name=name, dataset=SYNTHCXR, task_type="detection" if head == "yolov3" else "segmentation",
        head=head, frozen=frozen, lr_grid=tuple(grid), batch_size=batch, max_epochs=epochs,
        metric=metric, label_fraction=fraction, classes=tuple(classes), patience=patience,
        warmup_steps=warmup, label=label, head_options=dict(head_options or {}),
        dataset_options=dict(SYNTHCXR_EVAL_DATA), description=description,
    )
    return _sized(task, SYNTHCXR_EVAL_DATA["num_train"], SYNTHCXR_LOW_LABEL_TRAIN)


def _sized(task: EvalTask, num_train: int, low_label_num_train: int) -> EvalTask:
    """``task`` on ``num_train`` generated train images (its dataset_options otherwise
    kept); a low-label task on ``low_label_num_train`` with the epoch length of the
    100 % task on ``num_train``."""
    options = dict(task.dataset_options, num_train=int(num_train))
    if task.name not in LOW_LABEL_TASKS:
        return dataclasses.replace(task, dataset_options=options)
    if int(low_label_num_train) < 1:
        raise ValueError(f"low_label_num_train must be >= 1, got {low_label_num_train}")
    options["num_train"] = int(low_label_num_train)
    steps = -(-int(num_train) // int(task.batch_size))
    return dataclasses.replace(task, dataset_options=options, steps_per_epoch=steps)


SYNTH_TASKS: dict[str, EvalTask] = {
    t.name: t
    for t in (
        *(
            _synth(f"synth_opacity_yolov3_frozen_{p}", "yolov3", True, ["opacity"], "mAP",
                   (1e-3, 3e-4), 20, f"S Opac YOLO-Frz {p}%",
                   f"SynthCXR opacity detection, YOLOv3, frozen, {p}% of the labels "
                   "(cf. tasks 4-6)", fraction=p / 100, head_options=SYNTH_YOLO,
                   patience=10)
            for p in (1, 10, 100)
        ),
        *(
            _synth(f"synth_opacity_linear_{p}", "linear", True, ["opacity"], "dice",
                   (3e-2, 3e-3), 100, f"S Opac Lin {p}%",
                   f"SynthCXR opacity segmentation, linear, frozen, {p}% of the labels "
                   "(cf. tasks 7-9)", fraction=p / 100, patience=10)
            for p in (1, 10, 100)
        ),
        # The U-Net tasks train on the first 30 % of the train split: they cannot use
        # cached features and cost several times more per image than the other heads.
        _synth("synth_pneumothorax_unet_finetune", "unet", False, ["pneumothorax"], "dice",
               (1e-4, 3e-4), 15, "S PTX UNet-FT 30%",
               "SynthCXR pneumothorax segmentation, U-Net, fine-tuned, 30% of the labels "
               "(cf. tasks 10, 13)", fraction=0.3, warmup=20, head_options=SYNTH_UNET),
        _synth("synth_pneumothorax_unet_frozen", "unet", True, ["pneumothorax"], "dice",
               (3e-4, 1e-3), 15, "S PTX UNet-Frz 30%",
               "SynthCXR pneumothorax segmentation, U-Net, frozen, 30% of the labels "
               "(cf. tasks 11, 14)", fraction=0.3, head_options=SYNTH_UNET),
        _synth("synth_foreign_object_yolov3_frozen", "yolov3", True, ["foreign_object"],
               "froc", (1e-3, 3e-4), 20, "S Obj YOLO-Frz",
               "SynthCXR foreign-object detection, YOLOv3, frozen (cf. task 16)",
               head_options=SYNTH_YOLO, patience=10),
        _synth("synth_foreign_object_linear", "linear", True, ["foreign_object"], "dice",
               (3e-1, 3e-2), 100, "S Obj Lin",
               "SynthCXR foreign-object segmentation, linear, frozen (cf. task 17)",
               patience=10),
        _synth("synth_findings_linear", "linear", True,
               ["opacity", "pneumothorax", "nodule", "effusion", "cardiomegaly",
                "foreign_object"], "dice", (1e-1, 1e-2), 100, "S Findings Lin",
               "SynthCXR segmentation of the 6 finding classes, linear, frozen, average "
               "Dice (cf. task 18)", patience=10),
    )
}


def synth_task(name: str, num_train: int | None = None,
               low_label_num_train: int | None = None, **overrides) -> EvalTask:
    """SynthCXR task ``name`` (a key of ``SYNTH_TASKS``), optionally resized, with
    optional field overrides (e.g. ``image_size=64, dataset_options={...}`` for a smoke
    test).

    Args:
        num_train: train images of the generated set (default: as in ``SYNTH_TASKS``,
            1000).
        low_label_num_train: train images the low-label tasks draw their labelled rows
            from (default 5000). When either size is given, a low-label task's
            ``steps_per_epoch`` becomes the epoch length of the 100 % task on
            ``num_train`` images.
        **overrides: other ``EvalTask`` fields, applied first (sizes then apply to an
            overridden ``dataset_options``; an explicit ``steps_per_epoch`` wins).
    """
    if name not in SYNTH_TASKS:
        raise ValueError(f"no SynthCXR task {name!r}; the tasks are {sorted(SYNTH_TASKS)}")
    explicit_steps = "steps_per_epoch" in overrides
    steps = overrides.pop("steps_per_epoch", None)
    task = dataclasses.replace(SYNTH_TASKS[name], **overrides)
    if num_train is not None or low_label_num_train is not None:
        task = _sized(
            task,
            SYNTHCXR_EVAL_DATA["num_train"] if num_train is None else num_train,
            SYNTHCXR_LOW_LABEL_TRAIN if low_label_num_train is None else low_label_num_train,
        )
    if explicit_steps:
        task = dataclasses.replace(task, steps_per_epoch=steps)
    return task
