"""Symmetric cross-modal attention between regions and sentences.

Official code: ``CrossAttention`` in ``src/models/components/attention.py``.
"""

import math

import keras
from keras import ops

from lovt_keras.layers.initializers import kaiming_normal_fan_out

NEG_INF = -1e9


@keras.saving.register_keras_serializable(package="lovt_keras")
class CrossModalAlignment(keras.layers.Layer):
    """Symmetric scaled-dot-product attention aligning regions and sentences.

    The official ``CrossAttention`` with ``symmetric_attention=True`` and
    projected keys, values and outputs: one shared key projection ``W_k`` scores
    every region ``i`` against every sentence ``j`` of the same sample,

        score_ij = (W_k z^I_i) . (W_k z^R_j) / sqrt(d),

    and the same score matrix serves both directions:

    - report->image: for region ``i``, softmax over the valid sentences ``j``,
      ``z^{R->I}_i = BN(W_o sum_j alpha_ij W_v z^R_j)``;
    - image->report: for sentence ``j``, softmax over the regions ``i``,
      ``z^{I->R}_j = BN(W_o sum_i beta_ji W_v z^I_i)``, zero rows for padded
      sentences.

    ``W_v``, ``W_o`` and the BatchNorm are shared by both directions. The
    BatchNorm statistics of the image->report output are taken over valid
    sentences only.

    Call args:
        region_embeddings: ``(B, N, d)`` projected local image embeddings z^I.
        sentence_embeddings: ``(B, S, d)`` projected sentence embeddings z^R.
        sentence_mask: ``(B, S)`` bool, True for real sentences.

    Returns:
        ``(report_to_image, image_to_report)`` of shapes ``(B, N, d)`` and
        ``(B, S, d)``.
    """

    def __init__(self, batch_norm: bool = True, temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.batch_norm = batch_norm
        self.temperature = temperature

    def build(self, region_embeddings_shape, sentence_embeddings_shape=None,
              sentence_mask_shape=None):
        dim = region_embeddings_shape[-1]

        def dense(name):
            layer = keras.layers.Dense(
                dim,
                kernel_initializer=kaiming_normal_fan_out(),
                dtype=self.dtype_policy,
                name=name,
            )
            layer.build((None, None, dim))
            return layer

        self.key_projection = dense("key_projection")
        self.value_projection = dense("value_projection")
        self.output_projection = dense("output_projection")
        self.norm = None
        if self.batch_norm:
            self.norm = keras.layers.BatchNormalization(
                momentum=0.9, epsilon=1e-5, dtype=self.dtype_policy, name="norm"
            )
            self.norm.build((None, None, dim))
        self.built = True

    def call(self, region_embeddings, sentence_embeddings, sentence_mask, training=None):
        dim = ops.shape(region_embeddings)[-1]
        scale = 1.0 / (math.sqrt(float(dim)) * self.temperature)
        mask = ops.cast(sentence_mask, "bool")
        region_keys = self.key_projection(region_embeddings)
        sentence_keys = self.key_projection(sentence_embeddings)
        scores = ops.einsum("bnd,bsd->bns", region_keys, sentence_keys)
        scores = ops.cast(scores, "float32") * scale  # (B, N, S)

        # report -> image: each region attends over the valid sentences.
        r2i_scores = ops.where(mask[:, None, :], scores, NEG_INF)
        alpha = ops.softmax(r2i_scores, axis=-1)
        alpha = alpha * ops.cast(ops.any(mask, axis=-1), "float32")[:, None, None]
        # image -> report: each sentence attends over all regions.
        beta = ops.softmax(ops.transpose(scores, (0, 2, 1)), axis=-1)  # (B, S, N)
        beta = beta * ops.cast(mask, "float32")[..., None]

        compute_dtype = region_keys.dtype
        sentence_values = self.value_projection(sentence_embeddings)
        region_values = self.value_projection(region_embeddings)
        report_to_image = ops.einsum("bns,bsd->bnd", ops.cast(alpha, compute_dtype),
                                     sentence_values)
        image_to_report = ops.einsum("bsn,bnd->bsd", ops.cast(beta, compute_dtype),
                                     region_values)
        report_to_image = self.output_projection(report_to_image)
        image_to_report = self.output_projection(image_to_report)
        if self.norm is not None:
            report_to_image = self.norm(report_to_image, training=training)
            image_to_report = self.norm(image_to_report, training=training, mask=mask)
        image_to_report = image_to_report * ops.cast(mask, image_to_report.dtype)[..., None]
        return report_to_image, image_to_report

    def compute_output_shape(self, region_embeddings_shape, sentence_embeddings_shape=None,
                             sentence_mask_shape=None):
        return tuple(region_embeddings_shape), tuple(sentence_embeddings_shape)

    def get_config(self):
        config = super().get_config()
        config.update(batch_norm=self.batch_norm, temperature=self.temperature)
        return config
