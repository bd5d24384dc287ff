"""Weights in and out: torchvision ResNet state dicts, official LoVT checkpoints and
Hugging Face BERT folders to our encoders, and our encoders to PyTorch.

Files are read without running code from them (``torch.load(weights_only=True)`` or
safetensors); torch is imported only by the functions that read torch files. The
command line is ``python -m tools.convert``.
"""

from lovt_keras.weights.image_encoders import load_image_encoder, save_image_encoder
from lovt_keras.weights.state_dict_files import (
    StateDictError,
    is_state_dict_file,
    read_state_dict,
    write_safetensors,
)
from lovt_keras.weights.torchvision_resnet import (
    LOVT_IMAGE_PREFIX,
    encoder_to_torchvision,
    load_torchvision_weights,
    save_torchvision_safetensors,
    set_torchvision_weights,
    torchvision_depth,
    torchvision_layout,
    torchvision_resnet_encoder,
)

__all__ = [
    "LOVT_IMAGE_PREFIX",
    "StateDictError",
    "encoder_to_torchvision",
    "is_state_dict_file",
    "load_image_encoder",
    "load_torchvision_weights",
    "read_state_dict",
    "save_image_encoder",
    "save_torchvision_safetensors",
    "set_torchvision_weights",
    "torchvision_depth",
    "torchvision_layout",
    "torchvision_resnet_encoder",
    "write_safetensors",
]
