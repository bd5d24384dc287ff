"""Assertions shared by the tests."""

from __future__ import annotations

import os
import tempfile

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


def config_round_trip(layer):
    """A fresh layer built from ``layer.get_config()`` with ``layer``'s weights."""
    clone = layer.__class__.from_config(layer.get_config())
    return clone
