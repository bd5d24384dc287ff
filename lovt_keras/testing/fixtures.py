"""Tiny models and random batches for tests and smoke runs."""

from __future__ import annotations

import keras_hub
import numpy as np

from lovt_keras import keys
from lovt_keras.models import BertReportEncoder, LoVTPretrainer, ResNetImageEncoder


def tiny_bert(vocabulary_size: int = 128, max_tokens: int = 32, num_layers: int = 2,
              hidden_dim: int = 32) -> keras_hub.models.BertBackbone:
    return keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size,
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=hidden_dim,
        intermediate_dim=2 * hidden_dim,
        max_sequence_length=max_tokens,
    )


def tiny_pretrainer(image_size: int = 64, depth: int = 18, vocabulary_size: int = 128,
                    max_tokens: int = 32, max_sentences: int = 4, projection_dim: int = 32,
                    hidden_dim: int = 64, num_pooling_heads: int = 2,
                    num_frozen_layers: int = 0, **kwargs) -> LoVTPretrainer:
    """A LoVT pretrainer small enough for unit tests (ResNet-18 at 64 px, 2-layer BERT)."""
    image_encoder = ResNetImageEncoder(depth=depth, image_size=image_size)
    report_encoder = BertReportEncoder(
        tiny_bert(vocabulary_size, max_tokens),
        max_sentences=max_sentences,
        num_frozen_layers=num_frozen_layers,
    )
    return LoVTPretrainer(
        image_encoder,
        report_encoder,
        projection_dim=projection_dim,
        hidden_dim=hidden_dim,
        num_pooling_heads=num_pooling_heads,
        **kwargs,
    )


def random_batch(batch_size: int = 4, image_size: int = 64, max_tokens: int = 32,
                 max_sentences: int = 4, vocabulary_size: int = 128, seed: int = 0,
                 sentence_counts=None) -> dict[str, np.ndarray]:
    """A well-formed batch dict: [CLS] sentence tokens... [SEP] padding.

    ``sentence_counts`` (one per sample) sets how many sentences each report has
    (default: random in 1..max_sentences); each sentence gets 1-4 tokens.
    """
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch_size, image_size, image_size, 1)).astype("float32")
    token_ids = np.zeros((batch_size, max_tokens), "int32")
    sentence_ids = np.full((batch_size, max_tokens), -1, "int32")
    padding_mask = np.zeros((batch_size, max_tokens), bool)
    sentence_mask = np.zeros((batch_size, max_sentences), bool)
    if sentence_counts is None:
        sentence_counts = rng.integers(1, max_sentences + 1, size=batch_size)
    for b, count in enumerate(sentence_counts):
        pos = 1
        token_ids[b, 0] = 2  # [CLS]
        for s in range(count):
            length = int(rng.integers(1, 5))
            if pos + length >= max_tokens:
                break
            token_ids[b, pos:pos + length] = rng.integers(5, vocabulary_size, size=length)
            sentence_ids[b, pos:pos + length] = s
            sentence_mask[b, s] = True
            pos += length
        token_ids[b, pos] = 3  # [SEP]
        padding_mask[b, : pos + 1] = True
    return {
        keys.IMAGES: images,
        keys.TOKEN_IDS: token_ids,
        keys.PADDING_MASK: padding_mask,
        keys.SENTENCE_IDS: sentence_ids,
        keys.SENTENCE_MASK: sentence_mask,
    }
