"""U-Net decoder on the ResNet stages.

Follows the official ``ResUNetFeatureExtractor`` (``src/models/image/resunet.py``) +
``UNetSegmentationForResNet`` (``src/models/downstream/segmentation.py``), itself based
on kevinlu1211/pytorch-unet-resnet-50-encoder:

- bridge: two conv-BN-ReLU blocks (3x3, padding 1, conv with bias) at 2048 channels
  on conv5;
- five up-blocks, each ``ConvTranspose(kernel 2, stride 2)`` to the block width,
  concatenation ``[upsampled, skip]`` (upsampled first), then two conv-BN-ReLU blocks;
  widths 1024 / 512 / 256 / 128 / 64 with the skips conv4 / conv3 / conv2 / conv1
  (the stem after ReLU, stride 2) / the input image (replicated to 3 channels, as the
  official model sees it);
- a final 1x1 convolution (with bias) to one logit per class at full resolution.

The decoder is always trained; whether the encoder is trained is decided by the task
(:class:`lovt_keras.models.downstream.SegmentationTask`). BatchNorm uses PyTorch's
settings (momentum 0.1, i.e. Keras ``momentum=0.9``, epsilon 1e-5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from lovt_keras import keys
from lovt_keras.models.image_encoder import GrayscaleToRGB
from lovt_keras.models.linear_segmentation import torch_default_kernel_initializer

Tensor = Any

UNET_UP_FILTERS = (1024, 512, 256, 128, 64)
UNET_SKIP_LAYERS = ("conv4", "conv3", "conv2", "conv1", keys.IMAGES)


@keras.saving.register_keras_serializable(package="lovt_keras")
class UNetHead(keras.layers.Layer):
    """U-Net decoder: bridge on conv5, five up-blocks with skips, 1x1 classifier.

    Call: ``head(features)`` with ``features`` the encoder's dict ``conv1..conv5`` plus
    ``images`` ``(B, H, W, 1 or 3)`` (the input skip). With a 224 px input the maps are
    conv5 7x7 -> bridge 7x7 -> 14 -> 28 -> 56 -> 112 -> 224.

    Returns logits ``(B, H, W, num_classes)``.

    Args:
        num_classes: number of mask channels C.
        bridge_filters: width of the bridge (2048).
        up_filters: widths of the five up-blocks (1024, 512, 256, 128, 64).
        skip_layers: the feature maps concatenated in the five up-blocks, in order.
    """

    def __init__(
        self,
        num_classes: int = 1,
        bridge_filters: int = 2048,
        up_filters: Sequence[int] = UNET_UP_FILTERS,
        skip_layers: Sequence[str] = UNET_SKIP_LAYERS,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        up_filters = tuple(int(f) for f in up_filters)
        skip_layers = tuple(skip_layers)
        if len(up_filters) != len(skip_layers):
            raise ValueError(
                f"up_filters {up_filters} and skip_layers {skip_layers} must have the same "
                "length (one skip per up-block)."
            )
        self.num_classes = int(num_classes)
        self.bridge_filters = int(bridge_filters)
        self.up_filters = up_filters
        self.skip_layers = skip_layers
        self.to_rgb = GrayscaleToRGB(dtype=self.dtype_policy, name="input_to_rgb")
        self.bridge = [
            self._conv_block(self.bridge_filters, f"bridge_{i}") for i in range(2)
        ]
        self.upsamplers = []
        self.up_blocks = []
        for i, filters in enumerate(up_filters):
            self.upsamplers.append(
                keras.layers.Conv2DTranspose(
                    filters,
                    2,
                    strides=2,
                    kernel_initializer=torch_default_kernel_initializer(),
                    dtype=self.dtype_policy,
                    name=f"up{i + 1}_transpose",
                )
            )
            self.up_blocks.append(
                [self._conv_block(filters, f"up{i + 1}_{j}") for j in range(2)]
            )
        self.classifier = keras.layers.Conv2D(
            self.num_classes,
            1,
            kernel_initializer=torch_default_kernel_initializer(),
            dtype=self.dtype_policy,
            name="classifier",
        )

    def _conv_block(self, filters: int, name: str) -> list:
        return [
            keras.layers.Conv2D(
                filters,
                3,
                padding="same",
                kernel_initializer=torch_default_kernel_initializer(),
                dtype=self.dtype_policy,
                name=f"{name}_conv",
            ),
            keras.layers.BatchNormalization(
                momentum=0.9, epsilon=1e-5, dtype=self.dtype_policy, name=f"{name}_bn"
            ),
        ]

    def _check_features(self, features: dict) -> None:
        missing = [name for name in ("conv5", *self.skip_layers) if name not in features]
        if missing:
            raise KeyError(f"UNetHead needs feature maps {missing}; got {sorted(features)}.")

    def build(self, input_shape: dict) -> None:
        def build_block(block: list, shape: tuple) -> tuple:
            for layer in block:
                layer.build(shape)
                shape = layer.compute_output_shape(shape)
            return shape

        self._check_features(input_shape)
        shape = tuple(input_shape["conv5"])
        for block in self.bridge:
            shape = build_block(block, shape)
        for upsample, blocks, skip_name in zip(self.upsamplers, self.up_blocks, self.skip_layers):
            upsample.build(shape)
            shape = upsample.compute_output_shape(shape)
            skip = tuple(input_shape[skip_name])
            channels = 3 if skip_name == keys.IMAGES else skip[-1]
            shape = tuple(shape[:-1]) + (shape[-1] + channels,)
            for block in blocks:
                shape = build_block(block, shape)
        self.classifier.build(shape)
        self.built = True

    @staticmethod
    def _apply_block(block: list, x: Tensor, training) -> Tensor:
        conv, norm = block
        return ops.relu(norm(conv(x), training=training))

    def call(self, features: dict, training=None) -> Tensor:
        self._check_features(features)
        x = features["conv5"]
        for block in self.bridge:
            x = self._apply_block(block, x, training)
        for upsample, blocks, skip_name in zip(self.upsamplers, self.up_blocks, self.skip_layers):
            skip = features[skip_name]
            if skip_name == keys.IMAGES:
                skip = self.to_rgb(skip)
            x = upsample(x)
            x = ops.concatenate([x, ops.cast(skip, x.dtype)], axis=-1)
            for block in blocks:
                x = self._apply_block(block, x, training)
        return self.classifier(x)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            bridge_filters=self.bridge_filters,
            up_filters=self.up_filters,
            skip_layers=self.skip_layers,
        )
        return config
