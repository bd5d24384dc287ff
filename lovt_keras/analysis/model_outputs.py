"""Runs a pretrainer over batches and keeps what the analysis looks at, as numpy.

Besides the pretrainer's outputs (``keys``: projected global and local embeddings, the
cross-modal vectors, the attention-pooling weights) this collects the encoders' own
features (``y^I`` regions, ``y^R`` sentences) and the cross-modal alignment's attention of
every sentence over the regions, which ``LoVTPretrainer.call`` does not return.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import keras
import numpy as np
from keras import ops

from lovt_keras import keys
from lovt_keras.models.image_encoder import flatten_regions

# Keys of the collected arrays besides the pretrainer's own outputs.
IMAGE_FEATURES = "image_features"  # (n, N, C) y^I, the encoder's regions
SENTENCE_FEATURES = "sentence_features"  # (n, S, D) y^R, the encoder's sentences
SENTENCE_ATTENTION = "sentence_attention"  # (n, S, N) alignment attention of each sentence
POOLING_WEIGHTS = "pooling_weights"  # (n, N) image attention-pooling weights


def alignment_attention(alignment, region_embeddings, sentence_embeddings, sentence_mask):
    """The image->report attention of a ``CrossModalAlignment``: for every sentence ``j``
    the softmax over regions ``i`` of ``(W_k z^I_i) . (W_k z^R_j) / (sqrt(d) T)``.

    The same scores as ``CrossModalAlignment.call`` (official ``CrossAttention`` of
    ``src/models/components/attention.py``); the layer does not return them, so they are
    recomputed here from its key projection.

    Returns:
        ``(B, S, N)`` float32, rows summing to 1 for valid sentences, 0 for padded ones.
    """
    dim = int(region_embeddings.shape[-1])
    scale = 1.0 / (math.sqrt(float(dim)) * alignment.temperature)
    region_keys = alignment.key_projection(region_embeddings)
    sentence_keys = alignment.key_projection(sentence_embeddings)
    scores = ops.cast(ops.einsum("bnd,bsd->bsn", region_keys, sentence_keys), "float32") * scale
    beta = ops.softmax(scores, axis=-1)
    return beta * ops.cast(sentence_mask, "float32")[..., None]


def grid_shape_of(model) -> tuple[int, int]:
    """``(h, w)`` of the region grid of a pretrainer's image feature layer."""
    feature_map = model.image_encoder.output[model.image_feature_layer]
    return int(feature_map.shape[1]), int(feature_map.shape[2])


def collect_outputs(model, batches: Iterable[dict], max_batches: int | None = None
                    ) -> dict[str, np.ndarray]:
    """The pretrainer's outputs and the analysis extras for every sample (inference mode).

    Args:
        model: a built ``LoVTPretrainer`` (any configuration).
        batches: batch dicts with the ``keys.INPUT_KEYS``.
        max_batches: stop after this many (None: all).

    Returns:
        numpy arrays concatenated over batches: the inputs' ``sentence_mask``, every
        output of ``model`` (``keys.IMAGE_GLOBAL`` ...), ``IMAGE_FEATURES``,
        ``SENTENCE_FEATURES``, ``POOLING_WEIGHTS`` (with image attention pooling) and
        ``SENTENCE_ATTENTION`` (with the local losses).
    """
    parts: dict[str, list[np.ndarray]] = {}
    for index, batch in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        for name, value in _batch_outputs(model, batch).items():
            parts.setdefault(name, []).append(value)
    if not parts:
        raise ValueError("no batch to analyze")
    return {name: np.concatenate(values) for name, values in parts.items()}


def _batch_outputs(model, batch: dict) -> dict[str, np.ndarray]:
    inputs = {k: batch[k] for k in keys.INPUT_KEYS}
    outputs = dict(model(inputs, training=False))
    regions = flatten_regions(
        model.image_encoder(inputs[keys.IMAGES], training=False)[model.image_feature_layer])
    report = model.report_encoder(
        {k: inputs[k] for k in (keys.TOKEN_IDS, keys.PADDING_MASK, keys.SENTENCE_IDS)},
        training=False)
    outputs[IMAGE_FEATURES] = regions
    outputs[SENTENCE_FEATURES] = report["sentence_features"]
    if model.image_attention_pooling is not None:
        outputs[POOLING_WEIGHTS] = model.image_attention_pooling(regions, training=False)[1]
    if model.alignment is not None:
        outputs[SENTENCE_ATTENTION] = alignment_attention(
            model.alignment, outputs[keys.REGION_EMBEDDINGS],
            outputs[keys.SENTENCE_EMBEDDINGS], inputs[keys.SENTENCE_MASK])
    result = {name: np.asarray(keras.ops.convert_to_numpy(value), np.float32)
              for name, value in outputs.items()}
    result[keys.SENTENCE_MASK] = np.asarray(inputs[keys.SENTENCE_MASK], bool)
    return result


def report_embeddings(model, tokenizer, sentences: list[str], image_shape) -> np.ndarray:
    """``(P, d)`` global report embeddings of one-sentence reports (zero-shot prompts).

    The pretrainer's report side does not depend on the image, so the prompts go
    through the model with blank images and its ``report_global`` output is kept
    (whatever pooling the configuration uses).
    """
    encoded = tokenizer.encode([[sentence] for sentence in sentences])
    images = np.zeros((len(sentences), *image_shape), np.float32)
    outputs = model({keys.IMAGES: images, **encoded}, training=False)
    return np.asarray(keras.ops.convert_to_numpy(outputs[keys.REPORT_GLOBAL]), np.float32)
