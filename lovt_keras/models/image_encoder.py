"""ResNet image encoder exposing the stage outputs by name (LoVT spec section 1.1)."""

from __future__ import annotations

import keras
import keras_hub
from keras import ops

# torchvision-style depths -> keras-hub ResNetBackbone arguments.
RESNET_CONFIGS = {
    18: dict(block_type="basic_block", stackwise_num_blocks=[2, 2, 2, 2]),
    34: dict(block_type="basic_block", stackwise_num_blocks=[3, 4, 6, 3]),
    50: dict(block_type="bottleneck_block", stackwise_num_blocks=[3, 4, 6, 3]),
    101: dict(block_type="bottleneck_block", stackwise_num_blocks=[3, 4, 23, 3]),
    152: dict(block_type="bottleneck_block", stackwise_num_blocks=[3, 8, 36, 3]),
}

# Names of the feature maps, as in the official code (torchvision layer names):
# conv1 = stem after ReLU (stride 2), conv2..conv5 = layer1..layer4 (strides 4..32).
FEATURE_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")


def build_resnet_backbone(depth: int, image_size: int | None = None,
                          dtype=None) -> keras_hub.models.ResNetBackbone:
    """A randomly initialized keras-hub ``ResNetBackbone`` of a torchvision depth."""
    if depth not in RESNET_CONFIGS:
        raise ValueError(
            f"Unsupported ResNet depth {depth}; choose one of {sorted(RESNET_CONFIGS)}."
        )
    cfg = RESNET_CONFIGS[depth]
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_strides=[1, 2, 2, 2],
        image_shape=(image_size, image_size, 3),
        dtype=dtype,
        **cfg,
    )


@keras.saving.register_keras_serializable(package="lovt_keras")
class GrayscaleToRGB(keras.layers.Layer):
    """Repeats a single-channel image to three channels (no-op for 3 channels)."""

    def call(self, images):
        if images.shape[-1] == 1:
            return ops.repeat(images, 3, axis=-1)
        return images

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (3,)


@keras.saving.register_keras_serializable(package="lovt_keras")
class ResNetImageEncoder(keras.Model):
    """A ResNet whose outputs are its stage feature maps.

    A functional model: ``images (B, H, W, C) -> {"conv1": ..., ..., "conv5": ...}``
    where ``conv5`` has stride 32 (7x7 at 224 px, 2048 channels for ResNet-50,
    512 for ResNet-18). Grayscale input (C = 1) is repeated to three channels
    inside the model. The underlying keras-hub ``ResNetBackbone`` is available as
    ``self.backbone``.

    Args:
        depth: 18, 34, 50, 101 or 152.
        image_size: input height and width (None for any size).
        input_channels: 1 (grayscale) or 3.
    """

    def __init__(self, depth: int = 50, image_size: int | None = 224, input_channels: int = 1,
                 **kwargs):
        if input_channels not in (1, 3):
            raise ValueError(f"input_channels must be 1 or 3, got {input_channels}.")
        dtype = kwargs.pop("dtype", None)
        backbone = build_resnet_backbone(depth, image_size, dtype=dtype)
        stem = backbone.get_layer("conv1_relu").output
        pyramid = backbone.pyramid_outputs
        feature_model = keras.Model(
            backbone.inputs,
            {
                "conv1": stem,
                "conv2": pyramid["P2"],
                "conv3": pyramid["P3"],
                "conv4": pyramid["P4"],
                "conv5": pyramid["P5"],
            },
            name="resnet_features",
        )
        images = keras.Input((image_size, image_size, input_channels), name="images")
        rgb = GrayscaleToRGB(dtype=dtype, name="grayscale_to_rgb")(images)
        features = feature_model(rgb)
        super().__init__(inputs=images, outputs=features, dtype=dtype, **kwargs)
        # The backbone's layers are already part of this graph; tracking the
        # backbone object too would save every weight twice.
        object.__setattr__(self, "_backbone", backbone)
        self.depth = depth
        self.image_size = image_size
        self.input_channels = input_channels

    @property
    def backbone(self) -> keras_hub.models.ResNetBackbone:
        """The keras-hub ``ResNetBackbone`` whose layers this model uses."""
        return self._backbone

    @property
    def feature_dims(self) -> dict[str, int]:
        """Channels of each named feature map."""
        return {name: int(self.output[name].shape[-1]) for name in FEATURE_NAMES}

    def get_config(self):
        return {
            "depth": self.depth,
            "image_size": self.image_size,
            "input_channels": self.input_channels,
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.saving.deserialize_keras_object(config["dtype"])
        return cls(**config)


def flatten_regions(feature_map):
    """``(B, h, w, C)`` feature map -> ``(B, h*w, C)`` regions, row-major."""
    shape = ops.shape(feature_map)
    return ops.reshape(feature_map, (shape[0], shape[1] * shape[2], shape[3]))


def load_image_encoder_weights(encoder: ResNetImageEncoder, path: str) -> None:
    """Loads weights from a local file into ``encoder``.

    ``path`` may be a ``.weights.h5`` file saved from a ``ResNetImageEncoder`` or
    from a keras-hub ``ResNetBackbone`` of the same depth (e.g. ImageNet weights a
    user converted), or a ``.keras`` file holding either. Nothing is downloaded.
    """
    import os

    if not os.path.exists(path):
        raise FileNotFoundError(f"Image encoder weights not found: {path}")
    if path.endswith(".keras"):
        loaded = keras.saving.load_model(path, compile=False)
        source = loaded.backbone if isinstance(loaded, ResNetImageEncoder) else loaded
        encoder.backbone.set_weights(source.get_weights())
        return
    if not path.endswith(".weights.h5"):
        raise ValueError(
            f"Unsupported weights file {path}: expected a .weights.h5 or .keras file."
        )
    try:
        encoder.load_weights(path)
    except ValueError:
        encoder.backbone.load_weights(path)
