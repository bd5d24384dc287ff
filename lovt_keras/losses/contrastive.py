"""LoVT contrastive losses as pure ``keras.ops`` functions.

These follow the official LoVT code (github philip-mueller/lovt,
``src/models/objectives/global_alignment.py: GlobalNceLoss`` and
``src/models/objectives/local_alignment.py: LocalIntraSampleContrastiveLoss``) with the
LoVT configuration (``configs/objective/*.yaml``, ``configs/experiment/LoVT_100.yaml``):

- Global loss: InfoNCE over the mini-batch (``negatives_from_same_modality: false``), so
  the negatives of image k are only the other reports of the batch and vice versa. The
  0.75 / 0.25 direction weighting is the caller's job.
- Local losses: per sample, negatives only from the same sample
  (``cross_sample_negatives: false``, ``normalize_by_num_negatives: false``).
- Local image loss: the positive of region i is a soft target ``p_ik`` over the regions k
  within ``distance_threshold`` of i (distance relative to the grid diagonal, threshold
  INCLUSIVE, as ``distances <= threshold`` in the official code), weighted by
  ``exp(-lambda * d_ik)`` and renormalized per row. The log-sum-exp denominator runs over
  ALL N candidates of the sample, the soft positives included.
- Local report loss: the positive of sentence j is only k = j (absolute threshold 0);
  padded sentences are in neither numerator nor denominator.
- Local terms are weighted per region/sentence by the stop-gradient attention-pooling
  weights, renormalized to sum to 1 over the valid elements of each sample, summed over
  elements and averaged over the batch.

Departures from the official code, all at edge cases where it yields NaN: a sample with no
valid sentence (or all-zero weights) contributes exactly 0 instead of NaN, and zero
embeddings are normalized with an epsilon (as ``torch.nn.functional.normalize``).

Everything is computed in float32, whatever the input dtype, so mixed precision is safe.
The functions return dicts of named scalar components whose keys match the metric names
and gin weights of the pretrainer.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Any

import numpy as np
from keras import ops

GLOBAL_TEMPERATURE = 0.1
LOCAL_TEMPERATURE = 0.3

# Smallest norm used when L2-normalizing, as torch.nn.functional.normalize (eps=1e-12).
_NORM_EPSILON = 1e-12
# Logit for masked candidates. Finite (unlike -inf) so that a row with no valid candidate
# gives a finite log-sum-exp and no NaN in the forward or backward pass; its contribution is
# removed afterwards by a zero weight. Cosine logits are bounded by 1 / temperature, far
# above this.
_MASKED_LOGIT = -1e9
# Guards the division when renormalizing weights that sum to 0 (empty sample).
_WEIGHT_EPSILON = 1e-12

Tensor = Any


def _as_float32(x: Any) -> Tensor:
    return ops.cast(ops.convert_to_tensor(x), "float32")


def _l2_normalize(x: Tensor) -> Tensor:
    """``x / max(||x||, eps)`` along the last axis (zero vectors stay zero, no NaN)."""
    squared_norm = ops.sum(ops.square(x), axis=-1, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared_norm, _NORM_EPSILON**2))


def _check_rank(x: Tensor, rank: int, name: str, shape_doc: str) -> None:
    if len(x.shape) != rank:
        raise ValueError(f"{name} must have shape {shape_doc}, got shape {tuple(x.shape)}")


def _check_temperature(temperature: float, name: str = "temperature") -> None:
    if not temperature > 0:
        raise ValueError(f"{name} must be > 0, got {temperature}")


def _check_same_static_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    for dim_a, dim_b in zip(a.shape, b.shape):
        if dim_a is not None and dim_b is not None and dim_a != dim_b:
            raise ValueError(
                f"{name_a} and {name_b} must have the same shape, got "
                f"{tuple(a.shape)} and {tuple(b.shape)}"
            )


def _normalized_weights(weights: Tensor | None, valid: Tensor) -> Tensor:
    """Stop-gradient per-element weights renormalized over the valid elements.

    Args:
        weights: ``(B, N)`` non-negative weights or None (uniform).
        valid: ``(B, N)`` float32, 1.0 for valid elements and 0.0 for padding.

    Returns:
        ``(B, N)`` float32 weights summing to 1 over the valid elements of each sample, or
        to 0 for a sample with no valid element (or all-zero weights), which therefore
        contributes nothing.
    """
    if weights is None:
        weights = valid
    else:
        # The weights come from the attention pooling; LoVT detaches them
        # (l_weights_stop_grad: true), so the local losses do not train the pooling.
        weights = ops.stop_gradient(_as_float32(weights)) * valid
    total = ops.sum(weights, axis=-1, keepdims=True)
    return weights / ops.maximum(total, _WEIGHT_EPSILON)


def global_contrastive_loss(
    image_global: Tensor,
    report_global: Tensor,
    temperature: float = GLOBAL_TEMPERATURE,
    negative_groups: int = 1,
    image_candidates: Tensor | None = None,
    report_candidates: Tensor | None = None,
) -> dict[str, Tensor]:
    """Symmetric InfoNCE between global image and report embeddings of a batch.

    Both inputs are L2-normalized; ``logits[k, l] = cos(image_k, report_l) / temperature``
    (B, B). The target of row k is column k; negatives are only the other samples of the
    batch, in the other modality.

    Data-parallel training (``lovt_keras.training.distribution``) chooses where the
    negatives come from with one of two optional arguments (the default is the whole
    batch):

    - ``negative_groups=G``: the batch is G contiguous blocks of B/G samples (the shares
      of G devices) and each sample's negatives are the others of its block, as if each
      device computed the loss of its share alone (the official single-GPU code's view of
      a mini-batch of B/G).
    - ``image_candidates`` / ``report_candidates``: the embeddings of all devices'
      samples, gathered (``(N, D)``, this batch's rows among them); the anchors are this
      batch's samples, their negatives are every gathered sample of the other modality.
      The mean over the devices of this loss is the loss of the whole gathered batch.

    Args:
        image_global: ``(B, D)`` global image embeddings z̄^I, any float dtype.
        report_global: ``(B, D)`` global report embeddings z̄^R.
        temperature: softmax temperature tau (LoVT: 0.1).
        negative_groups: number of blocks with negatives of their own (B divisible by it).
        image_candidates, report_candidates: ``(N, D)`` gathered embeddings (both or
            neither; not with ``negative_groups > 1``).

    Returns:
        ``{"global_image_to_report_loss": mean_k CE(logits[k, :], k),
        "global_report_to_image_loss": mean_k CE(logits[:, k], k)}``, float32 scalars
        (mean over the batch).
    """
    _check_temperature(temperature)
    image_global = _as_float32(image_global)
    report_global = _as_float32(report_global)
    _check_rank(image_global, 2, "image_global", "(B, D)")
    _check_rank(report_global, 2, "report_global", "(B, D)")
    _check_same_static_shape(image_global, report_global, "image_global", "report_global")
    gathered = (image_candidates is not None, report_candidates is not None)
    if gathered[0] != gathered[1]:
        raise ValueError("give both image_candidates and report_candidates, or neither")
    if int(negative_groups) < 1:
        raise ValueError(f"negative_groups must be >= 1, got {negative_groups}")
    if gathered[0] and int(negative_groups) > 1:
        raise ValueError("negative_groups > 1 and gathered candidates exclude each other")

    image_global = _l2_normalize(image_global)
    report_global = _l2_normalize(report_global)
    # The positives computed directly, not as a diagonal: the gradient of ops.diagonal
    # fails in TensorFlow when the batch size is unknown at trace time (a PyDataset).
    positives = ops.sum(image_global * report_global, axis=-1) / temperature  # (B,)
    if gathered[0]:
        image_candidates = _l2_normalize(_as_float32(image_candidates))
        report_candidates = _l2_normalize(_as_float32(report_candidates))
        # rows: this batch's anchors; columns: every gathered sample of the other modality
        image_logits = ops.matmul(image_global, ops.transpose(report_candidates))
        report_logits = ops.matmul(report_global, ops.transpose(image_candidates))
        image_to_report = ops.logsumexp(image_logits / temperature, axis=1) - positives
        report_to_image = ops.logsumexp(report_logits / temperature, axis=1) - positives
    elif int(negative_groups) > 1:
        groups = int(negative_groups)
        batch, dim = image_global.shape[0], image_global.shape[1]
        if batch is not None and batch % groups:
            raise ValueError(f"a batch of {batch} does not split into {groups} equal groups")
        image_blocks = ops.reshape(image_global, (groups, -1, dim))
        report_blocks = ops.reshape(report_global, (groups, -1, dim))
        logits = ops.einsum("gkd,gld->gkl", image_blocks, report_blocks) / temperature
        image_to_report = ops.reshape(ops.logsumexp(logits, axis=2), (-1,)) - positives
        report_to_image = ops.reshape(ops.logsumexp(logits, axis=1), (-1,)) - positives
    else:
        logits = ops.matmul(image_global, ops.transpose(report_global)) / temperature  # (B, B)
        image_to_report = ops.logsumexp(logits, axis=1) - positives  # (B,)
        report_to_image = ops.logsumexp(logits, axis=0) - positives  # (B,)
    return {
        "global_image_to_report_loss": ops.mean(image_to_report),
        "global_report_to_image_loss": ops.mean(report_to_image),
    }


def _exact_threshold(distance_threshold: float) -> Fraction:
    # str() gives the shortest decimal that round-trips, so 0.3 is taken as 3/10, the value
    # the user wrote, not its binary approximation.
    if isinstance(distance_threshold, Fraction):
        return distance_threshold
    return Fraction(str(float(distance_threshold)))


@functools.lru_cache(maxsize=32)
def _spatial_positive_weights(
    grid_height: int,
    grid_width: int,
    threshold: Fraction,
    smooth_lambda: float,
    smooth: bool,
) -> np.ndarray:
    rows, cols = np.divmod(np.arange(grid_height * grid_width), grid_width)  # row-major
    dy = rows[:, None] - rows[None, :]
    dx = cols[:, None] - cols[None, :]
    squared_cells = (dy * dy + dx * dx).astype(np.int64)  # (N, N) exact integers
    squared_diagonal = grid_height**2 + grid_width**2
    # d <= t  <=>  dy^2 + dx^2 <= t^2 * (H^2 + W^2); with t = p / q this is an integer
    # comparison, so a pair at exactly the threshold (e.g. dy = dx = 2 on a 4x4 grid with
    # t = 0.5) is a positive, as intended, whatever floating-point rounding would say.
    p, q = threshold.numerator, threshold.denominator
    positive = squared_cells * (q * q) <= (p * p) * squared_diagonal
    if smooth:
        distance = np.sqrt(squared_cells.astype(np.float64)) / math.sqrt(squared_diagonal)
        weights = np.where(positive, np.exp(-smooth_lambda * distance), 0.0)
    else:
        weights = positive.astype(np.float64)
    weights /= weights.sum(axis=1, keepdims=True)  # the diagonal is always positive: sum > 0
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


def spatial_positive_weights(
    grid_height: int,
    grid_width: int,
    distance_threshold: float = 0.5,
    smooth_lambda: float = 1.0,
    smooth: bool = True,
) -> np.ndarray:
    """Soft positive targets of the local image loss over a region grid.

    Regions are the cells of an ``H x W`` grid flattened row-major (index ``r * W + c``).
    ``d_ik`` is the Euclidean distance between cells i and k divided by the grid diagonal
    ``sqrt(H^2 + W^2)``. Pairs with ``d_ik <= distance_threshold`` (inclusive, decided with
    exact integer/rational arithmetic) are positives with weight ``exp(-smooth_lambda *
    d_ik)`` (or 1.0 when ``smooth`` is False, the "no spatial" ablation); all other pairs
    have weight 0. Each row is renormalized to sum to 1.

    Args:
        grid_height: H, number of grid rows (7 for a ResNet-50 conv5 map at 224 px).
        grid_width: W, number of grid columns.
        distance_threshold: relative distance threshold, >= 0 (LoVT: 0.5).
        smooth_lambda: decay rate lambda of the exponential weights (LoVT: 1.0).
        smooth: exponential weights if True, uniform over the positives if False.

    Returns:
        ``(N, N)`` float32 numpy array, N = H * W, rows summing to 1; row i is the target
        distribution of anchor region i over candidate regions k.
    """
    for name, value in (("grid_height", grid_height), ("grid_width", grid_width)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not distance_threshold >= 0:
        raise ValueError(f"distance_threshold must be >= 0, got {distance_threshold}")
    weights = _spatial_positive_weights(
        int(grid_height),
        int(grid_width),
        _exact_threshold(distance_threshold),
        float(smooth_lambda),
        bool(smooth),
    )
    return weights.copy()


def _soft_target_infonce(logits: Tensor, targets: Tensor) -> Tensor:
    """``L_i = -sum_k targets_ik logits_ik + logsumexp_k logits_ik``; (B, N, N) -> (B, N)."""
    return ops.logsumexp(logits, axis=-1) - ops.sum(targets * logits, axis=-1)


def local_image_loss(
    region_embeddings: Tensor,
    report_to_image: Tensor,
    region_weights: Tensor | None = None,
    grid_shape: tuple[int, int] = (7, 7),
    temperature: float = LOCAL_TEMPERATURE,
    distance_threshold: float = 0.5,
    smooth_lambda: float = 1.0,
    spatial_smoothing: bool = True,
) -> dict[str, Tensor]:
    """Intra-sample local image loss with spatially smoothed soft positives.

    Within each sample, ``s_ik = cos(z^I_i, z^{R->I}_k) / temperature`` (B, N, N), and with
    ``p = spatial_positive_weights(*grid_shape, ...)`` (N, N):

    - l2att (anchor region i): ``L_i = -sum_k p_ik s_ik + logsumexp_k s_ik``;
    - att2l (anchor attended vector i): ``L_i = -sum_k p_ik s_ki + logsumexp_k s_ki``.

    The log-sum-exp runs over all N candidates of the same sample, soft positives included.
    Per sample the anchors are combined as ``sum_i w_i L_i``; the batch is averaged.

    Args:
        region_embeddings: ``(B, N, D)`` projected region embeddings z^I, N = H * W
            flattened row-major.
        report_to_image: ``(B, N, D)`` report-derived vector per region z^{R->I}.
        region_weights: ``(B, N)`` non-negative attention-pooling weights w^I, or None for
            uniform ``1 / N``. Gradient is stopped; renormalized to sum to 1 per sample.
        grid_shape: ``(H, W)`` of the region grid.
        temperature: tau (LoVT: 0.3).
        distance_threshold: relative distance threshold of the soft positives (LoVT: 0.5).
        smooth_lambda: lambda of the ``exp(-lambda * d)`` positive weights.
        spatial_smoothing: False gives uniform positive weights (the "no spatial" ablation).

    Returns:
        ``{"local_image_l2att_loss": ..., "local_image_att2l_loss": ...}``, float32 scalars
        (weighted sum over regions, mean over the batch).
    """
    _check_temperature(temperature)
    grid_height, grid_width = grid_shape
    num_regions = grid_height * grid_width
    region_embeddings = _as_float32(region_embeddings)
    report_to_image = _as_float32(report_to_image)
    _check_rank(region_embeddings, 3, "region_embeddings", "(B, N, D)")
    _check_rank(report_to_image, 3, "report_to_image", "(B, N, D)")
    _check_same_static_shape(
        region_embeddings, report_to_image, "region_embeddings", "report_to_image"
    )
    if region_embeddings.shape[1] is not None and region_embeddings.shape[1] != num_regions:
        raise ValueError(
            f"region_embeddings has {region_embeddings.shape[1]} regions (shape "
            f"{tuple(region_embeddings.shape)}), but grid_shape={tuple(grid_shape)} has "
            f"{num_regions}"
        )
    if region_weights is not None:
        region_weights = _as_float32(region_weights)
        _check_rank(region_weights, 2, "region_weights", "(B, N)")

    targets = spatial_positive_weights(
        grid_height, grid_width, distance_threshold, smooth_lambda, spatial_smoothing
    )
    targets = ops.convert_to_tensor(targets, dtype="float32")[None]  # (1, N, N)

    logits = ops.einsum(
        "bid,bkd->bik", _l2_normalize(region_embeddings), _l2_normalize(report_to_image)
    )
    logits = logits / temperature  # (B, N, N): rows = regions, columns = attended vectors
    l2att = _soft_target_infonce(logits, targets)  # (B, N)
    att2l = _soft_target_infonce(ops.transpose(logits, (0, 2, 1)), targets)  # (B, N)

    valid = ops.ones_like(l2att)
    weights = _normalized_weights(region_weights, valid)  # (B, N)
    return {
        "local_image_l2att_loss": ops.mean(ops.sum(weights * l2att, axis=-1)),
        "local_image_att2l_loss": ops.mean(ops.sum(weights * att2l, axis=-1)),
    }


def local_report_loss(
    sentence_embeddings: Tensor,
    image_to_report: Tensor,
    sentence_mask: Tensor,
    sentence_weights: Tensor | None = None,
    temperature: float = LOCAL_TEMPERATURE,
) -> dict[str, Tensor]:
    """Intra-sample local report loss (InfoNCE over the sentences of each report).

    Within each sample, ``s_jk = cos(z^R_j, z^{I->R}_k) / temperature`` (B, S, S); the only
    positive of sentence j is k = j:

    - l2att (anchor sentence j): ``L_j = -s_jj + logsumexp_{valid k} s_jk``;
    - att2l (anchor attended vector j): ``L_j = -s_jj + logsumexp_{valid k} s_kj``.

    Padded sentences are neither anchors nor candidates. Per sample the anchors are combined
    as ``sum_{valid j} w_j L_j``; a sample with no valid sentence contributes 0, a
    one-sentence report contributes exactly 0 (no negatives). Both still count in the batch
    mean, which divides by B.

    Args:
        sentence_embeddings: ``(B, S, D)`` projected sentence embeddings z^R.
        image_to_report: ``(B, S, D)`` image-derived vector per sentence z^{I->R}.
        sentence_mask: ``(B, S)`` bool (or 0/1), True for real sentences.
        sentence_weights: ``(B, S)`` non-negative attention-pooling weights w^R, or None for
            uniform over the valid sentences. Gradient is stopped; masked and renormalized
            to sum to 1 over the valid sentences of each sample.
        temperature: tau (LoVT: 0.3).

    Returns:
        ``{"local_report_l2att_loss": ..., "local_report_att2l_loss": ...}``, float32
        scalars (weighted sum over sentences, mean over the batch).
    """
    _check_temperature(temperature)
    sentence_embeddings = _as_float32(sentence_embeddings)
    image_to_report = _as_float32(image_to_report)
    _check_rank(sentence_embeddings, 3, "sentence_embeddings", "(B, S, D)")
    _check_rank(image_to_report, 3, "image_to_report", "(B, S, D)")
    _check_same_static_shape(
        sentence_embeddings, image_to_report, "sentence_embeddings", "image_to_report"
    )
    sentence_mask = ops.convert_to_tensor(sentence_mask)
    _check_rank(sentence_mask, 2, "sentence_mask", "(B, S)")
    valid = ops.cast(ops.cast(sentence_mask, "bool"), "float32")  # (B, S)
    if sentence_weights is not None:
        sentence_weights = _as_float32(sentence_weights)
        _check_rank(sentence_weights, 2, "sentence_weights", "(B, S)")

    sentence_embeddings = _l2_normalize(sentence_embeddings)
    image_to_report = _l2_normalize(image_to_report)
    logits = ops.einsum("bjd,bkd->bjk", sentence_embeddings, image_to_report)
    logits = logits / temperature  # (B, S, S): rows = sentences, columns = attended vectors
    # The diagonal without ops.diagonal (see global_contrastive_loss).
    positives = ops.sum(sentence_embeddings * image_to_report, axis=-1) / temperature  # (B, S)
    candidate_is_valid = ops.cast(valid[:, None, :], "bool")  # (B, 1, S)

    def directional_loss(scores: Tensor) -> Tensor:
        # ops.where (not an additive mask) keeps padded logits out of the denominator and
        # their gradient exactly zero.
        masked = ops.where(candidate_is_valid, scores, _MASKED_LOGIT)
        return ops.logsumexp(masked, axis=-1) - positives  # (B, S)

    l2att = directional_loss(logits)
    att2l = directional_loss(ops.transpose(logits, (0, 2, 1)))

    weights = _normalized_weights(sentence_weights, valid)  # (B, S), 0 on padding
    anchor_is_valid = ops.cast(valid, "bool")

    def reduce(per_anchor: Tensor) -> Tensor:
        # Padded anchors have finite but meaningless losses (about -1e9 for an empty
        # sample); select rather than multiply so they can never leak into the sum.
        per_anchor = ops.where(anchor_is_valid, weights * per_anchor, 0.0)
        return ops.mean(ops.sum(per_anchor, axis=-1))

    return {
        "local_report_l2att_loss": reduce(l2att),
        "local_report_att2l_loss": reduce(att2l),
    }


__all__ = [
    "GLOBAL_TEMPERATURE",
    "LOCAL_TEMPERATURE",
    "global_contrastive_loss",
    "local_image_loss",
    "local_report_loss",
    "spatial_positive_weights",
]
