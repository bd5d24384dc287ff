"""lovt_keras: LoVT localized image-report pretraining in Keras 3.

``import lovt_keras`` is enough for Keras to load the models the library saves
(``keras.saving.load_model("RUN/image_encoder.keras")``): the modules that register its
serializable classes (``SERIALIZABLE_MODULES``) are imported together with Keras, at
once if Keras is already imported, else right after ``import keras`` completes. The
package import itself stays cheap (about 0.06 s; Keras with keras-hub takes 10-15 s
to import, as both import TensorFlow), so data-only programs such as
``python -m tools.prepare`` do not pay for Keras.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

# The modules whose import registers every class decorated with
# ``keras.saving.register_keras_serializable(package="lovt_keras")``.
SERIALIZABLE_MODULES = (
    "lovt_keras.layers",
    "lovt_keras.metrics",
    "lovt_keras.models",
    "lovt_keras.training.schedules",
)


def register_keras_classes() -> None:
    """Registers lovt_keras' serializable classes with Keras (imports Keras)."""
    for name in SERIALIZABLE_MODULES:
        importlib.import_module(name)


def _register_or_warn() -> None:
    try:
        register_keras_classes()
    except Exception as error:  # never break `import keras` or a data-only import
        warnings.warn(
            f"lovt_keras could not register its Keras classes ({type(error).__name__}: "
            f"{error}); import lovt_keras.models before loading a saved lovt_keras model",
            stacklevel=2,
        )


class _RegisterAfterKeras(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``keras`` like the other finders, executes it with its own loader, then
    registers lovt_keras' classes; removes itself from ``sys.meta_path`` on first use."""

    def __init__(self, loader=None):
        self.loader = loader

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:  # another thread got here first
            return None
        spec = importlib.util.find_spec(fullname)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _RegisterAfterKeras(spec.loader)
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        # Keras sees its own loader while it runs and afterwards.
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        _register_or_warn()


if "keras" in sys.modules:
    _register_or_warn()
elif not any(isinstance(finder, _RegisterAfterKeras) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterKeras())
