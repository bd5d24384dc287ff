"""Losses of the image-only baselines SimCLR, BYOL and PixelPro as pure ``keras.ops``
functions.

The official LoVT repository trains these baselines with third-party packages
(``src/baselines/simclr_baseline.py``: Spijkervet's ``simclr`` with its ``NT_Xent``;
``src/baselines/byol_baseline.py``: lucidrains' ``byol_pytorch.BYOL`` and
``pixel_level_contrastive_learning.PixelCL``). The functions below follow those
definitions; each returns its named, unweighted components (scalars, float32), whose
names are also the metric trackers of the pretrainers in
``lovt_keras.models.image_only_pretrainers``.

Notation: B = batch, N = regions (cells of a feature grid) of view 1, M of view 2,
d = embedding size.
"""

from __future__ import annotations

from keras import ops

# configs/baseline/simclr_{30,100}.yaml: temperature 0.1.
SIMCLR_TEMPERATURE = 0.1
# PixelCL defaults (not overridden by src/baselines/byol_baseline.py): distance_thres 0.7,
# ppm_gamma 2; the PixPro paper (Xie et al., CVPR 2021) uses the same values.
PIXPRO_DISTANCE_THRESHOLD = 0.7
PIXPRO_GAMMA = 2

_EPSILON = 1e-12


def l2_normalize(x, axis: int = -1):
    """``x / max(||x||, 1e-12)`` along ``axis`` (torch's ``F.normalize``), in float32."""
    x = ops.cast(x, "float32")
    norm = ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True))
    return x / ops.maximum(norm, _EPSILON)


def nt_xent_loss(projections_1, projections_2, temperature: float = SIMCLR_TEMPERATURE
                 ) -> dict:
    """SimCLR's NT-Xent loss (Chen et al., 2020; Spijkervet's ``NT_Xent``).

    The 2B projections of both views are compared by cosine similarity / temperature;
    each of them is a query whose positive is the other view of its image and whose
    negatives are the other 2(B - 1) projections (itself excluded):

        L = 1/(2B) sum_i [ -s(i, pos(i)) + log sum_{k != i} exp s(i, k) ].

    Args:
        projections_1, projections_2: ``(B, d)``, the projections of views 1 and 2.
        temperature: tau (0.1).

    Returns:
        ``{"global_image_nt_xent_loss": scalar}``, the mean over the 2B queries.
    """
    z = l2_normalize(ops.concatenate([projections_1, projections_2], axis=0))
    count = ops.shape(z)[0]
    batch = count // 2
    logits = ops.matmul(z, ops.transpose(z)) / temperature  # (2B, 2B)
    self_mask = ops.eye(count, dtype="bool")
    # -inf would give inf - inf = nan in the gradient of logsumexp on some backends.
    logits = ops.where(self_mask, ops.full_like(logits, -1e9), logits)
    positive_index = ops.concatenate(
        [ops.arange(batch) + batch, ops.arange(batch)], axis=0
    )
    positive = ops.take_along_axis(logits, ops.expand_dims(positive_index, 1), axis=1)[:, 0]
    loss = ops.mean(ops.logsumexp(logits, axis=1) - positive)
    return {"global_image_nt_xent_loss": loss}


def normalized_mse(predictions, targets):
    """BYOL's regression loss per sample: ``2 - 2 cos(p, z)`` (the squared distance of the
    L2-normalized vectors), ``(...)`` for inputs ``(..., d)``."""
    return 2.0 - 2.0 * ops.sum(l2_normalize(predictions) * l2_normalize(targets), axis=-1)


def byol_loss(predictions_1, predictions_2, targets_1, targets_2) -> dict:
    """BYOL's symmetric loss (Grill et al., 2020; lucidrains' ``byol_pytorch``).

    The online network's prediction of one view regresses the target network's
    projection of the other view: ``L = mean_b [ l(p_1, z'_2) + l(p_2, z'_1) ]`` with
    ``l = normalized_mse``. Gradients must not flow into the targets (the pretrainer
    stops them).

    Args:
        predictions_1, predictions_2: ``(B, d)``, online predictions of views 1 and 2.
        targets_1, targets_2: ``(B, d)``, target projections of views 1 and 2.

    Returns:
        ``{"global_view1_to_view2_loss", "global_view2_to_view1_loss"}``: the batch means
        of the two directions; the BYOL loss is their sum.
    """
    return {
        "global_view1_to_view2_loss": ops.mean(normalized_mse(predictions_1, targets_2)),
        "global_view2_to_view1_loss": ops.mean(normalized_mse(predictions_2, targets_1)),
    }


