"""The LoVT pretrainer and its baselines as one configurable ``keras.Model``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from lovt_keras import keys
from lovt_keras.layers import (
    AttentionPooling,
    CrossModalAlignment,
    ProjectionHead,
    masked_max,
    masked_mean,
    uniform_weights,
)
from lovt_keras.losses import contrastive
from lovt_keras.models import named_losses
from lovt_keras.models.image_encoder import flatten_regions

IMAGE_POOLINGS = ("attention", "avg")
REPORT_POOLINGS = ("attention", "token_max", "sentence_avg")
LOCAL_WEIGHTINGS = ("attention", "uniform")

LOSS_LEVELS = ("global", "local")


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """One loss of the pretrainer: the one place that names it and says what it needs.

    Everything else (the active losses, the metric trackers, the weighted total, the
    layers that are built, the loss weights in ``get_config``) is derived from the
    ``LOSSES`` table of these.

    Attributes:
        weight: the constructor argument (and gin parameter) weighting the loss; 0
            switches it off, and with it the layers only it needs.
        components: the names of the components ``compute`` returns; each is a
            ``keras.metrics.Mean`` tracker and a key of the training logs.
        component_weights: ``(model) -> tuple of floats``, the weight of each component
            in the total, in the order of ``components``.
        level: which layers and ``y_pred`` entries the loss needs. ``"global"``: the
            pooling and the global projection heads (``image_global``,
            ``report_global``). ``"local"``: the local projection heads and the
            cross-modal alignment (``region_embeddings``, ``sentence_embeddings``,
            ``report_to_image``, ``image_to_report`` and, with attention weighting,
            ``region_weights``/``sentence_weights``).
        compute: ``(model, inputs, y_pred) -> {component: float32 scalar}``, the
            unweighted components (a pure function of :mod:`lovt_keras.losses`).
    """

    weight: str
    components: tuple[str, ...]
    component_weights: Callable[[Any], tuple[float, ...]]
    level: str
    compute: Callable[[Any, dict, dict], dict]

    def __post_init__(self):
        if self.level not in LOSS_LEVELS:
            raise ValueError(f"level={self.level!r} is not one of {LOSS_LEVELS}.")


def _global_loss(model, inputs: dict, outputs: dict) -> dict:
    image_global, report_global = outputs[keys.IMAGE_GLOBAL], outputs[keys.REPORT_GLOBAL]
    # Data-parallel training sets where the negatives come from (see
    # named_losses.cross_replica); the whole batch otherwise.
    cross_replica = named_losses.cross_replica(model)
    negatives = ({} if cross_replica is None
                 else cross_replica.global_negatives(image_global, report_global))
    return contrastive.global_contrastive_loss(
        image_global, report_global, temperature=model.global_temperature, **negatives)


def _local_image_loss(model, inputs: dict, outputs: dict) -> dict:
    feature_map = model.image_encoder.output[model.image_feature_layer]
    grid_shape = (feature_map.shape[1], feature_map.shape[2])
    if None in grid_shape:
        raise ValueError(
            "The local image loss needs a fixed image size: build the image "
            "encoder with image_size set."
        )
    return contrastive.local_image_loss(
        outputs[keys.REGION_EMBEDDINGS],
        outputs[keys.REPORT_TO_IMAGE],
        region_weights=outputs.get(keys.REGION_WEIGHTS),
        grid_shape=grid_shape,
        temperature=model.local_temperature,
        distance_threshold=model.distance_threshold,
        smooth_lambda=model.smooth_lambda,
        spatial_smoothing=model.spatial_smoothing,
    )


def _local_report_loss(model, inputs: dict, outputs: dict) -> dict:
    return contrastive.local_report_loss(
        outputs[keys.SENTENCE_EMBEDDINGS],
        outputs[keys.IMAGE_TO_REPORT],
        inputs[keys.SENTENCE_MASK],
        sentence_weights=outputs.get(keys.SENTENCE_WEIGHTS),
        temperature=model.local_temperature,
    )


def _halves(weight: str) -> Callable[[Any], tuple[float, float]]:
    """The two directions of a local loss share its weight equally."""
    return lambda model: (getattr(model, weight) / 2,) * 2


# The losses of LoVT (paper section 3; the official configs/objective/*.yaml), in the
# order of the components in the logs. A new loss is one entry here (plus its pure
# function in lovt_keras.losses and its weight argument in LoVTPretrainer.__init__).
LOSSES: tuple[LossSpec, ...] = (
    LossSpec(
        weight="global_loss_weight",
        components=("global_image_to_report_loss", "global_report_to_image_loss"),
        component_weights=lambda model: (
            model.global_loss_weight * model.global_image_to_report_weight,
            model.global_loss_weight * (1.0 - model.global_image_to_report_weight),
        ),
        level="global",
        compute=_global_loss,
    ),
    LossSpec(
        weight="local_image_loss_weight",
        components=("local_image_l2att_loss", "local_image_att2l_loss"),
        component_weights=_halves("local_image_loss_weight"),
        level="local",
        compute=_local_image_loss,
    ),
    LossSpec(
        weight="local_report_loss_weight",
        components=("local_report_l2att_loss", "local_report_att2l_loss"),
        component_weights=_halves("local_report_loss_weight"),
        level="local",
        compute=_local_report_loss,
    ),
)

LOSS_NAMES = tuple(name for spec in LOSSES for name in spec.components)


@keras.saving.register_keras_serializable(package="lovt_keras")
class LoVTPretrainer(keras.Model):
    """LoVT image-report pretraining; ConVIRT, CLIP* and the ablations by arguments.

    Inputs: a batch dict with the keys of :mod:`lovt_keras.keys` (``images``,
    ``token_ids``, ``padding_mask``, ``sentence_ids``, ``sentence_mask``).

    Outputs (``y_pred``): a dict with ``image_global``/``report_global`` ``(B, d)``,
    ``region_embeddings`` ``(B, N, d)``, ``sentence_embeddings`` ``(B, S, d)``,
    ``report_to_image`` ``(B, N, d)``, ``image_to_report`` ``(B, S, d)``,
    ``region_weights`` ``(B, N)`` and ``sentence_weights`` ``(B, S)`` (entries a
    configuration does not compute are absent).

    The loss is computed in ``compute_loss`` from the ``y_pred`` Keras passes in,
    so ``compile()`` + ``fit()`` work unchanged on TensorFlow, JAX and PyTorch:

        L = global_weight * (w * L_g(I->R) + (1 - w) * L_g(R->I))
          + local_image_weight / 2 * (L_img,l2att + L_img,att2l)
          + local_report_weight / 2 * (L_rep,l2att + L_rep,att2l)

    with w = ``global_image_to_report_weight``. Each component has a
    ``keras.metrics.Mean`` tracker of the same name. The losses, their components,
    weights and the layers they need are declared once, in ``LOSSES``.

    Args:
        image_encoder: a ``ResNetImageEncoder`` (outputs a dict of feature maps), as
            an object (``from_config`` deserializes a config dict).
        report_encoder: a ``BertReportEncoder``.
        image_pooling: ``"attention"`` (LoVT, CLIP*) or ``"avg"`` (ConVIRT).
        report_pooling: ``"attention"`` over sentences (LoVT), ``"token_max"``
            over all tokens (ConVIRT, CLIP*) or ``"sentence_avg"``.
        projection_dim, hidden_dim: projection head sizes (512, 2048).
        projection_batch_norm: BatchNorm in the projection heads (False for ConVIRT).
        num_pooling_heads: heads of the attention pooling (8).
        image_feature_layer: the feature map used for regions (``"conv5"``).
        global_loss_weight, local_image_loss_weight, local_report_loss_weight:
            weights of the three losses (1.0, 0.75, 0.75); 0 switches a loss off
            (and the layers only it needs are not built).
        global_image_to_report_weight: weight of the image->report direction of the
            global loss (0.75; report->image gets 1 - it).
        global_temperature, local_temperature: 0.1 and 0.3.
        spatial_smoothing: exp-distance soft positives in the local image loss
            (False = the "no spatial" ablation).
        smooth_lambda, distance_threshold: 1.0 and 0.5.
        local_weighting: ``"attention"`` (stop-gradient attention-pooling weights)
            or ``"uniform"``.
        alignment_batch_norm: BatchNorm on the cross-modal attention output.
    """

    def __init__(
        self,
        image_encoder,
        report_encoder,
        image_pooling: str = "attention",
        report_pooling: str = "attention",
        projection_dim: int = 512,
        hidden_dim: int = 2048,
        projection_batch_norm: bool = True,
        num_pooling_heads: int = 8,
        image_feature_layer: str = "conv5",
        global_loss_weight: float = 1.0,
        local_image_loss_weight: float = 0.75,
        local_report_loss_weight: float = 0.75,
        global_image_to_report_weight: float = 0.75,
        global_temperature: float = 0.1,
        local_temperature: float = 0.3,
        spatial_smoothing: bool = True,
        smooth_lambda: float = 1.0,
        distance_threshold: float = 0.5,
        local_weighting: str = "attention",
        alignment_batch_norm: bool = True,
        **kwargs,
    ):
        # The loss weights are the arguments LOSSES names, read by name so that a new
        # loss needs only its entry and its argument (first statement: nothing else is
        # a local yet).
        arguments = locals()
        loss_weights = {spec.weight: arguments[spec.weight] for spec in LOSSES}
        super().__init__(**kwargs)
        _check_encoder("image_encoder", image_encoder)
        _check_encoder("report_encoder", report_encoder)
        _check_choice("image_pooling", image_pooling, IMAGE_POOLINGS)
        _check_choice("report_pooling", report_pooling, REPORT_POOLINGS)
        _check_choice("local_weighting", local_weighting, LOCAL_WEIGHTINGS)
        _check_loss_weights(loss_weights)
        levels = {spec.level for spec in LOSSES if loss_weights[spec.weight] > 0}
        _check_local_weighting(local_weighting, image_pooling, report_pooling,
                               uses_local="local" in levels)
        self.image_encoder = image_encoder
        self.report_encoder = report_encoder
        self.image_pooling = image_pooling
        self.report_pooling = report_pooling
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim
        self.projection_batch_norm = projection_batch_norm
        self.num_pooling_heads = num_pooling_heads
        self.image_feature_layer = image_feature_layer
        for name, value in loss_weights.items():
            setattr(self, name, value)
        self.global_image_to_report_weight = global_image_to_report_weight
        self.global_temperature = global_temperature
        self.local_temperature = local_temperature
        self.spatial_smoothing = spatial_smoothing
        self.smooth_lambda = smooth_lambda
        self.distance_threshold = distance_threshold
        self.local_weighting = local_weighting
        self.alignment_batch_norm = alignment_batch_norm

        self.uses_global = "global" in levels
        self.uses_local = "local" in levels
        self._create_layers()
        self.loss_trackers = {
            name: keras.metrics.Mean(name=name) for name in self.active_loss_names
        }

    def _create_layers(self):
        """Creates the layers the active losses need (their ``level``); others are None."""
        needs_pooling = self.uses_global or (
            self.uses_local and self.local_weighting == "attention"
        )
        dtype = self.dtype_policy

        def head(name):
            return ProjectionHead(
                self.hidden_dim, self.projection_dim, batch_norm=self.projection_batch_norm,
                dtype=dtype, name=name,
            )

        self.image_attention_pooling = None
        self.report_attention_pooling = None
        if needs_pooling and self.image_pooling == "attention":
            self.image_attention_pooling = AttentionPooling(
                self.num_pooling_heads, dtype=dtype, name="image_attention_pooling"
            )
        if needs_pooling and self.report_pooling == "attention":
            self.report_attention_pooling = AttentionPooling(
                self.num_pooling_heads, dtype=dtype, name="report_attention_pooling"
            )
        self.image_global_projection = head("image_global_projection") if self.uses_global else None
        self.report_global_projection = (
            head("report_global_projection") if self.uses_global else None
        )
        self.image_local_projection = head("image_local_projection") if self.uses_local else None
        self.report_local_projection = head("report_local_projection") if self.uses_local else None
        self.alignment = (
            CrossModalAlignment(
                batch_norm=self.alignment_batch_norm, dtype=dtype, name="alignment"
            )
            if self.uses_local
            else None
        )

    @property
    def active_losses(self) -> tuple[LossSpec, ...]:
        """The entries of ``LOSSES`` with a weight > 0, in table order."""
        return tuple(spec for spec in LOSSES if getattr(self, spec.weight) > 0)

    @property
    def active_loss_names(self) -> tuple[str, ...]:
        """The components of the active losses (also the names of their trackers)."""
        return tuple(name for spec in self.active_losses for name in spec.components)

    @property
    def loss_component_weights(self) -> dict[str, float]:
        """The weight of every component of ``LOSSES`` in the total (0 if inactive)."""
        weights = {}
        for spec in LOSSES:
            weights.update(zip(spec.components, spec.component_weights(self), strict=True))
        return weights

    def build(self, input_shape):
        """Builds every sub-layer symbolically from a dict of input shapes."""
        dtypes = {
            keys.IMAGES: "float32",
            keys.TOKEN_IDS: "int32",
            keys.PADDING_MASK: "bool",
            keys.SENTENCE_IDS: "int32",
            keys.SENTENCE_MASK: "bool",
        }
        missing = [k for k in dtypes if k not in input_shape]
        if missing:
            raise ValueError(f"LoVTPretrainer inputs lack {missing}; got {sorted(input_shape)}.")
        specs = {k: keras.KerasTensor(tuple(input_shape[k]), dtype=dtypes[k]) for k in dtypes}
        self.compute_output_spec(specs)
        self.built = True

    def call(self, inputs, training=None):
        sentence_mask = ops.cast(inputs[keys.SENTENCE_MASK], "bool")
        feature_maps = self.image_encoder(inputs[keys.IMAGES], training=training)
        regions = flatten_regions(feature_maps[self.image_feature_layer])  # y^I (B, N, C)
        report = self.report_encoder(
            {
                keys.TOKEN_IDS: inputs[keys.TOKEN_IDS],
                keys.PADDING_MASK: inputs[keys.PADDING_MASK],
                keys.SENTENCE_IDS: inputs[keys.SENTENCE_IDS],
            },
            training=training,
        )
        sentences = report["sentence_features"]  # y^R (B, S, D)
        outputs = {}

        # Global aggregation and the local weights w.
        region_weights = uniform_weights(regions)
        sentence_weights = uniform_weights(sentences, sentence_mask)
        image_global = report_global = None
        if self.image_attention_pooling is not None:
            image_global, region_weights = self.image_attention_pooling(
                regions, training=training
            )
        elif self.uses_global:
            image_global = masked_mean(regions)
        if self.report_attention_pooling is not None:
            report_global, sentence_weights = self.report_attention_pooling(
                sentences, mask=sentence_mask, training=training
            )
        elif self.uses_global and self.report_pooling == "token_max":
            report_global = masked_max(report["token_features"], inputs[keys.PADDING_MASK])
        elif self.uses_global:
            report_global = masked_mean(sentences, sentence_mask)

        if self.uses_global:
            outputs[keys.IMAGE_GLOBAL] = self.image_global_projection(
                image_global, training=training
            )
            outputs[keys.REPORT_GLOBAL] = self.report_global_projection(
                report_global, training=training
            )
        if self.uses_local:
            region_embeddings = self.image_local_projection(regions, training=training)
            sentence_embeddings = self.report_local_projection(
                sentences, mask=sentence_mask, training=training
            )
            report_to_image, image_to_report = self.alignment(
                region_embeddings, sentence_embeddings, sentence_mask, training=training
            )
            outputs[keys.REGION_EMBEDDINGS] = region_embeddings
            outputs[keys.SENTENCE_EMBEDDINGS] = sentence_embeddings
            outputs[keys.REPORT_TO_IMAGE] = report_to_image
            outputs[keys.IMAGE_TO_REPORT] = image_to_report
            if self.local_weighting == "attention":
                outputs[keys.REGION_WEIGHTS] = region_weights
                outputs[keys.SENTENCE_WEIGHTS] = sentence_weights
        return outputs

    def loss_components(self, inputs, outputs) -> dict:
        """The named, unweighted loss components (scalars) of a forward pass."""
        components = {}
        for spec in self.active_losses:
            components.update(spec.compute(self, inputs, outputs))
        return components

    def weighted_total(self, components: dict):
        """The total loss from the named components (see the class docstring)."""
        return named_losses.weighted_total(components, self.loss_component_weights)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return named_losses.compute_named_loss(self, x, y_pred)

    def get_config(self):
        config = super().get_config()
        config.update(
            image_encoder=keras.saving.serialize_keras_object(self.image_encoder),
            report_encoder=keras.saving.serialize_keras_object(self.report_encoder),
            image_pooling=self.image_pooling,
            report_pooling=self.report_pooling,
            projection_dim=self.projection_dim,
            hidden_dim=self.hidden_dim,
            projection_batch_norm=self.projection_batch_norm,
            num_pooling_heads=self.num_pooling_heads,
            image_feature_layer=self.image_feature_layer,
        )
        config.update({spec.weight: getattr(self, spec.weight) for spec in LOSSES})
        config.update(
            global_image_to_report_weight=self.global_image_to_report_weight,
            global_temperature=self.global_temperature,
            local_temperature=self.local_temperature,
            spatial_smoothing=self.spatial_smoothing,
            smooth_lambda=self.smooth_lambda,
            distance_threshold=self.distance_threshold,
            local_weighting=self.local_weighting,
            alignment_batch_norm=self.alignment_batch_norm,
        )
        return config

    @classmethod
    def from_config(cls, config):
        # As keras-hub's CLIPBackbone: the constructor takes encoder objects; their
        # configs are deserialized here.
        config = dict(config)
        for name in ("image_encoder", "report_encoder"):
            if isinstance(config.get(name), dict):
                config[name] = keras.saving.deserialize_keras_object(config[name])
        return cls(**config)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {choices}.")


def _check_encoder(name, encoder):
    if not isinstance(encoder, keras.layers.Layer):
        raise TypeError(
            f"{name} must be a Keras layer or model, got {type(encoder).__name__}; "
            "LoVTPretrainer.from_config rebuilds a pretrainer from a config."
        )


def _check_loss_weights(loss_weights: dict) -> None:
    for name, value in loss_weights.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}.")
    if all(value == 0 for value in loss_weights.values()):
        raise ValueError("All loss weights are 0: nothing to train.")


def _check_local_weighting(local_weighting, image_pooling, report_pooling, uses_local):
    if local_weighting == "attention" and uses_local and (
        image_pooling != "attention" or report_pooling != "attention"
    ):
        raise ValueError(
            "local_weighting='attention' needs image_pooling='attention' and "
            "report_pooling='attention' (the weights are the attention-pooling "
            "weights); use local_weighting='uniform' otherwise."
        )


# Constructor arguments of the published methods and of the ablations (official
# configs/experiment/ablation/*.yaml; all pretrain on 30 % MIMIC-CXR). Data-side
# differences (one random sentence per sample for ConVIRT/CLIP*, sentence shuffling for
# LoVT) and optimizer differences live in the data pipeline and the gin files.
VARIANTS = {
    "lovt": {},
    "convirt": dict(
        image_pooling="avg", report_pooling="token_max", projection_batch_norm=False,
        local_image_loss_weight=0.0, local_report_loss_weight=0.0,
    ),
    "clip": dict(report_pooling="token_max", local_image_loss_weight=0.0,
                 local_report_loss_weight=0.0),
    "ablation_no_l": dict(local_image_loss_weight=0.0, local_report_loss_weight=0.0),
    "ablation_no_g": dict(global_loss_weight=0.0, local_weighting="uniform",
                          report_pooling="token_max"),
    "ablation_no_l_scan": dict(local_image_loss_weight=0.0),
    "ablation_no_l_report": dict(local_report_loss_weight=0.0),
    "ablation_no_spatial": dict(spatial_smoothing=False),
    "ablation_noweight": dict(local_weighting="uniform"),
    "ablation_noweight_no_att": dict(local_weighting="uniform", image_pooling="avg",
                                     report_pooling="token_max"),
    "ablation_g_single_sent_att": dict(report_pooling="token_max",
                                       local_image_loss_weight=0.0,
                                       local_report_loss_weight=0.0),
    "ablation_g_only": dict(image_pooling="avg", report_pooling="token_max",
                            local_image_loss_weight=0.0, local_report_loss_weight=0.0),
    "ablation_convirt_lr": dict(image_pooling="avg", report_pooling="token_max",
                                projection_batch_norm=False, local_image_loss_weight=0.0,
                                local_report_loss_weight=0.0),
}
