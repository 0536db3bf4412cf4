"""Layer types of the description language, one file per family.

Every module here may define layer types (module-level :class:`LayerDef` subclasses); they are
found by :func:`~denet.layers.registry.discover`, so a new type is a new file and nothing else.
:data:`REGISTRY` holds them all and is what the compiler uses by default; tests can build an
isolated registry with ``make_registry(modules)`` or ``Registry([MyType])``.
"""

import sys

from .init import WeightInit, parse_weight_init
from .registry import REQUIRED, Arg, Call, FunctionOp, LayerDef, Registry, discover, layer_types
from .shape import ShapeSpec


def make_registry(modules=None) -> Registry:
    """A registry holding the layer types defined in ``modules`` (default: every module of
    ``denet.layers``)."""
    if modules is None:
        modules = discover(sys.modules[__name__])
    return Registry(t for m in modules for t in layer_types(m))


REGISTRY = make_registry()

__all__ = [
    "REGISTRY",
    "REQUIRED",
    "Arg",
    "Call",
    "FunctionOp",
    "LayerDef",
    "Registry",
    "ShapeSpec",
    "WeightInit",
    "make_registry",
    "parse_weight_init",
]
