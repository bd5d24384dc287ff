"""Compiled task models kept between the runs of an evaluation, so that each task's
training and inference functions are traced (TensorFlow) or compiled (JAX) once rather
than once per run.

A task is run for several learning rates, several seeds and, in
:func:`~lovt_keras.training.evaluation.evaluate_encoders`, several encoders: every run
builds a new model, and Keras traces its train, test and predict functions again (a
frozen YOLOv3 run of the quickstart-sized evaluation spent 22 s of its 84 s tracing).
With :class:`CompiledModels`, a run still builds its own model the usual way (same
seed, same initial weights, same optimizer) but, when an earlier run left a model of
the same computation, that model takes over the new one's state (every variable, the
optimizer's included) and is trained instead: the traced functions are reused, and the
results are those of the new model (tested equal on every backend).

"The same computation" (:meth:`CompiledModels.key`): the task's configuration, the
model's class and feature inputs, the shapes and dtypes of all its variables, the
optimizer's configuration but for the learning rate (a variable the functions read),
and, when the model runs the encoder (no cached features), the encoder factory itself.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import keras

from lovt_keras.files import json_default


def _variables_signature(variables) -> tuple:
    return tuple((tuple(int(d) for d in v.shape), str(v.dtype)) for v in variables)


class CompiledModels:
    """At most ``capacity`` compiled task models, the least recently used dropped first.

    Use :meth:`take` with a freshly built and compiled model: it returns the model to
    train (the fresh one, kept for later runs, or a kept one now holding the fresh
    one's state). A run that fails should call :meth:`discard` with its key.
    """

    def __init__(self, capacity: int = 16):
        if capacity < 1:
            raise ValueError(f"CompiledModels: capacity must be at least 1, got {capacity}")
        self.capacity = int(capacity)
        self.reused = 0
        self.built = 0
        self._models: OrderedDict[Hashable, keras.Model] = OrderedDict()

    def __len__(self) -> int:
        return len(self._models)

    @staticmethod
    def key(task_config: dict, model: keras.Model, encoder_identity: Any = None) -> Hashable:
        """What makes two runs' models compute the same functions (see the module)."""
        optimizer = dict(model.optimizer.get_config())
        optimizer.pop("learning_rate", None)
        optimizer.pop("name", None)
        feature_inputs = getattr(model, "feature_inputs", None)
        return (
            json.dumps(task_config, sort_keys=True, default=json_default),
            type(model).__module__, type(model).__qualname__,
            None if feature_inputs is None else tuple(feature_inputs),
            _variables_signature(model.variables),
            type(model.optimizer).__qualname__,
            json.dumps(optimizer, sort_keys=True, default=json_default),
            encoder_identity,
        )

    def take(self, key: Hashable, fresh: keras.Model, batch: Any) -> keras.Model:
        """The model to train for a run whose new (compiled) model is ``fresh``.

        ``batch``: one batch of the run's training data, to build ``fresh`` (variables
        and optimizer) when a kept model takes over its state, the way ``fit`` would
        build it."""
        kept = self._models.get(key)
        if kept is None:
            return self._keep(key, fresh)
        # Keras' own build of a model before its first step (what fit calls).
        fresh._symbolic_build(data_batch=batch)
        pairs = ((fresh.variables, kept.variables),
                 (fresh.optimizer.variables, kept.optimizer.variables))
        if any(_variables_signature(s) != _variables_signature(t) for s, t in pairs):
            # Built, the models differ after all: the new one replaces the kept one.
            return self._keep(key, fresh)
        for source, target in pairs:
            for s, t in zip(source, target):
                t.assign(s)
        self._models.move_to_end(key)
        self.reused += 1
        return kept

    def _keep(self, key: Hashable, model: keras.Model) -> keras.Model:
        """Keeps ``model`` as the most recent one of ``key``, dropping the least recent
        beyond the capacity."""
        self.built += 1
        self._models[key] = model
        self._models.move_to_end(key)
        while len(self._models) > self.capacity:
            self._models.popitem(last=False)
        return model

    def discard(self, key: Hashable) -> None:
        """Forgets the model of ``key`` (after a run that failed half-way)."""
        self._models.pop(key, None)

    def release_encoder(self, encoder_identity: Any) -> None:
        """Forgets the models that run the encoder of ``encoder_identity`` (no run of
        another encoder can take them over)."""
        for key in [k for k in self._models if k[-1] == encoder_identity]:
            del self._models[key]
