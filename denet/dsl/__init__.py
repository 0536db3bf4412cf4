"""The description-string compiler: parse -> resolve -> build, and print back.

    >>> from denet import dsl
    >>> dsl.canonical("C[128,3,1] BN  A P.A R.TB")
    'C[128,3] BN A P.A R.BT'
"""
from .ast import Arg, Description, Group, Layer, Ref, Tap
from .parser import parse
from .printer import canonical, print_graph, print_items
from .resolve import INPUT, CompileOptions, LayerGraph, Node, resolve
from .build import build

__all__ = ["Arg", "CompileOptions", "Description", "Group", "INPUT", "Layer", "LayerGraph", "Node",
           "Ref", "Tap", "build", "canonical", "parse", "print_graph", "print_items", "resolve"]
