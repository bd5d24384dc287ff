"""Reading and writing PyTorch state dicts as numpy arrays, never running code from a file.

- ``.safetensors``: read and written with ``safetensors.numpy`` (no torch needed).
- ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` (``torch.save`` files): read with
  ``torch.load(..., weights_only=True)``, which refuses any pickled global outside
  torch's allowlist. A PyTorch Lightning checkpoint (the official LoVT code saves those)
  also pickles its hyper-parameters (omegaconf configs, dataclasses of the official
  code); for those known config containers only, :func:`read_state_dict` substitutes
  an inert placeholder class that runs nothing, so the tensors can be read. Any other
  global (e.g. ``os.system`` or ``builtins.eval`` in a malicious pickle) is refused with
  an error naming the file and the globals.

torch is imported inside the functions that read torch files only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lovt_keras.files import writing_atomically

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

# Top-level modules whose pickled objects may appear in the hyper-parameters of a
# Lightning checkpoint of the official code (its ``save_hyperparameters("config", ...)``
# in ``src/models/pretraining/bimodal_alignment_model.py`` of philip-mueller/lovt stores
# an omegaconf config of dataclasses from its ``models`` / ``common`` packages). They
# are replaced by an inert placeholder, never imported or called.
PLACEHOLDER_MODULES = ("omegaconf", "typing", "pathlib", "argparse", "enum", "models",
                       "common", "data", "metrics", "pytorch_lightning", "lightning",
                       "lightning_fabric", "__main__")


class StateDictError(ValueError):
    """A weights file that cannot be used; the message names the file and the keys."""


def is_state_dict_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a file in one of the formats :func:`read_state_dict` reads."""
    return str(path).lower().endswith(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)


def _placeholder(full_name: str) -> type:
    """A class that accepts any construction and state and does nothing (so a pickled
    object of ``full_name`` loads as an empty shell without running its code)."""

    class _Placeholder:
        def __new__(cls, *args, **kwargs):
            return object.__new__(cls)

        def __init__(self, *args, **kwargs):
            pass

        def __setstate__(self, state):
            pass

        def __call__(self, *args, **kwargs):
            return self

    _Placeholder.__qualname__ = _Placeholder.__name__ = f"Placeholder[{full_name}]"
    return _Placeholder


def _torch_load(path: Path):
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused_error = error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise StateDictError(
            f"{path}: not a readable torch.save file (truncated or corrupt?): "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from None
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 -- an old (non-zip) file: report the first error
        unsafe = []
    refused = [name for name in unsafe if name.split(".")[0] not in PLACEHOLDER_MODULES]
    if refused or not unsafe:
        first = str(refused_error).strip().splitlines()
        raise StateDictError(
            f"{path}: refused to unpickle: it names globals that torch.load(weights_only="
            f"True) does not allow and that could run code: {refused or first[:1]}. Only "
            "tensors (a state dict) and the config objects of a Lightning checkpoint are "
            "read; save the weights with torch.save(model.state_dict(), ...) or as "
            ".safetensors."
        ) from None
    stubs = [(_placeholder(name), name) for name in unsafe]
    try:
        with torch.serialization.safe_globals(stubs):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, TypeError,
            AttributeError) as error:
        raise StateDictError(f"{path}: cannot read its tensors without running code from "
                             f"it: {str(error).splitlines()[0]}") from None


def _tensors(tree, path: Path) -> dict[str, np.ndarray]:
    """The name -> array entries of a loaded object: a state dict, or a checkpoint dict
    holding one under ``state_dict`` (Lightning) or ``model``."""
    import torch

    if isinstance(tree, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = tree.get(key)
            if isinstance(inner, Mapping) and any(
                    isinstance(v, torch.Tensor) for v in inner.values()):
                tree = inner
                break
    if not isinstance(tree, Mapping):
        raise StateDictError(f"{path}: holds a {type(tree).__name__}, not a state dict "
                             "(a mapping from parameter names to tensors)")
    tensors = {str(k): v for k, v in tree.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise StateDictError(f"{path}: holds no tensors (keys: {sorted(map(str, tree))[:10]})")
    out = {}
    for key, value in tensors.items():
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        out[key] = value.numpy().copy()
    return out


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` or ``torch.save`` file as numpy arrays.

    A checkpoint dict holding the weights under ``state_dict`` (PyTorch Lightning) or
    ``model`` is unwrapped. Nothing from the file is executed (see the module docstring).

    Raises:
        FileNotFoundError: no such file.
        StateDictError: an unknown suffix, a truncated or corrupt file, a pickle naming
            globals that could run code, or no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    name = path.name.lower()
    if name.endswith(SAFETENSORS_SUFFIXES):
        from safetensors.numpy import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # noqa: BLE001 -- SafetensorError etc.: name the file
            raise StateDictError(f"{path}: not a readable safetensors file (truncated or "
                                 f"corrupt?): {error}") from None
    if name.endswith(TORCH_SUFFIXES):
        return _tensors(_torch_load(path), path)
    raise StateDictError(f"{path}: unknown weights format; expected one of "
                         f"{SAFETENSORS_SUFFIXES + TORCH_SUFFIXES}")


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> Path:
    """Writes ``tensors`` to ``path`` as safetensors, atomically (a reader never sees half
    a file); PyTorch reads it with ``safetensors.torch.load_file``."""
    from safetensors.numpy import save_file

    path = Path(path)
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    with writing_atomically(path) as tmp:
        save_file(arrays, str(tmp), metadata=dict(metadata) if metadata else None)
    return path
