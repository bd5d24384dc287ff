"""Non-linear projection heads.

Official code: ``MLP`` and ``SequenceMLP`` in ``src/models/components/fc.py``, used by
``ModalityModel`` in ``src/models/pretraining/bimodal_alignment_model.py``.
"""

import keras
from keras import ops

from lovt_keras.layers.initializers import kaiming_normal_fan_out


@keras.saving.register_keras_serializable(package="lovt_keras")
class ProjectionHead(keras.layers.Layer):
    """MLP ``d -> hidden -> [BatchNorm] -> ReLU -> output``.

    Applied to global vectors ``(B, d)`` or per element to local sequences
    ``(B, N, d)`` (the official ``SequenceMLP`` is a 1x1 Conv1d, i.e. a Dense per
    element). With a mask ``(B, N)``, BatchNorm statistics are computed over the
    valid elements only, so padded sentences do not shift them.

    Args:
        hidden_dim: width of the hidden layer (2048 in LoVT).
        output_dim: output width (512 in LoVT).
        batch_norm: BatchNorm after the hidden layer (True for LoVT and CLIP*,
            False for ConVIRT).
    """

    def __init__(self, hidden_dim: int = 2048, output_dim: int = 512, batch_norm: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.output_dim = output_dim
        self.batch_norm = batch_norm
        self.supports_masking = True
        self.hidden = keras.layers.Dense(
            hidden_dim,
            use_bias=not batch_norm,
            kernel_initializer=kaiming_normal_fan_out(),
            dtype=self.dtype_policy,
            name="hidden",
        )
        self.norm = (
            keras.layers.BatchNormalization(
                momentum=0.9, epsilon=1e-5, dtype=self.dtype_policy, name="norm"
            )
            if batch_norm
            else None
        )
        self.output_dense = keras.layers.Dense(
            output_dim,
            kernel_initializer=kaiming_normal_fan_out(),
            dtype=self.dtype_policy,
            name="output",
        )

    def build(self, input_shape):
        self.hidden.build(input_shape)
        hidden_shape = tuple(input_shape[:-1]) + (self.hidden_dim,)
        if self.norm is not None:
            self.norm.build(hidden_shape)
        self.output_dense.build(hidden_shape)
        self.built = True

    def call(self, inputs, mask=None, training=None):
        x = self.hidden(inputs)
        if self.norm is not None:
            x = self.norm(x, training=training, mask=mask)
        x = ops.relu(x)
        return self.output_dense(x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(
            hidden_dim=self.hidden_dim, output_dim=self.output_dim, batch_norm=self.batch_norm
        )
        return config
