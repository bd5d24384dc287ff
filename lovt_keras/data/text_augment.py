"""Sentence-level text augmentation of reports (official ``src/models/text/report_transforms.py``).

- LoVT: ``random_sentence_swaps``; the number of swaps is geometric with success
  probability 0.4 counting failures (mean 1.5), each swap exchanges two
  uniformly chosen positions (possibly the same one), no sentence is dropped.
- ConVIRT and CLIP*: ``random_sentence``, one uniformly chosen sentence.

Functions take a ``numpy.random.Generator`` so that data workers own their
randomness and runs are reproducible from a seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RANDOM_SWAPS = "random_swaps"
RANDOM_SENTENCE = "random_sentence"
AUGMENTATION_MODES = (None, RANDOM_SWAPS, RANDOM_SENTENCE)


def random_sentence_swaps(
    sentences: Sequence[str], rng: np.random.Generator, p: float = 0.4
) -> list[str]:
    """Returns a copy of ``sentences`` with a random number of pairwise swaps.

    The number of swaps is ``rng.geometric(p) - 1`` (failures before the first
    success; P(k) = (1-p)^k p, mean (1-p)/p = 1.5 for p = 0.4), as the official
    ``RandomIndexSwapper(swap_prob=0.6)``. Each swap draws two positions
    uniformly and independently and exchanges them.

    Args:
        sentences: the report's sentences (not modified).
        rng: source of randomness.
        p: success probability of the geometric distribution, in (0, 1].

    Returns:
        A new list holding the same multiset of sentences.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p must be in (0, 1], got {p}")
    result = list(sentences)
    num_swaps = int(rng.geometric(p)) - 1
    if num_swaps == 0 or len(result) < 2:
        return result
    positions = rng.integers(0, len(result), size=(num_swaps, 2))
    for i, j in positions.tolist():
        result[i], result[j] = result[j], result[i]
    return result


def random_sentence(sentences: Sequence[str], rng: np.random.Generator) -> list[str]:
    """One uniformly chosen sentence of a non-empty report, as a one-element list."""
    if len(sentences) == 0:
        raise ValueError("random_sentence needs at least one sentence, got none")
    return [sentences[int(rng.integers(len(sentences)))]]


def augment_sentences(
    sentences: Sequence[str], rng: np.random.Generator, mode: str | None, p: float = 0.4
) -> list[str]:
    """Applies the augmentation ``mode``: None (copy), "random_swaps" or "random_sentence"."""
    if mode is None:
        return list(sentences)
    if mode == RANDOM_SWAPS:
        return random_sentence_swaps(sentences, rng, p)
    if mode == RANDOM_SENTENCE:
        return random_sentence(sentences, rng)
    raise ValueError(
        f"unknown text augmentation mode {mode!r}; expected one of {AUGMENTATION_MODES}"
    )
