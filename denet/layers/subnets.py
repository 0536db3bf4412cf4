"""Sub-networks: ``REP`` repeats one with new weights per copy; ``SHARE``/``USE`` apply one
several times with a single set of weights.

``REP[3](C[64,3] BN A)`` is three conv blocks, each with its own parameters.

``SHARE[head](C[256,3] A C[15,1])`` defines the sub-network ``head`` and applies it to the
current tensor; a later ``USE[head]`` applies the same modules (the same parameters, one
state-dict entry) to whatever tensor is current there: an FPN's RPN head on every level,
DeepLab's trunk at three scales. The input may differ in height and width but must have the
channels the sub-network was defined for. Taps made inside a shared body are local to each
application.
"""

from __future__ import annotations

from dataclasses import dataclass

from .registry import Arg, Call, LayerDef
from .shape import ANY_KIND


class Repeat(LayerDef):
    type = "REP"
    doc = "Repeats its single branch n times in sequence, each copy with its own weights."
    is_group = True
    min_branches = max_branches = 1
    accepts = ANY_KIND
    args = (Arg("n", "int", min=1, doc="number of repetitions"),)

    def expand(self, ctx, item, call: Call, current: str) -> str:
        if len(item.branches) != 1:
            call.fail("REP takes exactly one branch: REP[n](items)")
        n = call.args["n"]
        before = ctx.counted
        current = ctx.run(item.branches[0], current, "_0")
        per_copy = ctx.counted - before
        if per_copy == 0:  # an empty body: every copy is the identity
            return current
        # refused before making any more copies (REP[10**12](I) must not loop)
        each = f"{per_copy:,} node{'s' if per_copy > 1 else ''} each"
        ctx.reserve(item, per_copy * (n - 1), f"{n:,} copies of its body ({each})")
        for r in range(1, n):
            current = ctx.run(item.branches[0], current, f"_{r}")
        return current


@dataclass
class _Body:
    item: object  # the SHARE token
    branch: tuple  # its items
    nodes: list[str]  # the nodes of its first application, in order
    inputs: list[list[int]]  # input channels of each of those nodes


def _channels(ctx, names) -> list[int]:
    return [ctx.shape_of(n).channels for n in names]


class Share(LayerDef):
    type = "SHARE"
    doc = (
        "Defines the sub-network `name` and applies it here; USE[name] applies it again "
        "with the same weights."
    )
    is_group = True
    min_branches = max_branches = 1
    accepts = ANY_KIND
    args = (Arg("name", "str", doc="name of the shared sub-network"),)

    def expand(self, ctx, item, call: Call, current: str) -> str:
        name = call.args["name"]
        if len(item.branches) != 1:
            call.fail("SHARE takes exactly one branch: SHARE[name](items)")
        if ("SHARE", name) in ctx.definitions:
            first = ctx.definitions[("SHARE", name)].item
            call.fail(f"a sub-network named {name!r} is already defined (column {first.column})")
        start = len(ctx.nodes)
        with ctx.scope():
            end = ctx.run(item.branches[0], current)
        created = ctx.nodes[start:]
        body = _Body(
            item,
            item.branches[0],
            [n.name for n in created],
            [_channels(ctx, n.inputs) for n in created],
        )
        ctx.definitions[("SHARE", name)] = body
        return end


class Use(LayerDef):
    type = "USE"
    doc = (
        "Applies the sub-network defined by SHARE[name] to the current tensor, with the "
        "same modules and weights."
    )
    accepts = ANY_KIND
    args = (Arg("name", "str", doc="name given to SHARE"),)

    def expand(self, ctx, item, call: Call, current: str) -> str:
        name = call.args["name"]
        body = ctx.definitions.get(("SHARE", name))
        if body is None:
            known = sorted(k[1] for k in ctx.definitions if k[0] == "SHARE")
            hint = f" (defined so far: {', '.join(known)})" if known else ""
            call.fail(f"no SHARE[{name}](...) before it{hint}")
        start = len(ctx.nodes)
        with ctx.scope(), ctx.share(body.nodes):
            end = ctx.run(body.branch, current, f"_at{ctx.index_of(item)}")
        for node, want in zip(ctx.nodes[start:], body.inputs):
            got = _channels(ctx, node.inputs)
            if got != want:
                call.fail(
                    f"the shared sub-network {name!r} was defined on {want[0]} channels "
                    f"(at {node.token}), here it gets {got[0]}"
                )
        return end
