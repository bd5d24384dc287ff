"""The backend's global random state, for exact resumes (the one backend-specific spot).

Keras layers draw their randomness from ``SeedGenerator`` variables, which checkpoints
save with the model, with one exception: on PyTorch an unseeded ``Dropout`` (every
dropout of keras-hub's BERT) takes Keras' fast path ``torch.nn.functional.dropout``,
which uses torch's global generator. Its state is saved and restored here; TensorFlow
and JAX need nothing (their dropout reads the layer's ``SeedGenerator``).
"""

from __future__ import annotations

import keras
import numpy as np


def get_global_state() -> dict[str, np.ndarray]:
    """Named uint8 arrays holding the backend's global generator states (may be empty)."""
    if keras.backend.backend() != "torch":
        return {}
    import torch

    states = {"torch_cpu": torch.random.get_rng_state().numpy().copy()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            states[f"torch_cuda_{index}"] = state.numpy().copy()
    return states


def set_global_state(states: dict[str, np.ndarray]) -> None:
    """Restores states from ``get_global_state`` (entries of other backends are ignored)."""
    if keras.backend.backend() != "torch" or not states:
        return
    import torch

    if "torch_cpu" in states:
        torch.random.set_rng_state(torch.from_numpy(np.asarray(states["torch_cpu"], np.uint8)))
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            state = states.get(f"torch_cuda_{index}")
            if state is not None:
                torch.cuda.set_rng_state(torch.from_numpy(np.asarray(state, np.uint8)), index)
