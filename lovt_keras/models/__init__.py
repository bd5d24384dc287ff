"""Encoders, the LoVT pretrainer and downstream models."""

from lovt_keras.models.image_encoder import (
    ResNetImageEncoder,
    flatten_regions,
    load_image_encoder_weights,
)
from lovt_keras.models.lovt_pretrainer import LOSS_NAMES, VARIANTS, LoVTPretrainer
from lovt_keras.models.report_encoder import (
    BertReportEncoder,
    bert_backbone_from_folder,
    minilm_folder,
    sentence_max_pool,
)

__all__ = [
    "LOSS_NAMES",
    "VARIANTS",
    "BertReportEncoder",
    "LoVTPretrainer",
    "ResNetImageEncoder",
    "bert_backbone_from_folder",
    "flatten_regions",
    "load_image_encoder_weights",
    "minilm_folder",
    "sentence_max_pool",
]
