"""The paper's image-only baselines SimCLR, BYOL and PixelPro as ``keras.Model``s.

Official code: ``src/baselines/simclr_baseline.py`` (Spijkervet's ``simclr.SimCLR`` and
``NT_Xent``) and ``src/baselines/byol_baseline.py`` (lucidrains' ``byol_pytorch.BYOL`` and
``pixel_level_contrastive_learning.PixelCL``), configured by
``configs/baseline/{simclr,byol,pixelpro}_{30,100}.yaml``.

Like ``LoVTPretrainer`` each computes its loss in ``compute_loss`` from the ``y_pred``
Keras passes in, keeps one ``keras.metrics.Mean`` per named component and trains with
``compile()`` + ``fit()`` on TensorFlow, JAX and PyTorch. The inputs are the batches of
``lovt_keras.data.ImageOnlyBatches``: ``images`` and ``second_images`` ``(B, H, W, C)``,
two augmented views of the same images, and (PixelPro) ``view_to_source``
``(B, 2, 2, 3)``. ``image_encoder`` is the trained encoder that ``pretrain`` exports.

BYOL and PixelPro have a target network, the exponential moving average of the online
encoder and projector(s): after every weight update, ``target <- m * target + (1 - m) *
online`` (``update_target``). Keras' JAX trainer is stateless: a variable assigned
inside the compiled step outside the optimizer's or the loss's state does not persist.
The update therefore runs between steps, in the ``TargetNetworkUpdate`` callback, which
``fit`` of these models puts first in its callback list; reading ``callback.model``
brings JAX's trained state back into the variables, and the next step reads them again.
The target's variables are non-trainable (the optimizer never sees them), while its
layers stay trainable so that its BatchNorm uses batch statistics in training, as the
official target network (a ``deepcopy`` in train mode under ``no_grad``) does.
"""

from __future__ import annotations

import keras
from keras import ops

from lovt_keras import keys
from lovt_keras.layers import ProjectionHead
from lovt_keras.losses import image_only
from lovt_keras.models import named_losses
from lovt_keras.models.image_encoder import flatten_regions

# The "feature layer" that stands for the encoder's global average pooling (torchvision's
# ``avgpool``): a 1x1 grid.
AVGPOOL = "avgpool"

# Outputs (keys of y_pred).
PROJECTIONS_1 = "projections_1"  # (B, d) online projections of view 1
PROJECTIONS_2 = "projections_2"
PREDICTIONS_1 = "predictions_1"  # (B, d) online predictions (BYOL, PixelPro instance)
PREDICTIONS_2 = "predictions_2"
TARGETS_1 = "targets_1"  # (B, d) target projections of view 1
TARGETS_2 = "targets_2"
PROPAGATED_1 = "propagated_1"  # (B, N, d) propagated online cells of view 1 (PixelPro)
PROPAGATED_2 = "propagated_2"
PIXEL_TARGETS_1 = "pixel_targets_1"  # (B, N, d) target cells of view 1 (PixelPro)
PIXEL_TARGETS_2 = "pixel_targets_2"


def _check_encoder(encoder, cls_name: str):
    if not isinstance(encoder, keras.layers.Layer):
        raise TypeError(
            f"image_encoder must be a Keras layer or model, got {type(encoder).__name__}; "
            f"{cls_name}.from_config rebuilds a pretrainer from a config."
        )


def _feature_dim(encoder, layer: str) -> int:
    name = "conv5" if layer == AVGPOOL else layer
    try:
        return int(encoder.output[name].shape[-1])
    except (KeyError, AttributeError, TypeError) as error:
        raise ValueError(f"the image encoder has no feature map {name!r}") from error


