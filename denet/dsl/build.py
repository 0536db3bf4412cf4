"""LayerGraph -> ``torch.fx.GraphModule``, built directly with the fx.Graph API (no tracing).

Two graphs share one set of modules: the **inference** graph ``forward(images)`` returns the
model's outputs; the **training** graph ``forward(images, targets)`` returns the dict of named
losses (and statistics) the loss layers add. Every layer with state is a ``call_module`` whose
target is the node's stable name (a node that shares weights calls its source's module); sums,
concatenations and maxima are plain ``call_function`` nodes; identities (taps, ``SKIPSRC``,
``SPLIT``) are aliases. Segments ended by split points become checkpointed sub-graphs.
"""

from __future__ import annotations

import operator
from collections import Counter

import torch
from torch import fx, nn
from torch.utils.checkpoint import checkpoint

from ..errors import DenetError
from ..layers import REGISTRY, FunctionOp
from .graph import INPUT, TARGETS, LayerGraph, Node

INFERENCE, TRAINING = "inference", "training"
NO_LOSSES = (
    "the description adds no losses, so it cannot be trained: end it with a head that has a "
    "loss (docs/language.md, Tasks)"
)


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


def collect_losses(dicts: list) -> dict:
    """The training graph's output: one dict of every loss layer's named scalars."""
    out: dict = {}
    for d in dicts:
        out.update(d)
    return out


def named_outputs(names: tuple, values: list) -> dict:
    return dict(zip(names, values))


# Producers whose output an in-place activation may overwrite (their backward does not read it).
_INPLACE_SAFE = (
    nn.Conv2d,
    nn.ConvTranspose2d,
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Upsample,
    nn.ZeroPad2d,
)


def build_modules(graph: LayerGraph, registry=None) -> dict:
    """name -> module or FunctionOp or None, for every node; applies ``frozen``. A node that
    shares weights maps to its source's module."""
    registry = registry or REGISTRY
    built: dict = {}
    for node in graph.nodes:
        if node.shared is not None:
            built[node.name] = built[node.shared]
            continue
        if node.type in ("@", "$") or node.call is None:
            built[node.name] = None
            continue
        result = registry.get(node.type).build(node.call)
        if isinstance(result, nn.Module) and node.frozen:
            for p in result.parameters():
                p.requires_grad_(False)
        built[node.name] = result
    return built


def _emit(g: fx.Graph, node: Node, built, env: dict, modules: dict, mode: str, losses: list):
    if node.name in env:  # a side output, set by its layer
        return
    args = [env[i] for i in node.inputs]
    kwargs = {k: env[v] for k, v in node.kwinputs.items()}
    train = mode == TRAINING
    if train and node.reads_targets:
        kwargs["targets"] = env[TARGETS]
    b = built[node.name]
    if b is None:
        env[node.name] = args[0]
        return
    if isinstance(b, FunctionOp):
        if b.pack:
            env[node.name] = g.call_function(b.fn, (list(args),), {**b.kwargs, **kwargs})
        elif b.reduce:
            acc = args[0]
            for a in args[1:]:
                acc = g.call_function(b.fn, (acc, a), dict(b.kwargs))
            env[node.name] = acc
        else:
            env[node.name] = g.call_function(b.fn, tuple(args), {**b.kwargs, **kwargs})
        return
    target = node.shared or node.name
    modules[target] = b
    result = g.call_module(target, tuple(args), kwargs)
    if not node.sides and not (train and node.losses):
        env[node.name] = result
        return
    env[node.name] = g.call_function(operator.getitem, (result, 0))
    if node.sides:
        sides = g.call_function(operator.getitem, (result, 1))
        for sym, side in node.sides.items():
            env[side] = g.call_function(operator.getitem, (sides, sym))
    if train and node.losses:
        losses.append(g.call_function(operator.getitem, (result, -1)))


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
    calls = Counter(n.target for n in g.nodes if n.op == "call_module")
    for n in g.nodes:
        if n.op != "call_module":
            continue
        m = modules.get(n.target)
        if not isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.ELU)) or len(n.args) != 1:
            continue
        if calls[n.target] > 1:
            continue  # a shared module: another call may not allow it
        src = n.args[0]
        if not isinstance(src, fx.Node) or len(src.users) != 1:
            continue
        ok = False
        if src.op == "call_module":
            pm = modules.get(src.target)
            # a module that applies its own activation keeps its output for its backward
            ok = isinstance(pm, _INPLACE_SAFE) and not getattr(pm, "ends_in_activation", False)
        elif src.op == "call_function":
            ok = src.target in (operator.add, torch.add)
        if ok:
            m.inplace = True


