"""Initializers shared by the LoVT heads."""

import keras


def kaiming_normal_fan_out() -> keras.initializers.Initializer:
    """He/Kaiming normal with fan_out, as `torch.nn.init.kaiming_normal_(mode="fan_out")`.

    The official code initializes projection and attention weights this way
    (std = sqrt(2 / fan_out), untruncated), with zero biases.
    """
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )
