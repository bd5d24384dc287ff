"""Linear segmentation head on frozen ResNet features.

The official ``LinearSegmentation`` / ``SegmentationHead(nonlinear=False,
dropout_prob=0, bn_before=False)`` (``src/models/downstream/segmentation.py``) applies one
1x1 convolution (a per-region linear classifier, ``Conv1d(d, C, 1)`` with bias) to the
conv5 feature map and upsamples the ``(7, 7, C)`` logits bilinearly to the 224x224 mask
size (``F.interpolate(..., mode='bilinear', align_corners=False)``;
``keras.ops.image.resize`` with half-pixel centres and no antialiasing is the same
operation).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from lovt_keras import keys

Tensor = Any


def torch_default_kernel_initializer() -> keras.initializers.Initializer:
    """PyTorch's default ``Conv2d``/``ConvTranspose2d`` weight initializer.

    ``kaiming_uniform_(a=sqrt(5))`` = uniform in ``±1/sqrt(fan_in)``; the official heads
    keep PyTorch's defaults. (PyTorch also draws biases from that range; here biases
    start at zero, a negligible difference.)
    """
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
    )


def output_size_of(features: dict, output_size: tuple[int, int] | None) -> tuple[int, int]:
    """``(H, W)`` a head must produce: ``output_size`` or the static size of the images."""
    if output_size is not None:
        return int(output_size[0]), int(output_size[1])
    images = features.get(keys.IMAGES)
    if images is None or images.shape[1] is None or images.shape[2] is None:
        raise ValueError(
            "The segmentation head needs the mask size: pass output_size=(H, W) or give "
            f"the input images a static spatial shape (features[{keys.IMAGES!r}] is "
            f"{None if images is None else tuple(images.shape)})."
        )
    return int(images.shape[1]), int(images.shape[2])


@keras.saving.register_keras_serializable(package="lovt_keras")
class LinearSegmentationHead(keras.layers.Layer):
    """1x1 convolution on one feature map, bilinearly upsampled to the image size.

    Call: ``head(features)`` with ``features`` the encoder's dict of feature maps (at
    least ``feature_layer``, e.g. ``conv5`` ``(B, h, w, d)``) plus ``images``
    ``(B, H, W, c)`` when ``output_size`` is None (only its static shape is used).

    Returns logits ``(B, H, W, num_classes)`` (float, no sigmoid).

    Args:
        num_classes: number of mask channels C (one logit per class).
        feature_layer: the feature map to classify (``"conv5"`` in LoVT).
        output_size: ``(H, W)`` of the logits; None = the input images' size.
    """

    def __init__(
        self,
        num_classes: int = 1,
        feature_layer: str = "conv5",
        output_size: tuple[int, int] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        self.num_classes = int(num_classes)
        self.feature_layer = feature_layer
        self.output_size = None if output_size is None else tuple(int(s) for s in output_size)
        self.classifier = keras.layers.Conv2D(
            self.num_classes,
            1,
            kernel_initializer=torch_default_kernel_initializer(),
            dtype=self.dtype_policy,
            name="classifier",
        )

    def build(self, input_shape: dict) -> None:
        if isinstance(input_shape, dict) and self.feature_layer in input_shape:
            self.classifier.build(input_shape[self.feature_layer])
        self.built = True

    def call(self, features: dict, training=None) -> Tensor:
        if self.feature_layer not in features:
            raise KeyError(
                f"LinearSegmentationHead needs feature map {self.feature_layer!r}; got "
                f"{sorted(features)}."
            )
        logits = self.classifier(features[self.feature_layer])  # (B, h, w, C)
        return ops.image.resize(
            logits,
            output_size_of(features, self.output_size),
            interpolation="bilinear",
            antialias=False,
            data_format="channels_last",
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            feature_layer=self.feature_layer,
            output_size=self.output_size,
        )
        return config
