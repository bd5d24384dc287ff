"""ResNet image encoder exposing the stage outputs by name.

The reference implementation of the image encoder contract
(:mod:`lovt_keras.models.encoder_contract`). Official code:
``src/models/image/scan_encoder.py`` and ``src/models/image/resnet.py``, config
``configs/scan_encoder/resnet50attention_imagenet.yaml``.
"""

from __future__ import annotations

import keras
import keras_hub
from keras import ops

from lovt_keras.models.encoder_contract import FEATURE_NAMES

# torchvision-style depths -> keras-hub ResNetBackbone arguments.
RESNET_CONFIGS = {
    18: dict(block_type="basic_block", stackwise_num_blocks=[2, 2, 2, 2]),
    34: dict(block_type="basic_block", stackwise_num_blocks=[3, 4, 6, 3]),
    50: dict(block_type="bottleneck_block", stackwise_num_blocks=[3, 4, 6, 3]),
    101: dict(block_type="bottleneck_block", stackwise_num_blocks=[3, 4, 23, 3]),
    152: dict(block_type="bottleneck_block", stackwise_num_blocks=[3, 8, 36, 3]),
}

# keras-hub's ResNetBackbone only accepts the standard width (64 first-stage filters);
# narrower ResNets (the CPU quickstart) are built by ``build_resnet_features``.
STANDARD_WIDTH = 64


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


