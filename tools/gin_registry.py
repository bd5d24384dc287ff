"""gin names of the library: every configurable of ``python -m tools.run``.

The library has no gin decorators (``@gin.configurable`` on a Keras class breaks its
construction); this module registers it from the outside with
``gin.external_configurable`` under the module name ``lovt``, e.g.
``lovt.LoVTPretrainer``, ``lovt.pretrain``.

Classes and functions are registered through a thin factory whose signature is the
callable's own minus ``*args``/``**kwargs``. So gin rejects a misspelled parameter
(``lovt.LoVTPretrainer.spatial_smoothin``) when it parses the file instead of passing it
on to Keras, and the objects built are the library's own classes (their ``.keras``
files load without gin). The factory also turns an unset ``%gin.REQUIRED`` value into
a ``MissingValueError`` naming the parameter (gin only checks that when the config is
finalized, which would also demand values that a configuration never uses, such as the
BERT folder of an experiment run with the tiny overlay).

The evaluation names (``lovt.evaluate``, ``lovt.eval_encoders``, ``lovt.paper_tasks``,
``lovt.synth_tasks``) come from ``tools.gin_eval``. The registry also defines the wiring
functions the pretraining gin files need that are not library API: ``lovt.run`` (the root: program, model and data, kept unevaluated so a model can be
built without its data), ``lovt.pretraining_batches``, ``lovt.tokenizer_from_folder``,
``lovt.trained_tokenizer``, ``lovt.synthcxr_folder`` and ``lovt.resnet_image_encoder``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable
from typing import Any

import gin

MODULE = "lovt"

# gin name -> the (unwrapped) callable it builds; filled by ``register``.
REGISTERED: dict[str, Callable] = {}
# gin name -> the gin-configured factory (what a gin reference calls).
CONFIGURED: dict[str, Callable] = {}


class MissingValueError(ValueError):
    """A parameter whose value is an unset ``%gin.REQUIRED`` macro."""


@dataclasses.dataclass
class RunSpec:
    """The parts of a run, as configured callables (nothing is built yet).

    Attributes:
        program: the training function, called as ``program(model=..., train_data=...,
            val_data=..., output_dir=..., verbose=...)`` (e.g. ``lovt.pretrain``).
        model: zero-argument callable building the model.
        train_data: zero-argument callable building the training batches.
        validation_data: zero-argument callable building the validation batches, or None.
    """

    program: Callable[..., Any]
    model: Callable[[], Any]
    train_data: Callable[[], Any]
    validation_data: Callable[[], Any] | None = None


def run(program=gin.REQUIRED, model=gin.REQUIRED, train_data=gin.REQUIRED,
        validation_data=None) -> RunSpec:
    """The root configurable: bind its parameters to unevaluated references
    (``lovt.run.model = @lovt.LoVTPretrainer``, without parentheses). A program that
    builds nothing itself (``lovt.study``) takes ``model`` and ``train_data`` None."""
    return RunSpec(program, model, train_data, validation_data)


@functools.lru_cache(maxsize=8)
def _load_pretraining_dataset(path: str):
    from lovt_keras.data.pretraining_dataset import load_pretraining_dataset

    return load_pretraining_dataset(path)


def pretraining_batches(path: str, tokenizer, split: str = "train", training: bool = True,
                        batch_size: int = 32, image_size: int = 224,
                        text_augmentation: str | None = "random_swaps", seed: int = 0,
                        fraction: float | None = None, max_studies: int | None = None,
                        workers: int = 2, image_augmentation: bool = True):
    """``PretrainingBatches`` of one split of a prepared dataset folder.

    ``fraction`` keeps the first share of the split's studies (the official 30 % subset:
    ``train/lovt.pretraining_batches.fraction = 0.3``) and ``max_studies`` caps their
    number (the tiny overlay), see ``lovt_keras.training.data.first_studies``.
    ``image_augmentation=False`` replaces the ConVIRT image augmentation of training
    batches by the evaluation transform (text augmentation stays).
    """
    from lovt_keras.data.image_augment import EvalTransform
    from lovt_keras.data.pretraining_dataset import PretrainingBatches
    from lovt_keras.training.data import first_studies

    dataset_dict, stats = _load_pretraining_dataset(os.fspath(path))
    if split not in dataset_dict:
        raise ValueError(f"{path}: no split {split!r} (has {sorted(dataset_dict)})")
    dataset = first_studies(dataset_dict[split], fraction=fraction, max_studies=max_studies)
    return PretrainingBatches(
        dataset, tokenizer, stats, batch_size=batch_size, training=training,
        image_size=image_size, text_augmentation=text_augmentation, seed=seed, workers=workers,
        augmentation=None if image_augmentation else EvalTransform(image_size),
    )


def tokenizer_from_folder(folder: str, max_tokens: int = 512, max_sentences: int = 32):
    """The ``ReportTokenizer`` of a BERT model folder (its ``vocab.txt``)."""
    from lovt_keras.data.tokenization import ReportTokenizer

    return ReportTokenizer.from_model_folder(folder, max_tokens=max_tokens,
                                             max_sentences=max_sentences)


def trained_tokenizer(path: str, vocab_size: int = 2000, max_tokens: int = 128,
                      max_sentences: int = 16):
    """A WordPiece tokenizer trained on the train split of a prepared dataset folder
    (cached in the folder; for randomly initialized report encoders)."""
    from lovt_keras.data.pretraining_dataset import synthcxr_tokenizer

    dataset_dict, _ = _load_pretraining_dataset(os.fspath(path))
    return synthcxr_tokenizer(dataset_dict, vocab_size=vocab_size, max_tokens=max_tokens,
                              max_sentences=max_sentences)


def synthcxr_folder(cache_dir: str | None = None, num_train: int = 2000,
                    num_validation: int = 200, num_test: int = 500, image_size: int = 224,
                    seed: int = 0) -> str:
    """Generates SynthCXR once (cached) and returns its prepared dataset folder."""
    from lovt_keras.data.synthcxr import load_synthcxr, synthcxr_dir

    load_synthcxr(cache_dir, num_train, num_validation, num_test, image_size, seed)
    return str(synthcxr_dir(cache_dir, num_train, num_validation, num_test, image_size, seed))


def resnet_image_encoder(depth: int = 50, image_size: int = 224, input_channels: int = 1,
                         weights: str | None = None, width: int = 64):
    """A ``ResNetImageEncoder``, optionally initialized from a local weights file (e.g.
    converted ImageNet weights; nothing is downloaded); ``width`` < 64 builds a narrower
    ResNet (first-stage filters)."""
    from lovt_keras.models import ResNetImageEncoder, load_image_encoder_weights

    encoder = ResNetImageEncoder(depth=depth, image_size=image_size,
                                 input_channels=input_channels, width=width)
    if weights:
        load_image_encoder_weights(encoder, weights)
    return encoder


def _strict_factory(target: Callable, name: str) -> Callable:
    """A function with ``target``'s explicit parameters that calls ``target``."""
    signature = inspect.signature(target)
    parameters = [
        p for p in signature.parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]

    def factory(*args, **kwargs):
        bound = inspect.Signature(parameters).bind_partial(*args, **kwargs)
        for parameter, value in bound.arguments.items():
            if value is gin.REQUIRED:
                raise MissingValueError(
                    f"{MODULE}.{name}.{parameter} has no value: it is bound to a "
                    f"%gin.REQUIRED macro{_required_macro_hint(name, parameter)}"
                )
        return target(*args, **kwargs)

    factory.__signature__ = signature.replace(parameters=parameters)
    factory.__name__ = name
    factory.__qualname__ = name
    factory.__doc__ = target.__doc__
    factory.__module__ = __name__
    return factory


