"""``MSC[scales...](body)``: one sub-network applied at several scales with one set of weights,
its outputs fused (DeepLab-v2's MSC, DRN's multi-scale test).

The current map is resized (bilinear) by each scale (a scale of 1 is the map itself), ``body``
runs on every resized map with the modules of its first application (as ``SHARE``/``USE``: one
state-dict entry, gradients from every scale), the branch outputs are resized (bilinear) to the
size of the FIRST branch's output and fused: ``max`` (DeepLab-v2), ``mean``, or ``logsum`` (the sum
of each branch's log-softmax, taken at the branch's own size before resizing: DRN's multi-scale
test). The fused map is the chain's current map.

Every branch output is also kept, as the named output and the tap ``{name}{k}`` (``ms0``, ``ms1``
... in the order of the scales): resized to the first branch's size, or its own size (raw) for
scales below ``raw_below``. DeepLab-v2 (isht7's MS_Deeplab) returns the 1x map, the 0.75x map
resized, the raw 0.5x map and their max::

    MSC[1,0.75,0.5,fuse=max,align_corners=1,rule=deeplab,raw_below=0.75](trunk...) SEG[branches=1]

``SEG[branches=1]`` right after an ``MSC`` adds the per-pixel loss to every kept branch output too
(``loss_seg_ms0`` ...); ``$ms2 SEG[name=ms2]`` adds it to one.

Node names: ``l{i}_MSC_in{k}`` resize the input for branch k, the body's nodes of branch k > 0
carry the suffix ``_s{k}`` and reuse branch 0's modules, ``l{i}_MSC_up{k}`` resize branch k's
output to branch 0's size, ``l{i}_MSC`` fuses, ``l{i}_MSC_{name}{k}`` are the kept outputs. The
state dict holds the body's parameters once, under branch 0's names.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .registry import Arg, Call, FunctionOp, LayerDef
from .resize import RULES, Resize, scaled_size

MAX_SCALES = 8
FUSIONS = ("max", "mean", "logsum")
_RESIZE = Resize()


def fuse_scales(maps: list, fuse: str = "max", align_corners: bool = False) -> torch.Tensor:
    """Fuses branch outputs. ``max``/``mean``: the maps are already at the first one's size;
    ``logsum``: each map's log-softmax over channels, resized to the first one's size, summed."""
    if fuse == "logsum":
        size = maps[0].shape[-2:]
        out = F.log_softmax(maps[0], 1)
        for m in maps[1:]:
            m = F.log_softmax(m, 1)
            if m.shape[-2:] != size:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=align_corners)
            out = out + m
        return out
    out = maps[0]
    for m in maps[1:]:
        out = torch.maximum(out, m) if fuse == "max" else out + m
    return out if fuse == "max" else out / len(maps)


def _scale_args() -> tuple[Arg, ...]:
    first = Arg("scale1", "float", doc="first scale (> 0); outputs are resized to its size")
    rest = tuple(
        Arg(f"scale{k}", "float", None, doc="another scale (> 0)") for k in range(2, MAX_SCALES + 1)
    )
    return (first, *rest)


class MultiScale(LayerDef):
    type = "MSC"
    doc = (
        "Multi-scale application of its body with ONE set of weights: the map resized (bilinear) "
        "by each scale (1: itself), the body run on each, outputs resized to the first branch's "
        "size and fused (max; mean; logsum: sum of log-softmax); each branch output is kept as "
        "output and tap `{name}{k}` (k = 0, 1, ... in scale order), resized, or raw (own size) "
        "for scales below raw_below. See Segmentation."
    )
    is_group = True
    min_branches = max_branches = 1
    args = _scale_args()
    keywords = (
        Arg("fuse", "str", "max", choices=FUSIONS, doc="how the branch outputs are fused"),
        Arg("align_corners", "bool", False, doc="of every resize (1: DeepLab-v2)"),
        Arg("rule", "str", "floor", choices=RULES, doc="size of a resized input (UP's rule)"),
        Arg("raw_below", "float", 0.0, min=0.0, doc="kept outputs of smaller scales stay raw"),
        Arg("name", "str", "ms", doc="prefix of the kept outputs' names and taps"),
    )

    def _scales(self, call: Call) -> list[float]:
        values = [call.args[a.name] for a in self.args]
        scales = []
        for k, v in enumerate(values):
            if v is None:
                continue
            if k > 0 and values[k - 1] is None:
                call.fail(f"scale{k + 1} is given but scale{k} is not", f"scale{k + 1}")
            if v <= 0:
                call.fail(f"a scale must be > 0, not {v:g}", f"scale{k + 1}")
            scales.append(v)
        return scales

    def expand(self, ctx, item, call: Call, current: str) -> str:
        a = call.args
        if len(item.branches) != 1 or not item.branches[0]:
            call.fail("MSC needs one body to apply at every scale: MSC[1,0.5](items)")
        body = item.branches[0]
        scales = self._scales(call)
        names = [f"{a['name']}{k}" for k in range(len(scales))]
        for n in names:
            if "@" + n in ctx.symbols or any(node.output_name == n for node in ctx.nodes):
                call.fail(f"an output or tap named {n!r} exists already; give MSC another name=")
        src = ctx.shape_of(current)
        if src.kind != "map":
            call.fail(f"MSC needs a feature map as input, not {src.describe()} ({src})")

        def resize_call(inputs, **args) -> Call:
            up = {"factor": None, "to": None, "align_corners": a["align_corners"], "rule": "floor"}
            up["mode"] = "bilinear"
            up.update(args)
            return dataclasses.replace(
                call, type="UP", tags="", args=up, inputs=inputs, taps={}, out=None, name=""
            )

        ends: list[str] = []
        shared: list[str] = []
        for k, s in enumerate(scales):
            start = current
            if s != 1:
                h, w = scaled_size(src.h, s, a["rule"]), scaled_size(src.w, s, a["rule"])
                if h < 1 or w < 1:
                    call.fail(
                        f"scale {s:g} makes the {src.h}x{src.w} input {h}x{w}", f"scale{k + 1}"
                    )
                up = resize_call([src], factor=s, rule=a["rule"])
                start = self._add(ctx, item, up, [current], f"MSC_in{k}")
            if k == 0:
                first = len(ctx.nodes)
                with ctx.scope():
                    end = ctx.run(body, start)
                # a node that itself shares (MSC inside a USE) points at the modules' owner
                shared = [n.shared or n.name for n in ctx.nodes[first:]]
            else:
                with ctx.scope(), ctx.share(shared):
                    end = ctx.run(body, start, f"_s{k}")
            out = ctx.shape_of(end)
            if out.kind != "map":
                call.fail(f"the body must end in a feature map, not {out.describe()} ({out})")
            ends.append(end)

        base = ctx.shape_of(ends[0])
        resized = [ends[0]]
        for k, end in enumerate(ends[1:], start=1):
            shape = ctx.shape_of(end)
            keep_raw = scales[k] < a["raw_below"]
            same = (shape.h, shape.w) == (base.h, base.w)
            if same or (keep_raw and a["fuse"] == "logsum"):
                resized.append(end)  # not needed: already that size, or only kept raw
                continue
            up = resize_call([shape], to=names[0])
            up.taps["to"] = base
            resized.append(self._add(ctx, item, up, [end], f"MSC_up{k}", kwinputs={"to": ends[0]}))
        fused = ctx.add_merge(item, self, call, ends if a["fuse"] == "logsum" else resized)
        kept_outputs = []
        for k, name in enumerate(names):
            kept = ends[k] if scales[k] < a["raw_below"] else resized[k]
            out_call = dataclasses.replace(
                call, type="OUT", tags="", args={"name": name}, inputs=[ctx.shape_of(kept)]
            )
            alias = ctx.add_node(
                item,
                "OUT",
                "",
                out_call.args,
                [kept],
                ctx.shape_of(kept),
                out_call,
                label=f"MSC_{name}",
                output_name=name,
            )
            kept_outputs.append((name, alias))
            ctx.symbols["@" + name] = alias
            ctx.symbol_items["@" + name] = item
        ctx.definitions[("MSC", fused)] = kept_outputs  # for SEG[branches=1]
        return fused

    @staticmethod
    def _add(ctx, item, up: Call, inputs: list[str], label: str, kwinputs=None) -> str:
        shape = _RESIZE.shape(up)
        up.out = shape
        up.name = ctx.add_node(
            item, "UP", "", up.args, inputs, shape, up, label=label, kwinputs=kwinputs or {}
        )
        return up.name

    def shape(self, call: Call):
        first = call.inputs[0]
        for s in call.inputs[1:]:
            if s.channels != first.channels:  # pragma: no cover - one body, one channel count
                call.fail(f"branch outputs differ in channels: {first} and {s}")
        return first

    def build(self, call: Call):
        a = call.args
        return FunctionOp(fuse_scales, pack=True, fuse=a["fuse"], align_corners=a["align_corners"])
