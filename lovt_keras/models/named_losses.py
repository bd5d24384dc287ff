"""The loss of the pretrainers whose loss is a weighted sum of named components
(``LoVTPretrainer``, the image-only pretrainers): one tracker per component, so ``fit``
logs every component beside the total."""

from __future__ import annotations

from collections.abc import Mapping

import keras
from keras import ops


def weighted_total(components: Mapping, weights: Mapping[str, float]):
    """``sum(weights[name] * component)`` in float32, in the components' order."""
    total = ops.zeros((), dtype="float32")
    for name, value in components.items():
        total = total + weights[name] * ops.cast(value, "float32")
    return total


def compute_named_loss(model: keras.Model, x, y_pred):
    """What ``compute_loss`` of such a model returns: its ``loss_components(x, y_pred)``
    are logged by ``model.loss_trackers[name]``, and their ``model.weighted_total`` plus
    the layers' own losses (``model.losses``) is the loss."""
    components = model.loss_components(x, y_pred)
    for name, value in components.items():
        model.loss_trackers[name].update_state(value)
    total = model.weighted_total(components)
    if model.losses:
        total = total + ops.cast(ops.sum(model.losses), "float32")
    return total
