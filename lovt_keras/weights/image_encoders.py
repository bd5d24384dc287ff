"""An image encoder from any of the forms a user holds, and back.

In: a saved encoder (``.keras``), a pretraining run directory (its
``image_encoder.keras``), Keras weights (``.weights.h5``, given a depth), a keras-hub
ResNet preset folder, a torchvision ResNet state dict (``.pt``, ``.pth``,
``.safetensors``) or an official LoVT checkpoint (``.ckpt``) -- see
:func:`load_image_encoder`. Out: ``.keras``, ``.weights.h5`` or a torchvision
``.safetensors`` state dict -- see :func:`save_image_encoder`.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from lovt_keras.files import writing_atomically
from lovt_keras.models.encoder_contract import rebuild_image_encoder
from lovt_keras.models.image_encoder import ResNetImageEncoder, resnet_image_encoder
from lovt_keras.weights.state_dict_files import is_state_dict_file
from lovt_keras.weights.torchvision_resnet import (
    save_torchvision_safetensors,
    torchvision_resnet_encoder,
)

# pretraining run directories hold their image encoder under this name
# (lovt_keras.training.pretrain.IMAGE_ENCODER_FILE; models may not import training).
RUN_IMAGE_ENCODER_FILE = "image_encoder.keras"


def _is_keras_hub_preset(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.weights.h5").is_file()


def load_image_encoder(path: str | os.PathLike, image_size: int | None = 224,
                       depth: int | None = None, prefix: str | None = None,
                       input_channels: int = 1) -> keras.Model:
    """The image encoder stored at ``path``, for inputs of ``image_size``.

    Args:
        path: ``.keras`` (any encoder meeting the encoder contract), a pretraining run
            directory, ``.weights.h5`` (needs ``depth``), a keras-hub ``ResNetBackbone``
            preset folder, or a torchvision ResNet state dict / official LoVT checkpoint
            (``.pt``, ``.pth``, ``.bin``, ``.ckpt``, ``.safetensors``; depth and width from
            the file).
        image_size: input side (None: any).
        depth: ResNet depth, required for ``.weights.h5``; checked for state dicts.
        prefix: key prefix of the ResNet in a state dict (None: found automatically).
        input_channels: 1 (grayscale) or 3, for the encoders built here.
    """
    path = Path(path)
    if path.is_dir():
        if (path / RUN_IMAGE_ENCODER_FILE).is_file():
            path = path / RUN_IMAGE_ENCODER_FILE
        elif _is_keras_hub_preset(path):
            import keras_hub

            backbone = keras_hub.models.ResNetBackbone.from_preset(str(path))
            found = {cfg: d for d, cfg in _hub_configs().items()}.get(
                (backbone.block_type, tuple(backbone.stackwise_num_blocks)))
            if found is None:
                raise ValueError(f"{path}: a keras-hub ResNet that is not a torchvision depth")
            encoder = ResNetImageEncoder(depth=found, image_size=image_size,
                                         input_channels=input_channels)
            encoder.backbone.set_weights(backbone.get_weights())
            return encoder
        else:
            raise FileNotFoundError(
                f"{path}: a folder without {RUN_IMAGE_ENCODER_FILE} (a pretraining run) or "
                "config.json and model.weights.h5 (a keras-hub preset)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image encoder file")
    if is_state_dict_file(path):
        return torchvision_resnet_encoder(path, image_size, input_channels, prefix, depth)
    if path.name.endswith(".keras"):
        loaded = keras.saving.load_model(str(path), compile=False)
        encoder = rebuild_image_encoder(type(loaded), loaded.get_config(), image_size)
        encoder.set_weights(loaded.get_weights())
        return encoder
    if path.name.endswith(".weights.h5"):
        if depth is None:
            raise ValueError(f"{path}: a Keras weights file holds no architecture; give depth")
        encoder = resnet_image_encoder(int(depth), image_size, input_channels)
        encoder.load_weights(str(path))
        return encoder
    raise ValueError(f"{path}: unknown image encoder format (expected .keras, .weights.h5, "
                     ".pt, .pth, .bin, .ckpt, .safetensors or a folder)")


def _hub_configs() -> dict[int, tuple[str, tuple[int, ...]]]:
    from lovt_keras.models.image_encoder import RESNET_CONFIGS

    return {d: (c["block_type"], tuple(c["stackwise_num_blocks"]))
            for d, c in RESNET_CONFIGS.items()}


def save_image_encoder(encoder: keras.Model, path: str | os.PathLike,
                       num_classes: int | None = None, conv1_channels: int = 3) -> Path:
    """Writes ``encoder`` to ``path`` by suffix, atomically: ``.keras`` (architecture and
    weights), ``.weights.h5`` (Keras weights) or ``.safetensors`` (a torchvision ResNet
    state dict, for a ``ResNetImageEncoder``; ``num_classes`` and ``conv1_channels`` as in
    :func:`~lovt_keras.weights.torchvision_resnet.encoder_to_torchvision`)."""
    path = Path(path)
    if path.name.endswith(".safetensors"):
        if not isinstance(encoder, ResNetImageEncoder):
            raise TypeError(f"{path}: only a ResNetImageEncoder has a torchvision layout, "
                            f"got {type(encoder).__name__}")
        return save_torchvision_safetensors(encoder, path, num_classes, conv1_channels)
    if path.name.endswith(".weights.h5"):
        # Keras wants the ".weights.h5" ending, which writing_atomically's name lacks.
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name[:-len('.weights.h5')]}-{os.getpid()}.tmp.weights.h5")
        try:
            encoder.save_weights(str(tmp))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path
    if path.name.endswith(".keras"):
        with writing_atomically(path) as tmp:
            encoder.save(str(tmp))
        return path
    raise ValueError(f"{path}: write .keras, .weights.h5 or .safetensors")
