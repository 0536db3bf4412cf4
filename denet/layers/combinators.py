"""Graph combinators: parallel branches merged by ``SUM``, ``CAT`` or ``MAX``; ``I`` is the
identity. (``REP``, ``SHARE`` and ``USE`` are in :mod:`denet.layers.subnets`.)

``SUM(C[21,3,dilation=6] | C[21,3,dilation=12])`` feeds the current tensor to every branch and
merges the branch outputs. A branch may be empty (the current tensor itself) or start with a
reference ``$name`` to read a tensor tapped earlier with ``@name``.
"""

from __future__ import annotations

import operator

import torch

from .registry import Call, FunctionOp, LayerDef
from .shape import ANY_KIND


def _same_maps(call: Call, what: str):
    first = call.inputs[0]
    for n, s in enumerate(call.inputs[1:], start=2):
        if (s.height, s.width) != (first.height, first.width) or (
            what == "all" and s.channels != first.channels
        ):
            kind = "channel" if (s.height, s.width) == (first.height, first.width) else "shape"
            call.fail(
                f"{kind} mismatch at {call.type}: branch 1 gives {first}, branch {n} gives {s}"
            )


class Sum(LayerDef):
    type = "SUM"
    doc = "Runs the branches on the current tensor and adds their outputs (same shapes)."
    is_group = True

    def shape(self, call: Call):
        _same_maps(call, "all")
        return call.inputs[0]

    def build(self, call: Call):
        return FunctionOp(operator.add, reduce=True)


class Concat(LayerDef):
    type = "CAT"
    doc = "Runs the branches and concatenates their outputs along channels (same H, W)."
    is_group = True

    def shape(self, call: Call):
        _same_maps(call, "spatial")
        return call.inputs[0].with_(channels=sum(s.channels for s in call.inputs))

    def build(self, call: Call):
        return FunctionOp(torch.cat, pack=True, dim=1)


class Max(LayerDef):
    type = "MAX"
    doc = "Runs the branches and takes the element-wise maximum of their outputs."
    is_group = True

    def shape(self, call: Call):
        _same_maps(call, "all")
        return call.inputs[0]

    def build(self, call: Call):
        return FunctionOp(torch.maximum, reduce=True)


class Identity(LayerDef):
    type = "I"
    doc = "Identity."
    accepts = ANY_KIND