def _required_macro_hint(name: str, parameter: str) -> str:
    """Names the macro to set, following chains such as PRETRAIN_DATA -> MIMIC_CXR_DIR."""
    key, macro = f"{MODULE}.{name}.{parameter}", None
    for _ in range(10):
        try:
            value = gin.query_parameter(key)
        except (ValueError, KeyError):
            break
        selector = getattr(value, "scoped_selector", "")
        if not selector.endswith("/gin.macro"):
            break
        macro = selector.split("/")[0]
        key = f"%{macro}"
    if macro is None:
        return " (set it in a gin file or with --bind)"
    return f" ({macro}); set it, e.g. --bind \"{macro} = '...'\""


def _registrations() -> dict[str, Callable]:
    import keras_hub

    from lovt_keras.models import (
        BertReportEncoder,
        LoVTPretrainer,
        ResNetImageEncoder,
        bert_backbone_from_folder,
        minilm_folder,
    )
    from lovt_keras.training.pretrain import pretrain
    from tools import gin_eval, study

    return {
        **gin_eval.registrations(),  # lovt.evaluate and the evaluation tasks
        "study": study.study,
        "run": run,
        "pretrain": pretrain,
        "LoVTPretrainer": LoVTPretrainer,
        "ResNetImageEncoder": ResNetImageEncoder,
        "resnet_image_encoder": resnet_image_encoder,
        "BertReportEncoder": BertReportEncoder,
        "BertBackbone": keras_hub.models.BertBackbone,
        "bert_backbone_from_folder": bert_backbone_from_folder,
        "minilm_folder": minilm_folder,
        "pretraining_batches": pretraining_batches,
        "tokenizer_from_folder": tokenizer_from_folder,
        "trained_tokenizer": trained_tokenizer,
        "synthcxr_folder": synthcxr_folder,
    }


def register() -> dict[str, Callable]:
    """Registers every configurable with gin (idempotent); returns ``REGISTERED``."""
    if REGISTERED:
        return REGISTERED
    for name, target in _registrations().items():
        full = f"{MODULE}.{name}"
        CONFIGURED[full] = gin.external_configurable(
            _strict_factory(target, name), name=name, module=MODULE
        )
        REGISTERED[full] = target
    return REGISTERED


def configured_run() -> RunSpec:
    """Calls the configured root ``lovt.run`` (after the gin files are parsed)."""
    return CONFIGURED[f"{MODULE}.run"]()


def parameters_of(name: str) -> list[str]:
    """The parameter names gin accepts for a registered configurable."""
    target = REGISTERED[name]
    return [
        p.name for p in inspect.signature(target).parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def clear_caches() -> None:
    """Forgets loaded datasets (between runs in one process, e.g. in tests)."""
    _load_pretraining_dataset.cache_clear()
