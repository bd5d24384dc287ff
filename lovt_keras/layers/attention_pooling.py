"""Global aggregation of local features (official ``src/models/components/aggregation.py``)."""

import keras
from keras import ops

NEG_INF = -1e9


def _float_mask(mask, like):
    return ops.cast(mask, keras.backend.standardize_dtype(like.dtype))


def masked_mean(features, mask=None):
    """Mean over axis 1 of ``(B, N, D)`` features, over valid elements only.

    Returns ``(B, D)``; a sample without valid elements gives zeros.
    """
    features = ops.convert_to_tensor(features)
    if mask is None:
        return ops.mean(features, axis=1)
    m = _float_mask(mask, features)[..., None]
    total = ops.sum(features * m, axis=1)
    count = ops.maximum(ops.sum(m, axis=1), 1.0)
    return total / count


def masked_max(features, mask=None):
    """Max over axis 1 of ``(B, N, D)`` features, over valid elements only.

    Returns ``(B, D)``; a sample without valid elements gives zeros.
    """
    features = ops.convert_to_tensor(features)
    if mask is None:
        return ops.max(features, axis=1)
    m = ops.cast(mask, "bool")[..., None]
    neg = ops.cast(NEG_INF, keras.backend.standardize_dtype(features.dtype))
    pooled = ops.max(ops.where(m, features, neg), axis=1)
    any_valid = ops.any(m, axis=1)
    return ops.where(any_valid, pooled, ops.zeros_like(pooled))


def uniform_weights(features, mask=None):
    """Uniform weights ``(B, N)`` over the valid elements (the average-pooling weights)."""
    features = ops.convert_to_tensor(features)
    dtype = keras.backend.standardize_dtype(features.dtype)
    shape = ops.shape(features)[:2]
    if mask is None:
        return ops.ones(shape, dtype=dtype) / ops.cast(shape[1], dtype)
    m = _float_mask(mask, features)
    return m / ops.maximum(ops.sum(m, axis=1, keepdims=True), 1.0)


@keras.saving.register_keras_serializable(package="lovt_keras")
class AttentionPooling(keras.layers.Layer):
    """Attention pooling whose query is the mean of the local features.

    The official ``GlobalAvgAttentionAggregator``: one multi-head attention
    (8 heads in LoVT) with the (masked) average of the local features as the
    single query and the local features as keys and values.

    Call args:
        features: ``(B, N, D)`` local features (regions or sentences).
        mask: optional ``(B, N)`` bool, True for valid elements.

    Returns:
        ``(pooled, weights)``: ``(B, D)`` global vector and ``(B, N)`` attention
        weights averaged over heads; they sum to 1 over the valid elements and are
        0 on masked ones. These are LoVT's local weights w.
    """

    def __init__(self, num_heads: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.attention = None
        self.supports_masking = True

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim % self.num_heads:
            raise ValueError(
                f"AttentionPooling: feature size {dim} is not divisible by num_heads="
                f"{self.num_heads}."
            )
        self.attention = keras.layers.MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=dim // self.num_heads,
            dtype=self.dtype_policy,
            name="attention",
        )
        query_shape = (input_shape[0], 1, dim)
        self.attention.build(query_shape, input_shape, input_shape)
        self.built = True

    def call(self, features, mask=None, training=None):
        query = masked_mean(features, mask)[:, None, :]
        attention_mask = None
        if mask is not None:
            attention_mask = ops.cast(mask, "bool")[:, None, :]
        pooled, scores = self.attention(
            query,
            features,
            features,
            attention_mask=attention_mask,
            return_attention_scores=True,
            training=training,
        )
        # scores: (B, heads, 1, N) -> mean over heads.
        weights = ops.mean(ops.cast(scores, "float32"), axis=1)[:, 0, :]
        if mask is not None:
            # A sample without any valid element would otherwise spread weight
            # over padding; give it zero weights.
            weights = weights * ops.cast(mask, "float32")
        return pooled[:, 0, :], weights

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1]), (input_shape[0], input_shape[1])

    def compute_mask(self, features, mask=None):
        return None

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads)
        return config
