"""denet: convolutional networks written as one description string.

    >>> import denet
    >>> model = denet.compile("C[32,3] BN A P[2] C[64,3] BN A P.A R", input_shape=(1, 8, 8), classes=10)

The public API is imported lazily so that ``import denet.kernels`` needs neither Lark nor the
compiler (the kernels sit at the bottom of the dependency order, see DESIGN.md).
"""

from importlib import import_module

from .errors import DataError, DenetError, DescError, ModelFileError

__version__ = "0.1.0"

_LAZY = {
    "compile": ("denet.api", "compile"),
    "summary": ("denet.api", "summary"),
    "save": ("denet.model_file", "save"),
    "load": ("denet.model_file", "load"),
    "Model": ("denet.api", "Model"),
}

__all__ = ["DataError", "DenetError", "DescError", "ModelFileError", *_LAZY]


# Subpackages load on first use, so `import denet; denet.dsl.canonical(...)` works.
_SUBPACKAGES = ("api", "cli", "data", "dsl", "eval", "kernels", "layers", "model_file", "train")


def __getattr__(name):
    if name in _SUBPACKAGES:
        return import_module(f"denet.{name}")
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'denet' has no attribute {name!r}")
