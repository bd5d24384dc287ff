"""Weights in and out: torchvision ResNets, official LoVT checkpoints and BERT folders,
compared with a pure-PyTorch reference on the same input (every backend; torch is only
the reference and the file format here)."""

import json
import os
import shutil
import sys
import types
from pathlib import Path

import keras
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lovt_keras.models import (
    ResNetImageEncoder,
    load_image_encoder_weights,
    resnet_image_encoder,
)
from lovt_keras.models.report_encoder import bert_backbone_from_folder, minilm_folder
from lovt_keras.training.evaluation_program import eval_encoders
from lovt_keras.weights import (
    LOVT_IMAGE_PREFIX,
    StateDictError,
    load_image_encoder,
    read_state_dict,
    save_image_encoder,
    set_torchvision_weights,
)
from tests.weights.torch_resnet import ResNet, random_resnet
from tools import convert

SIZE = 64
ATOL = 1e-4  # float32; the measured difference is ~1e-6 on maps of magnitude ~4


@pytest.fixture(scope="module")
def torch_resnet():
    return random_resnet(18, seed=0)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 1)).astype("float32")


@pytest.fixture(scope="module")
def encoder():
    return ResNetImageEncoder(depth=18, image_size=SIZE)


def _torch_features(model, images, channels=3):
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    if channels == 3:
        x = x.repeat(1, 3, 1, 1)
    with torch.no_grad():
        return {k: v.permute(0, 2, 3, 1).numpy() for k, v in model.features(x).items()}


def _max_diff(encoder, images, reference):
    ours = encoder(images, training=False)
    return max(float(np.abs(keras.ops.convert_to_numpy(ours[k]) - reference[k]).max())
               for k in reference)


