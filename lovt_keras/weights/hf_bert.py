"""Hugging Face BERT folders for :func:`~lovt_keras.models.report_encoder.bert_backbone_from_folder`.

keras-hub's ``BertBackbone.from_preset`` reads a Hugging Face folder whose weights are
``model.safetensors``. Many published BERTs (Bio_ClinicalBERT among them) ship only
``pytorch_model.bin``; :func:`bert_preset_folder` converts that file, read with
``torch.load(weights_only=True)`` (nothing from it is executed), to the equivalent
``model.safetensors`` in a temporary copy of the folder (the other files linked), so
the tokenizer (``vocab.txt``) comes from the same folder either way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lovt_keras.weights.state_dict_files import StateDictError, read_state_dict, write_safetensors

SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"


def _check_bert(folder: Path) -> str:
    """The folder's kind ("huggingface" or "keras-hub"), or a ValueError naming why it is
    not a BERT."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{folder}: not a BERT folder (no config.json; a Hugging Face BERT "
                         "folder holds config.json, vocab.txt and model.safetensors or "
                         "pytorch_model.bin)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path}: not valid JSON ({error})") from None
    if "class_name" in config:  # a keras-hub preset
        if "Bert" not in str(config.get("class_name")):
            raise ValueError(f"{folder}: a keras-hub preset of {config['class_name']}, not a BERT")
        return "keras-hub"
    model_type = config.get("model_type")
    if model_type != "bert":
        raise ValueError(f"{folder}: config.json has model_type {model_type!r}, not 'bert' "
                         "(only BERT report encoders are supported)")
    if not (folder / "vocab.txt").is_file():
        raise ValueError(f"{folder}: a BERT folder without vocab.txt (the tokenizer's vocabulary)")
    if not ((folder / SAFETENSORS_FILE).is_file() or (folder / TORCH_FILE).is_file()):
        raise ValueError(f"{folder}: a BERT folder without weights ({SAFETENSORS_FILE} or "
                         f"{TORCH_FILE})")
    return "huggingface"


@contextlib.contextmanager
def bert_preset_folder(folder: str | os.PathLike) -> Iterator[str]:
    """Yields a folder keras-hub's ``BertBackbone.from_preset`` reads: ``folder`` itself,
    or for a Hugging Face folder with only ``pytorch_model.bin`` a temporary copy with
    the weights as ``model.safetensors`` (removed afterwards).

    Raises:
        FileNotFoundError: no such folder.
        ValueError: not a BERT folder (no config.json, another model_type, no vocab.txt,
            no weights), or unreadable weights (naming the file).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: no such folder (a BERT model folder, with vocab.txt, config.json "
            "and the weights, is expected)")
    kind = _check_bert(folder)
    if kind == "keras-hub" or (folder / SAFETENSORS_FILE).is_file():
        yield str(folder)
        return
    tensors = read_state_dict(folder / TORCH_FILE)
    if not any(k.endswith("embeddings.word_embeddings.weight") for k in tensors):
        raise StateDictError(f"{folder / TORCH_FILE}: no BERT weights (no "
                             "embeddings.word_embeddings.weight)")
    with tempfile.TemporaryDirectory(prefix="bert-") as tmp:
        for item in folder.iterdir():
            if item.name != TORCH_FILE and item.is_file():
                try:
                    os.symlink(item.resolve(), Path(tmp) / item.name)
                except OSError:
                    shutil.copy(item, Path(tmp) / item.name)
        write_safetensors(Path(tmp) / SAFETENSORS_FILE, tensors, {"format": "pt"})
        yield tmp