def region_centers(view_to_source, grid_shape: tuple[int, int],
                   image_shape: tuple[int, int]):
    """Where the centres of a view's feature cells lie in its source image.

    Args:
        view_to_source: ``(B, 2, 3)``, the affine map from the view's pixel coordinates
            ``(x, y, 1)`` (x right, y down, pixel centres at +0.5) to the source
            image's coordinates in units of the source image's diagonal (what
            ``ImageOnlyBatches`` yields per view).
        grid_shape: ``(h, w)`` of the feature grid.
        image_shape: ``(H, W)`` of the view.

    Returns:
        ``(B, h*w, 2)``: ``(x, y)`` per cell, row-major (as ``flatten_regions``), in
        units of the source diagonal.
    """
    h, w = int(grid_shape[0]), int(grid_shape[1])
    height, width = float(image_shape[0]), float(image_shape[1])
    ys = (ops.arange(h, dtype="float32") + 0.5) * (height / h)
    xs = (ops.arange(w, dtype="float32") + 0.5) * (width / w)
    grid_x = ops.reshape(ops.tile(ops.expand_dims(xs, 0), (h, 1)), (-1,))
    grid_y = ops.reshape(ops.tile(ops.expand_dims(ys, 1), (1, w)), (-1,))
    points = ops.stack([grid_x, grid_y, ops.ones_like(grid_x)], axis=0)  # (3, N)
    mapped = ops.einsum("bij,jn->bni", ops.cast(view_to_source, "float32"), points)
    return mapped  # (B, N, 2)


def pixpro_positive_mask(centers_1, centers_2, grid_shape: tuple[int, int],
                         distance_threshold: float = PIXPRO_DISTANCE_THRESHOLD):
    """PixPro's positive pixel pairs: cells of the two views whose centres lie closer
    than ``distance_threshold`` in the source image.

    Distances are measured as in ``PixelCL.forward`` (lucidrains' implementation that the
    official ``src/baselines/byol_baseline.py`` uses): source coordinates divided by the
    source diagonal and multiplied by the grid size (x by w, y by h), i.e. in units of
    the diagonal of a feature cell of the whole source image; the PixPro paper's
    threshold is 0.7 of a bin diagonal.

    Args:
        centers_1: ``(B, N, 2)``, ``centers_2``: ``(B, M, 2)``, from ``region_centers``.
        grid_shape: ``(h, w)`` of the feature grid.
        distance_threshold: T (0.7).

    Returns:
        bool ``(B, N, M)``: True where cell n of view 1 and cell m of view 2 are a
        positive pair.
    """
    scale = ops.convert_to_tensor([float(grid_shape[1]), float(grid_shape[0])], "float32")
    a = ops.cast(centers_1, "float32") * scale
    b = ops.cast(centers_2, "float32") * scale
    difference = ops.expand_dims(a, 2) - ops.expand_dims(b, 1)  # (B, N, M, 2)
    distance = ops.sqrt(ops.sum(ops.square(difference), axis=-1))
    return distance < distance_threshold


def pixel_propagation(features, transformed, gamma: float = PIXPRO_GAMMA):
    """PixPro's pixel propagation module without its transform: each cell becomes the
    sum of the transformed cells weighted by ``relu(cos)^gamma`` of the features.

        y_i = sum_j max(cos(x_i, x_j), 0)^gamma g(x_j)

    Args:
        features: ``(B, N, d)``, the cells x.
        transformed: ``(B, N, d')``, g(x) (a linear layer in ``PixelCL``'s ``PPM``).
        gamma: the sharpness exponent (2).

    Returns:
        ``(B, N, d')``.
    """
    x = l2_normalize(features)
    similarity = ops.relu(ops.matmul(x, ops.transpose(x, (0, 2, 1)))) ** gamma
    return ops.matmul(similarity, ops.cast(transformed, "float32"))


def pixpro_consistency(propagated, targets, positive_mask):
    """Pixel-to-propagation consistency of one direction: minus the mean cosine
    similarity over all positive pairs of the batch (``PixelCL``'s
    ``-cos(...).masked_select(mask).mean()``); 0 when there is no positive pair.

    Args:
        propagated: ``(B, N, d)``, the online network's propagated cells of one view.
        targets: ``(B, M, d)``, the target network's cells of the other view.
        positive_mask: bool ``(B, N, M)``.

    Returns:
        float32 scalar in [-1, 1].
    """
    cosine = ops.matmul(l2_normalize(propagated), ops.transpose(l2_normalize(targets),
                                                                (0, 2, 1)))
    weights = ops.cast(positive_mask, "float32")
    return -ops.sum(cosine * weights) / ops.maximum(ops.sum(weights), 1.0)


def pixpro_loss(propagated_1, propagated_2, targets_1, targets_2, positive_mask) -> dict:
    """Both directions of PixPro's pixel-to-propagation consistency.

    Args:
        propagated_1: ``(B, N, d)`` and ``propagated_2``: ``(B, M, d)``, the online
            propagated cells of views 1 and 2.
        targets_1: ``(B, N, d)`` and ``targets_2``: ``(B, M, d)``, the target network's
            cells of views 1 and 2.
        positive_mask: bool ``(B, N, M)`` from ``pixpro_positive_mask`` (view 1 cell n,
            view 2 cell m).

    Returns:
        ``{"local_view1_to_view2_loss", "local_view2_to_view1_loss"}``; ``PixelCL``'s
        pixel loss is their mean.
    """
    return {
        "local_view1_to_view2_loss": pixpro_consistency(propagated_1, targets_2,
                                                        positive_mask),
        "local_view2_to_view1_loss": pixpro_consistency(
            propagated_2, targets_1, ops.transpose(positive_mask, (0, 2, 1))),
    }
