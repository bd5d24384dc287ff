"""FLOPs of a Keras model's forward pass, counted from the shapes its layers see.

``count_forward_flops(model, inputs)`` calls the model once on ``inputs`` (eagerly, in
inference mode) and records the input and output shapes of every call of a layer it has a
rule for; each rule turns those shapes and the layer's weights into FLOPs. A
multiply-add counts as 2 FLOPs; biases, normalizations, activations, softmaxes,
embedding look-ups and pooling are not counted (they are a few per cent of a ResNet or
BERT at most). Counted:

- ``Conv1D/2D/3D``: ``2 * output elements * kernel elements per output channel``
  (``prod(kernel.shape[:-1])``, i.e. ``k_h * k_w * C_in / groups``);
  ``DepthwiseConv1D/2D`` and ``Conv*Transpose`` alike;
- ``Dense``: ``2 * rows * C_in * units``; ``EinsumDense``: :func:`einsum_flops` of its
  equation (the projections of ``MultiHeadAttention``, the einsums of keras-hub layers);
- ``MultiHeadAttention``: its own two batched matmuls, ``2 * B * heads * T_q * T_k *
  (key_dim + value_dim)`` (its projections are ``EinsumDense`` layers, counted as such);
- ``CrossModalAlignment``: its three einsums, ``6 * B * N * S * d``.

Rules for other layer classes are added with :func:`register_flop_rule`. A training step
is taken as ``TRAINING_FLOPS_PER_FORWARD`` (3) forward passes: the backward pass costs
about twice the forward (the gradients of the inputs and of the weights), the usual
convention (Kaplan et al. 2020), frozen layers included.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

# Private, but the one way to tell a build's shape inference (JAX traces it with real
# tracers, not KerasTensors) from the counted call (keras is pinned to 3.15).
from keras.src.backend.common.symbolic_scope import in_symbolic_scope

from lovt_keras.layers import CrossModalAlignment

TRAINING_FLOPS_PER_FORWARD = 3

# (layer, positional args, keyword args, outputs) -> FLOPs of that call.
FlopRule = Callable[[keras.layers.Layer, tuple, dict, Any], int]
_RULES: dict[type, FlopRule] = {}


def register_flop_rule(layer_class: type) -> Callable[[FlopRule], FlopRule]:
    """Decorator: ``rule(layer, args, kwargs, outputs) -> int`` counts the FLOPs that a
    call of a ``layer_class`` (or subclass) layer does itself, not in its sub-layers."""

    def register(rule: FlopRule) -> FlopRule:
        _RULES[layer_class] = rule
        return rule

    return register


def _rule_for(layer) -> FlopRule | None:
    for cls in type(layer).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


def _shape(x) -> tuple[int, ...]:
    return tuple(int(d) for d in x.shape)


def einsum_flops(equation: str, *shapes) -> int:
    """``2 * prod(size of every distinct index)`` of an einsum of operands of ``shapes``.

    A contraction of ``m`` indices costs one multiply-add per combination of all indices.
    ``...`` stands for the leading dimensions an operand has beyond its named indices.

        >>> einsum_flops("bnd,bsd->bns", (2, 49, 64), (2, 6, 64))
        75264
    """
    operands = equation.replace(" ", "").split("->")[0].split(",")
    if len(operands) != len(shapes):
        raise ValueError(f"{equation!r} has {len(operands)} operands, got {len(shapes)} shapes")
    sizes: dict[str, int] = {}
    for labels, shape in zip(operands, shapes, strict=True):
        shape = tuple(int(d) for d in shape)
        if "..." in labels:
            before, after = labels.split("...")
            extra = len(shape) - len(before) - len(after)
            if extra < 0:
                raise ValueError(f"{labels!r} does not fit shape {shape}")
            named = ([(c, d) for c, d in zip(before, shape[:len(before)], strict=True)]
                     + [(f"...{i}", d) for i, d in enumerate(shape[len(before):len(before) + extra])]
                     + [(c, d) for c, d in zip(after, shape[len(shape) - len(after):], strict=True)])
        else:
            if len(labels) != len(shape):
                raise ValueError(f"{labels!r} does not fit shape {shape}")
            named = list(zip(labels, shape, strict=True))
        for label, size in named:
            if sizes.setdefault(label, size) != size and 1 not in (size, sizes[label]):
                raise ValueError(f"index {label!r} of {equation!r} is {sizes[label]} and {size}")
            sizes[label] = max(sizes[label], size)  # broadcasting
    return 2 * math.prod(sizes.values())


@register_flop_rule(keras.layers.Dense)
def _dense_flops(layer, args, kwargs, outputs) -> int:
    inputs = args[0] if args else kwargs["inputs"]
    rows = math.prod(_shape(inputs)[:-1])
    fan_in, units = (int(d) for d in layer.kernel.shape)
    return 2 * rows * fan_in * units


@register_flop_rule(keras.layers.EinsumDense)
def _einsum_dense_flops(layer, args, kwargs, outputs) -> int:
    inputs = args[0] if args else kwargs["inputs"]
    return einsum_flops(layer.equation, _shape(inputs), _shape(layer.kernel))


def _conv_flops(layer, args, kwargs, outputs) -> int:
    # Every output element is one dot product over k_h * k_w * C_in / groups inputs.
    return 2 * math.prod(_shape(outputs)) * math.prod(_shape(layer.kernel)[:-1])


def _depthwise_conv_flops(layer, args, kwargs, outputs) -> int:
    # kernel (*k, C_in, multiplier): each output element sums over the k window only.
    return 2 * math.prod(_shape(outputs)) * math.prod(_shape(layer.kernel)[:-2])


def _conv_transpose_flops(layer, args, kwargs, outputs) -> int:
    # kernel (*k, C_out, C_in): every input element is scattered to k * C_out outputs.
    inputs = args[0] if args else kwargs["inputs"]
    return 2 * math.prod(_shape(inputs)) * math.prod(_shape(layer.kernel)[:-1])


for _cls in (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D):
    register_flop_rule(_cls)(_conv_flops)
for _cls in (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D):
    register_flop_rule(_cls)(_depthwise_conv_flops)
for _cls in (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
             keras.layers.Conv3DTranspose):
    register_flop_rule(_cls)(_conv_transpose_flops)


@register_flop_rule(keras.layers.MultiHeadAttention)
def _attention_flops(layer, args, kwargs, outputs) -> int:
    query = args[0] if args else kwargs["query"]
    value = args[1] if len(args) > 1 else kwargs["value"]
    query_shape, value_shape = _shape(query), _shape(value)
    batch = query_shape[0]
    # Default attention axes: every axis between batch and features.
    query_length = math.prod(query_shape[1:-1])
    value_length = math.prod(value_shape[1:-1])
    key_dim = layer.key_dim
    value_dim = layer.value_dim or key_dim
    return 2 * batch * layer.num_heads * query_length * value_length * (key_dim + value_dim)


@register_flop_rule(CrossModalAlignment)
def _alignment_flops(layer, args, kwargs, outputs) -> int:
    regions = args[0] if args else kwargs["region_embeddings"]
    sentences = args[1] if len(args) > 1 else kwargs["sentence_embeddings"]
    batch, num_regions, dim = _shape(regions)
    num_sentences = _shape(sentences)[1]
    # scores (b n d, b s d -> b n s) and the two attended values (b n s, b s d -> b n d;
    # b s n, b n d -> b s d).
    return 3 * 2 * batch * num_regions * num_sentences * dim


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """FLOPs of one forward pass.

    Attributes:
        total: all counted FLOPs.
        by_layer_type: class name -> FLOPs of the layers of that class.
        by_layer: layer path (``model/sub/layer``) -> FLOPs of its calls.
    """

    total: int
    by_layer_type: dict[str, int]
    by_layer: dict[str, int]

    def scaled(self, factor: int) -> FlopCount:
        """The count times ``factor`` (e.g. the batch size over the batch counted)."""
        return FlopCount(
            self.total * factor,
            {k: v * factor for k, v in self.by_layer_type.items()},
            {k: v * factor for k, v in self.by_layer.items()},
        )


def _layer_paths(model: keras.layers.Layer) -> dict[int, tuple[str, keras.layers.Layer]]:
    """id -> (path, layer) for the model and every layer under it (first path wins)."""
    paths: dict[int, tuple[str, keras.layers.Layer]] = {}

    def visit(layer, path):
        if id(layer) in paths:
            return
        paths[id(layer)] = (path, layer)
        # Layers track their sub-layers (attributes, lists, functional graphs) here.
        for child in layer._flatten_layers(include_self=False, recursive=False):
            visit(child, f"{path}/{child.name}")

    visit(model, model.name)
    return paths


def count_forward_flops(model: keras.layers.Layer, *inputs: Any, **call_kwargs) -> FlopCount:
    """Counts the FLOPs of ``model(*inputs, training=False, **call_kwargs)``.

    The model is called once, eagerly (twice if some layer is not built yet); while it
    runs, the ``call`` of every layer under it that has a rule is wrapped (per instance, restored afterwards) to record the
    shapes it sees. Cost and FLOPs scale with the batch of ``inputs``: a 1-sample
    batch and ``scaled(batch_size)`` give the count of a full batch for models whose
    work is per sample (everything but the batch-by-batch logits of a contrastive loss,
    which is not a layer and not counted).

    Args:
        model: a Keras layer or model (built or not).
        *inputs: what ``model`` is called with (arrays or dicts of arrays).
        **call_kwargs: further keyword arguments of the call.

    Returns:
        A ``FlopCount``.
    """
    by_layer: dict[str, int] = {}
    by_type: dict[str, int] = {}
    wrapped = []

    def wrap(path, layer, rule):
        original = layer.call

        def call(*args, **kwargs):
            outputs = original(*args, **kwargs)
            if in_symbolic_scope() or any(
                isinstance(x, keras.KerasTensor) for x in keras.tree.flatten(outputs)
            ):
                return outputs  # building the model (shapes only), not the counted pass
            flops = int(rule(layer, args, kwargs, outputs))
            by_layer[path] = by_layer.get(path, 0) + flops
            name = type(layer).__name__
            by_type[name] = by_type.get(name, 0) + flops
            return outputs

        # object.__setattr__: Keras' attribute tracking (and torch.nn.Module's) stays out.
        object.__setattr__(layer, "call", call)
        wrapped.append(layer)

    if not all(layer.built for _, layer in _layer_paths(model).values()):
        # Layers create sub-layers when they build (MultiHeadAttention its projections):
        # build everything first, so that every layer that will run can be wrapped.
        model(*inputs, training=False, **call_kwargs)
    try:
        for path, layer in _layer_paths(model).values():
            rule = _rule_for(layer)
            if rule is not None:
                wrap(path, layer, rule)
        model(*inputs, training=False, **call_kwargs)
    finally:
        for layer in wrapped:
            del layer.__dict__["call"]
    return FlopCount(sum(by_layer.values()), by_type, by_layer)


def time_matmul(size: int, repeats: int = 5, dtype: str = "float32") -> float:
    """The best of ``repeats`` timings (s) of one ``size x size`` matmul with
    ``keras.ops`` on the backend's default device, after one untimed warm-up.

    ``2 * size**3 / time_matmul(size)`` is the machine's matrix-multiply ceiling in
    FLOP/s. Each timing includes reading one number of the result back (the sum), so
    asynchronous backends have finished the product."""
    import time

    from keras import ops

    rng = np.random.default_rng(0)
    a = ops.convert_to_tensor(rng.standard_normal((size, size)), dtype=dtype)
    b = ops.convert_to_tensor(rng.standard_normal((size, size)), dtype=dtype)
    best = math.inf
    for i in range(repeats + 1):
        start = time.perf_counter()
        float(ops.convert_to_numpy(ops.sum(ops.matmul(a, b))))
        if i:  # the first run compiles / warms the caches
            best = min(best, time.perf_counter() - start)
    return best


__all__ = [
    "TRAINING_FLOPS_PER_FORWARD",
    "FlopCount",
    "count_forward_flops",
    "einsum_flops",
    "register_flop_rule",
    "time_matmul",
]