class ImageOnlyPretrainer(keras.Model):
    """Base of the image-only pretrainers: two views, named loss components, the
    config of the image encoder. Subclasses define ``LOSS_NAMES``, ``call`` and
    ``loss_components``, and ``loss_component_weights``."""

    LOSS_NAMES: tuple[str, ...] = ()

    def __init__(self, image_encoder, image_feature_layer: str = "conv5", **kwargs):
        super().__init__(**kwargs)
        _check_encoder(image_encoder, type(self).__name__)
        self.image_encoder = image_encoder
        self.image_feature_layer = image_feature_layer
        self.feature_dim = _feature_dim(image_encoder, image_feature_layer)
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in self.LOSS_NAMES}

    @property
    def active_loss_names(self) -> tuple[str, ...]:
        return self.LOSS_NAMES

    @property
    def loss_component_weights(self) -> dict[str, float]:
        return {name: 1.0 for name in self.LOSS_NAMES}

    def pooled_features(self, feature_maps):
        """``(B, C)``: the global average of the ``image_feature_layer`` map (the
        torchvision ResNet's ``avgpool`` output, which the official baselines project)."""
        name = "conv5" if self.image_feature_layer == AVGPOOL else self.image_feature_layer
        return ops.mean(feature_maps[name], axis=(1, 2))

    def build(self, input_shape):
        """Builds every sub-layer symbolically from a dict of input shapes."""
        missing = [k for k in (keys.IMAGES, keys.SECOND_IMAGES) if k not in input_shape]
        if missing:
            raise ValueError(
                f"{type(self).__name__} inputs lack {missing}; got {sorted(input_shape)} "
                "(use lovt_keras.data.ImageOnlyBatches)"
            )
        specs = {k: keras.KerasTensor(tuple(input_shape[k]), dtype="float32")
                 for k in (keys.IMAGES, keys.SECOND_IMAGES, keys.VIEW_TO_SOURCE)
                 if k in input_shape}
        self.compute_output_spec(specs)
        self._after_build()
        self.built = True

    def _after_build(self):
        """Hook run once the layers have their weights (the target network copies them)."""

    def loss_components(self, inputs, outputs) -> dict:
        raise NotImplementedError

    def weighted_total(self, components: dict):
        """The total loss from the named components."""
        return named_losses.weighted_total(components, self.loss_component_weights)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return named_losses.compute_named_loss(self, x, y_pred)

    def get_config(self):
        config = super().get_config()
        config.update(
            image_encoder=keras.saving.serialize_keras_object(self.image_encoder),
            image_feature_layer=self.image_feature_layer,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("image_encoder"), dict):
            config["image_encoder"] = keras.saving.deserialize_keras_object(
                config["image_encoder"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="lovt_keras")
class SimCLRPretrainer(ImageOnlyPretrainer):
    """SimCLR (Chen et al., 2020) as the official baseline trains it.

    ``simclr.SimCLR``: the encoder's average-pooled features h (``n_features`` = C of
    ``image_feature_layer``) go through ``Linear(C, C, bias=False) -> ReLU ->
    Linear(C, projection_dim, bias=False)``; the NT-Xent loss
    (``lovt_keras.losses.image_only.nt_xent_loss``) compares the projections of the two
    views. Component: ``global_image_nt_xent_loss``.

    Args:
        image_encoder: a ``ResNetImageEncoder`` (a dict of feature maps).
        projection_dim: 128 (``configs/baseline/simclr_*.yaml``: projection_size).
        temperature: 0.1 (``configs/baseline/simclr_*.yaml``).
        image_feature_layer: the map that is average-pooled (``"conv5"``).
    """

    # NT-Xent takes its negatives from the whole batch: data parallel only where the
    # loss sees the global batch (JAX), see lovt_keras.training.distribution.
    uses_batch_negatives = True

    LOSS_NAMES = ("global_image_nt_xent_loss",)

    def __init__(self, image_encoder, projection_dim: int = 128,
                 temperature: float = image_only.SIMCLR_TEMPERATURE,
                 image_feature_layer: str = "conv5", **kwargs):
        super().__init__(image_encoder, image_feature_layer, **kwargs)
        self.projection_dim = projection_dim
        self.temperature = temperature
        dtype = self.dtype_policy
        self.projector_hidden = keras.layers.Dense(
            self.feature_dim, use_bias=False, activation="relu", dtype=dtype,
            name="projector_hidden")
        self.projector_output = keras.layers.Dense(
            projection_dim, use_bias=False, dtype=dtype, name="projector_output")

    def _project(self, images, training):
        pooled = self.pooled_features(self.image_encoder(images, training=training))
        return self.projector_output(self.projector_hidden(pooled))

    def call(self, inputs, training=None):
        return {
            PROJECTIONS_1: self._project(inputs[keys.IMAGES], training),
            PROJECTIONS_2: self._project(inputs[keys.SECOND_IMAGES], training),
        }

    def loss_components(self, inputs, outputs) -> dict:
        return image_only.nt_xent_loss(outputs[PROJECTIONS_1], outputs[PROJECTIONS_2],
                                       temperature=self.temperature)

    def get_config(self):
        config = super().get_config()
        config.update(projection_dim=self.projection_dim, temperature=self.temperature)
        return config


class TargetNetworkUpdate(keras.callbacks.Callback):
    """Runs ``model.update_target()`` after every weight update of ``fit``.

    With gradient accumulation the optimizer updates the weights every
    ``gradient_accumulation_steps`` mini-batches; the target follows those updates only.
    ``fit`` of ``BYOLPretrainer`` and ``PixelProPretrainer`` adds it first to the
    callbacks, so a checkpoint written after a batch holds the updated target.
    """

    def on_train_begin(self, logs=None):
        model = self.model
        if not getattr(model, "_target_copied", True):
            model.copy_online_to_target()

    def on_train_batch_end(self, batch, logs=None):
        model = self.model  # on JAX, reading it brings back the trained state
        steps = getattr(model.optimizer, "gradient_accumulation_steps", None) or 1
        if steps > 1 and int(ops.convert_to_numpy(model.optimizer.iterations)) % steps:
            return
        model.update_target()


class MomentumTargetPretrainer(ImageOnlyPretrainer):
    """An image-only pretrainer with a momentum (EMA) target network: the subclass
    lists its online layers and their target copies in ``_target_pairs``."""

    def __init__(self, image_encoder, target_momentum: float = 0.99,
                 image_feature_layer: str = "conv5", **kwargs):
        super().__init__(image_encoder, image_feature_layer, **kwargs)
        if not 0.0 <= target_momentum <= 1.0:
            raise ValueError(f"target_momentum must be in [0, 1], got {target_momentum}")
        self.target_momentum = target_momentum
        config = dict(image_encoder.get_config())
        config["name"] = "target_image_encoder"
        self.target_image_encoder = type(image_encoder).from_config(config)
        self._ema_pairs: list = []
        self._target_copied = False

    def _target_pairs(self) -> list[tuple[keras.layers.Layer, keras.layers.Layer]]:
        """``(online layer, target layer)`` pairs of the same architecture."""
        return [(self.image_encoder, self.target_image_encoder)]

    def _after_build(self):
        # The target starts as a copy of the online network (the official
        # ``copy.deepcopy``); only the online network's trainable weights are averaged
        # (``parameters()``), the target's BatchNorm statistics are its own.
        pairs = []
        for online, target in self._target_pairs():
            online_weights, target_weights = online.trainable_weights, target.trainable_weights
            if [tuple(v.shape) for v in online_weights] != [
                    tuple(v.shape) for v in target_weights]:
                raise ValueError(f"{target.name} does not mirror {online.name}")
            pairs.extend(zip(target_weights, online_weights))
        for target_weight, _ in pairs:
            target_weight.trainable = False
        self._ema_pairs = pairs
        self._target_copied = False
        try:
            self.copy_online_to_target()
        except NotImplementedError:
            # Built inside a graph (TensorFlow's symbolic build in ``fit``), where
            # weights cannot be read: ``TargetNetworkUpdate.on_train_begin`` copies them,
            # before the first step.
            pass

    def copy_online_to_target(self) -> None:
        """Sets the target network to the online one (weights and BatchNorm statistics)."""
        for online, target in self._target_pairs():
            target.set_weights(online.get_weights())
        self._target_copied = True

    @property
    def target_variables(self) -> list:
        """The target network's averaged variables (in the order of ``online_variables``)."""
        return [target for target, _ in self._ema_pairs]

    @property
    def online_variables(self) -> list:
        """The online variables the target averages."""
        return [online for _, online in self._ema_pairs]

    def update_target(self) -> None:
        """``target <- m * target + (1 - m) * online`` for every averaged variable."""
        m = float(self.target_momentum)
        for target, online in self._ema_pairs:
            target.assign(m * ops.convert_to_tensor(target)
                          + (1.0 - m) * ops.cast(online, target.dtype))

    def fit(self, *args, callbacks=None, **kwargs):
        callbacks = list(callbacks or [])
        if not any(isinstance(c, TargetNetworkUpdate) for c in callbacks):
            callbacks.insert(0, TargetNetworkUpdate())
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def _targets(self, layer_output):
        return ops.stop_gradient(layer_output)

    def get_config(self):
        config = super().get_config()
        config.update(target_momentum=self.target_momentum)
        return config


@keras.saving.register_keras_serializable(package="lovt_keras")
class BYOLPretrainer(MomentumTargetPretrainer):
    """BYOL (Grill et al., 2020) as the official baseline trains it (``byol_pytorch.BYOL``).

    Online: encoder -> average pooling -> projector ``Linear -> BatchNorm -> ReLU ->
    Linear`` (``hidden_dim`` -> ``projection_dim``) -> predictor of the same form.
    Target: the EMA copy of encoder and projector (momentum ``target_momentum``,
    updated after every weight update, see the module docstring). Loss
    (``lovt_keras.losses.image_only.byol_loss``): the components
    ``global_view1_to_view2_loss`` and ``global_view2_to_view1_loss``, summed.

    Args:
        image_encoder: a ``ResNetImageEncoder``.
        projection_dim: 128 (``configs/baseline/byol_*.yaml``: projection_size).
        hidden_dim: 4096 (``byol_baseline.py``: projection_hidden_size).
        target_momentum: 0.99 (``BYOL``'s moving_average_decay default).
        image_feature_layer: the map that is average-pooled (``"conv5"``).
    """

    LOSS_NAMES = ("global_view1_to_view2_loss", "global_view2_to_view1_loss")

    def __init__(self, image_encoder, projection_dim: int = 128, hidden_dim: int = 4096,
                 target_momentum: float = 0.99, image_feature_layer: str = "conv5",
                 **kwargs):
        super().__init__(image_encoder, target_momentum, image_feature_layer, **kwargs)
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim
        self.projector = self._head("projector")
        self.predictor = self._head("predictor")
        self.target_projector = self._head("target_projector")

    def _head(self, name):
        return ProjectionHead(self.hidden_dim, self.projection_dim, batch_norm=True,
                              dtype=self.dtype_policy, name=name)

    def _target_pairs(self):
        return super()._target_pairs() + [(self.projector, self.target_projector)]

    def call(self, inputs, training=None):
        outputs = {}
        for view, key in ((1, keys.IMAGES), (2, keys.SECOND_IMAGES)):
            images = inputs[key]
            projections = self.projector(
                self.pooled_features(self.image_encoder(images, training=training)),
                training=training)
            outputs[f"projections_{view}"] = projections
            outputs[f"predictions_{view}"] = self.predictor(projections, training=training)
            target = self.target_projector(
                self.pooled_features(self.target_image_encoder(images, training=training)),
                training=training)
            outputs[f"targets_{view}"] = self._targets(target)
        return outputs

    def loss_components(self, inputs, outputs) -> dict:
        return image_only.byol_loss(outputs[PREDICTIONS_1], outputs[PREDICTIONS_2],
                                    outputs[TARGETS_1], outputs[TARGETS_2])

    def get_config(self):
        config = super().get_config()
        config.update(projection_dim=self.projection_dim, hidden_dim=self.hidden_dim)
        return config


@keras.saving.register_keras_serializable(package="lovt_keras")
class PixelPropagation(keras.layers.Layer):
    """PixPro's pixel propagation module (``PixelCL``'s ``PPM`` with one layer):
    ``y_i = sum_j relu(cos(x_i, x_j))^gamma W x_j + b`` over the cells of each image.

    Input ``(B, N, d)``, output ``(B, N, d)``.

    Args:
        gamma: the sharpness exponent (2).
    """

    def __init__(self, gamma: float = image_only.PIXPRO_GAMMA, **kwargs):
        super().__init__(**kwargs)
        self.gamma = gamma
        self.transform = None

    def build(self, input_shape):
        self.transform = keras.layers.Dense(int(input_shape[-1]), dtype=self.dtype_policy,
                                            name="transform")
        self.transform.build(input_shape)
        self.built = True

    def call(self, cells):
        return image_only.pixel_propagation(cells, self.transform(cells), gamma=self.gamma)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(gamma=self.gamma)
        return config


@keras.saving.register_keras_serializable(package="lovt_keras")
class PixelProPretrainer(MomentumTargetPretrainer):
    """PixelPro (PixPro, Xie et al., CVPR 2021) as the official baseline trains it
    (``pixel_level_contrastive_learning.PixelCL`` with ``use_pixpro=True``).

    Online: encoder -> pixel projector (per cell ``Linear -> BatchNorm -> ReLU ->
    Linear``, ``hidden_dim`` -> ``projection_dim``) -> ``PixelPropagation``; and the
    instance branch: average-pooled features -> instance projector -> predictor (as
    BYOL). Target: the EMA copy of the encoder and both projectors.

    Loss: the pixel-to-propagation consistency (``pixpro_loss``) between the propagated
    online cells of one view and the target cells of the other, over the positive pairs
    (cell centres closer than ``distance_threshold`` in the source image, from the
    batch's ``view_to_source``), weighted ``pixel_loss_weight / 2`` per direction
    (``PixelCL``: alpha times their mean), plus BYOL's instance loss (both directions,
    weight 1 each). Components: ``local_view1_to_view2_loss``,
    ``local_view2_to_view1_loss``, ``global_view1_to_view2_loss``,
    ``global_view2_to_view1_loss``.

    Args:
        image_encoder: a ``ResNetImageEncoder``.
        projection_dim: 512 (``configs/baseline/pixelpro_*.yaml``: projection_size).
        hidden_dim: 2048 (``byol_baseline.py``: projection_hidden_size).
        pixel_feature_layer: the map of the pixel branch, ``"conv5"`` (the PixPro paper)
            or ``"avgpool"``: the official baseline sets ``hidden_layer_pixel='avgpool'``,
            so its "pixels" are a single 1x1 cell of the pooled features.
        target_momentum: 0.99 (``PixelCL``'s moving_average_decay default).
        distance_threshold: 0.7 (``PixelCL`` default, the PixPro paper).
        gamma: 2 (``PixelCL``'s ppm_gamma).
        pixel_loss_weight: alpha, 1.0.
        image_feature_layer: the map the instance branch average-pools (``"conv5"``).
    """

    LOSS_NAMES = ("local_view1_to_view2_loss", "local_view2_to_view1_loss",
                  "global_view1_to_view2_loss", "global_view2_to_view1_loss")

    def __init__(self, image_encoder, projection_dim: int = 512, hidden_dim: int = 2048,
                 pixel_feature_layer: str = "conv5", target_momentum: float = 0.99,
                 distance_threshold: float = image_only.PIXPRO_DISTANCE_THRESHOLD,
                 gamma: float = image_only.PIXPRO_GAMMA, pixel_loss_weight: float = 1.0,
                 image_feature_layer: str = "conv5", **kwargs):
        super().__init__(image_encoder, target_momentum, image_feature_layer, **kwargs)
        _feature_dim(image_encoder, pixel_feature_layer)  # raises for an unknown map
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim
        self.pixel_feature_layer = pixel_feature_layer
        self.distance_threshold = distance_threshold
        self.gamma = gamma
        self.pixel_loss_weight = pixel_loss_weight
        self.pixel_projector = self._head("pixel_projector")
        self.instance_projector = self._head("instance_projector")
        self.predictor = self._head("predictor")
        self.target_pixel_projector = self._head("target_pixel_projector")
        self.target_instance_projector = self._head("target_instance_projector")
        self.propagation = PixelPropagation(gamma, dtype=self.dtype_policy, name="propagation")

    def _head(self, name):
        return ProjectionHead(self.hidden_dim, self.projection_dim, batch_norm=True,
                              dtype=self.dtype_policy, name=name)

    def _target_pairs(self):
        return super()._target_pairs() + [
            (self.pixel_projector, self.target_pixel_projector),
            (self.instance_projector, self.target_instance_projector),
        ]

    @property
    def loss_component_weights(self) -> dict[str, float]:
        half = self.pixel_loss_weight / 2
        return {"local_view1_to_view2_loss": half, "local_view2_to_view1_loss": half,
                "global_view1_to_view2_loss": 1.0, "global_view2_to_view1_loss": 1.0}

    def pixel_grid(self) -> tuple[int, int]:
        """``(h, w)`` of the pixel branch's grid (1x1 for ``"avgpool"``)."""
        if self.pixel_feature_layer == AVGPOOL:
            return 1, 1
        shape = self.image_encoder.output[self.pixel_feature_layer].shape
        if shape[1] is None or shape[2] is None:
            raise ValueError("PixelPro needs a fixed image size: build the image encoder "
                             "with image_size set.")
        return int(shape[1]), int(shape[2])

    def _cells(self, feature_maps):
        if self.pixel_feature_layer == AVGPOOL:
            return ops.expand_dims(self.pooled_features(feature_maps), 1)  # (B, 1, C)
        return flatten_regions(feature_maps[self.pixel_feature_layer])

    def call(self, inputs, training=None):
        outputs = {}
        for view, key in ((1, keys.IMAGES), (2, keys.SECOND_IMAGES)):
            images = inputs[key]
            features = self.image_encoder(images, training=training)
            cells = self.pixel_projector(self._cells(features), training=training)
            outputs[f"propagated_{view}"] = self.propagation(cells)
            projections = self.instance_projector(self.pooled_features(features),
                                                  training=training)
            outputs[f"projections_{view}"] = projections
            outputs[f"predictions_{view}"] = self.predictor(projections, training=training)
            target_features = self.target_image_encoder(images, training=training)
            outputs[f"pixel_targets_{view}"] = self._targets(self.target_pixel_projector(
                self._cells(target_features), training=training))
            outputs[f"targets_{view}"] = self._targets(self.target_instance_projector(
                self.pooled_features(target_features), training=training))
        return outputs

    def positive_mask(self, inputs):
        """bool ``(B, N, N)``: the positive cell pairs of the two views (view 1, view 2)."""
        if keys.VIEW_TO_SOURCE not in inputs:
            raise ValueError(f"PixelPro needs {keys.VIEW_TO_SOURCE!r} in its batches "
                             "(lovt_keras.data.ImageOnlyBatches yields it)")
        grid = self.pixel_grid()
        transforms = inputs[keys.VIEW_TO_SOURCE]
        image_shape = tuple(inputs[keys.IMAGES].shape[1:3])
        centers_1 = image_only.region_centers(transforms[:, 0], grid, image_shape)
        centers_2 = image_only.region_centers(transforms[:, 1], grid, image_shape)
        return image_only.pixpro_positive_mask(centers_1, centers_2, grid,
                                               self.distance_threshold)

    def loss_components(self, inputs, outputs) -> dict:
        components = image_only.pixpro_loss(
            outputs[PROPAGATED_1], outputs[PROPAGATED_2], outputs[PIXEL_TARGETS_1],
            outputs[PIXEL_TARGETS_2], self.positive_mask(inputs))
        components.update(image_only.byol_loss(
            outputs[PREDICTIONS_1], outputs[PREDICTIONS_2], outputs[TARGETS_1],
            outputs[TARGETS_2]))
        return components

    def get_config(self):
        config = super().get_config()
        config.update(
            projection_dim=self.projection_dim, hidden_dim=self.hidden_dim,
            pixel_feature_layer=self.pixel_feature_layer,
            distance_threshold=self.distance_threshold, gamma=self.gamma,
            pixel_loss_weight=self.pixel_loss_weight,
        )
        return config
