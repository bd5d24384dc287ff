"""Downstream task models (encoder + head), their training modes and helpers.

Official code: ``src/models/downstream/downstream_evaluation.py``. A task is a
``keras.Model`` built from a :class:`~lovt_keras.models.image_encoder.ResNetImageEncoder`
and a head; ``fit`` / ``evaluate`` / ``predict`` work unchanged on TensorFlow, JAX and
PyTorch because the loss lives in ``compute_loss``.

Modes:

- **frozen** (``frozen=True``): the encoder is not trainable AND always runs with
  ``training=False`` (BatchNorm uses and keeps its moving statistics), and its outputs
  pass through ``stop_gradient`` (the official ``eval()`` + ``no_grad``); only the head
  is optimized.
- **fine-tuned** (``frozen=False``): everything is trained, the encoder's BatchNorm in
  training mode. The official warm-up (encoder frozen for the first N optimizer steps at
  lr 1e-3, then everything at the task lr) is :func:`fit_with_warmup`: two ``fit``
  phases with a recompile in between, because a compiled train function captures the
  set of trainable variables on every backend.

Batch dicts (keys below; ``images`` is ``keys.IMAGES``):

- segmentation: ``images`` ``(B, H, W, 1)`` float32, ``masks`` ``(B, H, W, C)`` 0/1;
- detection: ``images``, ``boxes`` ``(B, M, 4)`` float32 ``(x, y, w, h)`` pixels,
  padded, ``box_classes`` ``(B, M)`` int32, ``box_mask`` ``(B, M)`` bool (True = real
  box).

Training recipe helpers: :func:`downstream_optimizer` (Adam, weight decay 1e-6),
:func:`downstream_callbacks` (reduce-on-plateau on the validation loss, early stopping
on the task's validation metric restoring the best weights, optional best checkpoint)
and :class:`DetectionMetricsCallback` (validation mAP / FROC into the epoch logs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from lovt_keras import keys
from lovt_keras.keys import BOX_CLASSES, BOX_MASK, BOXES, MASKS
from lovt_keras.metrics import FROC, DetectionMAP, PooledDice, dice_loss
from lovt_keras.models import yolov3

Tensor = Any


def _images_of(inputs: Any) -> Tensor:
    return inputs[keys.IMAGES] if isinstance(inputs, dict) else inputs


def _require(batch: dict, names: Sequence[str], task: str) -> None:
    if not isinstance(batch, dict):
        raise TypeError(f"{task} expects a batch dict with keys {list(names)}, got {type(batch)}.")
    missing = [name for name in names if name not in batch]
    if missing:
        raise KeyError(f"{task}: the batch has no {missing}; keys present: {sorted(batch)}.")


class _DownstreamTask(keras.Model):
    """Encoder + head; see the module docstring for the frozen mode."""

    def __init__(self, encoder: keras.Model, head: keras.layers.Layer, frozen: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        if isinstance(encoder, dict):
            encoder = keras.saving.deserialize_keras_object(encoder)
        if isinstance(head, dict):
            head = keras.saving.deserialize_keras_object(head)
        self.encoder = encoder
        self.head = head
        self.frozen = frozen

    @property
    def frozen(self) -> bool:
        """True: the encoder is neither trained nor updates its BatchNorm statistics.

        Changing it needs a new ``compile()`` before the next ``fit``.
        """
        return self._frozen

    @frozen.setter
    def frozen(self, value: bool) -> None:
        self._frozen = bool(value)
        self.encoder.trainable = not self._frozen

    def encode(self, inputs: Any, training=None) -> dict:
        """The encoder's feature maps plus ``images`` (the U-Net's input skip)."""
        images = _images_of(inputs)
        features = self.encoder(images, training=False if self._frozen else training)
        if self._frozen:
            features = {name: ops.stop_gradient(value) for name, value in features.items()}
        features = dict(features)
        features[keys.IMAGES] = images
        return features

    def call(self, inputs: Any, training=None) -> Any:
        return self.head(self.encode(inputs, training=training), training=training)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            head=keras.saving.serialize_keras_object(self.head),
            frozen=self._frozen,
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="lovt_keras")
class SegmentationTask(_DownstreamTask):
    """Segmentation: encoder + a head producing logits ``(B, H, W, C)``.

    Loss: :func:`lovt_keras.metrics.dice_loss` (smp ``DiceLoss(mode='binary')``: one soft
    Dice over all classes and pixels of the batch) plus any layer losses. Metric:
    ``dice``, the pooled Dice of :class:`lovt_keras.metrics.PooledDice` (mean over the
    classes; per-class values from ``task.dice.per_class_result()``), reset every epoch,
    so ``val_dice`` / ``evaluate(...)["dice"]`` is the dataset-level Dice.

    Inputs: ``images`` (a tensor or the batch dict); ``compute_loss`` reads ``masks``
    ``(B, H, W, C)`` (or ``(B, H, W)`` with one class) from the batch dict.

    Args:
        encoder: a ``ResNetImageEncoder`` (dict of feature maps ``conv1..conv5``).
        head: :class:`~lovt_keras.models.linear_segmentation.LinearSegmentationHead` or
            :class:`~lovt_keras.models.unet.UNetHead` (anything with ``num_classes``
            mapping the feature dict to logits).
        frozen: frozen (True) or fine-tuned (False) encoder.
    """

    def __init__(self, encoder: keras.Model, head: keras.layers.Layer, frozen: bool = True,
                 **kwargs):
        super().__init__(encoder, head, frozen=frozen, **kwargs)
        self.dice = PooledDice(num_classes=self.head.num_classes, from_logits=True, name="dice")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        _require(x, (keys.IMAGES, MASKS), "SegmentationTask")
        masks = x[MASKS]
        if len(masks.shape) == 3:  # (B, H, W) masks of a one-class task
            masks = ops.expand_dims(masks, -1)
        loss = dice_loss(masks, y_pred, from_logits=True, mode="binary")
        self.dice.update_state(masks, y_pred)
        if self.losses:
            loss = loss + ops.cast(ops.sum(self.losses), "float32")
        return loss


@keras.saving.register_keras_serializable(package="lovt_keras")
class DetectionTask(_DownstreamTask):
    """Detection: encoder + :class:`~lovt_keras.models.yolov3.YOLOv3Head`.

    ``y_pred`` is the head's dict ``yolo_conv5/yolo_conv4/yolo_conv3`` -> ``(B, H, W, A,
    5 + C)``. ``compute_loss`` reads ``boxes``, ``box_classes``, ``box_mask`` from the
    batch dict and returns :func:`~lovt_keras.models.yolov3.yolo_loss` (plus layer
    losses); each named component (``yolo_x_loss`` ...) has a ``keras.metrics.Mean``
    tracker of the same name. The image size for the anchor strides is the static size
    of ``images`` (or ``image_size``). Boxes come from :meth:`predict_boxes`.

    Args:
        encoder: a ``ResNetImageEncoder``.
        head: a ``YOLOv3Head``.
        frozen: frozen (True) or fine-tuned (False) encoder.
        anchors: ``(3, A, 2)`` anchors ``(w, h)`` in pixels, coarse scale first
            (default: the official nine).
        matching: ``"lovt"`` (official target assignment) or ``"yolov3"``, see
            :mod:`lovt_keras.models.yolov3`.
        ignore_threshold: 0.5.
        lambda_xy, lambda_wh: 2.5 and 2.5.
        image_size: ``(H, W)`` used when the images have no static size.
    """

    def __init__(
        self,
        encoder: keras.Model,
        head: keras.layers.Layer,
        frozen: bool = True,
        anchors: Sequence = yolov3.LOVT_ANCHORS,
        matching: str = "lovt",
        ignore_threshold: float = 0.5,
        lambda_xy: float = 2.5,
        lambda_wh: float = 2.5,
        image_size: Sequence[int] | None = None,
        **kwargs,
    ):
        super().__init__(encoder, head, frozen=frozen, **kwargs)
        if matching not in yolov3.MATCHINGS:
            raise ValueError(f"matching={matching!r} is not one of {yolov3.MATCHINGS}.")
        anchors = np.asarray(anchors, dtype="float64")
        if anchors.shape != (3, self.head.num_anchors, 2):
            raise ValueError(
                f"anchors must have shape (3, {self.head.num_anchors}, 2), got {anchors.shape}."
            )
        self.anchors = tuple(tuple(tuple(float(v) for v in a) for a in s) for s in anchors)
        self.matching = matching
        self.ignore_threshold = float(ignore_threshold)
        self.lambda_xy = float(lambda_xy)
        self.lambda_wh = float(lambda_wh)
        self.image_size = None if image_size is None else tuple(int(s) for s in image_size)
        self.loss_trackers = {
            name: keras.metrics.Mean(name=name) for name in yolov3.LOSS_COMPONENTS
        }

    def _image_size(self, images: Any) -> tuple[int, int]:
        shape = tuple(images.shape)
        if len(shape) == 4 and shape[1] is not None and shape[2] is not None:
            return int(shape[1]), int(shape[2])
        if self.image_size is not None:
            return self.image_size
        raise ValueError(
            f"DetectionTask needs the image size for the anchor strides: images have shape "
            f"{shape}; pass image_size=(H, W)."
        )

    def loss_components(self, x: dict, y_pred: dict) -> dict:
        """The named, unweighted YOLO loss terms (float32 scalars) of a forward pass."""
        _require(x, (keys.IMAGES, BOXES, BOX_CLASSES, BOX_MASK), "DetectionTask")
        return yolov3.yolo_loss_components(
            y_pred,
            x[BOXES],
            x[BOX_CLASSES],
            x[BOX_MASK],
            anchors=self.anchors,
            image_size=self._image_size(x[keys.IMAGES]),
            feature_layers=self.head.feature_layers,
            matching=self.matching,
            ignore_threshold=self.ignore_threshold,
        )

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        components = self.loss_components(x, y_pred)
        for name, value in components.items():
            self.loss_trackers[name].update_state(value)
        loss = yolov3.weighted_yolo_loss(components, self.lambda_xy, self.lambda_wh)
        if self.losses:
            loss = loss + ops.cast(ops.sum(self.losses), "float32")
        return loss

    def boxes_from_outputs(
        self, outputs: dict, image_size: Sequence[int], conf_threshold: float = 0.2,
        nms_iou: float = 0.4,
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Decoded + NMS detections from raw head outputs (numpy), one tuple per image."""
        detections = yolov3.decode_predictions(
            outputs, self.anchors, tuple(image_size), self.head.feature_layers
        )
        return yolov3.non_max_suppression(detections, conf_threshold, nms_iou)

    def predict_boxes(
        self, images: Any, conf_threshold: float = 0.2, nms_iou: float = 0.4,
        batch_size: int = 32,
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Detections per image: ``(boxes (P, 4) xywh pixels, scores (P,), classes (P,))``.

        Args:
            images: ``(N, H, W, 1)`` array (or a batch dict holding ``images``).
            conf_threshold: objectness threshold (0.2).
            nms_iou: NMS IoU threshold (0.4).
            batch_size: inference batch size.
        """
        images = np.asarray(keras.ops.convert_to_numpy(_images_of(images)))
        outputs = self.predict(images, batch_size=batch_size, verbose=0)
        return self.boxes_from_outputs(outputs, images.shape[1:3], conf_threshold, nms_iou)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            anchors=self.anchors,
            matching=self.matching,
            ignore_threshold=self.ignore_threshold,
            lambda_xy=self.lambda_xy,
            lambda_wh=self.lambda_wh,
            image_size=self.image_size,
        )
        return config


def predict_boxes(
    task: DetectionTask, images: Any, conf_threshold: float = 0.2, nms_iou: float = 0.4,
    batch_size: int = 32,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Function form of :meth:`DetectionTask.predict_boxes`."""
    return task.predict_boxes(images, conf_threshold, nms_iou, batch_size)


# ---------------------------------------------------------------------------------------
# Training recipe
# ---------------------------------------------------------------------------------------


def downstream_optimizer(learning_rate: float, weight_decay: float = 1e-6) -> keras.optimizers.Adam:
    """Adam with weight decay 1e-6, the official downstream optimizer.

    The official ``torch.optim.Adam(weight_decay=...)`` adds an L2 term to the gradient;
    Keras applies the decay to the weights directly (AdamW-style). At 1e-6 both are
    negligible next to the gradients.
    """
    return keras.optimizers.Adam(learning_rate=learning_rate, weight_decay=weight_decay)


def downstream_callbacks(
    monitor: str = "val_dice",
    mode: str = "max",
    early_stopping_patience: int = 10,
    reduce_lr: bool = True,
    lr_patience: int = 3,
    lr_factor: float = 0.5,
    checkpoint_path: str | None = None,
    validation_metric: keras.callbacks.Callback | None = None,
) -> list[keras.callbacks.Callback]:
    """The official schedule and model selection as Keras callbacks.

    - ``validation_metric`` first (e.g. :class:`DetectionMetricsCallback`), so that the
      metric it writes into the epoch logs is there for the callbacks after it;
    - ``ReduceLROnPlateau`` on ``val_loss`` (factor 0.5, PyTorch patience 3: the lr drops
      on the 4th epoch without a strict improvement, i.e. Keras ``patience=4``);
    - ``EarlyStopping`` on ``monitor`` (patience 10; 20 for the 1 % RSNA and COVID tasks)
      restoring the weights of the best epoch at the end, so the model tested is the best
      checkpoint;
    - ``ModelCheckpoint`` of the best epoch when ``checkpoint_path`` is given.

    Note: in the official fine-tune mode the lr is reset to the task lr at every step after
    the warm-up, which cancels the plateau reductions; pass ``reduce_lr=False`` to
    reproduce that.

    Args:
        monitor: the validation metric (``val_dice``, ``val_mAP``, ``val_froc``).
        mode: ``"max"`` for those metrics.
        early_stopping_patience: epochs without improvement before stopping.
        reduce_lr: add the plateau schedule.
        lr_patience: PyTorch-style patience of the schedule.
        lr_factor: lr multiplier on plateau.
        checkpoint_path: ``*.keras`` or ``*.weights.h5`` path for the best model.
        validation_metric: a callback computing ``monitor``, placed first.
    """
    callbacks: list[keras.callbacks.Callback] = []
    if validation_metric is not None:
        callbacks.append(validation_metric)
    if reduce_lr:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=lr_factor, patience=lr_patience + 1, mode="min",
                min_delta=0.0,
            )
        )
    callbacks.append(
        keras.callbacks.EarlyStopping(
            monitor=monitor, mode=mode, patience=early_stopping_patience,
            restore_best_weights=True,
        )
    )
    if checkpoint_path is not None:
        callbacks.append(
            keras.callbacks.ModelCheckpoint(
                checkpoint_path, monitor=monitor, mode=mode, save_best_only=True,
                save_weights_only=checkpoint_path.endswith(".weights.h5"),
            )
        )
    return callbacks


