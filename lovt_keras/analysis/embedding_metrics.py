"""Embedding diagnostics, retrieval, zero-shot and grounding scores on numpy arrays.

The diagnostics follow the official analysis (``src/analysis/embedding_analysis.py``,
which runs ``EmbeddingMetrics`` of ``src/metrics/embedding_metrics.py`` on the test
split): per-channel standard deviations of (l2-normalized) embeddings, uniformity,
distances between aligned pairs and the assignment of local embeddings to their
modality. Grounding, retrieval, zero-shot and spatial smoothness are this library's.

Everything here is plain numpy on the outputs of a model (``analysis.model_outputs``
collects them), so it runs the same after any backend. Shapes: ``n`` samples, ``N``
regions (a ``(h, w)`` grid, row-major as ``models.image_encoder.flatten_regions``),
``S`` sentence slots, ``d`` channels; masks are bool, True for valid elements.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EPS = 1e-12


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``x / ||x||`` along ``axis`` (zero vectors stay zero)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), EPS)


def _full_mask(local: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return np.ones(local.shape[:2], bool)
    return np.asarray(mask, bool)


# ------------------------------------------------------------------ spread


def channel_std(embeddings: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Per-channel standard deviations, averaged over channels (official ``ch_std*``).

    Args:
        embeddings: ``(n, d)`` global or ``(n, N, d)`` local embeddings.
        mask: ``(n, N)`` valid local elements (local embeddings only).

    Returns:
        Global: ``{"ch_std"}``, the std over samples (ddof 1). Local (the official
        ``LocalEmbeddingSpaceMetrics``): ``ch_std`` over all local embeddings (``sqrt``
        of the variance of the sample centroids plus the mean within-sample variance),
        ``ch_std_per_sample`` (within a sample, averaged over samples; samples with one
        valid element count 0) and ``ch_std_sample_centroids`` (of the per-sample
        means). All 0 for collapsed embeddings.
    """
    x = np.asarray(embeddings, np.float64)
    if x.ndim == 2:
        return {"ch_std": float(x.std(axis=0, ddof=1).mean()) if len(x) > 1 else 0.0}
    m = _full_mask(x, mask).astype(np.float64)[..., None]  # (n, N, 1)
    count = m.sum(axis=1)  # (n, 1)
    means = (x * m).sum(axis=1) / np.maximum(count, 1.0)  # (n, d)
    squares = (((x - means[:, None, :]) ** 2) * m).sum(axis=1)
    variances = np.where(count > 1, squares / np.maximum(count - 1, 1.0), 0.0)  # (n, d)
    centroid_var = means.var(axis=0, ddof=1) if len(means) > 1 else np.zeros(x.shape[-1])
    return {
        "ch_std": float(np.sqrt(centroid_var + variances.mean(axis=0)).mean()),
        "ch_std_per_sample": float(np.sqrt(variances).mean(axis=1).mean()),
        "ch_std_sample_centroids": float(np.sqrt(centroid_var).mean()),
    }


def uniformity(embeddings: np.ndarray, t: float = 2.0, max_points: int | None = 4096,
               seed: int = 0) -> float:
    """Uniformity of Wang & Isola (2020): ``log mean_{i<j} exp(-t ||x_i - x_j||^2)``.

    Pass l2-normalized embeddings (as the paper and the official analysis do). Lower is
    more uniform; collapsed embeddings give 0, two orthogonal unit vectors ``-2 t``.

    Args:
        embeddings: ``(n, d)``, n >= 2.
        t: the temperature (2).
        max_points: a random subset of this many rows bounds the ``n^2`` pairs (None:
            all rows).
        seed: of that subset.
    """
    x = np.asarray(embeddings, np.float64)
    if len(x) < 2:
        raise ValueError(f"uniformity needs at least 2 embeddings, got {len(x)}")
    if max_points is not None and len(x) > max_points:
        x = x[np.random.default_rng(seed).choice(len(x), max_points, replace=False)]
    squared = np.maximum(_squared_distances(x, x), 0.0)
    upper = np.triu_indices(len(x), k=1)
    values = -t * squared[upper]
    # log-mean-exp, stable for large t * d^2
    top = values.max()
    return float(top + np.log(np.mean(np.exp(values - top))))


