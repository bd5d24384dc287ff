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

Every target is library code (``lovt_keras``); this module only registers it, and
defines the root ``lovt.run`` (program, model and data, kept unevaluated so that a model
can be built without its data) and :func:`bound_value`, which reads a parameter as the
parsed files bind it.
"""

from __future__ import annotations

import dataclasses
import inspect
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
            if isinstance(value, dict):  # e.g. lovt.paper_tasks.folders = {'rsna': %RSNA_DATA}
                for key, item in value.items():
                    if item is gin.REQUIRED:
                        raise MissingValueError(
                            f"{MODULE}.{name}.{parameter}[{key!r}] has no value: it is bound "
                            f"to a %gin.REQUIRED macro{_required_macro_hint(name, parameter, key)}"
                        )
        return target(*args, **kwargs)

    factory.__signature__ = signature.replace(parameters=parameters)
    factory.__name__ = name
    factory.__qualname__ = name
    factory.__doc__ = target.__doc__
    factory.__module__ = __name__
    return factory


def _macro_chain(value: Any) -> tuple[Any, str | None]:
    """Follows a bound ``value`` through macros (``seeds = %SEEDS``,
    ``SEEDS = %N``, ...); returns the final value and the last macro's name (None when
    ``value`` is no macro)."""
    macro = None
    for _ in range(10):
        selector = getattr(value, "scoped_selector", "")
        if not selector.endswith("/gin.macro"):
            break
        macro = selector.split("/")[0]
        try:
            value = gin.query_parameter(f"%{macro}")
        except (ValueError, KeyError):
            break
    return value, macro


_UNBOUND = object()


def bound_value(key: str, default: Any = _UNBOUND) -> Any:
    """The value the parsed gin files bind to ``key`` (``'lovt.pretrain.seed'``, or a
    macro ``'%BATCH_SIZE'``), macros followed; ``default`` when nothing binds it (else
    the parameter's default in the registered callable's signature, None for a macro)."""
    try:
        value = gin.query_parameter(key)
    except (ValueError, KeyError):
        if default is not _UNBOUND or key.startswith("%"):  # an unset macro: the default
            return None if default is _UNBOUND else default
        name, parameter = key.rsplit(".", 1)
        return inspect.signature(REGISTERED[name]).parameters[parameter].default
    return _macro_chain(value)[0]


def _required_macro_hint(name: str, parameter: str, item: Any = None) -> str:
    """Names the macro to set, following chains such as PRETRAIN_DATA -> MIMIC_CXR_DIR
    (``item``: the key of a mapping parameter's entry)."""
    try:
        value = gin.query_parameter(f"{MODULE}.{name}.{parameter}")
        if item is not None:
            value = value[item]
    except (ValueError, KeyError, TypeError):
        value = None
    _, macro = _macro_chain(value)
    if macro is None:
        return " (set it in a gin file or with --bind)"
    return f" ({macro}); set it, e.g. --bind \"{macro} = '...'\""


def _registrations() -> dict[str, Callable]:
    import keras_hub

    from lovt_keras.analysis import analysis_program
    from lovt_keras.data.image_only_batches import ImageOnlyBatches
    from lovt_keras.models import (
        BertReportEncoder,
        BYOLPretrainer,
        LoVTPretrainer,
        PixelProPretrainer,
        ResNetImageEncoder,
        SimCLRPretrainer,
        bert_backbone_from_folder,
        minilm_folder,
        resnet_image_encoder,
    )
    from lovt_keras.training import data, evaluation_program
    from lovt_keras.training.pretrain import pretrain
    from lovt_keras.training.study import study

    return {
        "evaluate": evaluation_program.evaluate,
        "eval_encoders": evaluation_program.eval_encoders,
        "paper_tasks": evaluation_program.paper_tasks,
        "synth_tasks": evaluation_program.synth_tasks,
        "study": study,
        "run": run,
        "pretrain": pretrain,
        "LoVTPretrainer": LoVTPretrainer,
        "ResNetImageEncoder": ResNetImageEncoder,
        "resnet_image_encoder": resnet_image_encoder,
        "BertReportEncoder": BertReportEncoder,
        "BertBackbone": keras_hub.models.BertBackbone,
        "bert_backbone_from_folder": bert_backbone_from_folder,
        "minilm_folder": minilm_folder,
        "pretraining_batches": data.pretraining_batches,
        "tokenizer_from_folder": data.tokenizer_from_folder,
        "trained_tokenizer": data.trained_tokenizer,
        "synthcxr_folder": data.synthcxr_folder,
        "SimCLRPretrainer": SimCLRPretrainer,
        "BYOLPretrainer": BYOLPretrainer,
        "PixelProPretrainer": PixelProPretrainer,
        "ImageOnlyBatches": ImageOnlyBatches,
        "analyze": analysis_program.analyze,
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
    from lovt_keras.training.data import clear_dataset_cache

    clear_dataset_cache()