def iterate_batches(data: Any, batch_size: int = 32) -> Iterator[dict]:
    """Batch dicts of ``data``: a dict of arrays (cut into ``batch_size`` slices) or a
    finite re-iterable of batch dicts (list, ``keras.utils.PyDataset``,
    ``tf.data.Dataset``, ...); ``(x, y)`` tuples yield their ``x``."""
    if isinstance(data, dict):
        sizes = {name: len(value) for name, value in data.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Arrays of the batch dict have different lengths: {sizes}.")
        total = next(iter(sizes.values()))
        for start in range(0, total, batch_size):
            yield {name: value[start : start + batch_size] for name, value in data.items()}
        return
    if not isinstance(data, Iterable):
        raise TypeError(f"Cannot iterate batches of {type(data)}.")
    for item in data:
        yield item[0] if isinstance(item, tuple) else item


def _ground_truth(batch: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    _require(batch, (BOXES, BOX_CLASSES, BOX_MASK), "DetectionMetricsCallback")
    boxes = np.asarray(keras.ops.convert_to_numpy(batch[BOXES]))
    classes = np.asarray(keras.ops.convert_to_numpy(batch[BOX_CLASSES]))
    valid = np.asarray(keras.ops.convert_to_numpy(batch[BOX_MASK])).astype(bool)
    return [(b[v].reshape(-1, 4), c[v].reshape(-1)) for b, c, v in zip(boxes, classes, valid)]


class DetectionMetricsCallback(keras.callbacks.Callback):
    """Validation mAP or FROC of a :class:`DetectionTask`, written into the epoch logs.

    At each epoch end the model predicts the validation batches, decodes and NMS-es the
    boxes (confidence 0.2, IoU 0.4) and adds ``<prefix>mAP``, ``<prefix>mAP@0.5``,
    ``<prefix>mAP@0.75`` and the per-class ``<prefix><class>_mAP`` (``metric="map"``)
    or ``<prefix>froc`` (``metric="froc"``) to the logs. Place it before the callbacks
    that monitor these keys (:func:`downstream_callbacks` does).

    Args:
        validation_data: a dict of arrays or a finite re-iterable of batch dicts with
            ``images``, ``boxes``, ``box_classes``, ``box_mask``.
        metric: ``"map"`` or ``"froc"``.
        batch_size: slice size when ``validation_data`` is a dict of arrays.
        conf_threshold, nms_iou: inference thresholds (0.2, 0.4).
        class_names: names of the per-class mAP entries.
        prefix: key prefix (``"val_"``).
    """

    def __init__(self, validation_data: Any, metric: str = "map", batch_size: int = 32,
                 conf_threshold: float = 0.2, nms_iou: float = 0.4,
                 class_names: Sequence[str] | None = None, prefix: str = "val_"):
        super().__init__()
        if metric not in ("map", "froc"):
            raise ValueError(f"metric must be 'map' or 'froc', got {metric!r}.")
        self.validation_data = validation_data
        self.metric = metric
        self.batch_size = batch_size
        self.conf_threshold = conf_threshold
        self.nms_iou = nms_iou
        self.class_names = class_names
        self.prefix = prefix

    def compute(self, model: DetectionTask) -> dict[str, float]:
        """The metric dict (without prefix) of ``model`` on the validation data."""
        num_classes = model.head.num_classes
        scorer = (
            DetectionMAP(num_classes, class_names=self.class_names)
            if self.metric == "map"
            else FROC()
        )
        for batch in iterate_batches(self.validation_data, self.batch_size):
            images = batch[keys.IMAGES]
            outputs = model.predict_on_batch({keys.IMAGES: images})
            detections = model.boxes_from_outputs(
                outputs, tuple(images.shape[1:3]), self.conf_threshold, self.nms_iou
            )
            for (boxes, scores, classes), (gt_boxes, gt_classes) in zip(
                detections, _ground_truth(batch)
            ):
                if self.metric == "map":
                    scorer.add(boxes, scores, classes, gt_boxes, gt_classes)
                else:
                    scorer.add(boxes, scores, gt_boxes)
        if self.metric == "map":
            return scorer.result()
        return {"froc": scorer.result()[0]}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None:
            return
        for name, value in self.compute(self.model).items():
            logs[self.prefix + name] = value


# ---------------------------------------------------------------------------------------
# Fine-tuning with a frozen warm-up
# ---------------------------------------------------------------------------------------


class _StopAfterSteps(keras.callbacks.Callback):
    """Stops ``fit`` after a number of optimizer steps, across epochs."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = int(steps)
        self.done = 0

    def on_train_batch_end(self, batch, logs=None):
        self.done += 1
        if self.done >= self.steps:
            self.model.stop_training = True


@dataclasses.dataclass
class WarmupFitResult:
    """What :func:`fit_with_warmup` ran.

    Attributes:
        warmup_steps: optimizer steps of the frozen warm-up phase.
        warmup_history: ``History.history`` of the warm-up phase (per epoch).
        history: the ``History`` of the main phase.
    """

    warmup_steps: int
    warmup_history: dict
    history: keras.callbacks.History


def fit_with_warmup(
    task: SegmentationTask | DetectionTask,
    train_data: Any,
    validation_data: Any = None,
    *,
    warmup_steps: int,
    learning_rate: float,
    epochs: int,
    warmup_learning_rate: float = 1e-3,
    weight_decay: float = 1e-6,
    callbacks: Sequence[keras.callbacks.Callback] | None = None,
    **fit_kwargs: Any,
) -> WarmupFitResult:
    """Fine-tunes ``task`` after a warm-up with the encoder frozen (official recipe).

    Phase 1: the encoder is frozen (not trainable, BatchNorm in inference mode, no
    gradient) and the head trains for ``warmup_steps`` optimizer steps with Adam at
    ``warmup_learning_rate`` (1e-3); the steps may span several passes over
    ``train_data``. Phase 2: everything is trainable (encoder BatchNorm in training
    mode), recompiled with a fresh Adam at ``learning_rate``, ``epochs`` epochs with
    ``validation_data`` and ``callbacks`` (early stopping etc.).

    Differences from the official Lightning loop, which keeps one optimizer and counts
    the warm-up steps inside the first epochs: the Adam moments restart at phase 2, the
    warm-up runs without validation and ``epochs`` counts the epochs after it.

    Args:
        task: a task built with ``frozen=False``; it is left with ``frozen=False``.
        train_data: re-iterable training data (a batch dict of arrays with
            ``batch_size`` in ``fit_kwargs``, a ``tf.data.Dataset``, a ``PyDataset``).
        validation_data: passed to the phase-2 ``fit``.
        warmup_steps: optimizer steps of phase 1 (100 for detection and SIIM, 20 for
            COVID); 0 skips it.
        learning_rate: the task lr of phase 2.
        epochs: epochs of phase 2.
        warmup_learning_rate: lr of phase 1.
        weight_decay: Adam weight decay of both phases.
        callbacks: callbacks of phase 2.
        **fit_kwargs: further ``fit`` arguments of both phases (``batch_size``,
            ``verbose``, ``shuffle``, ``steps_per_epoch`` ...).

    Returns:
        A :class:`WarmupFitResult`.
    """
    if task.frozen:
        raise ValueError(
            "fit_with_warmup fine-tunes the encoder: build the task with frozen=False. "
            "A frozen task trains its head only: compile() and fit() it directly."
        )
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
    warmup_history: dict = {}
    done = 0
    if warmup_steps > 0:
        stopper = _StopAfterSteps(warmup_steps)
        task.frozen = True
        try:
            task.compile(optimizer=downstream_optimizer(warmup_learning_rate, weight_decay))
            # Each epoch has at least one step, so warmup_steps epochs always suffice.
            phase1 = task.fit(
                train_data, epochs=warmup_steps, callbacks=[stopper],
                **fit_kwargs,
            )
            warmup_history = dict(phase1.history)
        finally:
            task.frozen = False
        done = stopper.done
    task.compile(optimizer=downstream_optimizer(learning_rate, weight_decay))
    history = task.fit(
        train_data, validation_data=validation_data, epochs=epochs,
        callbacks=list(callbacks or []), **fit_kwargs,
    )
    return WarmupFitResult(warmup_steps=done, warmup_history=warmup_history, history=history)
