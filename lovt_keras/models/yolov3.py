"""YOLOv3 detection head on ResNet conv3-conv5, its loss, decoding and NMS.

Follows the official ``YOLOv3WithResNetBackbone``, ``non_max_suppression`` and
``YOLOv3Loss`` (``src/models/downstream/detection.py``, adapted from
BobLiu20/YOLOv3_PyTorch).

Head: three prediction scales. conv5 (stride 32) goes through an "embedding" of six
conv-BN-LeakyReLU(0.1) blocks (1x1 f, 3x3 2f, 1x1 f, 3x3 2f, 1x1 f, 3x3 2f) and a 1x1
output conv with bias to ``A * (5 + C)`` channels, f = 512; the fifth block's output
goes through a 1x1 block to 256 channels, is upsampled (nearest, x2), concatenated
with conv4 (upsampled first) and feeds the next embedding (f = 256); the same again
with conv3 (f = 128). Convs inside the blocks have no bias; BatchNorm uses PyTorch's
momentum 0.1 / epsilon 1e-5.

Predictions ``(B, H, W, A, 5 + C)`` per scale hold raw values: x, y offsets (sigmoid),
w, h (log-scale relative to the anchor), objectness (sigmoid), class scores (sigmoid).

Loss (official, per scale, summed over the three scales), with N = B*H*W*A::

    L = 2.5 (L_x + L_y) + 2.5 (L_w + L_h) + L_conf + L_cls
    L_x   = sum(obj * BCE(sigmoid(p_x), t_x)) / N          (L_y alike)
    L_w   = sum(obj * (p_w - t_w)^2) / N                   (L_h alike)
    L_conf = sum(obj * BCE(sigmoid(p_c), 1)) / N + 0.5 * sum(noobj * BCE(sigmoid(p_c), 0)) / N
    L_cls = sum(obj * BCE(sigmoid(p_cls), onehot)) / (N C), and 0 with one class

(the official code computes ``BCELoss(x * mask, tx * mask)`` etc., i.e. means over ALL
grid positions with the unassigned ones contributing 0). Here BCE is computed from the
logits (``softplus(p) - t p``), which equals the official value except where PyTorch's
float32 sigmoid saturates (|logit| > ~17) and its ``log`` clamp at -100 applies.

Target assignment, ``matching="lovt"`` (the official code, default):

- every scale assigns every ground-truth box to the best of ITS three anchors (so a box
  is a positive at all three scales), at the grid cell containing the box centre
  (``floor``, clamped to the grid);
- anchor-box IoU compares the shapes ``(0, 0, w, h)`` in grid units with PyTorch-code
  "+1" areas: ``(min(w, a_w) + 1)(min(h, a_h) + 1) / ((w+1)(h+1) + (a_w+1)(a_h+1) - inter)``;
- t_x, t_y = centre offset within the cell, t_w = log(w / a_w + 1e-16);
- no-object mask: 1 everywhere except, at each box's cell, for the anchors whose IoU
  with the box is > 0.5 (the ignore threshold). It does not use the predictions. The
  best anchor stays in the no-object mask when its IoU is <= 0.5, so that position
  gets both the object and (0.5x) the no-object confidence term, as in the official
  code;
- two boxes on the same cell and anchor: the later one's x/y/w/h targets win, the class
  target holds both classes.

``matching="yolov3"`` (the YOLOv3 paper): each box goes to the best of all nine anchors
(plain IoU of the centred shapes) and so to one scale only; the no-object mask excludes
the assigned positions and every prediction whose decoded box has IoU > 0.5 with some
ground-truth box of its image (computed from the predictions inside the loss, without
gradient).

Inference: :func:`decode_predictions` (boxes in pixels) then :func:`non_max_suppression`
(numpy, per class, confidence >= 0.2, suppression of IoU >= 0.4, official semantics).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from lovt_keras.metrics import xywh_to_xyxy
from lovt_keras.models.linear_segmentation import torch_default_kernel_initializer

Tensor = Any

# Official anchors (w, h) in 224-px units, per scale: conv5 (stride 32), conv4 (16),
# conv3 (8).
LOVT_ANCHORS = (
    ((64.64, 48.6), (84.24, 106.92), (201.42, 176.04)),
    ((16.2, 32.94), (33.48, 24.3), (31.86, 64.26)),
    ((5.4, 7.02), (8.64, 16.2), (17.82, 12.42)),
)
# The feature maps feeding the three scales, coarse to fine (order of LOVT_ANCHORS).
YOLO_FEATURE_LAYERS = ("conv5", "conv4", "conv3")
MATCHINGS = ("lovt", "yolov3")
LOSS_COMPONENTS = (
    "yolo_x_loss",
    "yolo_y_loss",
    "yolo_w_loss",
    "yolo_h_loss",
    "yolo_confidence_loss",
    "yolo_class_loss",
)


def output_key(feature_layer: str) -> str:
    """Key of a scale's predictions in the head's output dict, e.g. ``yolo_conv5``."""
    return f"yolo_{feature_layer}"


@keras.saving.register_keras_serializable(package="lovt_keras")
class YOLOv3Head(keras.layers.Layer):
    """YOLOv3 prediction head on three ResNet stages.

    Call: ``head(features)`` with the encoder's dict (``conv3``, ``conv4``, ``conv5``).
    Returns ``{"yolo_conv5": (B, h5, w5, A, 5 + C), "yolo_conv4": ..., "yolo_conv3":
    ...}``, raw (pre-activation) values; 7x7 / 14x14 / 28x28 grids at 224 px.

    Args:
        num_classes: number of object classes C.
        num_anchors: anchors per scale A (3).
        filters: base widths f of the three embeddings (512, 256, 128); the 3x3 blocks
            use 2f, the lateral 1x1 blocks before upsampling use the next scale's f.
        feature_layers: the feature maps of the three scales, coarse to fine.
    """

    def __init__(
        self,
        num_classes: int = 1,
        num_anchors: int = 3,
        filters: Sequence[int] = (512, 256, 128),
        feature_layers: Sequence[str] = YOLO_FEATURE_LAYERS,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        filters = tuple(int(f) for f in filters)
        feature_layers = tuple(feature_layers)
        if len(filters) != 3 or len(feature_layers) != 3:
            raise ValueError(
                f"YOLOv3Head has three scales: got filters {filters} and feature_layers "
                f"{feature_layers}."
            )
        self.num_classes = int(num_classes)
        self.num_anchors = int(num_anchors)
        self.filters = filters
        self.feature_layers = feature_layers
        outputs = self.num_anchors * (5 + self.num_classes)
        self.embeddings = []
        self.laterals = []
        for s, f in enumerate(filters):
            blocks = [
                self._cbl(f if i % 2 == 0 else 2 * f, 1 if i % 2 == 0 else 3, f"scale{s}_{i}")
                for i in range(6)
            ]
            blocks.append(
                [
                    keras.layers.Conv2D(
                        outputs,
                        1,
                        kernel_initializer=torch_default_kernel_initializer(),
                        dtype=self.dtype_policy,
                        name=f"scale{s}_output",
                    )
                ]
            )
            self.embeddings.append(blocks)
            if s > 0:
                self.laterals.append(self._cbl(f, 1, f"scale{s}_lateral"))
        self.upsample = keras.layers.UpSampling2D(
            2, interpolation="nearest", dtype=self.dtype_policy, name="upsample"
        )

    def _cbl(self, filters: int, kernel_size: int, name: str) -> list:
        """conv (no bias) + BatchNorm + LeakyReLU(0.1)."""
        return [
            keras.layers.Conv2D(
                filters,
                kernel_size,
                padding="same",
                use_bias=False,
                kernel_initializer=torch_default_kernel_initializer(),
                dtype=self.dtype_policy,
                name=f"{name}_conv",
            ),
            keras.layers.BatchNormalization(
                momentum=0.9, epsilon=1e-5, dtype=self.dtype_policy, name=f"{name}_bn"
            ),
        ]

    @staticmethod
    def _build_block(block: list, shape: tuple) -> tuple:
        for layer in block:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        return shape

    def _check_features(self, features: dict) -> None:
        missing = [name for name in self.feature_layers if name not in features]
        if missing:
            raise KeyError(f"YOLOv3Head needs feature maps {missing}; got {sorted(features)}.")

    def build(self, input_shape: dict) -> None:
        self._check_features(input_shape)
        shape = tuple(input_shape[self.feature_layers[0]])
        branch = None
        for s in range(3):
            if s > 0:
                lateral = self._build_block(self.laterals[s - 1], branch)
                skip = tuple(input_shape[self.feature_layers[s]])
                shape = skip[:-1] + (lateral[-1] + skip[-1],)
            for i, block in enumerate(self.embeddings[s]):
                shape = self._build_block(block, shape)
                if i == 4:
                    branch = shape
        self.built = True

    @staticmethod
    def _apply(block: list, x: Tensor, training) -> Tensor:
        if len(block) == 1:  # the output conv
            return block[0](x)
        conv, norm = block
        return ops.leaky_relu(norm(conv(x), training=training), negative_slope=0.1)

    def _embed(self, blocks: list, x: Tensor, training) -> tuple[Tensor, Tensor]:
        branch = None
        for i, block in enumerate(blocks):
            x = self._apply(block, x, training)
            if i == 4:  # the 1x1 block feeding the next scale
                branch = x
        return x, branch

    def _to_grid(self, x: Tensor) -> Tensor:
        shape = ops.shape(x)
        return ops.reshape(
            x, (shape[0], shape[1], shape[2], self.num_anchors, 5 + self.num_classes)
        )

    def call(self, features: dict, training=None) -> dict:
        self._check_features(features)
        outputs = {}
        x, branch = self._embed(self.embeddings[0], features[self.feature_layers[0]], training)
        outputs[output_key(self.feature_layers[0])] = self._to_grid(x)
        for s in (1, 2):
            lateral = self.upsample(self._apply(self.laterals[s - 1], branch, training))
            skip = ops.cast(features[self.feature_layers[s]], lateral.dtype)
            x, branch = self._embed(
                self.embeddings[s], ops.concatenate([lateral, skip], axis=-1), training
            )
            outputs[output_key(self.feature_layers[s])] = self._to_grid(x)
        return outputs

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            num_anchors=self.num_anchors,
            filters=self.filters,
            feature_layers=self.feature_layers,
        )
        return config


# ---------------------------------------------------------------------------------------
# Targets and loss (keras.ops; vectorized over batch and boxes)
# ---------------------------------------------------------------------------------------


def _pair(size: int | Sequence[int]) -> tuple[float, float]:
    if isinstance(size, int | float):
        return float(size), float(size)
    return float(size[0]), float(size[1])


def _check_matching(matching: str) -> None:
    if matching not in MATCHINGS:
        raise ValueError(f"matching={matching!r} is not one of {MATCHINGS}.")


def yolo_targets(
    boxes: Tensor,
    box_classes: Tensor,
    box_mask: Tensor,
    grid_shape: tuple[int, int],
    scale_index: int,
    anchors: Sequence = LOVT_ANCHORS,
    image_size: int | Sequence[int] = 224,
    num_classes: int = 1,
    matching: str = "lovt",
    ignore_threshold: float = 0.5,
) -> dict[str, Tensor]:
    """Training targets of one scale from padded ground-truth boxes (keras.ops).

    Args:
        boxes: ``(B, M, 4)`` boxes ``(x, y, w, h)`` in pixels (top-left corner), padded.
        box_classes: ``(B, M)`` int class ids.
        box_mask: ``(B, M)`` bool, True for real boxes.
        grid_shape: ``(H, W)`` of this scale's grid.
        scale_index: index of this scale in ``anchors``.
        anchors: ``(S, A, 2)`` anchor ``(w, h)`` in pixels per scale.
        image_size: ``(height, width)`` (or one int) of the images in pixels.
        num_classes: C.
        matching: ``"lovt"`` or ``"yolov3"``, see the module docstring.
        ignore_threshold: anchor IoU above which an anchor at a box's cell leaves the
            no-object mask (``"lovt"``).

    Returns:
        dict of float32 tensors: ``object_mask`` ``(B, H, W, A)`` (1 at assigned
        positions), ``noobject_mask`` ``(B, H, W, A)``, ``tx``, ``ty`` (offset in the
        cell, [0, 1]), ``tw``, ``th`` (log size ratio to the anchor) ``(B, H, W, A)``
        (0 where nothing is assigned) and ``class_targets`` ``(B, H, W, A, C)`` one-hot
        (multi-hot where boxes of several classes share a position, as officially).
    """
    _check_matching(matching)
    anchors_px = np.asarray(anchors, dtype="float32")  # (S, A, 2)
    num_anchors = anchors_px.shape[1]
    height, width = int(grid_shape[0]), int(grid_shape[1])
    image_h, image_w = _pair(image_size)
    stride_x, stride_y = image_w / width, image_h / height

    valid = ops.cast(box_mask, "bool")  # (B, M)
    boxes = ops.where(valid[..., None], ops.cast(boxes, "float32"), 0.0)
    gw = boxes[..., 2] / stride_x  # (B, M) grid units
    gh = boxes[..., 3] / stride_y
    gx = boxes[..., 0] / stride_x + gw / 2.0
    gy = boxes[..., 1] / stride_y + gh / 2.0
    gi = ops.clip(ops.cast(ops.floor(gx), "int32"), 0, width - 1)
    gj = ops.clip(ops.cast(ops.floor(gy), "int32"), 0, height - 1)
    local_x = gx - ops.cast(gi, "float32")
    local_y = gy - ops.cast(gj, "float32")

    scale_anchors = anchors_px[scale_index] / np.array([stride_x, stride_y], "float32")
    anchor_w = ops.convert_to_tensor(scale_anchors[:, 0])  # (A,) grid units
    anchor_h = ops.convert_to_tensor(scale_anchors[:, 1])
    if matching == "lovt":
        # Shape IoU of (0, 0, w, h) corner boxes with the official "+1" areas.
        inter = (ops.minimum(gw[..., None], anchor_w) + 1.0) * (
            ops.minimum(gh[..., None], anchor_h) + 1.0
        )
        union = (gw[..., None] + 1.0) * (gh[..., None] + 1.0) + (anchor_w + 1.0) * (
            anchor_h + 1.0
        )
        anchor_iou = inter / (union - inter + 1e-16)  # (B, M, A)
        best = ops.argmax(anchor_iou, axis=-1)  # (B, M)
        assigned = valid
    else:
        all_anchors = anchors_px.reshape(-1, 2)  # (S*A, 2) pixels
        all_w = ops.convert_to_tensor(all_anchors[:, 0])
        all_h = ops.convert_to_tensor(all_anchors[:, 1])
        inter = ops.minimum(boxes[..., 2:3], all_w) * ops.minimum(boxes[..., 3:4], all_h)
        union = boxes[..., 2:3] * boxes[..., 3:4] + all_w * all_h - inter
        best_all = ops.argmax(inter / ops.maximum(union, 1e-16), axis=-1)  # (B, M)
        assigned = ops.logical_and(valid, ops.equal(best_all // num_anchors, scale_index))
        best = best_all % num_anchors
    best = ops.cast(best, "int32")
    tw = ops.log(gw / ops.take(anchor_w, best) + 1e-16)  # (B, M)
    th = ops.log(gh / ops.take(anchor_h, best) + 1e-16)

    rows = ops.arange(height, dtype="int32")[:, None]  # (H, 1)
    cols = ops.arange(width, dtype="int32")[None, :]  # (1, W)
    in_cell = ops.logical_and(
        ops.equal(gj[..., None, None], rows), ops.equal(gi[..., None, None], cols)
    )  # (B, M, H, W)
    is_best = ops.equal(
        best[..., None], ops.arange(num_anchors, dtype="int32")
    )  # (B, M, A)
    match = ops.logical_and(
        ops.logical_and(assigned[:, :, None, None, None], in_cell[..., None]),
        is_best[:, :, None, None, :],
    )  # (B, M, H, W, A)
    # Several boxes on one cell and anchor: keep the last one (official loop order).
    box_rank = ops.reshape(ops.arange(1, ops.shape(boxes)[1] + 1, dtype="int32"), (1, -1, 1, 1, 1))
    rank = ops.where(match, box_rank, 0)
    selected = ops.cast(
        ops.logical_and(match, ops.equal(rank, ops.max(rank, axis=1, keepdims=True))), "float32"
    )

    def scatter(values: Tensor) -> Tensor:  # (B, M) -> (B, H, W, A)
        return ops.sum(selected * values[:, :, None, None, None], axis=1)

    object_mask = ops.max(selected, axis=1)
    if matching == "lovt":
        ignored = ops.logical_and(
            ops.logical_and(valid[:, :, None, None, None], in_cell[..., None]),
            ops.greater(anchor_iou, ignore_threshold)[:, :, None, None, :],
        )
        noobject_mask = 1.0 - ops.max(ops.cast(ignored, "float32"), axis=1)
    else:
        noobject_mask = 1.0 - object_mask
    # The official loop sets tcls[..., cls] = 1 for every box at a position, so two
    # boxes of different classes on one cell and anchor give a multi-hot target.
    one_hot = ops.one_hot(ops.cast(box_classes, "int32"), num_classes)  # (B, M, C)
    class_targets = ops.max(
        ops.cast(match, "float32")[..., None] * one_hot[:, :, None, None, None, :], axis=1
    )
    return {
        "object_mask": object_mask,
        "noobject_mask": noobject_mask,
        "tx": scatter(local_x),
        "ty": scatter(local_y),
        "tw": scatter(tw),
        "th": scatter(th),
        "class_targets": class_targets,
    }


def _decode_grid(prediction: Tensor, anchors_px: np.ndarray, strides: tuple[float, float]):
    """Centre/size of each prediction in pixels, keras.ops: 4 x ``(B, H, W, A)``."""
    height, width = prediction.shape[1], prediction.shape[2]
    cols = ops.reshape(ops.arange(width, dtype="float32"), (1, 1, -1, 1))
    rows = ops.reshape(ops.arange(height, dtype="float32"), (1, -1, 1, 1))
    cx = (ops.sigmoid(prediction[..., 0]) + cols) * strides[0]
    cy = (ops.sigmoid(prediction[..., 1]) + rows) * strides[1]
    # Clipped only to keep exp finite; the result is used without gradient.
    w = ops.exp(ops.minimum(prediction[..., 2], 20.0)) * anchors_px[:, 0]
    h = ops.exp(ops.minimum(prediction[..., 3], 20.0)) * anchors_px[:, 1]
    return cx, cy, w, h


def _prediction_ignore_mask(
    prediction: Tensor,
    boxes: Tensor,
    box_mask: Tensor,
    anchors_px: np.ndarray,
    strides: tuple[float, float],
    ignore_threshold: float,
) -> Tensor:
    """1 where the decoded prediction has IoU <= threshold with every GT box ``(B,H,W,A)``."""
    cx, cy, w, h = _decode_grid(prediction, anchors_px, strides)
    px1, py1 = cx - w / 2.0, cy - h / 2.0
    px2, py2 = cx + w / 2.0, cy + h / 2.0
    boxes = ops.cast(boxes, "float32")
    shape = (ops.shape(boxes)[0], 1, 1, 1, ops.shape(boxes)[1])

    def gt(i: int) -> Tensor:
        return ops.reshape(boxes[..., i], shape)

    gx1, gy1 = gt(0), gt(1)
    gx2, gy2 = gx1 + gt(2), gy1 + gt(3)
    inter = ops.maximum(
        ops.minimum(px2[..., None], gx2) - ops.maximum(px1[..., None], gx1), 0.0
    ) * ops.maximum(ops.minimum(py2[..., None], gy2) - ops.maximum(py1[..., None], gy1), 0.0)
    union = (w * h)[..., None] + gt(2) * gt(3) - inter
    iou = inter / ops.maximum(union, 1e-16)  # (B, H, W, A, M)
    iou = ops.where(ops.reshape(ops.cast(box_mask, "bool"), shape), iou, 0.0)
    return ops.cast(ops.less_equal(ops.max(iou, axis=-1), ignore_threshold), "float32")


def _bce_from_logits(logits: Tensor, target: Tensor) -> Tensor:
    """Elementwise ``BCE(sigmoid(logits), target)`` in its stable form."""
    return ops.softplus(logits) - target * logits


def _scale_loss_terms(prediction: Tensor, targets: dict, noobj: Tensor) -> dict[str, Tensor]:
    """The loss terms of one scale; each a mean over ALL ``B*H*W*A`` positions, the
    unassigned ones contributing 0 (official ``BCELoss(x * mask, tx * mask)``)."""
    obj = targets["object_mask"]
    count = ops.cast(ops.size(obj), "float32")
    num_classes = prediction.shape[-1] - 5
    confidence = prediction[..., 4]
    terms = {
        "yolo_x_loss": ops.sum(obj * _bce_from_logits(prediction[..., 0], targets["tx"])),
        "yolo_y_loss": ops.sum(obj * _bce_from_logits(prediction[..., 1], targets["ty"])),
        "yolo_w_loss": ops.sum(obj * ops.square(prediction[..., 2] - targets["tw"])),
        "yolo_h_loss": ops.sum(obj * ops.square(prediction[..., 3] - targets["th"])),
        "yolo_confidence_loss": ops.sum(obj * ops.softplus(-confidence))
        + 0.5 * ops.sum(noobj * ops.softplus(confidence)),
    }
    terms = {name: value / count for name, value in terms.items()}
    if num_classes > 1:  # the official code has no class term with one class
        class_bce = _bce_from_logits(prediction[..., 5:], targets["class_targets"])
        terms["yolo_class_loss"] = ops.sum(obj[..., None] * class_bce) / (count * num_classes)
    return terms


def yolo_loss_components(
    predictions: dict,
    boxes: Tensor,
    box_classes: Tensor,
    box_mask: Tensor,
    anchors: Sequence = LOVT_ANCHORS,
    image_size: int | Sequence[int] = 224,
    feature_layers: Sequence[str] = YOLO_FEATURE_LAYERS,
    matching: str = "lovt",
    ignore_threshold: float = 0.5,
) -> dict[str, Tensor]:
    """The unweighted YOLOv3 loss terms, each summed over the three scales.

    Args:
        predictions: the head's output dict, ``yolo_<layer>`` -> ``(B, H, W, A, 5 + C)``.
        boxes, box_classes, box_mask: padded ground truth, see :func:`yolo_targets`.
        anchors: ``(S, A, 2)`` anchors in pixels, in the order of ``feature_layers``.
        image_size: image ``(height, width)`` or one int, pixels.
        feature_layers: the scales, coarse to fine.
        matching, ignore_threshold: see the module docstring.

    Returns:
        ``{"yolo_x_loss", "yolo_y_loss", "yolo_w_loss", "yolo_h_loss",
        "yolo_confidence_loss", "yolo_class_loss"}`` float32 scalars; each per-scale term
        is a mean over all ``B*H*W*A`` positions (``*C`` for the class term), and the
        class term is 0 with one class (official code).
    """
    _check_matching(matching)
    anchors_px = np.asarray(anchors, dtype="float32")
    if len(anchors_px) != len(feature_layers):
        raise ValueError(
            f"{len(anchors_px)} anchor scales for {len(feature_layers)} feature layers."
        )
    image_h, image_w = _pair(image_size)
    totals = {name: ops.zeros((), "float32") for name in LOSS_COMPONENTS}
    for s, layer in enumerate(feature_layers):
        prediction = ops.cast(predictions[output_key(layer)], "float32")
        _, height, width, num_anchors, attributes = prediction.shape
        if None in (height, width, num_anchors, attributes):
            raise ValueError(
                f"{output_key(layer)} needs a static grid shape, got {tuple(prediction.shape)}."
            )
        num_classes = attributes - 5
        targets = yolo_targets(
            boxes, box_classes, box_mask, (height, width), s, anchors_px, (image_h, image_w),
            num_classes, matching, ignore_threshold,
        )
        noobj = targets["noobject_mask"]
        if matching == "yolov3":
            noobj = noobj * ops.stop_gradient(
                _prediction_ignore_mask(
                    prediction, boxes, box_mask, anchors_px[s],
                    (image_w / width, image_h / height), ignore_threshold,
                )
            )
        for name, value in _scale_loss_terms(prediction, targets, noobj).items():
            totals[name] += value
    return totals


def yolo_loss(
    predictions: dict,
    boxes: Tensor,
    box_classes: Tensor,
    box_mask: Tensor,
    anchors: Sequence = LOVT_ANCHORS,
    image_size: int | Sequence[int] = 224,
    feature_layers: Sequence[str] = YOLO_FEATURE_LAYERS,
    matching: str = "lovt",
    ignore_threshold: float = 0.5,
    lambda_xy: float = 2.5,
    lambda_wh: float = 2.5,
) -> Tensor:
    """Total YOLOv3 loss (float32 scalar): ``lambda_xy (x + y) + lambda_wh (w + h) +
    confidence + class`` from :func:`yolo_loss_components` (same arguments)."""
    c = yolo_loss_components(
        predictions, boxes, box_classes, box_mask, anchors, image_size, feature_layers,
        matching, ignore_threshold,
    )
    return weighted_yolo_loss(c, lambda_xy, lambda_wh)


def weighted_yolo_loss(components: dict, lambda_xy: float = 2.5, lambda_wh: float = 2.5) -> Tensor:
    """The weighted sum of the named components of :func:`yolo_loss_components`."""
    return (
        lambda_xy * (components["yolo_x_loss"] + components["yolo_y_loss"])
        + lambda_wh * (components["yolo_w_loss"] + components["yolo_h_loss"])
        + components["yolo_confidence_loss"]
        + components["yolo_class_loss"]
    )


# ---------------------------------------------------------------------------------------
# Inference (numpy)
# ---------------------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # overflow-free


def decode_predictions(
    predictions: dict,
    anchors: Sequence = LOVT_ANCHORS,
    image_size: int | Sequence[int] = 224,
    feature_layers: Sequence[str] = YOLO_FEATURE_LAYERS,
) -> np.ndarray:
    """All predicted boxes of a batch in pixels (numpy).

    Args:
        predictions: ``yolo_<layer>`` -> ``(B, H, W, A, 5 + C)`` raw head outputs
            (tensors or arrays).
        anchors, image_size, feature_layers: as for :func:`yolo_loss`.

    Returns:
        float32 ``(B, N, 5 + C)`` with N = sum of H*W*A over the scales (ordered by
        scale, row, column, anchor): ``cx, cy, w, h`` (box centre and size in pixels),
        objectness probability, then the C class probabilities.
    """
    anchors_px = np.asarray(anchors, dtype=np.float64)
    image_h, image_w = _pair(image_size)
    decoded = []
    for s, layer in enumerate(feature_layers):
        p = np.asarray(keras.ops.convert_to_numpy(predictions[output_key(layer)]), np.float64)
        batch, height, width, num_anchors, attributes = p.shape
        stride_x, stride_y = image_w / width, image_h / height
        cx = (_sigmoid(p[..., 0]) + np.arange(width)[None, None, :, None]) * stride_x
        cy = (_sigmoid(p[..., 1]) + np.arange(height)[None, :, None, None]) * stride_y
        with np.errstate(over="ignore"):
            w = np.exp(p[..., 2]) * anchors_px[s, :, 0]
            h = np.exp(p[..., 3]) * anchors_px[s, :, 1]
        out = np.concatenate(
            [np.stack([cx, cy, w, h, _sigmoid(p[..., 4])], -1), _sigmoid(p[..., 5:])], -1
        )
        decoded.append(out.reshape(batch, -1, attributes))
    with np.errstate(over="ignore"):  # an untrained head's exp overflows float32: inf
        return np.concatenate(decoded, axis=1).astype(np.float32)


# Rows of the IoU matrix computed at once by non_max_suppression: (block, N) float64
# temporaries of ~0.8 MB for N = 3087 stay in cache (measured fastest at 32 on a 224 px
# untrained head; 16-128 are within 20 %).
_NMS_BLOCK = 32


def _suppression_hits(
    rows: np.ndarray, columns: np.ndarray, row_area: np.ndarray, column_area: np.ndarray,
    nms_iou: float,
) -> np.ndarray:
    """``(R, K)`` bool: IoU of each row box with each column box is not ``< nms_iou``.

    Boxes are ``(4, R, 1)`` / ``(4, 1, K)`` stacks of ``x1, y1, x2, y2`` (float64), areas
    ``(R, 1)`` / ``(1, K)``. The arithmetic repeats :func:`lovt_keras.metrics.iou_xywh`
    operation by operation (so the IoUs are bitwise equal; NaN IoUs, from non-finite
    boxes, count as hits as in the official ``ious < nms_thres`` test), in place to spare
    temporaries.
    """
    width = np.minimum(rows[2], columns[2])
    width -= np.maximum(rows[0], columns[0])
    width += 1.0
    np.maximum(width, 0.0, out=width)
    height = np.minimum(rows[3], columns[3])
    height -= np.maximum(rows[1], columns[1])
    height += 1.0
    np.maximum(height, 0.0, out=height)
    width *= height  # the intersection
    union = row_area + column_area
    union -= width
    width /= union  # the IoU
    return ~(width < nms_iou)


def _greedy_nms(corner: np.ndarray, nms_iou: float) -> np.ndarray:
    """Indices kept by greedy NMS of ``(N, 4)`` ``(x, y, w, h)`` boxes sorted by score.

    Equal to keeping the first box, dropping the later ones with IoU ``>= nms_iou`` and
    repeating on the rest, but computes the IoUs of a block of ``_NMS_BLOCK`` boxes with
    all later boxes still alive in one vectorized call (the box-by-box loop spent its
    time in per-call overhead); boxes suppressed by earlier blocks are skipped as rows
    and as columns.
    """
    xyxy = xywh_to_xyxy(corner)
    area = (xyxy[:, 2] - xyxy[:, 0] + 1.0) * (xyxy[:, 3] - xyxy[:, 1] + 1.0)
    coordinates = np.ascontiguousarray(xyxy.T)  # (4, N)
    count = len(corner)
    suppressed = np.zeros(count, dtype=bool)
    kept = []
    for start in range(0, count, _NMS_BLOCK):
        alive = start + np.flatnonzero(~suppressed[start:])
        rows = alive[: np.searchsorted(alive, start + _NMS_BLOCK)]
        if not rows.size:
            continue
        hits = _suppression_hits(
            coordinates[:, rows, None], coordinates[:, None, alive],
            area[rows, None], area[None, alive], nms_iou,
        )  # (R, K); the first R columns are the rows themselves
        num_rows = len(rows)
        dropped = np.zeros(num_rows, dtype=bool)
        kept_rows = []
        for i in range(num_rows):  # the greedy pass inside the block
            if not dropped[i]:
                kept_rows.append(i)
                dropped[i + 1 :] |= hits[i, i + 1 : num_rows]
        kept.extend(rows[kept_rows].tolist())
        later = hits[kept_rows, num_rows:].any(axis=0)
        suppressed[alive[num_rows:][later]] = True
    return np.asarray(kept, dtype=np.int64)


def non_max_suppression(
    detections: np.ndarray,
    conf_threshold: float = 0.2,
    nms_iou: float = 0.4,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per-class greedy NMS of decoded predictions, as the official code does it.

    Per image: keep predictions with objectness ``>= conf_threshold``; class = argmax of
    the class probabilities; per class (ascending id), visit by objectness descending
    (stable), keep the best remaining box and drop the others with IoU ``>= nms_iou``
    (IoU with the "+1 pixel" areas of the official ``bbox_iou``, as
    :func:`lovt_keras.metrics.iou_xywh`; a NaN IoU also drops). The IoUs are computed
    block-wise (see ``_greedy_nms``); the result is identical to the box-by-box loop.

    Args:
        detections: ``(B, N, 5 + C)`` from :func:`decode_predictions`.
        conf_threshold: objectness threshold (0.2 in LoVT).
        nms_iou: suppression IoU (0.4 in LoVT).

    Returns:
        Per image ``(boxes (P, 4) float32 (x, y, w, h) top-left in pixels, scores (P,)
        objectness, classes (P,) int64)``, grouped by class, each group by descending
        score; the format of :func:`lovt_keras.metrics.mean_average_precision`.
    """
    detections = np.asarray(detections)
    if detections.ndim != 3 or detections.shape[-1] < 6:
        raise ValueError(
            f"detections must have shape (B, N, 5 + C) with C >= 1, got {detections.shape}"
        )
    results = []
    for image in detections:
        image = image[image[:, 4] >= conf_threshold]
        corner = np.concatenate([image[:, :2] - image[:, 2:4] / 2.0, image[:, 2:4]], axis=1)
        classes = np.argmax(image[:, 5:], axis=1) if len(image) else np.zeros(0, np.int64)
        kept = [np.zeros(0, np.int64)]
        for c in np.unique(classes):
            candidates = np.where(classes == c)[0]
            candidates = candidates[np.argsort(-image[candidates, 4], kind="stable")]
            kept.append(candidates[_greedy_nms(corner[candidates], nms_iou)])
        kept = np.concatenate(kept)
        results.append(
            (
                corner[kept].astype(np.float32).reshape(-1, 4),
                image[kept, 4].astype(np.float32),
                classes[kept].astype(np.int64),
            )
        )
    return results
