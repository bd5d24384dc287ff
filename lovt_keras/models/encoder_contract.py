"""What an image encoder provides: the one contract of the pretrainer, the downstream
tasks and the evaluation.

An *image encoder* is a functional ``keras.Model``:

1. **Input**: one image tensor ``(B, H, W, C)`` float32. The downstream batches of
   :mod:`lovt_keras.data.downstream_batches` (and SynthCXR) hold normalized grayscale
   images, ``C = 1``; an encoder that wants RGB converts inside the model (as
   :class:`~lovt_keras.models.image_encoder.ResNetImageEncoder` does with
   ``GrayscaleToRGB``).
2. **Outputs**: a dict of named feature maps ``(B, h, w, d)`` channels-last, with a static
   channel count ``d``: ``conv1 .. conv5`` (:data:`FEATURE_NAMES`) at the strides of
   :data:`FEATURE_STRIDES` (2, 4, 8, 16, 32; with an input of side ``S`` a map of
   stride ``s`` has ``ceil(S / s)`` rows and columns, as torchvision's ResNet and a
   ``padding="same"`` stride-2 convolution give). ``encoder(images, training=...)``
   returns that dict (``training`` reaches BatchNorm and dropout), and the functional
   ``encoder.output`` is the same dict of symbolic tensors, whose shapes give every
   consumer the grid sizes and channels (nobody reads a depth or a width). Who reads
   what:

   - the pretrainer (``LoVTPretrainer``): ``image_feature_layer`` (``conv5``), whose
     static grid from ``encoder.output`` gives the regions and the local-loss grid;
   - the linear segmentation head: ``conv5`` (its ``feature_layer``);
   - the YOLOv3 head: ``conv5``, ``conv4``, ``conv3`` (its ``feature_layers``; the
     anchor strides come from the grid sizes);
   - the U-Net head: ``conv1 .. conv5`` and the images (exactly these strides: each of
     its five up-blocks doubles the grid);
   - the evaluation: the maps its head reads (see
     :data:`lovt_keras.training.downstream_heads.DOWNSTREAM_HEADS`), which frozen linear
     and YOLOv3 tasks compute once with ``encoder.predict_on_batch`` and cache.
3. **Image size**: an ``image_size`` attribute (an int for ``H = W = image_size``, or
   None for any size); the pretrainer checks its batches against it.
4. **Rebuilding**: the class is registered with
   ``@keras.saving.register_keras_serializable``, and ``get_config()`` holds the
   constructor arguments including ``image_size``, so that
   ``type(encoder).from_config(config)`` with another ``image_size`` builds the same
   architecture whose ``get_weights()`` list fits (:func:`rebuild_image_encoder`; the
   weights must not depend on the image size). The evaluation builds one fresh encoder
   per run that way from a saved ``.keras`` file, and the downstream tasks and the
   pretrainer serialize their encoder with ``keras.saving.serialize_keras_object``.
5. **Optional**: a ``description`` string property for humans (``"ResNet-50"``), shown
   by :func:`describe_encoder`.

Everything else (``trainable``, ``get_weights`` / ``set_weights``, ``predict_on_batch``,
``count_params``) is plain ``keras.Model``. :func:`check_image_encoder` checks points
1-4 on a built encoder and names every problem; a new backbone that passes it plugs into
pretraining and evaluation without touching their code (``tests/training/
evaluation_test.py`` runs such a backbone through an evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import keras

# Names of the feature maps, as in the official code (torchvision layer names):
# conv1 = stem after ReLU (stride 2), conv2..conv5 = layer1..layer4 (strides 4..32).
FEATURE_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")
FEATURE_STRIDES = {"conv1": 2, "conv2": 4, "conv3": 8, "conv4": 16, "conv5": 32}

# Config entries that describe one instance rather than the architecture; a rebuilt
# encoder gets fresh ones (its own name, trainable, the global dtype policy).
_INSTANCE_CONFIG = ("name", "trainable", "dtype")


def _shape(tensor) -> tuple | None:
    shape = getattr(tensor, "shape", None)
    return None if shape is None else tuple(shape)


def image_encoder_problems(encoder, feature_names: Sequence[str] = FEATURE_NAMES,
                           rebuildable: bool = True) -> list[str]:
    """Every way ``encoder`` breaks the contract (empty when it meets it); see
    :func:`check_image_encoder`."""
    if not isinstance(encoder, keras.Model):
        return [f"it is a {type(encoder).__name__}, not a keras.Model"]
    problems = []
    try:
        inputs = list(encoder.inputs)
        outputs = encoder.output
    except (AttributeError, ValueError) as error:  # a subclassed model without a graph
        return [f"it has no functional inputs and outputs ({error})"]
    input_shape = _shape(inputs[0]) if len(inputs) == 1 else None
    if input_shape is None or len(input_shape) != 4:
        problems.append(
            f"it must take one image tensor (B, H, W, C), got inputs "
            f"{[_shape(x) for x in inputs]}"
        )
        input_shape = None
    if not isinstance(outputs, Mapping):
        problems.append(
            f"its outputs must be a dict of named feature maps, got a {type(outputs).__name__}"
        )
        outputs = {}
    missing = [name for name in feature_names if name not in outputs]
    if missing:
        problems.append(f"it has no feature map(s) {missing}; its outputs are {sorted(outputs)}")
    for name in feature_names:
        if name not in outputs:
            continue
        shape = _shape(outputs[name])
        if shape is None or len(shape) != 4 or shape[-1] is None:
            problems.append(f"feature map {name!r} must be (B, h, w, d) with a static d, got "
                            f"{shape}")
            continue
        stride = FEATURE_STRIDES.get(name)
        if stride is None or input_shape is None:
            continue
        for axis, side in ((1, input_shape[1]), (2, input_shape[2])):
            if side is not None and shape[axis] is not None:
                want = math.ceil(side / stride)
                if shape[axis] != want:
                    problems.append(
                        f"feature map {name!r} has shape {shape}: stride {stride} on a "
                        f"{input_shape[1]}x{input_shape[2]} input gives {want} along axis {axis}"
                    )
                    break
    if not rebuildable:
        return problems
    if not hasattr(encoder, "image_size"):
        problems.append("it has no image_size attribute")
    elif encoder.image_size is not None and input_shape is not None:
        if (input_shape[1], input_shape[2]) != (encoder.image_size, encoder.image_size):
            problems.append(
                f"image_size={encoder.image_size} but the input is "
                f"{input_shape[1]}x{input_shape[2]}"
            )
    cls = type(encoder)
    if keras.saving.get_registered_object(keras.saving.get_registered_name(cls)) is not cls:
        problems.append(
            f"{cls.__name__} is not registered: decorate it with "
            "@keras.saving.register_keras_serializable(package=...)"
        )
    try:
        config = encoder.get_config()
    except NotImplementedError:
        config = None
    if not isinstance(config, Mapping) or "image_size" not in config:
        problems.append("get_config() must return the constructor arguments, image_size among them")
    return problems


def check_image_encoder(encoder, feature_names: Sequence[str] = FEATURE_NAMES,
                        rebuildable: bool = True) -> None:
    """Raises unless ``encoder`` meets the image encoder contract (module docstring).

    Args:
        encoder: a built image encoder.
        feature_names: the feature maps the caller reads (default: all five; a head
            needs only its own, e.g. ``("conv5",)`` for the linear probe). Maps named in
            :data:`FEATURE_STRIDES` must have those strides when the input size is static.
        rebuildable: also check point 3 and 4 (``image_size``, registered class,
            ``get_config()`` with ``image_size``): needed to save, reload and rebuild
            the encoder at another size; not needed to use a model in hand.

    Raises:
        TypeError: naming every problem.
    """
    problems = image_encoder_problems(encoder, feature_names, rebuildable)
    if problems:
        name = getattr(encoder, "name", None) or type(encoder).__name__
        raise TypeError(
            f"{type(encoder).__name__} {name!r} is not an image encoder: " + "; ".join(problems)
            + " (see lovt_keras.models.encoder_contract)"
        )


def describe_encoder(encoder) -> str:
    """A short human description of an encoder's architecture: its ``description``
    (``"ResNet-18 (width 16)"`` for a narrow ``ResNetImageEncoder``), else its class
    name (with the model's name for a plain functional model)."""
    description = getattr(encoder, "description", None)
    if isinstance(description, str) and description:
        return description
    kind = type(encoder).__name__
    if kind in ("Functional", "Model", "Sequential"):
        return f"{kind} model {getattr(encoder, 'name', '')!r}"
    return kind


def rebuild_image_encoder(encoder_class: type, config: Mapping,
                          image_size: int | None) -> keras.Model:
    """A new, freshly initialized encoder of the architecture ``config`` describes, for
    inputs of ``image_size``: ``encoder_class.from_config(config)`` with ``image_size``
    replaced. The instance entries (``name``, ``trainable``, ``dtype``) are dropped, so
    the new encoder is trainable and takes the global dtype policy (an encoder pretrained
    in mixed precision is evaluated in float32). Copy weights in with
    ``set_weights(other.get_weights())``.

    Args:
        encoder_class: the encoder's class, ``type(encoder)``.
        config: ``encoder.get_config()``.
        image_size: input side of the new encoder (None: any size).
    """
    config = {k: v for k, v in config.items() if k not in _INSTANCE_CONFIG}
    config["image_size"] = image_size
    return encoder_class.from_config(config)


def feature_shapes(encoder: keras.Model, names: Sequence[str]) -> dict[str, tuple]:
    """``name -> (h, w, d)`` of the encoder's feature maps (None where not static)."""
    return {name: tuple(encoder.output[name].shape[1:]) for name in names}