def _numpy_state(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


def test_torchvision_files_give_the_pytorch_features(tmp_path, encoder, torch_resnet, images):
    reference = _torch_features(torch_resnet, images)
    # .pt as the gin binding IMAGENET_WEIGHTS gives it (lovt.resnet_image_encoder.weights)
    torch.save(torch_resnet.state_dict(), tmp_path / "resnet18.pt")
    built = resnet_image_encoder(18, SIZE, weights=str(tmp_path / "resnet18.pt"))
    assert _max_diff(built, images, reference) < ATOL
    # .safetensors and .pth under prefixes, found automatically
    for name, prefix in (("r.safetensors", "backbone."), ("r.pth", "module.model.")):
        state = {prefix + k: v.contiguous() for k, v in torch_resnet.state_dict().items()}
        save_file(state, tmp_path / name) if name.endswith(".safetensors") else torch.save(
            state, tmp_path / name)
        set_torchvision_weights(encoder, _numpy_state(random_resnet(18, seed=5)))
        load_image_encoder_weights(encoder, str(tmp_path / name))
        assert _max_diff(encoder, images, reference) < ATOL, name


def test_grayscale_equals_summed_conv1_and_one_channel_conv1_loads(encoder, torch_resnet,
                                                                   images, tmp_path):
    set_torchvision_weights(encoder, _numpy_state(torch_resnet))
    # Our grayscale input == a 1-channel ResNet whose conv1 is summed over input channels.
    gray = ResNet(18, in_channels=1).eval()
    state = torch_resnet.state_dict()
    state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
    gray.load_state_dict(state, strict=True)
    reference = _torch_features(gray, images, channels=1)
    assert _max_diff(encoder, images, reference) < ATOL
    # ... and such a 1-channel state dict imports exactly (conv1 spread as w / 3).
    other = ResNetImageEncoder(depth=18, image_size=SIZE)
    set_torchvision_weights(other, _numpy_state(gray))
    assert _max_diff(other, images, reference) < ATOL


def test_export_loads_strictly_into_pytorch_and_reproduces(encoder, torch_resnet, images,
                                                           tmp_path):
    set_torchvision_weights(encoder, _numpy_state(torch_resnet))
    ours = {k: keras.ops.convert_to_numpy(v) for k, v in encoder(images, training=False).items()}
    # a plain torchvision-layout ResNet (with its 1000-class fc), strict=True
    path = save_image_encoder(encoder, tmp_path / "out.safetensors", num_classes=1000)
    plain = ResNet(18).eval()
    plain.load_state_dict(load_file(path), strict=True)
    for name, value in plain.state_dict().items():
        if not name.startswith("fc.") and not name.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(value.numpy(), torch_resnet.state_dict()[name].numpy())
    reference = _torch_features(plain, images)
    assert max(np.abs(ours[k] - reference[k]).max() for k in ours) < ATOL
    # without fc: fc = Identity, strict=True
    headless = ResNet(18).eval()
    headless.fc = torch.nn.Identity()
    headless.load_state_dict(load_file(save_image_encoder(encoder, tmp_path / "h.safetensors")),
                             strict=True)
    # a 1-channel conv1 for grayscale PyTorch users
    gray = ResNet(18, in_channels=1).eval()
    gray.fc = torch.nn.Identity()
    gray.load_state_dict(load_file(save_image_encoder(
        encoder, tmp_path / "g.safetensors", conv1_channels=1)), strict=True)
    reference = _torch_features(gray, images, channels=1)
    assert max(np.abs(ours[k] - reference[k]).max() for k in ours) < ATOL


class _Config:
    """Stands for the official code's pickled omegaconf config (never instantiated on
    load: a placeholder takes its place)."""

    touched = False

    def __setstate__(self, state):
        type(self).touched = True
        self.__dict__.update(state)


def _official_checkpoint(path, torch_resnet, monkeypatch):
    """A Lightning checkpoint laid out like the official LoVT code's (see the prefix in
    lovt_keras.weights.torchvision_resnet), with a pickled config object of a module
    ``models.pretraining.pretraining_utils`` that does not exist when it is read."""
    module_name = "models.pretraining.pretraining_utils"
    for name in ("models", "models.pretraining", module_name):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    config_class = type("BiModalModelConfig", (_Config,), {"__module__": module_name})
    sys.modules[module_name].BiModalModelConfig = config_class
    config = config_class()
    config.__dict__.update(d_z=512, learning_rate=1e-4)
    state = {LOVT_IMAGE_PREFIX + k: v for k, v in torch_resnet.state_dict().items()
             if not k.startswith("fc.")}
    state["model_a.project_local.mlp.0.weight"] = torch.zeros(3, 512)
    state["model_b.encoder.language_model.embeddings.word_embeddings.weight"] = torch.zeros(5, 4)
    torch.save({"epoch": 3, "global_step": 10, "state_dict": state,
                "hyper_parameters": {"config": config, "dataset": "mimic-cxr"}}, path)
    monkeypatch.undo()


def test_official_lovt_checkpoint(tmp_path, torch_resnet, images, monkeypatch):
    path = tmp_path / "last.ckpt"
    _official_checkpoint(path, torch_resnet, monkeypatch)
    encoder = load_image_encoder(path, image_size=SIZE)
    assert not _Config.touched
    assert _max_diff(encoder, images, _torch_features(torch_resnet, images)) < ATOL
    # the evaluation takes it wherever it takes a .keras
    factory = eval_encoders(checkpoints={"LoVT (official)": str(path)},
                            random_init_depth=None)["LoVT (official)"]
    evaluated = factory(SIZE)
    assert _max_diff(evaluated, images, _torch_features(torch_resnet, images)) < ATOL


def test_convert_program_both_ways(tmp_path, torch_resnet, images, capsys):
    torch.save({"backbone." + k: v for k, v in torch_resnet.state_dict().items()},
               tmp_path / "in.pt")
    keras_path = tmp_path / "enc.weights.h5"
    assert convert.main(["torchvision-to-keras", str(tmp_path / "in.pt"), str(keras_path),
                         "--depth", "18", "--image_size", str(SIZE)]) == 0
    out = tmp_path / "out.safetensors"
    assert convert.main(["keras-to-torchvision", str(keras_path), str(out), "--depth", "18",
                         "--num_classes", "1000"]) == 0
    model = ResNet(18).eval()
    model.load_state_dict(load_file(out), strict=True)
    reference = _torch_features(torch_resnet, images)
    got = _torch_features(model, images)
    assert max(np.abs(got[k] - reference[k]).max() for k in got) < ATOL
    # bad input: exit code 2 and a message naming the file
    assert convert.main(["torchvision-to-keras", str(tmp_path / "in.pt"), str(keras_path),
                         "--depth", "50"]) == 2
    assert "in.pt: holds a ResNet-18, not a ResNet-50" in capsys.readouterr().err


def _error(encoder, state, tmp_path=None):
    before = [w.copy() for w in encoder.get_weights()]
    with pytest.raises(StateDictError) as info:
        set_torchvision_weights(encoder, state, source="bad.pt")
    after = encoder.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True)), \
        "a failed load changed weights"
    return str(info.value)