def local_uniformity(local: np.ndarray, mask: np.ndarray | None = None,
                     t: float = 2.0) -> float:
    """Mean over samples of the uniformity of each sample's valid local embeddings
    (official ``per_sample_uniformity``); samples with fewer than 2 are skipped."""
    x = np.asarray(local, np.float64)
    m = _full_mask(x, mask)
    values = [uniformity(x[i][m[i]], t=t, max_points=None) for i in range(len(x))
              if m[i].sum() >= 2]
    return float(np.mean(values)) if values else float("nan")


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a * a).sum(-1)[..., :, None] + (b * b).sum(-1)[..., None, :]
            - 2.0 * a @ np.swapaxes(b, -1, -2))


# ------------------------------------------------------------------ alignment


def pair_distance(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean l2 distance between paired rows: ``(n, d)`` global pairs or ``(n, N, d)``
    local pairs (e.g. region ``z^I_i`` vs its report-derived ``z^{R->I}_i``), over the
    valid elements of ``mask`` ``(n, N)``."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    distances = np.linalg.norm(a - b, axis=-1)
    if mask is None:
        return float(distances.mean())
    mask = np.asarray(mask, bool)
    return float(distances[mask].mean())


def modality_assignment(a: np.ndarray, b: np.ndarray, mask_a: np.ndarray | None = None,
                        mask_b: np.ndarray | None = None) -> dict[str, float]:
    """How well the local embeddings of two modalities mix, per sample.

    1-nearest neighbour: for each valid element of one modality, its nearest other
    element among all valid elements of both modalities of the same sample; the
    *cross rate* is the share whose neighbour is of the other modality. Random mixing
    gives the chance rate ``n_other / (n_a + n_b - 1)``; ``indistinguishability`` is the
    mean over both modalities of ``min(1, cross rate / chance rate)``: 1 when the
    modalities cannot be told apart by their neighbours (e.g. identical sets), 0 when
    every neighbour is of the same modality.

    Centroid assignment (official ``LocalDistributionPairMetrics``: ``assignment_1to1``
    and ``assignment_2to2``): ``(1/d_same^2) / (1/d_same^2 + 1/d_other^2)`` with the
    distances to the sample's own-modality and other-modality centroids; 1 = assigned
    to its own modality, 0.5 = the modalities overlap perfectly.

    Args:
        a: ``(n, N_a, d)`` (e.g. regions), b: ``(n, N_b, d)`` (e.g. sentences).
        mask_a, mask_b: ``(n, N_a)``, ``(n, N_b)`` valid elements.

    Returns:
        ``a_1nn_cross_rate``, ``b_1nn_cross_rate``, ``a_1nn_chance_rate``,
        ``b_1nn_chance_rate``, ``indistinguishability``, ``a_centroid_assignment``,
        ``b_centroid_assignment`` (means over samples, elements weighted equally within
        a sample).
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    mask_a, mask_b = _full_mask(a, mask_a), _full_mask(b, mask_b)
    rates: dict[str, list[float]] = {k: [] for k in (
        "a_1nn_cross_rate", "b_1nn_cross_rate", "a_1nn_chance_rate", "b_1nn_chance_rate",
        "a_centroid_assignment", "b_centroid_assignment")}
    ratios = []
    for i in range(len(a)):
        xa, xb = a[i][mask_a[i]], b[i][mask_b[i]]
        na, nb = len(xa), len(xb)
        if na == 0 or nb == 0 or na + nb < 3:
            continue
        points = np.concatenate([xa, xb])
        is_b = np.arange(na + nb) >= na
        squared = _squared_distances(points, points)
        np.fill_diagonal(squared, np.inf)
        neighbour = squared.argmin(axis=1)
        cross = is_b[neighbour] != is_b
        cross_a, cross_b = cross[:na].mean(), cross[na:].mean()
        chance_a, chance_b = nb / (na + nb - 1), na / (na + nb - 1)
        rates["a_1nn_cross_rate"].append(cross_a)
        rates["b_1nn_cross_rate"].append(cross_b)
        rates["a_1nn_chance_rate"].append(chance_a)
        rates["b_1nn_chance_rate"].append(chance_b)
        ratios.append(0.5 * (min(1.0, cross_a / chance_a) + min(1.0, cross_b / chance_b)))
        centroid_a, centroid_b = xa.mean(axis=0), xb.mean(axis=0)
        rates["a_centroid_assignment"].append(_centroid_assignment(xa, centroid_a, centroid_b))
        rates["b_centroid_assignment"].append(_centroid_assignment(xb, centroid_b, centroid_a))
    result = {k: float(np.mean(v)) if v else float("nan") for k, v in rates.items()}
    result["indistinguishability"] = float(np.mean(ratios)) if ratios else float("nan")
    return result


def _centroid_assignment(points, own, other) -> float:
    own_score = 1.0 / np.maximum(((points - own) ** 2).sum(-1), EPS)
    other_score = 1.0 / np.maximum(((points - other) ** 2).sum(-1), EPS)
    return float((own_score / (own_score + other_score)).mean())


# ------------------------------------------------------------------ retrieval, zero-shot


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(n, d)`` x ``(m, d)`` -> ``(n, m)`` cosine similarities."""
    return l2_normalize(a) @ l2_normalize(b).T


def retrieval_recall(image: np.ndarray, report: np.ndarray,
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Image->report and report->image recall@k of paired global embeddings.

    Row ``i`` of ``image`` ``(n, d)`` and of ``report`` ``(n, d)`` belong together;
    candidates are ranked by cosine similarity. Ties count against the query (its rank
    is the number of candidates scoring at least as high as the true one), so collapsed
    embeddings give recall ``k / n``, not 1.

    Returns:
        ``image_to_report_recall@k`` and ``report_to_image_recall@k`` for each k.
    """
    similarity = cosine_similarity(image, report)  # (n, n)
    result = {}
    for name, scores in (("image_to_report", similarity), ("report_to_image", similarity.T)):
        true = np.diagonal(scores)[:, None]
        ranks = (scores >= true).sum(axis=1)  # 1 = retrieved first
        for k in ks:
            result[f"{name}_recall@{k}"] = float((ranks <= k).mean())
    return result


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with ties counted 1/2); NaN when the
    labels hold one class only."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, bool)
    positives, negatives = scores[labels], scores[~labels]
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan")
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positives) * len(negatives)))


def zero_shot_scores(image: np.ndarray, positive: np.ndarray,
                     negative: np.ndarray) -> np.ndarray:
    """``(n, C)`` zero-shot scores: ``cos(image, positive_c) - cos(image, negative_c)``.

    Any softmax over the two prompts with a temperature is a monotone function of this
    difference, so the AUC is the same.

    Args:
        image: ``(n, d)`` global image embeddings.
        positive, negative: ``(C, d)`` report embeddings of one positive and one negative
            prompt sentence per class.
    """
    return cosine_similarity(image, positive) - cosine_similarity(image, negative)


def zero_shot_auc(image: np.ndarray, positive: np.ndarray, negative: np.ndarray,
                  labels: np.ndarray) -> np.ndarray:
    """``(C,)`` AUC per class of :func:`zero_shot_scores` against ``labels`` ``(n, C)``."""
    scores = zero_shot_scores(image, positive, negative)
    labels = np.asarray(labels, bool)
    return np.array([roc_auc(scores[:, c], labels[:, c]) for c in range(labels.shape[1])])


# ------------------------------------------------------------------ grounding


def _region_index(size: int, cells: int) -> np.ndarray:
    """The grid cell of every pixel along one axis (``floor(p * cells / size)``)."""
    return (np.arange(size) * cells) // size


def upsample_attention(weights: np.ndarray, grid_shape: tuple[int, int],
                       image_shape: tuple[int, int]) -> np.ndarray:
    """Attention over regions as a density over pixels.

    Every pixel gets its region's weight divided by the region's pixel count (each
    region covers the pixels ``floor(p * h / H) == row``), so the map sums to the sum
    of the weights and a one-hot weight lights exactly its region's pixels.

    Args:
        weights: ``(..., N)`` with ``N = h * w`` (row-major).
        grid_shape: ``(h, w)``.
        image_shape: ``(H, W)``.

    Returns:
        ``(..., H, W)`` float64.
    """
    h, w = grid_shape
    height, width = image_shape
    weights = np.asarray(weights, np.float64)
    grid = weights.reshape(*weights.shape[:-1], h, w)
    rows, cols = _region_index(height, h), _region_index(width, w)
    counts = np.bincount(rows, minlength=h)[:, None] * np.bincount(cols, minlength=w)[None, :]
    density = grid / counts
    return density[..., rows, :][..., :, cols]


def region_mask_fraction(mask: np.ndarray, grid_shape: tuple[int, int]) -> np.ndarray:
    """``(N,)`` share of each region's pixels inside a binary ``(H, W)`` mask."""
    h, w = grid_shape
    mask = np.asarray(mask, np.float64)
    rows, cols = _region_index(mask.shape[0], h), _region_index(mask.shape[1], w)
    sums = np.zeros((h, w))
    np.add.at(sums, (rows[:, None], cols[None, :]), mask)
    counts = np.bincount(rows, minlength=h)[:, None] * np.bincount(cols, minlength=w)[None, :]
    return (sums / counts).reshape(-1)


def grounding_score(weights: np.ndarray, mask: np.ndarray,
                    grid_shape: tuple[int, int]) -> dict[str, float]:
    """How much of an attention map over regions falls on a finding.

    Args:
        weights: ``(N,)`` attention over the regions (summing to 1).
        mask: ``(H, W)`` binary mask of the finding.
        grid_shape: ``(h, w)`` of the regions.

    Returns:
        ``share``: attention mass inside the mask (the upsampled map of
        :func:`upsample_attention` summed over the mask's pixels); ``uniform_share``:
        the same for uniform attention (``1/N`` each), equal to ``area_fraction`` (the
        mask's share of the image) when the regions tile the image evenly;
        ``hit``: 1.0 if the most attended region overlaps the mask (pointing game at
        region resolution; ties: the first); ``random_hit_rate``: the hit probability of
        a region drawn uniformly (share of regions overlapping the mask).
    """
    weights = np.asarray(weights, np.float64)
    fraction = region_mask_fraction(mask, grid_shape)
    return {
        "share": float((weights * fraction).sum()),
        "uniform_share": float(fraction.mean()),
        "area_fraction": float(np.asarray(mask, bool).mean()),
        "hit": float(fraction[int(np.argmax(weights))] > 0),
        "random_hit_rate": float((fraction > 0).mean()),
    }


# ------------------------------------------------------------------ spatial smoothness


def spatial_smoothness(local: np.ndarray, grid_shape: tuple[int, int],
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Mean cosine similarity of region features as a function of their grid distance.

    The official ``src/analysis/visualization/spatial_smoothness.py`` plots the same
    relation. Pairs of distinct regions of the same image, grouped by Euclidean
    distance on the grid (in cells).

    Args:
        local: ``(n, N, d)`` region features, ``N = h * w`` row-major.
        grid_shape: ``(h, w)``.

    Returns:
        ``(distances, similarities)``: the sorted distinct distances ``(K,)`` and the
        mean cosine similarity at each ``(K,)``.
    """
    h, w = grid_shape
    x = l2_normalize(np.asarray(local, np.float64))
    similarity = np.einsum("bnd,bmd->nm", x, x) / len(x)  # mean over images
    ys, xs = np.divmod(np.arange(h * w), w)
    distance = np.sqrt((ys[:, None] - ys[None, :]) ** 2 + (xs[:, None] - xs[None, :]) ** 2)
    distance = np.round(distance, 6)
    off_diagonal = ~np.eye(h * w, dtype=bool)
    distances = np.unique(distance[off_diagonal])
    means = np.array([similarity[off_diagonal & (distance == value)].mean()
                      for value in distances])
    return distances, means
