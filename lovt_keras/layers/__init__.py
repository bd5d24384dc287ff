"""Generic Keras layers of LoVT: pooling, projection heads, cross-modal alignment."""

from lovt_keras.layers.attention_pooling import (
    AttentionPooling,
    masked_max,
    masked_mean,
    uniform_weights,
)
from lovt_keras.layers.cross_modal_alignment import CrossModalAlignment
from lovt_keras.layers.projection_head import ProjectionHead

__all__ = [
    "AttentionPooling",
    "CrossModalAlignment",
    "ProjectionHead",
    "masked_max",
    "masked_mean",
    "uniform_weights",
]
