"""Encoders, the LoVT pretrainer and downstream models."""

from lovt_keras.models.downstream import (
    DetectionMetricsCallback,
    DetectionTask,
    SegmentationTask,
    downstream_callbacks,
    downstream_optimizer,
    fit_with_warmup,
    predict_boxes,
)
from lovt_keras.models.image_encoder import (
    ResNetImageEncoder,
    flatten_regions,
    load_image_encoder_weights,
)
from lovt_keras.models.linear_segmentation import LinearSegmentationHead
from lovt_keras.models.lovt_pretrainer import LOSS_NAMES, VARIANTS, LoVTPretrainer
from lovt_keras.models.report_encoder import (
    BertReportEncoder,
    bert_backbone_from_folder,
    minilm_folder,
    sentence_max_pool,
)
from lovt_keras.models.unet import UNetHead
from lovt_keras.models.yolov3 import (
    LOVT_ANCHORS,
    YOLOv3Head,
    decode_predictions,
    non_max_suppression,
    yolo_loss,
    yolo_loss_components,
    yolo_targets,
)

__all__ = [
    "LOVT_ANCHORS",
    "DetectionMetricsCallback",
    "DetectionTask",
    "LinearSegmentationHead",
    "SegmentationTask",
    "UNetHead",
    "YOLOv3Head",
    "decode_predictions",
    "downstream_callbacks",
    "downstream_optimizer",
    "fit_with_warmup",
    "non_max_suppression",
    "predict_boxes",
    "yolo_loss",
    "yolo_loss_components",
    "yolo_targets",
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
