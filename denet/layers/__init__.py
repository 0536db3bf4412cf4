"""Layer types of the description language, one file per family.

Each family registers its types with a :class:`Registry`; :data:`REGISTRY` holds them all and is
what the compiler uses by default. Tests can build an isolated registry with
``make_registry()`` or ``Registry()`` plus the families they need.
"""
from . import (activation, border, combinators, conv, crop_mirror, dropout, norm, pool,
               regression, resnet, skip, split)
from .init import WeightInit, parse_weight_init
from .registry import REQUIRED, Arg, Call, FunctionOp, LayerDef, Registry
from .shape import ShapeSpec

FAMILIES = (conv, pool, norm, activation, dropout, border, crop_mirror, regression, resnet, skip,
            split, combinators)


def make_registry(families=FAMILIES) -> Registry:
    """A registry holding the layer types of ``families``."""
    registry = Registry()
    for family in families:
        family.register(registry)
    return registry


REGISTRY = make_registry()

__all__ = ["REGISTRY", "REQUIRED", "Arg", "Call", "FunctionOp", "LayerDef", "Registry",
           "ShapeSpec", "WeightInit", "make_registry", "parse_weight_init"]
