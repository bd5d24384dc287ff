"""Contrastive losses of LoVT as pure ``keras.ops`` functions."""

from lovt_keras.losses.contrastive import (
    GLOBAL_TEMPERATURE,
    LOCAL_TEMPERATURE,
    global_contrastive_loss,
    local_image_loss,
    local_report_loss,
    spatial_positive_weights,
)

__all__ = [
    "GLOBAL_TEMPERATURE",
    "LOCAL_TEMPERATURE",
    "global_contrastive_loss",
    "local_image_loss",
    "local_report_loss",
    "spatial_positive_weights",
]
