"""Assertions and checks shared by the tests.

``run_layer_test`` is what every layer and model test owes (after keras-hub's
``TestCase.run_layer_test``): build, config round trip, ``.keras`` round trip with equal
outputs, one training step that changes the trainable weights. Its parts,
``run_serialization_test``, ``run_saving_test`` and ``run_training_step``, also serve
tests that prepare an instance themselves.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np


def to_numpy(tree):
    """Converts a tensor or a dict/list of tensors to numpy."""
    if isinstance(tree, dict):
        return {k: to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(to_numpy(v) for v in tree)
    return keras.ops.convert_to_numpy(tree)


def assert_allclose_tree(a, b, atol=1e-5, rtol=1e-5):
    a, b = to_numpy(a), to_numpy(b)
    if isinstance(a, dict):
        assert set(a) == set(b), (sorted(a), sorted(b))
        for k in a:
            np.testing.assert_allclose(a[k], b[k], atol=atol, rtol=rtol, err_msg=k)
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, atol=atol, rtol=rtol)
    else:
        np.testing.assert_allclose(a, b, atol=atol, rtol=rtol)


def saved_and_loaded(obj):
    """Round-trips a layer or model through the ``.keras`` format."""
    if not isinstance(obj, keras.Model):
        raise TypeError("saved_and_loaded expects a keras.Model")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        obj.save(path)
        return keras.saving.load_model(path, compile=False)


def run_serialization_test(instance: keras.layers.Layer) -> keras.layers.Layer:
    """``from_config(get_config())`` gives the same config, and so does a
    ``keras.saving`` serialize/deserialize through JSON. Returns the revived instance."""
    config = instance.get_config()
    expected = json.dumps(config, sort_keys=True)
    revived = instance.__class__.from_config(config)
    assert json.dumps(revived.get_config(), sort_keys=True) == expected
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(instance)))
    again = keras.saving.deserialize_keras_object(serialized)
    assert type(again) is type(instance)
    assert json.dumps(again.get_config(), sort_keys=True) == expected
    return revived


def _symbolic_call(layer, input_data, call_kwargs):
    """A functional model calling ``layer`` and the flat dict of arrays it takes.

    ``input_data`` is one array, one dict of arrays (one argument, as the feature dicts
    of the heads) or a tuple of positional arrays; array ``call_kwargs`` become inputs
    too, other values stay constants of the call.
    """
    inputs, data = {}, {}

    def symbolic(name, value):
        value = np.asarray(keras.ops.convert_to_numpy(value))
        if name in inputs:
            raise ValueError(f"Two inputs named {name!r}.")
        inputs[name] = keras.Input(value.shape[1:], dtype=str(value.dtype), name=name)
        data[name] = value
        return inputs[name]

    def argument(name, value):
        if isinstance(value, dict):
            return {key: symbolic(key, v) for key, v in value.items()}
        return symbolic(name, value)

    args = input_data if isinstance(input_data, tuple) else (input_data,)
    args = [argument(f"input_{i}", value) for i, value in enumerate(args)]
    kwargs = {key: symbolic(key, value) if _is_array(value) else value
              for key, value in (call_kwargs or {}).items()}
    return keras.Model(inputs, layer(*args, **kwargs)), data


def _is_array(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _as_model(instance, input_data, call_kwargs):
    if isinstance(instance, keras.Model) and not call_kwargs and not isinstance(input_data, tuple):
        return instance, input_data
    return _symbolic_call(instance, input_data, call_kwargs)


def run_saving_test(instance: keras.layers.Layer, input_data, call_kwargs: dict | None = None,
                    atol: float = 1e-6, rtol: float = 1e-6) -> tuple[keras.Model, Any]:
    """Saves ``instance`` to a ``.keras`` file and loads it back: same outputs on
    ``input_data`` in inference mode.

    A layer goes through a functional model that calls it on ``input_data`` (see
    ``_symbolic_call``). Returns the loaded model and the data it takes.
    """
    model, data = _as_model(instance, input_data, call_kwargs)
    loaded = saved_and_loaded(model)
    assert type(loaded) is type(model)
    assert_allclose_tree(loaded(data, training=False), model(data, training=False),
                         atol=atol, rtol=rtol)
    return loaded, data


def run_training_step(instance: keras.layers.Layer, input_data, call_kwargs: dict | None = None,
                      allow_unchanged: Sequence[str] = ()) -> None:
    """One ``fit`` step (mean squared error to random targets, the whole batch) changes
    every trainable weight, except those whose path contains one of ``allow_unchanged``.

    The step is Adam's first, which moves each weight by about the learning rate
    whatever the size of its gradient (gradients shrink by orders of magnitude through
    a deep head, below what an SGD step could move a float32 weight by), and not at
    all without a gradient. A gradient that is zero only in exact arithmetic (a bias
    before a BatchNorm) can be rounding noise on some backends: the caller lists such
    weights, saying why.
    """
    model, data = _as_model(instance, input_data, call_kwargs)
    outputs = to_numpy(model(data))
    rng = np.random.default_rng(0)
    targets = keras.tree.map_structure(
        lambda y: rng.normal(size=y.shape).astype("float32"), outputs)
    batch_size = len(keras.tree.flatten(outputs)[0])
    model.compile(optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-12), loss="mse")
    weights = model.trainable_weights
    assert weights, "no trainable weights"
    before = [to_numpy(w).copy() for w in weights]
    model.fit(data, targets, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    unchanged = [w.path for w, old in zip(weights, before)
                 if np.array_equal(to_numpy(w), old)
                 and not any(name in w.path for name in allow_unchanged)]
    assert not unchanged, f"weights not changed by a training step: {unchanged}"
    assert all(np.isfinite(to_numpy(w)).all() for w in weights)


def run_layer_test(cls, init_kwargs: dict, input_data, call_kwargs: dict | None = None,
                   expected_output_shape=None, run_training_check: bool = True,
                   allow_unchanged: Sequence[str] = (), atol: float = 1e-6,
                   rtol: float = 1e-6) -> tuple[keras.layers.Layer, Any]:
    """The checks every layer and model owes, on ``cls(**init_kwargs)``.

    Builds it by an eager call on ``input_data`` (one array, one dict of arrays, or a
    tuple of positional arrays; ``call_kwargs`` such as ``mask=``), checks the output
    shapes against ``expected_output_shape`` (a structure of tuples like the output),
    then ``run_serialization_test``, ``run_saving_test`` and, on the loaded copy (so
    that the returned instance keeps its weights), ``run_training_step``.

    Returns ``(instance, outputs)``: the built instance and its inference outputs as
    numpy, for the caller's own assertions (numpy references use its weights).
    """
    instance = cls(**init_kwargs)
    args = input_data if isinstance(input_data, tuple) else (input_data,)
    outputs = to_numpy(instance(*args, **(call_kwargs or {}), training=False))
    assert instance.built
    if expected_output_shape is not None:
        shapes = keras.tree.map_structure(lambda y: tuple(y.shape), outputs)
        assert keras.tree.lists_to_tuples(shapes) == keras.tree.lists_to_tuples(
            expected_output_shape), shapes
    run_serialization_test(instance)
    loaded, data = run_saving_test(instance, input_data, call_kwargs, atol=atol, rtol=rtol)
    if run_training_check:
        run_training_step(loaded, data, allow_unchanged=allow_unchanged)
    return instance, outputs
