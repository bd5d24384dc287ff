"""The base of the downstream task models: an image encoder, a head, a training mode.

Official code: ``src/models/downstream/downstream_evaluation.py``. A task is a
``keras.Model`` built from an image encoder (anything meeting the contract of
:mod:`lovt_keras.models.encoder_contract`) and a head; ``fit`` / ``evaluate`` /
``predict`` work unchanged on TensorFlow, JAX and PyTorch because the loss lives in the
subclasses' ``compute_loss``
(:class:`~lovt_keras.models.segmentation_task.SegmentationTask`,
:class:`~lovt_keras.models.detection_task.DetectionTask`).

Modes:

- **frozen** (``frozen=True``): the encoder is not trainable AND always runs with
  ``training=False`` (BatchNorm uses and keeps its moving statistics), and its outputs
  pass through ``stop_gradient`` (the official ``eval()`` + ``no_grad``); only the head
  is optimized.
- **fine-tuned** (``frozen=False``): everything is trained, the encoder's BatchNorm in
  training mode (see :func:`~lovt_keras.models.warmup.fit_with_warmup` for the
  official frozen warm-up).
- **frozen, on cached features** (``feature_inputs=("conv5",)``, say): the batch dicts
  hold the encoder's feature maps of those names, computed beforehand by the frozen
  encoder on the same images, instead of ``images``; the encoder is not run. Because a
  frozen encoder in inference mode gives each image the same maps at every epoch, this
  is the same model, loss and updates as the frozen mode on the images, with one
  encoder pass per image instead of one per image and epoch (the fast path of
  :mod:`lovt_keras.training.linear_probe`). Only heads that read no more than those
  maps can run on them; ``images`` among the names passes the images themselves (the
  U-Net's input skip).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from lovt_keras import keys

Tensor = Any


def images_of(inputs: Any) -> Tensor:
    """``inputs[images]`` of a batch dict, or ``inputs`` itself (an image tensor)."""
    return inputs[keys.IMAGES] if isinstance(inputs, dict) else inputs


def require_keys(batch: Any, names: Sequence[str], task: str) -> None:
    """Raises unless ``batch`` is a dict holding ``names`` (errors name ``task``)."""
    if not isinstance(batch, dict):
        raise TypeError(f"{task} expects a batch dict with keys {list(names)}, got {type(batch)}.")
    missing = [name for name in names if name not in batch]
    if missing:
        raise KeyError(f"{task}: the batch has no {missing}; keys present: {sorted(batch)}.")


class DownstreamTask(keras.Model):
    """Encoder + head; the subclasses add the loss and the metrics.

    ``call(inputs)`` returns ``head(encode(inputs))``: :meth:`encode` gives the head the
    encoder's feature maps plus ``images`` (the U-Net's input skip), or, with
    ``feature_inputs``, the cached maps read from the batch dict.

    Args:
        encoder: an image encoder (dict of named feature maps, see
            :mod:`lovt_keras.models.encoder_contract`).
        head: a layer mapping the feature dict to the task's outputs.
        frozen: frozen (True) or fine-tuned (False) encoder.
        feature_inputs: None (the inputs hold ``images``), or the names of the encoder's
            feature maps that the inputs hold instead (precomputed by the frozen
            encoder; needs ``frozen=True``). The encoder is kept all the same, so that
            ``type(task)(task.encoder, task.head)`` is the same model on images.
    """

    def __init__(self, encoder: keras.Model, head: keras.layers.Layer, frozen: bool = True,
                 feature_inputs: Sequence[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(encoder, dict):
            encoder = keras.saving.deserialize_keras_object(encoder)
        if isinstance(head, dict):
            head = keras.saving.deserialize_keras_object(head)
        if feature_inputs is not None:
            feature_inputs = tuple(str(name) for name in feature_inputs)
            if not feature_inputs:
                raise ValueError("feature_inputs must name at least one feature map, or be None.")
            if not frozen:
                raise ValueError(
                    f"{type(self).__name__}: cached feature_inputs {feature_inputs} come from "
                    "a frozen encoder; a fine-tuned task (frozen=False) reads images."
                )
        self._feature_inputs = feature_inputs
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
        if not value and self._feature_inputs is not None:
            raise ValueError(f"{type(self).__name__} on cached feature maps stays frozen.")
        self._frozen = bool(value)
        self.encoder.trainable = not self._frozen

    @property
    def feature_inputs(self) -> tuple[str, ...] | None:
        """The cached feature maps the inputs hold, or None (the inputs hold images)."""
        return self._feature_inputs

    @property
    def input_keys(self) -> tuple[str, ...]:
        """The entries of a batch dict that the model reads: ``("images",)`` or the
        cached feature maps."""
        return self._feature_inputs or (keys.IMAGES,)

    def model_inputs(self, batch: dict) -> dict:
        """The part of ``batch`` the model reads (for ``predict_on_batch``)."""
        return {name: batch[name] for name in self.input_keys}

    def encode(self, inputs: Any, training=None) -> dict:
        """The feature dict given to the head: the encoder's maps plus ``images``, or
        the cached maps ``feature_inputs`` of the batch dict."""
        if self._feature_inputs is not None:
            present = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
            missing = [name for name in self._feature_inputs
                       if not isinstance(inputs, dict) or name not in inputs]
            if missing:
                raise KeyError(
                    f"{type(self).__name__}: the batch has no feature map(s) {missing}; "
                    f"keys present: {present}"
                )
            return {name: ops.stop_gradient(inputs[name]) for name in self._feature_inputs}
        images = images_of(inputs)
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
        if self._feature_inputs is not None:
            config["feature_inputs"] = list(self._feature_inputs)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
