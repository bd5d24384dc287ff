"""The loss of the pretrainers whose loss is a weighted sum of named components
(``LoVTPretrainer``, the image-only pretrainers): one tracker per component, so ``fit``
logs every component beside the total.

Data-parallel training (``lovt_keras.training.distribution``) gives such a model a
``cross_replica`` object, not part of its config: ``global_negatives(image, report)``
returns the keyword arguments of ``global_contrastive_loss`` that choose the negatives
(gathered from every device, or each device's share) and ``scale_loss(total)`` scales
the total as the engine sums the replicas' gradients.
"""

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
    # Weighted by the batch size, as Keras' own loss tracker: the epoch means stay the
    # means over samples when the replicas of a data-parallel step each add their share,
    # and when an epoch resumes on another number of devices.
    samples = ops.shape(next(v for v in keras.tree.flatten(x) if v is not None))[0]
    for name, value in components.items():
        model.loss_trackers[name].update_state(value, sample_weight=samples)
    total = model.weighted_total(components)
    if model.losses:
        total = total + ops.cast(ops.sum(model.losses), "float32")
    replicas = cross_replica(model)
    return total if replicas is None else replicas.scale_loss(total)


def cross_replica(model: keras.Model):
    """The ``cross_replica`` object data-parallel training set on ``model``, or None."""
    return model.__dict__.get("cross_replica")
