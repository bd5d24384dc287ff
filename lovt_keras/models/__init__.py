"""Encoders, the LoVT pretrainer and downstream models."""

from lovt_keras.models.detection_metrics_callback import DetectionMetricsCallback
from lovt_keras.models.detection_task import DetectionTask, predict_boxes
from lovt_keras.models.downstream_recipe import downstream_callbacks, downstream_optimizer
from lovt_keras.models.downstream_task import DownstreamTask
from lovt_keras.models.encoder_contract import (
    FEATURE_NAMES,
    FEATURE_STRIDES,
    check_image_encoder,
    describe_encoder,
    rebuild_image_encoder,
)
from lovt_keras.models.image_encoder import (
    ResNetImageEncoder,
    flatten_regions,
    load_image_encoder_weights,
    resnet_image_encoder,
)
from lovt_keras.models.image_only_pretrainers import (
    BYOLPretrainer,
    PixelPropagation,
    PixelProPretrainer,
    SimCLRPretrainer,
    TargetNetworkUpdate,
)
from lovt_keras.models.linear_segmentation import LinearSegmentationHead
from lovt_keras.models.lovt_pretrainer import LOSS_NAMES, VARIANTS, LoVTPretrainer
from lovt_keras.models.report_encoder import (
    BertReportEncoder,
    bert_backbone_from_folder,
    minilm_folder,
    sentence_max_pool,
)
from lovt_keras.models.segmentation_task import SegmentationTask
from lovt_keras.models.unet import UNetHead
from lovt_keras.models.warmup import WarmupFitResult, fit_with_warmup
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
    "FEATURE_NAMES",
    "FEATURE_STRIDES",
    "LOVT_ANCHORS",
    "DetectionMetricsCallback",
    "DetectionTask",
    "DownstreamTask",
    "LinearSegmentationHead",
    "SegmentationTask",
    "UNetHead",
    "WarmupFitResult",
    "YOLOv3Head",
    "check_image_encoder",
    "decode_predictions",
    "describe_encoder",
    "downstream_callbacks",
    "downstream_optimizer",
    "fit_with_warmup",
    "non_max_suppression",
    "predict_boxes",
    "rebuild_image_encoder",
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
    "resnet_image_encoder",
    "minilm_folder",
    "sentence_max_pool",
    "BYOLPretrainer",
    "PixelPropagation",
    "PixelProPretrainer",
    "SimCLRPretrainer",
    "TargetNetworkUpdate",
]