def _conv_bn(x, filters: int, kernel_size: int, stride: int, name: str, dtype, relu: bool = True):
    """Conv (no bias) -> BatchNorm [-> ReLU], padded like torchvision (``k // 2`` each side)."""
    layers = keras.layers
    if kernel_size > 1:
        x = layers.ZeroPadding2D(kernel_size // 2, dtype=dtype, name=f"{name}_pad")(x)
    # Default (Glorot uniform) initializer, as keras-hub's ResNetBackbone.
    x = layers.Conv2D(filters, kernel_size, strides=stride, use_bias=False, dtype=dtype,
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, dtype=dtype, name=f"{name}_bn")(x)
    if relu:
        x = layers.Activation("relu", dtype=dtype, name=f"{name}_relu")(x)
    return x


def _residual_block(x, filters: int, stride: int, bottleneck: bool, shortcut: bool, name: str,
                    dtype):
    """torchvision ``BasicBlock`` / ``Bottleneck`` (stride on the 3x3 conv, "ResNet v1.5")."""
    out_filters = 4 * filters if bottleneck else filters
    residual = (_conv_bn(x, out_filters, 1, stride, f"{name}_0", dtype, relu=False)
                if shortcut else x)
    if bottleneck:
        y = _conv_bn(x, filters, 1, 1, f"{name}_1", dtype)
        y = _conv_bn(y, filters, 3, stride, f"{name}_2", dtype)
        y = _conv_bn(y, out_filters, 1, 1, f"{name}_3", dtype, relu=False)
    else:
        y = _conv_bn(x, filters, 3, stride, f"{name}_1", dtype)
        y = _conv_bn(y, filters, 3, 1, f"{name}_2", dtype, relu=False)
    y = keras.layers.Add(dtype=dtype, name=f"{name}_add")([residual, y])
    return keras.layers.Activation("relu", dtype=dtype, name=f"{name}_out")(y)


def build_resnet_features(depth: int, width: int, image_size: int | None = None,
                          dtype=None) -> keras.Model:
    """A torchvision-layout ResNet of any width, returning its stage outputs by name.

    The same architecture as ``build_resnet_backbone`` (7x7 stem, max pool, four stages
    of basic or bottleneck blocks with strides 1, 2, 2, 2) with ``width`` first-stage
    filters instead of 64 (stage ``i`` has ``width * 2**i``, times 4 after a bottleneck).
    keras-hub's ``ResNetBackbone`` refuses any width but 64, so narrower networks are
    built here. Input: ``(B, H, W, 3)``; output: ``{"conv1": ..., ..., "conv5": ...}``.
    """
    if depth not in RESNET_CONFIGS:
        raise ValueError(
            f"Unsupported ResNet depth {depth}; choose one of {sorted(RESNET_CONFIGS)}."
        )
    if width < 1:
        raise ValueError(f"width must be a positive number of filters, got {width}.")
    cfg = RESNET_CONFIGS[depth]
    bottleneck = cfg["block_type"] == "bottleneck_block"
    images = keras.Input((image_size, image_size, 3), name="rgb")
    x = _conv_bn(images, width, 7, 2, "conv1", dtype)
    outputs = {"conv1": x}
    x = keras.layers.ZeroPadding2D(1, dtype=dtype, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, dtype=dtype, name="pool1_pool")(x)
    for stage, blocks in enumerate(cfg["stackwise_num_blocks"]):
        filters = width * 2**stage
        for block in range(blocks):
            first = block == 0
            stride = 2 if first and stage > 0 else 1
            # torchvision adds a projection shortcut when the shape changes.
            shortcut = first and (stage > 0 or bottleneck)
            x = _residual_block(x, filters, stride, bottleneck, shortcut,
                                f"stack{stage}_block{block}", dtype)
        outputs[f"conv{stage + 2}"] = x
    return keras.Model(images, outputs, name="resnet_features")


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
    meeting the image encoder contract (:mod:`lovt_keras.models.encoder_contract`),
    where ``conv5`` has stride 32 (7x7 at 224 px, 2048 channels for ResNet-50,
    512 for ResNet-18). Grayscale input (C = 1) is repeated to three channels
    inside the model. The underlying keras-hub ``ResNetBackbone`` is available as
    ``self.backbone``.

    Args:
        depth: 18, 34, 50, 101 or 152.
        image_size: input height and width (None for any size).
        input_channels: 1 (grayscale) or 3.
        width: first-stage filters; 64 (the standard ResNet, a keras-hub
            ``ResNetBackbone`` that ImageNet weights fit) or a narrower network built by
            ``build_resnet_features`` (e.g. 16 for the CPU quickstart: about 1/16 of
            the compute; then ``backbone`` is that plain functional model).
    """

    def __init__(self, depth: int = 50, image_size: int | None = 224, input_channels: int = 1,
                 width: int = STANDARD_WIDTH, **kwargs):
        if input_channels not in (1, 3):
            raise ValueError(f"input_channels must be 1 or 3, got {input_channels}.")
        dtype = kwargs.pop("dtype", None)
        width = int(width)
        if width == STANDARD_WIDTH:
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
        else:
            feature_model = build_resnet_features(depth, width, image_size, dtype=dtype)
            backbone = feature_model
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
        self.width = width

    @property
    def backbone(self) -> keras.Model:
        """The keras-hub ``ResNetBackbone`` whose layers this model uses (width 64), or
        the functional ResNet of ``build_resnet_features`` (other widths)."""
        return self._backbone

    @property
    def description(self) -> str:
        """``"ResNet-<depth>"``, plus ``" (width <w>)"`` for a narrow network."""
        suffix = "" if self.width == STANDARD_WIDTH else f" (width {self.width})"
        return f"ResNet-{self.depth}{suffix}"

    @property
    def feature_dims(self) -> dict[str, int]:
        """Channels of each named feature map."""
        return {name: int(self.output[name].shape[-1]) for name in FEATURE_NAMES}

    def get_config(self):
        return {
            "depth": self.depth,
            "image_size": self.image_size,
            "input_channels": self.input_channels,
            "width": self.width,
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


def load_image_encoder_weights(encoder: ResNetImageEncoder, path: str,
                               prefix: str | None = None) -> None:
    """Loads weights from a local file into ``encoder``.

    ``path`` may be a ``.weights.h5`` file saved from a ``ResNetImageEncoder`` or
    from a keras-hub ``ResNetBackbone`` of the same depth (e.g. ImageNet weights a
    user converted), a ``.keras`` file holding either, or a torchvision ResNet state
    dict / official LoVT checkpoint (``.pt``, ``.pth``, ``.bin``, ``.ckpt``,
    ``.safetensors``; read without running code, the ResNet found under ``prefix`` or
    automatically, see :mod:`lovt_keras.weights.torchvision_resnet`). Nothing is
    downloaded.
    """
    import os

    if not os.path.exists(path):
        raise FileNotFoundError(f"Image encoder weights not found: {path}")
    from lovt_keras.weights.state_dict_files import is_state_dict_file

    if is_state_dict_file(path):
        from lovt_keras.weights.torchvision_resnet import load_torchvision_weights

        load_torchvision_weights(encoder, path, prefix=prefix)
        return
    if path.endswith(".keras"):
        loaded = keras.saving.load_model(path, compile=False)
        source = loaded.backbone if isinstance(loaded, ResNetImageEncoder) else loaded
        encoder.backbone.set_weights(source.get_weights())
        return
    if not path.endswith(".weights.h5"):
        raise ValueError(
            f"Unsupported weights file {path}: expected a .weights.h5 or .keras file, or a "
            "torchvision state dict (.pt, .pth, .ckpt, .safetensors)."
        )
    try:
        encoder.load_weights(path)
    except ValueError:
        encoder.backbone.load_weights(path)


def resnet_image_encoder(depth: int = 50, image_size: int | None = 224,
                         input_channels: int = 1, weights: str | None = None,
                         width: int = STANDARD_WIDTH,
                         weights_prefix: str | None = None) -> ResNetImageEncoder:
    """A ``ResNetImageEncoder``, optionally initialized from a local weights file (see
    :func:`load_image_encoder_weights`; e.g. converted ImageNet weights or a torchvision
    state dict, nothing is downloaded; ``weights_prefix`` names the ResNet's key prefix in
    a state dict when it is not found automatically); ``width`` < 64 builds a narrower
    ResNet (first-stage filters). The gin name ``lovt.resnet_image_encoder`` and the
    evaluation's weights-file encoders use it.
    """
    encoder = ResNetImageEncoder(depth=depth, image_size=image_size,
                                 input_channels=input_channels, width=width)
    if weights:
        load_image_encoder_weights(encoder, str(weights), prefix=weights_prefix)
    return encoder

