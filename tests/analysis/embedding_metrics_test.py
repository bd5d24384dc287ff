"""Embedding diagnostics, retrieval, zero-shot and grounding on inputs with known answers."""

import numpy as np
import pytest

from lovt_keras.analysis import embedding_metrics as em


def _random_unit(shape, seed=0):
    return em.l2_normalize(np.random.default_rng(seed).normal(size=shape))


def test_collapsed_embeddings_have_zero_spread_and_uniformity_zero():
    local = np.tile(np.array([0.6, 0.8, 0.0]), (5, 7, 1))
    assert em.channel_std(local) == pytest.approx(
        {"ch_std": 0.0, "ch_std_per_sample": 0.0, "ch_std_sample_centroids": 0.0}, abs=1e-12)
    assert em.channel_std(local[:, 0]) == {"ch_std": pytest.approx(0.0, abs=1e-12)}
    assert em.uniformity(local[:, 0]) == pytest.approx(0.0, abs=1e-12)


def test_channel_std_matches_numpy_and_ignores_masked_elements():
    rng = np.random.default_rng(1)
    local = rng.normal(size=(6, 5, 4))
    mask = np.ones((6, 5), bool)
    mask[:, 3:] = False
    local_with_junk = local.copy()
    local_with_junk[:, 3:] = 1e6  # masked: must not matter
    result = em.channel_std(local_with_junk, mask)
    valid = local[:, :3]
    within = valid.var(axis=1, ddof=1)  # (6, 4)
    centroids = valid.mean(axis=1)
    assert result["ch_std_per_sample"] == pytest.approx(np.sqrt(within).mean(axis=1).mean())
    assert result["ch_std_sample_centroids"] == pytest.approx(
        centroids.std(axis=0, ddof=1).mean())
    assert result["ch_std"] == pytest.approx(
        np.sqrt(centroids.var(axis=0, ddof=1) + within.mean(axis=0)).mean())


def test_uniformity_by_hand():
    # Orthogonal unit vectors: |x - y|^2 = 2 for every pair -> log exp(-2 * 2) = -4.
    assert em.uniformity(np.eye(3)) == pytest.approx(-4.0)
    # Two equal points and one opposite: pairs at 0, 4, 4 -> log((1 + 2 e^-8) / 3).
    points = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert em.uniformity(points) == pytest.approx(np.log((1 + 2 * np.exp(-8.0)) / 3))
    assert em.local_uniformity(np.stack([np.eye(3), np.eye(3)])) == pytest.approx(-4.0)


def test_identical_modalities_are_fully_indistinguishable():
    regions = _random_unit((4, 6, 8))
    result = em.modality_assignment(regions, regions.copy())
    assert result["indistinguishability"] == pytest.approx(1.0)
    assert result["a_1nn_cross_rate"] == pytest.approx(1.0)
    # The official centroid assignment: 0.5 = the modalities overlap perfectly.
    assert result["a_centroid_assignment"] == pytest.approx(0.5)
    assert result["b_centroid_assignment"] == pytest.approx(0.5)


def test_separated_modalities_are_fully_distinguishable():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(3, 5, 4)) * 0.01 + 10.0
    b = rng.normal(size=(3, 4, 4)) * 0.01 - 10.0
    mask_b = np.array([[True] * 4, [True, True, False, False], [True] * 4])
    result = em.modality_assignment(a, b, mask_b=mask_b)
    assert result["indistinguishability"] == 0.0
    assert result["a_1nn_cross_rate"] == 0.0 and result["b_1nn_cross_rate"] == 0.0
    assert result["a_centroid_assignment"] == pytest.approx(1.0, abs=1e-5)
    # chance: the other modality's share of the neighbours, e.g. 4 / (5 + 4 - 1).
    assert result["a_1nn_chance_rate"] == pytest.approx(np.mean([4 / 8, 2 / 6, 4 / 8]))


def test_pair_distance_with_mask():
    a = np.zeros((1, 3, 2))
    b = np.array([[[3.0, 4.0], [0.0, 1.0], [100.0, 0.0]]])
    assert em.pair_distance(a, b, np.array([[True, True, False]])) == pytest.approx(3.0)
    assert em.pair_distance(a[:, 0], b[:, 0]) == pytest.approx(5.0)


