"""The localized-evaluation protocol: one task run, lr search + seeds, many encoders.

Official code: ``src/models/downstream/downstream_evaluation.py`` (a run),
``src/analysis/evaluation_job.py`` (lr search and runs), ``src/analysis/data_exporter.py`` (CI):

- one run (:func:`run_task`): the pretrained image encoder with a head (linear, U-Net
  or YOLOv3, from :data:`~lovt_keras.training.downstream_heads.DOWNSTREAM_HEADS`),
  frozen or fine-tuned (frozen warm-up of ``warmup_steps`` steps at lr 1e-3
  first), Adam with weight decay 1e-6, ReduceLROnPlateau on the validation loss
  (factor 0.5, patience 3; frozen tasks only, see ``reduce_lr``), early stopping on the
  task's validation metric (patience 10, or the task's), the weights of the best
  validation epoch restored and tested;
- one task (:func:`evaluate_task`): one run per learning rate of the task's grid at
  seed 0, the rate with the best validation metric, then runs with seeds ``0 .. n-1``
  at that rate (the search run of seed 0 is reused, it is the same run); reported as
  mean ± 1.96·std(ddof=1)/√n over the test metrics (:func:`confidence_interval`);
- many encoders and tasks (:func:`evaluate_encoders`): the runner behind
  ``experiments/eval/*.gin``; every run and task summary is saved as JSON, so an
  interrupted evaluation resumes where it stopped.

Encoders come from factories ``factory(image_size) -> encoder`` that build a fresh
encoder per run: :func:`from_checkpoint` (any saved image encoder, e.g. a
``ResNetImageEncoder``, or a pretraining run directory), :func:`random_init` and
:func:`from_weights_file` (a ResNet from e.g. converted ImageNet weights; nothing is
downloaded). Beyond those factories, the code here relies only on the image encoder
contract of :mod:`lovt_keras.models.encoder_contract`, so any backbone meeting it can be
evaluated (a factory may be any ``image_size -> encoder`` callable).

Frozen tasks whose head is ``cacheable`` in the registry (linear segmentation, YOLOv3,
U-Net) take the cached-feature fast path of :mod:`lovt_keras.training.linear_probe` (same
result, one encoder pass per image instead of one per image and epoch).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from lovt_keras import keys
from lovt_keras.data.downstream_batches import (
    DETECTION,
    SEGMENTATION,
    DownstreamBatches,
    downstream_splits,
)
from lovt_keras.files import json_default, write_json
from lovt_keras.models.detection_metrics_callback import DetectionMetricsCallback
from lovt_keras.models.detection_task import DetectionTask
from lovt_keras.models.downstream_recipe import downstream_callbacks, downstream_optimizer
from lovt_keras.models.encoder_contract import (
    check_image_encoder,
    feature_shapes,
    image_encoder_problems,
    rebuild_image_encoder,
)
from lovt_keras.models.image_encoder import (
    STANDARD_WIDTH,
    ResNetImageEncoder,
    resnet_image_encoder,
)
from lovt_keras.models.segmentation_task import SegmentationTask
from lovt_keras.models.warmup import fit_with_warmup
from lovt_keras.models.yolov3 import LOVT_ANCHORS
from lovt_keras.training.cached_feature_batches import CachedFeatureBatches
from lovt_keras.training.callbacks import SetDataEpoch
from lovt_keras.training.compiled_models import CompiledModels
from lovt_keras.training.downstream_heads import DOWNSTREAM_HEADS, downstream_head
from lovt_keras.training.feature_store import FeatureStore

SYNTHCXR = "synthcxr"
METRICS = {SEGMENTATION: ("dice",), DETECTION: ("mAP", "froc")}
# The official anchors are in 224-px units; smaller images scale them.
ANCHOR_IMAGE_SIZE = 224
RESULT_FILE = "result.json"
SUMMARY_FILE = "summary.json"
CI_Z = 1.96
# EvalTask fields that name a task without changing its results.
NAMING_FIELDS = ("name", "label", "number", "description")


class StaleResultError(ValueError):
    """A stored result or summary was computed for another recipe, encoder or seeds."""


# --------------------------------------------------------------------------------------
# Task definition
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class EvalTask:
    """One localized downstream task and its training recipe.

    Attributes:
        name: unique name (file and table key), e.g. ``rsna_yolov3_frozen_10``.
        dataset: a downstream dataset folder, or ``"synthcxr"`` (generated with
            ``dataset_options``).
        task_type: ``"segmentation"`` or ``"detection"`` (implied by ``head``).
        head: a name in :data:`~lovt_keras.training.downstream_heads.DOWNSTREAM_HEADS`
            (``"linear"``, ``"unet"``, ``"yolov3"``).
        frozen: frozen encoder (True) or fine-tuned (False).
        lr_grid: candidate learning rates (one value = no search).
        batch_size: training batch size.
        max_epochs: epoch limit.
        steps_per_epoch: None (the paper's tasks): a training epoch is one pass over
            the label fraction's rows; an int: that many full batches drawn from them
            (``DownstreamBatches.steps_per_epoch``). The SynthCXR low-label tasks use
            the 100 % task's epoch length (a fixed step budget per epoch, where the
            paper instead gives its 1 % and 10 % tasks more epochs).
        metric: validation/test metric: ``"dice"`` (mean over the classes of the pooled
            Dice), ``"mAP"`` or ``"froc"``.
        label_fraction: first share of the train rows used.
        validation_fraction: first share of the validation rows used.
        classes: the dataset classes of the task (names); None = all.
        patience: early-stopping patience in epochs.
        warmup_steps: frozen warm-up steps before fine-tuning (fine-tuned tasks).
        reduce_lr: ReduceLROnPlateau; None = only for frozen tasks (the official
            fine-tuning resets the lr after the warm-up at every step, cancelling it).
        image_size: input size (224; the dataset must be stored at it).
        number: the paper's task number (1-18), None for other tasks.
        label: column header of result tables (default: ``name``).
        head_options: extra head constructor arguments (e.g. smaller widths).
        dataset_options: ``load_synthcxr`` arguments when ``dataset == "synthcxr"``.
        eval_batch_size: validation/test batch size (default ``batch_size``).
        description: one line for humans.
    """

    name: str
    dataset: str
    task_type: str
    head: str
    frozen: bool
    lr_grid: Sequence[float]
    batch_size: int
    max_epochs: int
    metric: str
    label_fraction: float = 1.0
    validation_fraction: float = 1.0
    classes: Sequence[str] | None = None
    patience: int = 10
    warmup_steps: int = 0
    reduce_lr: bool | None = None
    image_size: int = 224
    number: int | None = None
    label: str | None = None
    head_options: dict = dataclasses.field(default_factory=dict)
    dataset_options: dict = dataclasses.field(default_factory=dict)
    eval_batch_size: int | None = None
    description: str = ""
    steps_per_epoch: int | None = None

    def __post_init__(self):
        self.lr_grid = tuple(float(lr) for lr in self.lr_grid)
        if self.classes is not None:
            self.classes = tuple(self.classes)
        where = f"EvalTask {self.name!r}"
        if self.head not in DOWNSTREAM_HEADS:
            raise ValueError(
                f"{where}: head must be one of {sorted(DOWNSTREAM_HEADS)}, got {self.head!r}"
            )
        head_type = DOWNSTREAM_HEADS[self.head].task_type
        if head_type != self.task_type:
            raise ValueError(
                f"{where}: a {self.head} head is a {head_type} head, not {self.task_type}"
            )
        if self.metric not in METRICS[self.task_type]:
            raise ValueError(
                f"{where}: metric of a {self.task_type} task must be one of "
                f"{METRICS[self.task_type]}, got {self.metric!r}"
            )
        if not self.lr_grid or any(not lr > 0 for lr in self.lr_grid):
            raise ValueError(f"{where}: lr_grid must hold positive rates, got {self.lr_grid}")
        for field in ("label_fraction", "validation_fraction"):
            if not 0 < getattr(self, field) <= 1:
                raise ValueError(f"{where}: {field} must be in (0, 1], got {getattr(self, field)}")
        if self.steps_per_epoch is not None and int(self.steps_per_epoch) < 1:
            raise ValueError(f"{where}: steps_per_epoch must be None or >= 1, got {self.steps_per_epoch}")
        for field in ("batch_size", "max_epochs", "patience", "image_size"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"{where}: {field} must be >= 1, got {getattr(self, field)}")
        if self.frozen and self.warmup_steps:
            raise ValueError(f"{where}: a frozen task has no warm-up (warmup_steps={self.warmup_steps})")

    @property
    def monitor(self) -> str:
        """The Keras log key of the validation metric, e.g. ``val_dice``."""
        return f"val_{self.metric}"

    @property
    def column(self) -> str:
        """Column header in result tables."""
        return self.label or self.name

    def to_dict(self) -> dict:
        """JSON-friendly fields (recorded with every result)."""
        return dataclasses.asdict(self)


def dataset_folder(task: EvalTask) -> Path:
    """The dataset folder of ``task`` (SynthCXR is generated and cached on first use)."""
    if task.dataset != SYNTHCXR:
        return Path(task.dataset)
    from lovt_keras.data.synthcxr import load_synthcxr, synthcxr_dir

    options = dict(task.dataset_options)
    options["image_size"] = task.image_size
    load_synthcxr(**options)
    options.pop("num_proc", None)  # how to generate, not which set
    return synthcxr_dir(**options)


def task_data(task: EvalTask, seed: int = 0) -> dict[str, DownstreamBatches]:
    """Train (shuffled with ``seed``), validation and test batches of ``task``."""
    return downstream_splits(
        dataset_folder(task), task.task_type, classes=task.classes,
        batch_size=task.batch_size, label_fraction=task.label_fraction,
        validation_fraction=task.validation_fraction, seed=seed,
        image_size=task.image_size, eval_batch_size=task.eval_batch_size,
        train_steps_per_epoch=task.steps_per_epoch,
    )


# --------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------


class EncoderFactory:
    """Builds a fresh image encoder per run: ``factory(image_size) -> encoder``, an
    encoder meeting :mod:`lovt_keras.models.encoder_contract` for square images of side
    ``image_size``. Any such callable works; this base class adds the attributes below
    (read with ``getattr`` and a default, so a plain function is a factory too).

    Attributes:
        description: what the encoder is (recorded with the results).
        deterministic: every call gives the same weights (so cached features can be
            shared between runs); False for random initialization (a function of the
            global seed).
    """

    description = "encoder"
    deterministic = True

    def __call__(self, image_size: int) -> keras.Model:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"


class _RandomInit(EncoderFactory):
    deterministic = False

    def __init__(self, depth: int, width: int = STANDARD_WIDTH):
        self.depth = int(depth)
        self.width = int(width)
        suffix = "" if self.width == STANDARD_WIDTH else f" (width {self.width})"
        self.description = f"random init ResNet-{self.depth}{suffix}"

    def __call__(self, image_size: int) -> keras.Model:
        return ResNetImageEncoder(depth=self.depth, image_size=image_size, width=self.width)


class _StoredWeights(EncoderFactory):
    """Weights read once from a file, copied into every new encoder.

    The file is read on first use; every call rebuilds the stored architecture at the
    task's image size from its ``get_config()`` (:func:`~lovt_keras.models.
    encoder_contract.rebuild_image_encoder`) and copies the weights in.
    """

    def __init__(self, path: str | os.PathLike, depth: int | None, kind: str):
        self.path = Path(path)
        self.depth = depth
        self.kind = kind
        self._architecture: tuple[type, dict] | None = None
        self._weights: list[np.ndarray] | None = None
        self.description = f"{kind} {self.path}"

    def _load(self) -> None:
        if self.kind == "checkpoint":
            encoder = keras.saving.load_model(str(self.path), compile=False)
            problems = image_encoder_problems(encoder)
            if problems:
                raise TypeError(
                    f"{self.path}: holds a {type(encoder).__name__} that is not an image "
                    f"encoder ({'; '.join(problems)}); expected a saved image encoder such as "
                    "the image_encoder.keras of a pretraining run (see lovt_keras.models."
                    "encoder_contract); for ResNet weights use from_weights_file"
                )
        else:
            # A weights file fits a ResNet of the given depth: build one to read it.
            encoder = resnet_image_encoder(self.depth, image_size=None, weights=str(self.path))
        self._architecture = (type(encoder), encoder.get_config())
        self._weights = encoder.get_weights()

    def __call__(self, image_size: int) -> keras.Model:
        if self._weights is None:
            self._load()
        encoder_class, config = self._architecture
        encoder = rebuild_image_encoder(encoder_class, config, image_size)
        encoder.set_weights(self._weights)
        return encoder


def random_init(depth: int = 50, width: int = STANDARD_WIDTH) -> EncoderFactory:
    """Randomly initialized ResNet (new weights from the run's seed); ``width`` as in
    ``ResNetImageEncoder`` (give a narrow pretrained encoder's width for a fair baseline)."""
    return _RandomInit(depth, width)


def from_checkpoint(path: str | os.PathLike) -> EncoderFactory:
    """The image encoder of a pretraining run (or any saved image encoder).

    Args:
        path: a saved image encoder (``.keras``; a ``ResNetImageEncoder`` or any class
            meeting :mod:`lovt_keras.models.encoder_contract`) or a pretraining run
            directory holding one as ``image_encoder.keras`` (written by
            ``lovt_keras.training.pretrain``). Architecture and weights come from the
            file; the image size is the task's (the weights do not depend on it).
    """
    from lovt_keras.training.pretrain import IMAGE_ENCODER_FILE

    path = Path(path)
    if path.is_dir():
        path = path / IMAGE_ENCODER_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such encoder file (give a saved .keras image encoder or a "
            f"pretraining run directory holding {IMAGE_ENCODER_FILE})"
        )
    return _StoredWeights(path, None, "checkpoint")


def from_weights_file(path: str | os.PathLike, depth: int = 50) -> EncoderFactory:
    """A ResNet of ``depth`` initialized from a local weights file (``.weights.h5`` or
    ``.keras`` of a ``ResNetImageEncoder`` or keras-hub ``ResNetBackbone``, e.g. ImageNet
    weights a user converted; see ``load_image_encoder_weights``)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    return _StoredWeights(path, int(depth), "weights")


# --------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------


def build_head(task: EvalTask, num_classes: int) -> keras.layers.Layer:
    """The task's head, built by its registry entry (``head_options`` passed on)."""
    return downstream_head(task.head).build(num_classes, task.image_size,
                                            **dict(task.head_options))


def scaled_anchors(image_size: int) -> np.ndarray:
    """The official anchors ``(3, 3, 2)`` scaled from 224 px to ``image_size``."""
    return np.asarray(LOVT_ANCHORS, np.float64) * (image_size / ANCHOR_IMAGE_SIZE)


def uses_feature_cache(task: EvalTask) -> bool:
    """Frozen tasks whose head is ``cacheable`` in the registry (linear segmentation,
    YOLOv3, and the U-Net, which also reads the images and caches in memory only) can
    run on cached encoder features."""
    return task.frozen and downstream_head(task.head).cacheable


def _cached_inputs(task: EvalTask, head: keras.layers.Layer) -> tuple[str, ...]:
    """What a frozen run of ``task`` caches: the maps the head reads (and ``images``
    where the head reads them too); empty when the task takes no cache."""
    if not uses_feature_cache(task):
        return ()
    spec = downstream_head(task.head)
    layers = tuple(spec.feature_layers(head))
    return (*layers, keys.IMAGES) if spec.reads_images(head) else layers


def _feature_bytes(encoder: keras.Model, layers: Sequence[str], rows: int,
                   image_size: int) -> int | None:
    """float32 bytes of ``layers`` (``images``: one channel of ``image_size`` squared)
    for ``rows`` images (None if the shapes are not static)."""
    total = 0
    if keys.IMAGES in layers:
        total += image_size * image_size * 4 * rows
        layers = [name for name in layers if name != keys.IMAGES]
    for shape in feature_shapes(encoder, layers).values():
        if any(s is None for s in shape):
            return None
        total += int(np.prod(shape)) * 4 * rows
    return total


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _floats(logs: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(np.asarray(keras.ops.convert_to_numpy(v))) for k, v in logs.items()}


def _class_names(batches: DownstreamBatches) -> list[str]:
    return [batches.class_names[c] for c in batches.class_ids]


def run_task(
    task: EvalTask,
    encoder_factory: Callable[[int], keras.Model],
    learning_rate: float,
    seed: int,
    output_dir: str | os.PathLike | None = None,
    *,
    verbose: int = 0,
    feature_store: FeatureStore | None = None,
    use_feature_cache: bool | None = None,
    compiled_models: CompiledModels | None = None,
) -> dict:
    """Trains and tests one model of ``task`` at one learning rate and seed.

    The encoder is built first, then the global seed is set again so that the head's
    initialization depends on ``seed`` only (the same with and without the feature
    cache). The train batches are shuffled with ``seed``. Training stops early on
    ``task.monitor`` and the best epoch's weights are restored before testing.

    Args:
        task: the task.
        encoder_factory: ``image_size -> encoder`` (see :class:`EncoderFactory`).
        learning_rate: the task lr (after the warm-up for fine-tuned tasks).
        seed: the run's seed.
        output_dir: if given, ``result.json`` (and ``history.json``) are written there,
            and an existing ``result.json`` is returned without training.
        verbose: Keras ``fit`` verbosity.
        feature_store: shared cache of encoder features (frozen linear and YOLOv3
            tasks); a private one when None.
        use_feature_cache: None (default): cache when the task allows it
            (:func:`uses_feature_cache`) and the features fit the store's budgets;
            True: cache whenever the task allows it; False: always train on the images.
        compiled_models: compiled models of earlier runs to reuse (see
            :mod:`~lovt_keras.training.compiled_models`; same results, traced once);
            None: this run builds and traces its own.

    Returns:
        dict with ``val_metric`` (the best validation value of ``task.metric``),
        ``test_metric``, ``val`` / ``test`` (all metrics: ``dice`` and per-class
        ``dice/<class>``, or ``mAP``, ``mAP@0.5``, ..., or ``froc``), ``learning_rate``,
        ``seed``, ``epochs``, ``best_epoch`` (1-based), ``seconds``,
        ``cached_features``, ``train_rows``, ``train_batches_per_epoch``, ``task``,
        ``task_config``, ``encoder``.
    """
    run_dir = None if output_dir is None else Path(output_dir)
    if run_dir is not None:
        done = _read_json(run_dir / RESULT_FILE)
        if done is not None:
            check_stored_result(run_dir / RESULT_FILE, done, task, encoder_factory)
            return done
    start = time.perf_counter()
    data = task_data(task, seed)
    keras.utils.set_random_seed(int(seed))
    encoder = encoder_factory(task.image_size)
    keras.utils.set_random_seed(int(seed))
    head = build_head(task, data["train"].num_classes)
    # What this run uses of the encoder: the maps its head reads (named, with the
    # contract's strides); nothing else about the encoder is assumed.
    check_image_encoder(encoder, downstream_head(task.head).feature_layers(head),
                        rebuildable=False)

    own_store = feature_store is None
    store = FeatureStore() if own_store else feature_store
    try:
        result = _fit_and_test(task, encoder_factory, encoder, head, data, learning_rate, seed,
                               store, use_feature_cache, verbose, compiled_models)
    finally:
        if own_store:
            store.close()
    result["seconds"] = time.perf_counter() - start
    if run_dir is not None:
        history = result.pop("history")
        write_json(run_dir / "history.json", history)
        write_json(run_dir / RESULT_FILE, result)
    else:
        result.pop("history")
    return result


def _fit_and_test(task: EvalTask, encoder_factory: Callable, encoder: keras.Model,
                  head: keras.layers.Layer, data: dict[str, DownstreamBatches],
                  learning_rate: float, seed: int, store: FeatureStore,
                  use_feature_cache: bool | None, verbose: int,
                  compiled_models: CompiledModels | None = None) -> dict:
    """The body of :func:`run_task` after the data, encoder and head are built."""
    train, val, test = data["train"], data["validation"], data["test"]
    layers = _cached_inputs(task, head)
    encoder_key = None if getattr(encoder_factory, "deterministic", False) else int(seed)
    keys_of = {
        split: (id(encoder_factory), encoder_key, b.name, b.num_rows, layers)
        for split, b in data.items()
    }
    cached = bool(layers) and use_feature_cache is not False
    if cached and use_feature_cache is None:
        missing = sum(b.num_rows for s, b in data.items() if keys_of[s] not in store)
        size = _feature_bytes(encoder, layers, missing, task.image_size)
        cached = size is None or store.can_hold(
            size, disk=downstream_head(task.head).cache_on_disk)
    detection_callback = None
    image_size = (task.image_size, task.image_size)
    metric_kind = "map" if task.metric == "mAP" else "froc"
    if cached:
        # The same task models, fed the frozen encoder's maps instead of the images.
        # The masks too are read once per split and kept (they do not depend on the
        # encoder): the same batches without an Arrow read per batch and epoch.
        train, val, test = (
            CachedFeatureBatches(
                b, store.get(keys_of[s], encoder, b, layers),
                store.packed_masks((b.name, b.num_rows), b)
                if task.task_type == SEGMENTATION else None)
            for s, b in data.items()
        )
    feature_inputs = layers if cached else None
    if task.task_type == SEGMENTATION:
        model = SegmentationTask(encoder, head, frozen=task.frozen,
                                 feature_inputs=feature_inputs)
    else:
        model = DetectionTask(encoder, head, frozen=task.frozen,
                              anchors=scaled_anchors(task.image_size), image_size=image_size,
                              feature_inputs=feature_inputs)
        detection_callback = DetectionMetricsCallback(
            val, metric=metric_kind, class_names=_class_names(data["train"])
        )

    reduce_lr = task.frozen if task.reduce_lr is None else task.reduce_lr
    callbacks = [SetDataEpoch(train)] + downstream_callbacks(
        monitor=task.monitor, mode="max", early_stopping_patience=task.patience,
        reduce_lr=reduce_lr, validation_metric=detection_callback,
    )
    fit_kwargs = dict(verbose=verbose, shuffle=False)
    if task.frozen or task.warmup_steps == 0:
        model.compile(optimizer=downstream_optimizer(learning_rate))
        key = None
        if compiled_models is not None:
            # On cached features the encoder is not part of the computation.
            key = compiled_models.key(task.to_dict(), model,
                                      None if cached else id(encoder_factory))
            model = compiled_models.take(key, model, train[0])
        try:
            history = model.fit(train, validation_data=val, epochs=task.max_epochs,
                                callbacks=callbacks, **fit_kwargs).history
        except BaseException:
            if key is not None:
                compiled_models.discard(key)
            raise
        warmup = 0
    else:
        fitted = fit_with_warmup(
            model, train, val, warmup_steps=task.warmup_steps, learning_rate=learning_rate,
            epochs=task.max_epochs, callbacks=callbacks, **fit_kwargs,
        )
        history, warmup = fitted.history.history, fitted.warmup_steps
    values = np.asarray(history.get(task.monitor, []), np.float64)
    if values.size == 0:
        raise RuntimeError(f"{task.name}: training logged no {task.monitor} (logs: {sorted(history)})")
    best = int(np.nanargmax(values)) if np.isfinite(values).any() else 0
    val_metrics = {k[4:]: float(v[best]) for k, v in history.items() if k.startswith("val_")}

    test_metrics = _test_metrics(task, model, test, _class_names(data["train"]))
    result = {
        "task": task.name,
        "task_config": task.to_dict(),
        "encoder": getattr(encoder_factory, "description", repr(encoder_factory)),
        "learning_rate": float(learning_rate),
        "seed": int(seed),
        "val_metric": float(values[best]),
        "test_metric": float(test_metrics[task.metric]),
        "val": val_metrics,
        "test": test_metrics,
        "epochs": len(values),
        "best_epoch": best + 1,
        "warmup_steps": warmup,
        "train_rows": data["train"].num_rows,
        "train_batches_per_epoch": len(data["train"]),
        "cached_features": cached,
        "backend": keras.backend.backend(),
        "history": {k: [float(x) for x in v] for k, v in history.items()},
    }
    return result


def _test_metrics(task: EvalTask, model: keras.Model, test: Any,
                  class_names: list[str]) -> dict[str, float]:
    if task.task_type == SEGMENTATION:
        logs = _floats(model.evaluate(test, verbose=0, return_dict=True))
        per_class = np.asarray(keras.ops.convert_to_numpy(model.dice.per_class_result()))
        out = {"dice": logs["dice"], "loss": logs["loss"]}
        out.update({f"dice/{name}": float(v) for name, v in zip(class_names, per_class)})
        return out
    callback = DetectionMetricsCallback(test, metric="map" if task.metric == "mAP" else "froc",
                                        class_names=class_names)
    return {k: float(v) for k, v in callback.compute(model).items()}


# --------------------------------------------------------------------------------------
# lr search, seeds, confidence interval
# --------------------------------------------------------------------------------------


def confidence_interval(values: Sequence[float], z: float = CI_Z) -> tuple[float, float]:
    """``(mean, z * std(ddof=1) / sqrt(n))``: the paper's mean ± 95 % CI.

    With one value the half-width is NaN (no spread to estimate).
    """
    values = np.asarray(values, np.float64)
    if values.size == 0:
        raise ValueError("confidence_interval of no values")
    mean = float(values.mean())
    if values.size == 1:
        return mean, float("nan")
    return mean, float(z * values.std(ddof=1) / math.sqrt(values.size))


def select_learning_rate(validation: Mapping[float, float]) -> float:
    """The learning rate with the highest validation metric (ties and NaN: the first
    of the grid order wins; NaN never beats a number)."""
    if not validation:
        raise ValueError("no learning rate to select from")
    best_lr, best_value = None, -math.inf
    for lr, value in validation.items():
        if value is not None and math.isfinite(value) and value > best_value:
            best_lr, best_value = lr, value
    return next(iter(validation)) if best_lr is None else best_lr


def failed_run(result: Mapping[str, Any]) -> bool:
    """A run that learned nothing: its best validation metric or its test metric is 0
    (or not finite), e.g. a segmentation probe that ends at an empty mask.

    Such runs stay in the mean (dropping them would flatter the method) and are counted
    in the summary's ``failed_seeds``, which the results table shows next to the cell.
    """
    values = (result.get("val_metric"), result.get("test_metric"))
    return any(v is None or not math.isfinite(v) or v <= 0 for v in values)


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """A task config as JSON would store it, without naming fields and None options."""
    config = json.loads(json.dumps(dict(config), default=json_default))
    out = {}
    for key, value in config.items():
        if key in NAMING_FIELDS:
            continue
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
        out[key] = value
    return out


def check_stored_result(path: Path, stored: Mapping[str, Any], task: EvalTask,
                        encoder_factory: Any, seeds: Sequence[int] | None = None) -> None:
    """Checks that a stored ``result.json`` / ``summary.json`` belongs to this run.

    Results are reused when a run is resumed; one computed with another recipe (any
    ``EvalTask`` field but the naming ones), another encoder or other seeds must not be.
    Fields missing from an older file count as their default.

    Raises:
        StaleResultError: naming the file and every difference.
    """
    differences = []
    stored_config = stored.get("task_config")
    if stored_config is not None:
        defaults = _comparable({
            f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(EvalTask)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        })
        then, now = _comparable(stored_config), _comparable(task.to_dict())
        for key in sorted(set(then) | set(now)):
            old, new = then.get(key, defaults.get(key)), now.get(key, defaults.get(key))
            if old != new:
                differences.append(f"{key}: stored {old!r}, now {new!r}")
    encoder = getattr(encoder_factory, "description", None)  # an EncoderFactory's
    if encoder is not None and stored.get("encoder") is not None and stored["encoder"] != encoder:
        differences.append(f"encoder: stored {stored['encoder']!r}, now {encoder!r}")
    if seeds is not None and stored.get("seeds") is not None and list(stored["seeds"]) != list(seeds):
        differences.append(f"seeds: stored {stored['seeds']}, now {list(seeds)}")
    if differences:
        raise StaleResultError(
            f"{path}: holds results of another configuration of task {task.name!r} ("
            + "; ".join(differences) + f"); delete {path.parent} to recompute it, or write "
            "to another output_dir"
        )


def _run_dir(output_dir: Path | None, learning_rate: float, seed: int) -> Path | None:
    if output_dir is None:
        return None
    return output_dir / f"lr_{learning_rate:g}" / f"seed_{seed}"


def evaluate_task(
    task: EvalTask,
    encoder_factory: Callable[[int], keras.Model],
    seeds: int | Sequence[int] = 5,
    output_dir: str | os.PathLike | None = None,
    *,
    run: Callable[..., dict] = run_task,
    verbose: int = 0,
    feature_store: FeatureStore | None = None,
    compiled_models: CompiledModels | None = None,
) -> dict:
    """The protocol of one task: lr search on validation (seed 0), then the seeds.

    Args:
        task: the task.
        encoder_factory: ``image_size -> encoder``.
        seeds: number of seeds (``0 .. n-1``) or the seeds themselves; the first seed is
            the one of the search.
        output_dir: runs go to ``<output_dir>/lr_<lr>/seed_<s>/`` and the summary to
            ``<output_dir>/summary.json`` (an existing summary is returned as is).
        run: the single-run function (``run_task``; tests inject a fake).
        verbose: passed to ``run``.
        feature_store: shared feature cache (created here when None).
        compiled_models: compiled models shared between runs (created here when None).

    Returns:
        dict with ``task``, ``label``, ``number``, ``metric``, ``learning_rate`` (chosen),
        ``lr_search`` (``{lr: best validation metric}``), ``seeds``, ``test`` and ``val``
        (per-seed values), ``mean`` and ``ci95`` (of ``test``), ``val_mean``,
        ``failed_seeds`` (seeds of runs that learned nothing, see :func:`failed_run`),
        ``runs`` (the run results) and ``seconds``.
    """
    out = None if output_dir is None else Path(output_dir)
    done = None if out is None else _read_json(out / SUMMARY_FILE)
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if done is not None:
        check_stored_result(out / SUMMARY_FILE, done, task, encoder_factory, seeds)
        return done
    if not seeds:
        raise ValueError("evaluate_task needs at least one seed")
    own_store = feature_store is None
    store = FeatureStore() if own_store else feature_store
    models = CompiledModels() if compiled_models is None else compiled_models
    start = time.perf_counter()
    done_runs: dict[tuple[float, int], dict] = {}

    def one(lr: float, seed: int) -> dict:
        if (lr, seed) not in done_runs:
            done_runs[(lr, seed)] = run(task, encoder_factory, lr, seed, _run_dir(out, lr, seed),
                                        verbose=verbose, feature_store=store,
                                        compiled_models=models)
        return done_runs[(lr, seed)]

    try:
        search = {}
        if len(task.lr_grid) > 1:
            search = {lr: one(lr, seeds[0])["val_metric"] for lr in task.lr_grid}
            best_lr = select_learning_rate(search)
        else:
            best_lr = task.lr_grid[0]
        runs = [one(best_lr, seed) for seed in seeds]
    finally:
        if own_store:
            store.close()
    test_values = [r["test_metric"] for r in runs]
    val_values = [r["val_metric"] for r in runs]
    mean, ci = confidence_interval(test_values)
    failed = [r["seed"] for r in runs if failed_run(r)]
    summary = {
        "task": task.name,
        "label": task.column,
        "number": task.number,
        "metric": task.metric,
        "learning_rate": best_lr,
        "lr_search": {f"{lr:g}": v for lr, v in search.items()},
        "seeds": seeds,
        "test": test_values,
        "val": val_values,
        "mean": mean,
        "ci95": ci,
        "val_mean": float(np.mean(val_values)),
        "failed_seeds": failed,
        "encoder": getattr(encoder_factory, "description", repr(encoder_factory)),
        "task_config": task.to_dict(),
        "runs": runs,
        "seconds": time.perf_counter() - start,
    }
    if out is not None:
        write_json(out / SUMMARY_FILE, summary)
    return summary


def evaluate_encoders(
    encoders: Mapping[str, Callable[[int], keras.Model]],
    tasks: Sequence[EvalTask],
    seeds: int | Sequence[int] = 5,
    output_dir: str | os.PathLike | None = None,
    *,
    run: Callable[..., dict] = run_task,
    verbose: int = 0,
    log: Callable[[str], None] | None = print,
) -> list[dict]:
    """Evaluates every encoder on every task (the runner of ``experiments/eval``).

    Task summaries go to ``<output_dir>/<method>/<task>/summary.json`` (resumable).
    Encoders run one after the other; the features cached for one encoder's frozen linear
    tasks are shared between its tasks and freed before the next encoder. The compiled
    task models are shared by all encoders (:mod:`~lovt_keras.training.compiled_models`):
    a frozen task on cached features is traced once for the whole evaluation.

    Args:
        encoders: method name (a table row) -> encoder factory.
        tasks: the tasks (table columns), names unique.
        seeds, run, verbose: see :func:`evaluate_task`.
        output_dir: where results go (None: nothing written).
        log: progress messages (None: silent).

    Returns:
        One :func:`evaluate_task` summary per (method, task), with ``method`` added, in
        encoder-major order.
    """
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    if not encoders:
        raise ValueError("no encoder to evaluate")
    out = None if output_dir is None else Path(output_dir)
    results = []
    models = CompiledModels(capacity=max(16, len(tasks)))
    for method, factory in encoders.items():
        store = FeatureStore()
        try:
            for task in tasks:
                task_dir = None if out is None else out / _safe_name(method) / task.name
                summary = evaluate_task(task, factory, seeds, task_dir, run=run,
                                        verbose=verbose, feature_store=store,
                                        compiled_models=models)
                summary = dict(summary, method=method)
                results.append(summary)
                if log is not None:
                    log(
                        f"{method} | {task.name}: {task.metric} {100 * summary['mean']:.1f} ± "
                        f"{100 * summary['ci95']:.1f} (lr {summary['learning_rate']:g}, "
                        f"{summary['seconds']:.0f} s)"
                    )
        finally:
            store.close()
            models.release_encoder(id(factory))
    return results


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)
