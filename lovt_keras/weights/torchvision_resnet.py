"""torchvision ResNet state dicts <-> :class:`~lovt_keras.models.ResNetImageEncoder`.

The layout is torchvision's ``ResNet`` (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer2.0.downsample.0`` / ``.1``, ``fc``), the form in which the official LoVT code
stores image-only baselines (``checkpoints/backbone_weights.pt``, loaded by
``load_scan_feature_extractor`` in ``src/models/image/scan_encoder.py`` of
philip-mueller/lovt, which also drops ``fc.*``) and in which most chest X-ray encoders
are published. Our encoder has the same architecture and padding (see
:func:`~lovt_keras.models.image_encoder.build_resnet_features`), and its layers are
named like keras-hub's ``ResNetBackbone`` (``conv1_conv``, ``stack0_block0_1_conv``,
...), so the map is one name table (:func:`torchvision_layout`) plus two transposes:
a torch conv weight ``(O, I, kh, kw)`` is a Keras kernel ``(kh, kw, I, O)``, and a
BatchNorm's ``weight, bias, running_mean, running_var`` are ``gamma, beta,
moving_mean, moving_variance`` (``num_batches_tracked`` is not used by either in
inference; it is ignored on import and written as 0 on export).

**Grayscale.** The encoder takes 1-channel images and repeats them to three channels
in the model (``GrayscaleToRGB``), so it keeps torchvision's 3-channel ``conv1``
unchanged: a grayscale image ``x`` gives the features that the PyTorch ResNet gives
for ``x.repeat(1, 3, 1, 1)``, i.e. those of a 1-channel ResNet whose ``conv1.weight``
is summed over its input channels (the usual grayscale adaptation). A state dict
with a 1-channel ``conv1`` (a ResNet trained on grayscale) is imported as that
weight divided by 3 on each of the three channels, which is exact for our repeated
input; :func:`encoder_to_torchvision` writes ``conv1_channels=1`` (summed) on request.

**Prefixes.** A checkpoint of a larger model holds the ResNet under a prefix
(``backbone.``, ``model.``, ``module.``, or in a Lightning checkpoint of the official
LoVT code ``model_a.encoder.feature_extractor.backbone_layers.``: the pretraining
model ``BiModalModelRepresentationLearner`` holds the image encoder as
``model_a.encoder`` (``src/models/pretraining/bimodal_alignment_model.py``), a
``ScanEncoderModel`` whose ``feature_extractor`` (``src/models/image/scan_encoder.py``)
is a ``ResNetFeatureExtractor`` keeping torchvision's children in the ``ModuleDict``
``backbone_layers`` (``src/models/image/resnet.py``)). The prefix is found
automatically when exactly one ResNet is in the file, or named with ``prefix``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lovt_keras.models.image_encoder import RESNET_CONFIGS, ResNetImageEncoder
from lovt_keras.weights.state_dict_files import StateDictError, read_state_dict, write_safetensors

BN_KEYS = ("weight", "bias", "running_mean", "running_var")
# The official LoVT pretraining model's image encoder, in its Lightning checkpoints.
LOVT_IMAGE_PREFIX = "model_a.encoder.feature_extractor.backbone_layers."
_MARKERS = ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight")
_SHOWN = 12  # keys listed in an error message


def _some(keys, n: int = _SHOWN) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def torchvision_layout(depth: int) -> list[tuple[str, str, str]]:
    """``(keras layer name, torchvision module name, "conv" | "bn")`` of every weight of a
    ResNet of ``depth`` (18, 34, 50, 101, 152); ``fc`` is not included."""
    if depth not in RESNET_CONFIGS:
        raise ValueError(f"Unsupported ResNet depth {depth}; choose one of {sorted(RESNET_CONFIGS)}.")
    cfg = RESNET_CONFIGS[depth]
    bottleneck = cfg["block_type"] == "bottleneck_block"
    layout = [("conv1_conv", "conv1", "conv"), ("conv1_bn", "bn1", "bn")]
    for stage, blocks in enumerate(cfg["stackwise_num_blocks"]):
        for block in range(blocks):
            ours, theirs = f"stack{stage}_block{block}", f"layer{stage + 1}.{block}"
            if block == 0 and (stage > 0 or bottleneck):
                layout += [(f"{ours}_0_conv", f"{theirs}.downsample.0", "conv"),
                           (f"{ours}_0_bn", f"{theirs}.downsample.1", "bn")]
            for i in range(1, 4 if bottleneck else 3):
                layout += [(f"{ours}_{i}_conv", f"{theirs}.conv{i}", "conv"),
                           (f"{ours}_{i}_bn", f"{theirs}.bn{i}", "bn")]
    return layout


def _expected_keys(depth: int) -> set[str]:
    keys = set()
    for _, module, kind in torchvision_layout(depth):
        keys |= {f"{module}.weight"} if kind == "conv" else {f"{module}.{k}" for k in BN_KEYS}
    return keys


def resnet_prefixes(state_dict: Mapping[str, object]) -> list[str]:
    """Every prefix under which ``state_dict`` holds a torchvision ResNet ('' for none)."""
    found = []
    for key in state_dict:
        if key.endswith(_MARKERS[0]):
            prefix = key[: -len(_MARKERS[0])]
            if all(prefix + marker in state_dict for marker in _MARKERS[1:]):
                found.append(prefix)
    return sorted(found)


def select_resnet(state_dict: Mapping[str, np.ndarray], prefix: str | None = None,
                  source: str = "state dict") -> dict[str, np.ndarray]:
    """The torchvision ResNet entries of ``state_dict`` with ``prefix`` removed (found
    automatically when None), without ``fc.*`` and ``*.num_batches_tracked``."""
    if prefix is None:
        prefixes = resnet_prefixes(state_dict)
        if not prefixes:
            raise StateDictError(
                f"{source}: no torchvision ResNet found (expected keys {', '.join(_MARKERS)}, "
                f"possibly under a prefix such as 'backbone.'); its keys: {_some(state_dict)}")
        if len(prefixes) > 1:
            raise StateDictError(f"{source}: holds {len(prefixes)} ResNets, under the prefixes "
                                 f"{prefixes}; name one with prefix")
        prefix = prefixes[0]
    elif prefix + _MARKERS[0] not in state_dict:
        raise StateDictError(
            f"{source}: no key {prefix + _MARKERS[0]!r} (prefix {prefix!r}); ResNets found "
            f"under the prefixes {resnet_prefixes(state_dict)}; its keys: {_some(state_dict)}")
    return {key[len(prefix):]: value for key, value in state_dict.items()
            if key.startswith(prefix) and not key[len(prefix):].startswith("fc.")
            and not key.endswith("num_batches_tracked")}


def infer_depth(resnet: Mapping[str, object], source: str = "state dict") -> int:
    """The depth of a torchvision ResNet state dict (already without its prefix), from
    its blocks per stage and block type."""
    blocks = [len({m.group(1) for key in resnet if (m := re.match(rf"layer{s}\.(\d+)\.", key))})
              for s in range(1, 5)]
    block_type = "bottleneck_block" if "layer1.0.conv3.weight" in resnet else "basic_block"
    for depth, cfg in RESNET_CONFIGS.items():
        if cfg["block_type"] == block_type and list(cfg["stackwise_num_blocks"]) == blocks:
            return depth
    raise StateDictError(
        f"{source}: a ResNet with {blocks} {block_type}s per stage, not one of the "
        f"torchvision depths {sorted(RESNET_CONFIGS)}")


def _converted(resnet: Mapping[str, np.ndarray], encoder: ResNetImageEncoder,
               source: str) -> list[tuple[object, list[np.ndarray]]]:
    """``(keras layer, new weights)`` for every layer, after every check (no layer is
    touched before all keys and shapes are known to fit)."""
    depth = infer_depth(resnet, source)
    if depth != encoder.depth:
        raise StateDictError(f"{source}: holds a ResNet-{depth}, the encoder is a "
                             f"ResNet-{encoder.depth}")
    expected = _expected_keys(depth)
    missing, unexpected = expected - set(resnet), set(resnet) - expected
    if missing or unexpected:
        raise StateDictError(
            f"{source}: does not fit a torchvision ResNet-{depth}: "
            + "; ".join(part for part in (
                f"missing keys: {_some(missing)}" if missing else "",
                f"unexpected keys: {_some(unexpected)}" if unexpected else "") if part))
    backbone = encoder.backbone
    updates, wrong = [], []
    for layer_name, module, kind in torchvision_layout(depth):
        layer = backbone.get_layer(layer_name)
        targets = [tuple(w.shape) for w in layer.weights]
        if kind == "conv":
            weight = np.asarray(resnet[f"{module}.weight"], np.float32)
            kernel = np.transpose(weight, (2, 3, 1, 0)) if weight.ndim == 4 else weight
            if module == "conv1" and kernel.shape[2:3] == (1,) and targets[0][2] == 3:
                kernel = np.repeat(kernel / 3.0, 3, axis=2)  # grayscale conv1, see module doc
            height, width_, channels, filters = targets[0]
            if kernel.shape != targets[0]:
                wrong.append(f"{module}.weight {tuple(weight.shape)} (needs "
                             f"{(filters, channels, height, width_)})")
            values = [kernel]
        else:
            values = [np.asarray(resnet[f"{module}.{k}"], np.float32) for k in BN_KEYS]
            wrong += [f"{module}.{k} {tuple(v.shape)} (needs {target})"
                      for k, v, target in zip(BN_KEYS, values, targets, strict=True)
                      if tuple(v.shape) != target]
        updates.append((layer, values))
    if wrong:
        raise StateDictError(f"{source}: shapes do not fit the encoder "
                             f"({encoder.description}): {_some(wrong)}")
    return updates


def set_torchvision_weights(encoder: ResNetImageEncoder, state_dict: Mapping[str, np.ndarray],
                            prefix: str | None = None, source: str = "state dict") -> None:
    """Copies a torchvision ResNet state dict into ``encoder`` (all or nothing).

    Args:
        encoder: a ``ResNetImageEncoder`` of the same depth (and width).
        state_dict: name -> array (e.g. from :func:`read_state_dict`); ``fc.*`` and
            ``num_batches_tracked`` are ignored.
        prefix: the key prefix of the ResNet (None: found automatically).
        source: how errors name the state dict (the file).

    Raises:
        StateDictError: no or several ResNets, another depth, missing or unexpected
            keys, wrong shapes; the message names ``source`` and the keys.
    """
    resnet = select_resnet(state_dict, prefix, source)
    for layer, values in _converted(resnet, encoder, source):
        layer.set_weights(values)


def load_torchvision_weights(encoder: ResNetImageEncoder, path: str | os.PathLike,
                             prefix: str | None = None) -> None:
    """:func:`set_torchvision_weights` from a ``.pt`` / ``.pth`` / ``.ckpt`` /
    ``.safetensors`` file (read without running code, see :func:`read_state_dict`)."""
    set_torchvision_weights(encoder, read_state_dict(path), prefix, source=str(path))


def torchvision_depth(path: str | os.PathLike, prefix: str | None = None) -> int:
    """The ResNet depth of a torchvision-layout weights file."""
    return infer_depth(select_resnet(read_state_dict(path), prefix, str(path)), str(path))


def torchvision_resnet_encoder(path: str | os.PathLike, image_size: int | None = 224,
                               input_channels: int = 1, prefix: str | None = None,
                               depth: int | None = None) -> ResNetImageEncoder:
    """A ``ResNetImageEncoder`` of the file's depth with the file's weights.

    Args:
        path: a torchvision ResNet state dict (``.pt``, ``.pth``, ``.safetensors``) or a
            checkpoint holding one under a prefix (an official LoVT ``.ckpt``).
        image_size: input side of the encoder (the weights do not depend on it).
        input_channels: 1 (grayscale, repeated to RGB in the model) or 3.
        prefix: the ResNet's key prefix (None: found automatically).
        depth: the expected depth (None: read from the file).
    """
    source = str(path)
    resnet = select_resnet(read_state_dict(path), prefix, source)
    found = infer_depth(resnet, source)
    if depth is not None and int(depth) != found:
        raise StateDictError(f"{source}: holds a ResNet-{found}, not a ResNet-{depth}")
    width = int(resnet["conv1.weight"].shape[0])
    encoder = ResNetImageEncoder(depth=found, image_size=image_size,
                                 input_channels=input_channels, width=width)
    for layer, values in _converted(resnet, encoder, source):
        layer.set_weights(values)
    return encoder


def encoder_to_torchvision(encoder: ResNetImageEncoder, num_classes: int | None = None,
                           conv1_channels: int = 3) -> dict[str, np.ndarray]:
    """The encoder's weights as a torchvision ``ResNet`` state dict (float32 arrays).

    Args:
        encoder: a ``ResNetImageEncoder``.
        num_classes: None: no ``fc`` (load with ``model.fc = torch.nn.Identity()`` before
            ``load_state_dict(..., strict=True)``, or ``strict=False``); a number: a zero
            ``fc.weight`` ``(num_classes, C)`` and ``fc.bias``, so that a plain
            ``torchvision.models.resnet50()`` (``num_classes=1000``) loads it with
            ``strict=True`` (LoVT trains no classifier: replace or train that layer).
        conv1_channels: 3 (torchvision's RGB stem; feed grayscale images repeated to
            three channels) or 1 (``conv1.weight`` summed over its input channels, for a
            ResNet built with a 1-channel ``conv1``).
    """
    if conv1_channels not in (1, 3):
        raise ValueError(f"conv1_channels must be 1 or 3, got {conv1_channels}")
    backbone = encoder.backbone
    out: dict[str, np.ndarray] = {}
    for layer_name, module, kind in torchvision_layout(encoder.depth):
        values = [np.asarray(w, np.float32) for w in backbone.get_layer(layer_name).get_weights()]
        if kind == "conv":
            weight = np.transpose(values[0], (3, 2, 0, 1))
            if module == "conv1" and conv1_channels == 1:
                weight = weight.sum(axis=1, keepdims=True)
            out[f"{module}.weight"] = np.ascontiguousarray(weight)
        else:
            out.update({f"{module}.{k}": v for k, v in zip(BN_KEYS, values, strict=True)})
            out[f"{module}.num_batches_tracked"] = np.zeros((), np.int64)
    if num_classes is not None:
        channels = out[torchvision_layout(encoder.depth)[-1][1] + ".weight"].shape[0]
        out["fc.weight"] = np.zeros((int(num_classes), channels), np.float32)
        out["fc.bias"] = np.zeros((int(num_classes),), np.float32)
    return out


def save_torchvision_safetensors(encoder: ResNetImageEncoder, path: str | os.PathLike,
                                 num_classes: int | None = None,
                                 conv1_channels: int = 3) -> Path:
    """Writes :func:`encoder_to_torchvision` to a ``.safetensors`` file (atomically).
    PyTorch: ``model.load_state_dict(safetensors.torch.load_file(path), strict=True)``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: the torchvision export is written as .safetensors")
    metadata = {"format": "pt", "architecture": f"torchvision resnet{encoder.depth}",
                "source": f"lovt_keras {encoder.description}"}
    return write_safetensors(path, encoder_to_torchvision(encoder, num_classes, conv1_channels),
                             metadata)
