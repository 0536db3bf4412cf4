"""The description-string compiler: parse -> resolve -> build, and print back.

>>> from denet import dsl
>>> dsl.canonical("C[128,3,1] BN  A P.A R.TB")
'C[128,3] BN A P.A R.BT'
"""

from .ast import Arg, Description, Group, Layer, Ref, Tap
from .build import INFERENCE, TRAINING, build
from .graph import INPUT, TARGETS, LayerGraph, Node
from .limits import Limits, limit
from .parser import parse
from .printer import canonical, print_graph, print_items
from .resolve import CompileOptions, Context, resolve

__all__ = [
    "INFERENCE",
    "INPUT",
    "TARGETS",
    "TRAINING",
    "Arg",
    "CompileOptions",
    "Context",
    "Description",
    "Group",
    "Layer",
    "LayerGraph",
    "Limits",
    "Node",
    "Ref",
    "Tap",
    "build",
    "canonical",
    "limit",
    "parse",
    "print_graph",
    "print_items",
    "resolve",
]