def _output(g: fx.Graph, graph: LayerGraph, env: dict, mode: str, losses: list):
    if mode == TRAINING:
        g.output(g.call_function(collect_losses, (losses,)))
        return
    outputs = graph.outputs
    if outputs:
        values = [env[n] for n in outputs.values()]
        g.output(g.call_function(named_outputs, (tuple(outputs), values)))
    else:
        g.output(env[graph.output])


def build(
    graph: LayerGraph, registry=None, mode: str = INFERENCE, built=None, segments=None
) -> tuple[fx.GraphModule, dict]:
    """The GraphModule of ``mode`` and every module by name (layer modules and checkpoint
    segments). To build the other mode's graph over the same modules, pass the first call's
    ``build_modules`` result as ``built`` and its module dict as ``segments``."""
    if mode == TRAINING and not graph.losses:
        raise DenetError(NO_LOSSES)
    if built is None:
        built = build_modules(graph, registry)
    modules: dict[str, nn.Module] = {}
    losses: list = []
    g = fx.Graph()
    env = {INPUT: g.placeholder("images")}
    if mode == TRAINING:
        env[TARGETS] = g.placeholder("targets")
    known_segments = segments or {}
    seg_list, tail = _segments(graph)
    for seg in seg_list:
        seg_names = {n.name for n in seg}
        later_inputs = set(graph.outputs.values())
        after = False
        for n in graph.nodes:
            if after:
                later_inputs.update(n.inputs)
                later_inputs.update(n.kwinputs.values())
            if n is seg[-1]:
                after = True
        ext: list[str] = []
        for n in seg:
            for i in (*n.inputs, *n.kwinputs.values()):
                if i not in seg_names and i not in ext:
                    ext.append(i)
        outs = [n.name for n in seg if n.name in later_inputs or n.name == graph.output]
        if seg[-1].name not in outs:
            outs.append(seg[-1].name)
        # the segment as its own graph over the shared modules
        seg_name = seg[-1].name
        if isinstance(known_segments.get(seg_name), CheckpointSegment):
            segment = known_segments[seg_name]
            modules.update(segment._segment[0].named_children())
        else:
            sg = fx.Graph()
            senv = {i: sg.placeholder(f"in_{k}") for k, i in enumerate(ext)}
            smods: dict[str, nn.Module] = {}
            for n in seg:
                _emit(sg, n, built, senv, smods, INFERENCE, [])
            sg.output(tuple(senv[o] for o in outs) if len(outs) > 1 else senv[outs[0]])
            segment = CheckpointSegment(fx.GraphModule(smods, sg, class_name="Segment"), len(outs))
            modules.update(smods)
        modules[seg_name] = segment
        call = g.call_module(seg_name, tuple(env[i] for i in ext))
        if len(outs) == 1:
            env[outs[0]] = call
        else:
            for k, o in enumerate(outs):
                env[o] = g.call_function(operator.getitem, (call, k))
    for n in tail:
        _emit(g, n, built, env, modules, mode, losses)
    _output(g, graph, env, mode, losses)
    main_modules = {t: modules[t] for t in {n.target for n in g.nodes if n.op == "call_module"}}
    gm = fx.GraphModule(main_modules, g, class_name="DenetNet")
    # what this mode does not need goes (loss-only heads in inference)
    if gm.graph.eliminate_dead_code():
        gm.delete_all_unused_submodules()
        gm.recompile()
    _inplace_activations(gm.graph, modules)
    gm.graph.lint()
    return gm, modules
