"""LayerGraph -> ``torch.fx.GraphModule``, built directly with the fx.Graph API (no tracing).

Every layer with state is a ``call_module`` whose target is the node's stable name; sums,
concatenations and maxima are plain ``call_function`` nodes; identities (taps, ``SKIPSRC``,
``SPLIT``) are just aliases. Segments ended by split points become checkpointed sub-graphs.
"""
from __future__ import annotations

import operator

import torch
from torch import fx, nn
from torch.utils.checkpoint import checkpoint

from ..layers import REGISTRY, FunctionOp
from ..layers.norm import BatchNormReLU
from .resolve import INPUT, LayerGraph, Node


class CheckpointSegment(nn.Module):
    """Runs a segment of the network under activation checkpointing in training.

    The segment's GraphModule shares its layer modules with the model; it is kept out of the
    module tree (no duplicate state-dict entries)."""

    def __init__(self, segment: fx.GraphModule, n_outputs: int):
        super().__init__()
        self._segment = [segment]
        self.n_outputs = n_outputs

    def forward(self, *inputs):
        seg = self._segment[0]
        if self.training and torch.is_grad_enabled():
            return checkpoint(seg, *inputs, use_reentrant=False)
        return seg(*inputs)

    def extra_repr(self) -> str:
        return f"outputs={self.n_outputs}"


# Producers whose output an in-place activation may overwrite (their backward does not read it).
_INPLACE_SAFE = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.GroupNorm, nn.MaxPool2d,
                 nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample,
                 nn.ZeroPad2d)


def build_modules(graph: LayerGraph, registry=None) -> dict:
    """name -> module or FunctionOp or None, for every node; applies ``frozen``."""
    registry = registry or REGISTRY
    built = {}
    for node in graph.nodes:
        if node.type in ("@", "$") or node.call is None:
            built[node.name] = None
            continue
        result = registry.get(node.type).build(node.call)
        if isinstance(result, nn.Module) and node.frozen:
            for p in result.parameters():
                p.requires_grad_(False)
        built[node.name] = result
    return built


def _emit(g: fx.Graph, node: Node, built, env: dict, modules: dict):
    args = [env[i] for i in node.inputs]
    b = built[node.name]
    if b is None:
        env[node.name] = args[0]
    elif isinstance(b, FunctionOp):
        if b.pack:
            env[node.name] = g.call_function(b.fn, (list(args),), dict(b.kwargs))
        elif b.reduce:
            acc = args[0]
            for a in args[1:]:
                acc = g.call_function(b.fn, (acc, a), dict(b.kwargs))
            env[node.name] = acc
        else:
            env[node.name] = g.call_function(b.fn, tuple(args), dict(b.kwargs))
    else:
        modules[node.name] = b
        env[node.name] = g.call_module(node.name, tuple(args))


def _segments(graph: LayerGraph):
    segs, cur = [], []
    for node in graph.nodes:
        cur.append(node)
        if node.split and not node.nested:
            segs.append(cur)
            cur = []
    return segs, cur


def _inplace_activations(g: fx.Graph, modules: dict):
    """Let a ReLU work in place where its input has no other reader and its producer's backward
    does not need that input (as torchvision's ReLU(inplace=True) after conv/BN/add)."""
    for n in g.nodes:
        if n.op != "call_module":
            continue
        m = modules.get(n.target)
        if not isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.ELU)) or len(n.args) != 1:
            continue
        src = n.args[0]
        if not isinstance(src, fx.Node) or len(src.users) != 1:
            continue
        ok = False
        if src.op == "call_module":
            pm = modules.get(src.target)
            ok = isinstance(pm, _INPLACE_SAFE) and not isinstance(pm, BatchNormReLU)
        elif src.op == "call_function":
            ok = src.target in (operator.add, torch.add)
        if ok:
            m.inplace = True


def build(graph: LayerGraph, registry=None) -> tuple[fx.GraphModule, dict]:
    """The GraphModule and every module by name (layer modules and checkpoint segments)."""
    built = build_modules(graph, registry)
    modules: dict[str, nn.Module] = {}
    g = fx.Graph()
    env = {INPUT: g.placeholder("x")}
    segments, tail = _segments(graph)
    for seg in segments:
        seg_names = {n.name for n in seg}
        later_inputs = set()
        after = False
        for n in graph.nodes:
            if after:
                later_inputs.update(n.inputs)
            if n is seg[-1]:
                after = True
        ext = []
        for n in seg:
            for i in n.inputs:
                if i not in seg_names and i not in ext:
                    ext.append(i)
        outs = [n.name for n in seg if n.name in later_inputs or n.name == graph.output]
        if seg[-1].name not in outs:
            outs.append(seg[-1].name)
        # the segment as its own graph over the shared modules
        sg = fx.Graph()
        senv = {i: sg.placeholder(f"in_{k}") for k, i in enumerate(ext)}
        smods: dict[str, nn.Module] = {}
        for n in seg:
            _emit(sg, n, built, senv, smods)
        sg.output(tuple(senv[o] for o in outs) if len(outs) > 1 else senv[outs[0]])
        sgm = fx.GraphModule(smods, sg, class_name="Segment")
        modules.update(smods)
        seg_name = seg[-1].name
        modules[seg_name] = CheckpointSegment(sgm, len(outs))
        call = g.call_module(seg_name, tuple(env[i] for i in ext))
        if len(outs) == 1:
            env[outs[0]] = call
        else:
            for k, o in enumerate(outs):
                env[o] = g.call_function(operator.getitem, (call, k))
    for n in tail:
        _emit(g, n, built, env, modules)
    g.output(env[graph.output])
    _inplace_activations(g, modules)
    g.lint()
    main_modules = {t: modules[t] for t in {n.target for n in g.nodes if n.op == "call_module"}}
    gm = fx.GraphModule(main_modules, g, class_name="DenetNet")
    return gm, modules
