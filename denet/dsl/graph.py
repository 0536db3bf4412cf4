"""The resolved network: :class:`Node` (one token, with its inputs and output shape) and
:class:`LayerGraph` (the nodes in execution order, the graph's outputs, losses and task)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..layers import Call, ShapeSpec
from . import ast

INPUT = "input"  # the images
TARGETS = "targets"  # the list of per-image target dicts (training only)


@dataclass
class Node:
    """One token of the string, resolved.

    ``name`` is stable and unique (``l{index}_{TYPE}``; copies made by ``REP`` get ``_{r}``,
    applications by ``USE`` get ``_at{index}``) and is the module name, hence the state-dict
    prefix. ``shared`` names the node whose module this one reuses (weight sharing).
    """

    name: str
    index: int  # position of the token in the string (reading order)
    type: str  # layer type, or "@" for a tap, "$" for a reference, "^" for a side output
    tags: str
    args: dict  # every argument, defaults filled in
    inputs: tuple[str, ...]  # names of the input nodes ("input" is the image)
    shape: ShapeSpec
    item: ast.Item
    top: int  # index of the top-level item this node belongs to
    nested: bool = False  # inside a group branch
    split: bool = False
    lr: float = 1.0
    frozen: bool = False
    call: Call | None = None
    kwinputs: dict[str, str] = field(default_factory=dict)  # keyword -> node (tap arguments)
    losses: tuple[str, ...] = ()  # scalars it adds in training
    reads_targets: bool = False
    output_name: str | None = None
    shared: str | None = None
    sides: dict[str, str] = field(default_factory=dict)  # side-output symbol -> its node

    @property
    def token(self) -> str:
        from .printer import print_item

        return print_item(self.item, shallow=True)


@dataclass
class LayerGraph:
    """The resolved network: nodes in execution order, each with its inputs and output shape.

    ``output`` is the node the string ends on (the primary output); ``outputs`` maps the names of
    named outputs to their nodes in string order; ``task`` is the task of the model's heads
    (``classification``, ``detection``, ``segmentation``) or None for a plain feature network.
    """

    desc: ast.Description
    input_shape: ShapeSpec
    nodes: list[Node] = field(default_factory=list)
    output: str = INPUT
    classes: int | None = None
    options: dict = field(default_factory=dict)
    task: str | None = None

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def shape_of(self, name: str) -> ShapeSpec:
        return self.input_shape if name == INPUT else self.node(name).shape

    @property
    def output_shape(self) -> ShapeSpec:
        return self.shape_of(self.output)

    @property
    def outputs(self) -> dict[str, str]:
        """Named outputs, ``out`` first: the end of the string is ``out`` unless a layer takes
        that name. Empty when no layer names an output (the model returns the end value)."""
        named = {n.output_name: n.name for n in self.nodes if n.output_name}
        if not named:
            return {}
        out = {"out": named.pop("out", self.output)}
        out.update(named)
        return out

    @property
    def losses(self) -> tuple[str, ...]:
        """Names of every scalar the model returns in training, in string order."""
        return tuple(name for n in self.nodes for name in n.losses)

    def signature(self) -> list[tuple]:
        """What makes two graphs the same network (used by canonical round-trip tests)."""
        return [
            (
                n.name,
                n.type,
                n.tags,
                tuple(sorted((k, repr(v)) for k, v in n.args.items())),
                n.inputs,
                tuple(sorted(n.kwinputs.items())),
                n.shape,
                n.shared,
            )
            for n in self.nodes
        ] + [("output", self.output)]