def test_bad_state_dicts_are_named_and_change_nothing(encoder, torch_resnet, tmp_path):
    good = _numpy_state(torch_resnet)
    missing = {k: v for k, v in good.items() if k != "layer3.1.bn2.running_var"}
    assert "missing keys: layer3.1.bn2.running_var" in _error(encoder, missing)
    extra = dict(good, **{"layer1.0.se.weight": np.zeros(3, np.float32)})
    assert "unexpected keys: layer1.0.se.weight" in _error(encoder, extra)
    shape = dict(good, **{"layer2.0.conv1.weight": np.zeros((128, 64, 5, 5), np.float32)})
    assert "layer2.0.conv1.weight (128, 64, 5, 5) (needs (128, 64, 3, 3))" in _error(encoder, shape)
    deeper = _numpy_state(random_resnet(34, seed=1))
    assert "holds a ResNet-34, the encoder is a ResNet-18" in _error(encoder, deeper)
    twice = dict({"a." + k: v for k, v in good.items()}, **{"b." + k: v for k, v in good.items()})
    assert "under the prefixes ['a.', 'b.']; name one with prefix" in _error(encoder, twice)
    set_torchvision_weights(encoder, twice, prefix="b.")
    assert "no torchvision ResNet found" in _error(encoder, {"x.weight": np.zeros(2)})
    # files: truncated, and a pickle that would run code
    torch.save(torch_resnet.state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(StateDictError, match="cut.pt: not a readable torch.save file"):
        read_state_dict(tmp_path / "cut.pt")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(StateDictError, match="cut.safetensors: not a readable safetensors"):
        read_state_dict(tmp_path / "cut.safetensors")
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"conv1.weight": torch.zeros(1), "evil": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(StateDictError, match=r"evil.pt: refused to unpickle.*system"):
        read_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()


def _tiny_bert_folder(folder: Path) -> dict:
    """A 1-layer, 32-wide BERT cut from the MiniLM folder (real HF names and vocab)."""
    source = Path(minilm_folder())
    folder.mkdir()
    config = json.loads((source / "config.json").read_text())
    config.update(hidden_size=32, num_attention_heads=2, intermediate_size=64,
                  num_hidden_layers=1)
    (folder / "config.json").write_text(json.dumps(config))
    shutil.copy(source / "vocab.txt", folder / "vocab.txt")
    cut = {384: 32, 1536: 64}
    tensors = {k: np.ascontiguousarray(v[tuple(slice(0, cut.get(d, d)) for d in v.shape)])
               for k, v in read_state_dict(source / "model.safetensors").items()
               if not k.startswith("encoder.layer.") or k.startswith("encoder.layer.0.")}
    return tensors


def test_bert_folder_with_pytorch_model_bin(tmp_path):
    folder = tmp_path / "bert"
    tensors = _tiny_bert_folder(folder)
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, folder / "pytorch_model.bin")
    from_bin = bert_backbone_from_folder(str(folder))
    assert not (folder / "model.safetensors").exists()  # the user's folder is untouched
    # the program writes the safetensors copy, which keras-hub reads as it always did
    out = tmp_path / "bert_st"
    assert convert.main(["bert-to-safetensors", str(folder), str(out)]) == 0
    assert sorted(read_state_dict(out / "model.safetensors")) == sorted(tensors)
    from_safetensors = bert_backbone_from_folder(str(out))
    assert from_bin.num_layers == 1 and from_bin.hidden_dim == 32
    for a, b in zip(from_bin.get_weights(), from_safetensors.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(from_bin.token_embedding.embeddings),
        tensors["embeddings.word_embeddings.weight"])


def test_not_a_bert_folder(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        bert_backbone_from_folder(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2', not 'bert'"):
        bert_backbone_from_folder(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(ValueError, match="without weights"):
        bert_backbone_from_folder(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        bert_backbone_from_folder(str(tmp_path / "absent"))


@pytest.mark.large
@pytest.mark.parametrize("depth", [34, 50])
def test_deeper_resnets_match_pytorch_and_keras_round_trip(depth, images, tmp_path):
    model = random_resnet(depth, seed=depth)
    torch.save(model.state_dict(), tmp_path / "r.pt")
    encoder = load_image_encoder(tmp_path / "r.pt", image_size=SIZE)
    assert encoder.depth == depth
    assert _max_diff(encoder, images, _torch_features(model, images)) < ATOL
    exported = ResNet(depth).eval()
    exported.fc = torch.nn.Identity()
    exported.load_state_dict(load_file(save_image_encoder(encoder, tmp_path / "o.safetensors")),
                             strict=True)
    reloaded = load_image_encoder(save_image_encoder(encoder, tmp_path / "e.keras"),
                                  image_size=SIZE)
    assert _max_diff(reloaded, images, _torch_features(model, images)) < ATOL
