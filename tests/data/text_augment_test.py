"""Tests for sentence-level text augmentation: distributions against closed forms."""

from collections import Counter

import numpy as np
import pytest

from lovt_keras.data.text_augment import (
    augment_sentences,
    random_sentence,
    random_sentence_swaps,
)

SENTENCES = ["a", "b", "c", "d"]
DRAWS = 20_000


class _RecordingGenerator:
    """Wraps a Generator and records how many swaps each call draws."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.num_swaps: list[int] = []

    def geometric(self, p):
        value = self.rng.geometric(p)
        self.num_swaps.append(int(value) - 1)
        return value

    def integers(self, *args, **kwargs):
        return self.rng.integers(*args, **kwargs)


def test_swap_count_is_geometric_with_mean_1_5():
    rng = _RecordingGenerator(0)
    for _ in range(DRAWS):
        random_sentence_swaps(SENTENCES, rng)
    counts = np.asarray(rng.num_swaps)
    # Failures before the first success, p = 0.4: mean (1-p)/p = 1.5, std sqrt(1-p)/p
    # = 1.94, so the standard error over 20k draws is 0.014; tolerance ~4.5 SE.
    assert abs(counts.mean() - 1.5) < 0.06
    assert counts.min() == 0
    # P(k) = 0.6^k * 0.4 for k = 0, 1, 2 (standard errors ~0.0035).
    for k in range(3):
        assert abs(np.mean(counts == k) - 0.4 * 0.6**k) < 0.015


def test_swaps_are_uniform_over_positions():
    # For one sentence among n = 4, a swap of two uniform positions leaves it in
    # place with probability 5/8 and moves it to each other slot with 1/8, so after
    # k swaps P(at its slot) = 1/4 + 3/4 * (1/2)^k. Averaged over k ~ Geom(0.4):
    # 1/4 + 3/4 * 0.4 / (1 - 0.6/2) = 0.678571...
    rng = np.random.default_rng(1)
    stays = np.zeros(4)
    for _ in range(DRAWS):
        out = random_sentence_swaps(SENTENCES, rng)
        stays += np.asarray(out) == np.asarray(SENTENCES)
    expected = 0.25 + 0.75 * 0.4 / 0.7
    np.testing.assert_allclose(stays / DRAWS, expected, atol=0.015)


def test_swaps_keep_the_multiset_and_do_not_modify_input():
    rng = np.random.default_rng(2)
    sentences = ["x", "y", "y", "z", "w"]
    original = list(sentences)
    changed = 0
    for _ in range(500):
        out = random_sentence_swaps(sentences, rng)
        assert sorted(out) == sorted(original)
        assert out is not sentences
        changed += out != original
    assert sentences == original
    # Unchanged order needs 0 effective swaps; it happens well under 70% of the time.
    assert 0.3 < changed / 500 < 0.7
    assert random_sentence_swaps(["only"], rng) == ["only"]
    assert random_sentence_swaps([], rng) == []
    with pytest.raises(ValueError, match="p must be"):
        random_sentence_swaps(SENTENCES, rng, p=0.0)


def test_swaps_match_a_numpy_replay_with_the_same_seed():
    for seed in range(20):
        out = random_sentence_swaps(SENTENCES, np.random.default_rng(seed), p=0.3)
        replay = np.random.default_rng(seed)
        expected = list(SENTENCES)
        for i, j in replay.integers(0, 4, size=(replay.geometric(0.3) - 1, 2)):
            expected[i], expected[j] = expected[j], expected[i]
        assert out == expected


def test_random_sentence_is_uniform():
    rng = np.random.default_rng(3)
    counts = Counter()
    for _ in range(DRAWS):
        out = random_sentence(SENTENCES, rng)
        assert len(out) == 1
        counts[out[0]] += 1
    # Standard error of each frequency: sqrt(0.25 * 0.75 / 20k) = 0.003.
    np.testing.assert_allclose([counts[s] / DRAWS for s in SENTENCES], 0.25, atol=0.012)
    with pytest.raises(ValueError, match="at least one sentence"):
        random_sentence([], rng)


def test_augment_sentences_dispatch():
    rng = np.random.default_rng(4)
    assert augment_sentences(SENTENCES, rng, None) == SENTENCES
    assert sorted(augment_sentences(SENTENCES, rng, "random_swaps")) == SENTENCES
    assert augment_sentences(SENTENCES, rng, "random_sentence")[0] in SENTENCES
    with pytest.raises(ValueError, match="unknown text augmentation mode 'shuffle'"):
        augment_sentences(SENTENCES, rng, "shuffle")