def test_perfect_retrieval_gives_recall_one_and_collapse_gives_chance():
    image = _random_unit((20, 16), seed=3)
    perfect = em.retrieval_recall(image, image * 2.0)
    assert set(perfect.values()) == {1.0} and len(perfect) == 6
    collapsed = em.retrieval_recall(np.ones((20, 4)), np.ones((20, 4)))
    assert collapsed["image_to_report_recall@1"] == 0.0  # ties count against the query
    assert collapsed["report_to_image_recall@10"] == 0.0
    # Reports shifted by one: every true pair ranks second for a 2-cycle construction.
    image = np.eye(4)
    report = np.array([[1.0, 0.1, 0, 0], [0.1, 1.0, 0, 0], [0, 0, 1.0, 0.1], [0, 0, 0.1, 1.0]])
    shifted = report[[1, 0, 3, 2]]
    result = em.retrieval_recall(image, shifted, ks=(1, 2))
    assert result["image_to_report_recall@1"] == 0.0 and result["image_to_report_recall@2"] == 1.0


def test_roc_auc_and_zero_shot():
    assert em.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert em.roc_auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    assert np.isnan(em.roc_auc([0.1, 0.2], [1, 1]))
    # Images that contain class c point to the positive prompt of c.
    positive, negative = np.eye(4)[:2], np.eye(4)[2:]
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], bool)
    image = labels @ positive + (~labels) @ negative
    assert em.zero_shot_auc(image, positive, negative, labels) == pytest.approx([1.0, 1.0])
    assert em.zero_shot_auc(image, negative, positive, labels) == pytest.approx([0.0, 0.0])


def test_one_hot_attention_lands_on_its_region_pixels():
    weights = np.zeros(6)
    weights[4] = 1.0  # row 1, column 1 of a 2 x 3 grid
    heat = em.upsample_attention(weights, (2, 3), (8, 12))
    expected = np.zeros((8, 12))
    expected[4:8, 4:8] = 1.0 / 16
    np.testing.assert_allclose(heat, expected)
    assert heat.sum() == pytest.approx(1.0)
    batched = em.upsample_attention(np.stack([weights, np.full(6, 1 / 6)]), (2, 3), (8, 12))
    np.testing.assert_allclose(batched[1], np.full((8, 12), 1 / 96))


def test_grounding_scores_of_one_hot_and_uniform_attention():
    mask = np.zeros((8, 8), bool)
    mask[0:4, 0:2] = True  # half of region 0 of a 2 x 2 grid
    on_target = em.grounding_score(np.array([1.0, 0, 0, 0]), mask, (2, 2))
    assert on_target["share"] == pytest.approx(0.5) and on_target["hit"] == 1.0
    off_target = em.grounding_score(np.array([0, 0, 0, 1.0]), mask, (2, 2))
    assert off_target["share"] == 0.0 and off_target["hit"] == 0.0
    uniform = em.grounding_score(np.full(4, 0.25), mask, (2, 2))
    assert uniform["share"] == pytest.approx(uniform["uniform_share"])
    assert uniform["uniform_share"] == pytest.approx(uniform["area_fraction"]) == 8 / 64
    assert uniform["random_hit_rate"] == 0.25


def test_spatial_smoothness_of_a_linear_ramp():
    # Features that rotate with the column: neighbours are more similar than far cells.
    angles = np.tile(np.arange(4) * 0.4, 3)  # 3 x 4 grid, row-major
    local = np.stack([np.cos(angles), np.sin(angles)], axis=-1)[None]
    distances, similarity = em.spatial_smoothness(local, (3, 4))
    assert distances[0] == 1.0 and np.all(np.diff(distances) > 0)
    # Vertical neighbours (identical) and horizontal ones (cos 0.4) share distance 1.
    assert similarity[0] == pytest.approx((1.0 * 8 + np.cos(0.4) * 9) / 17)
    at_three = similarity[list(distances).index(3.0)]
    assert at_three == pytest.approx(np.cos(1.2))
