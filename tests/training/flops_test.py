import keras
import numpy as np
import pytest

from lovt_keras.layers import CrossModalAlignment
from lovt_keras.training.flops import (
    TRAINING_FLOPS_PER_FORWARD,
    count_forward_flops,
    einsum_flops,
    time_matmul,
)


def _zeros(*shape):
    return np.zeros(shape, "float32")


def test_conv_counts_one_multiply_add_per_kernel_tap_and_output():
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs))
    # output 2 x 8 x 8 x 8, each a 3 x 3 x 3 dot product
    assert count_forward_flops(model, _zeros(2, 16, 16, 3)).total == 2 * (2 * 8 * 8 * 8) * 27


def test_depthwise_and_transposed_conv():
    inputs = keras.Input((8, 8, 4))
    depthwise = keras.layers.DepthwiseConv2D(3, padding="same")(inputs)
    transposed = keras.layers.Conv2DTranspose(5, 2, strides=2)(inputs)
    count = count_forward_flops(keras.Model(inputs, [depthwise, transposed]), _zeros(1, 8, 8, 4))
    assert count.by_layer_type == {"DepthwiseConv2D": 2 * (8 * 8 * 4) * 9,
                                   "Conv2DTranspose": 2 * (8 * 8 * 4) * (2 * 2 * 5)}


def test_dense_counts_every_leading_row():
    layer = keras.layers.Dense(5)
    assert count_forward_flops(layer, _zeros(3, 7, 4)).total == 2 * 21 * 4 * 5


def test_einsum_flops_by_hand():
    assert einsum_flops("bnd,bsd->bns", (2, 49, 64), (2, 6, 64)) == 2 * 2 * 49 * 6 * 64
    assert einsum_flops("ij,jk->ik", (3, 4), (4, 5)) == 2 * 3 * 4 * 5
    assert einsum_flops("...c,cd->...d", (2, 3, 4), (4, 6)) == 2 * 2 * 3 * 4 * 6
    layer = keras.layers.EinsumDense("abc,cd->abd", output_shape=(None, 6))
    assert count_forward_flops(layer, _zeros(2, 3, 4)).total == 2 * 2 * 3 * 4 * 6
    with pytest.raises(ValueError, match="index"):
        einsum_flops("ij,jk->ik", (3, 4), (5, 6))


def test_attention_counts_projections_and_both_products():
    layer = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    query, value = _zeros(2, 5, 8), _zeros(2, 7, 8)
    count = count_forward_flops(layer, query, value=value)
    # query and output projections (10 rows, 8 -> 8), key and value (14 rows, 8 -> 8)
    projections = 2 * (2 * 2 * 5 * 8 * 8) + 2 * (2 * 2 * 7 * 8 * 8)
    attention = 2 * 2 * 2 * 5 * 7 * (4 + 4)  # scores and weighted values, 2 heads
    assert count.by_layer_type == {"EinsumDense": projections, "MultiHeadAttention": attention}


def test_cross_modal_alignment_counts_its_einsums_and_its_dense_layers():
    regions, sentences = _zeros(2, 4, 8), _zeros(2, 3, 8)
    mask = np.array([[True, True, False], [True, False, False]])
    layer = CrossModalAlignment()
    layer.build(regions.shape, sentences.shape, mask.shape)
    count = count_forward_flops(layer, regions, sentences, mask)
    dense = 3 * (2 * 2 * 4 * 8 * 8 + 2 * 2 * 3 * 8 * 8)  # key, value, output on both sides
    assert count.by_layer_type == {"Dense": dense, "CrossModalAlignment": 6 * 2 * 4 * 3 * 8}


def test_small_model_total_layers_and_scaling():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)  # 6 x 6 x 4, 9 taps
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, name="head")(x)  # 144 -> 3
    model = keras.Model(inputs, outputs, name="small")
    count = count_forward_flops(model, _zeros(2, 8, 8, 1))
    per_sample = 2 * 144 * 9 + 2 * 144 * 3
    assert count.total == 2 * per_sample
    assert count.by_layer == {"small/conv": 2 * 2 * 144 * 9, "small/head": 2 * 2 * 144 * 3}
    assert count_forward_flops(model, _zeros(1, 8, 8, 1)).scaled(2) == count
    assert TRAINING_FLOPS_PER_FORWARD == 3
    # The wrappers are gone: a later call counts nothing and runs the layer's own call.
    assert "call" not in model.get_layer("conv").__dict__


def test_building_a_subclassed_model_is_not_counted():
    # An unbuilt model infers shapes first (on JAX with tracers, not KerasTensors).
    class Twice(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def build(self, input_shape):
            self.compute_output_spec(keras.KerasTensor(input_shape))
            self.built = True

        def call(self, x, training=None):
            return self.dense(x)

    assert count_forward_flops(Twice(), _zeros(2, 4)).total == 2 * 2 * 4 * 3


def test_time_matmul_is_a_positive_duration():
    assert 0 < time_matmul(64, repeats=2) < 10
