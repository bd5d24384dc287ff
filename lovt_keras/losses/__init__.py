"""Contrastive losses of LoVT and of the image-only baselines as pure ``keras.ops``
functions."""

from lovt_keras.losses.contrastive import (
    GLOBAL_TEMPERATURE,
    LOCAL_TEMPERATURE,
    global_contrastive_loss,
    local_image_loss,
    local_report_loss,
    spatial_positive_weights,
)
from lovt_keras.losses.image_only import (
    PIXPRO_DISTANCE_THRESHOLD,
    PIXPRO_GAMMA,
    SIMCLR_TEMPERATURE,
    byol_loss,
    nt_xent_loss,
    pixel_propagation,
    pixpro_loss,
    pixpro_positive_mask,
    region_centers,
)

__all__ = [
    "GLOBAL_TEMPERATURE",
    "LOCAL_TEMPERATURE",
    "global_contrastive_loss",
    "local_image_loss",
    "local_report_loss",
    "spatial_positive_weights",
    "PIXPRO_DISTANCE_THRESHOLD",
    "PIXPRO_GAMMA",
    "SIMCLR_TEMPERATURE",
    "byol_loss",
    "nt_xent_loss",
    "pixel_propagation",
    "pixpro_loss",
    "pixpro_positive_mask",
    "region_centers",
]
