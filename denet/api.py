"""The public API: compile a description string into a :class:`Model` and summarise it (saving
and loading are in :mod:`denet.model_file`)."""

from __future__ import annotations

from torch import nn

from .dsl import INFERENCE, TRAINING, CompileOptions, LayerGraph, build, parse, print_graph, resolve
from .dsl.build import NO_LOSSES, build_modules
from .errors import DenetError, DescError


class Model(nn.Module):
    """A compiled description string, following the task contract (docs/language.md, Tasks).

    ``model(images, targets=None)``: in training mode with ``targets`` (the list of per-image
    dicts the datasets yield) it returns the dict of named losses its loss layers add (and
    statistics such as ``top1``); otherwise it returns its outputs: class probabilities
    [B, classes] for a classifier in evaluation mode (log-probabilities in training mode), one
    dict per image for a detector, a dict of named per-pixel logits (``out`` first) for a
    segmentation model, or the last tensor of a plain network.

    The layer modules are children named after their nodes (``l0_C``, ``l4_nRSN`` ...), so the
    state-dict keys are ``l0_C.weight``; ``forward`` runs the code of an ``fx.GraphModule``
    (:attr:`graph_module`, and :attr:`training_graph_module` for the losses) over those modules.
    """

    def __init__(self, graph: LayerGraph, options: dict, registry=None):
        super().__init__()
        built = build_modules(graph, registry)
        gm, modules = build(graph, registry, INFERENCE, built)
        train_gm = None
        if graph.losses:
            train_gm, train_modules = build(graph, registry, TRAINING, built, modules)
            modules.update(train_modules)
        for name, module in modules.items():
            self.add_module(name, module)
        self.graph = graph
        self.desc = print_graph(graph)
        ish = graph.input_shape
        self.input_shape = (ish.channels, ish.height, ish.width)
        self.classes = graph.classes
        self.task = graph.task
        self.loss_names = graph.losses
        self.class_names: list[str] | None = None
        self.options = dict(options)
        self.train_state: dict | None = None
        object.__setattr__(self, "_graph_module", gm)
        object.__setattr__(self, "_training_graph_module", train_gm)
        object.__setattr__(self, "_forward_code", type(gm).forward)
        object.__setattr__(
            self, "_training_code", type(train_gm).forward if train_gm is not None else None
        )

    @property
    def graph_module(self):
        """The inference ``torch.fx.GraphModule`` (``model.graph_module.code`` shows it)."""
        return self._graph_module

    @property
    def training_graph_module(self):
        """The ``torch.fx.GraphModule`` that computes the losses, or None without loss layers."""
        return self._training_graph_module

    def forward(self, images, targets=None):
        if targets is None or not self.training:
            return self._forward_code(self, images)
        if self._training_code is None:
            raise DenetError(NO_LOSSES)
        return self._training_code(self, images, targets)

    def extra_repr(self) -> str:
        return f"desc={self.desc!r}, input_shape={self.input_shape}, classes={self.classes}"

    def layer_modules(self):
        """(node, module) for every node with a module, in execution order."""
        for node in self.graph.nodes:
            m = self._modules.get(node.name)
            if m is not None:
                yield node, m

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimizer parameter groups: each layer's ``lr=`` multiplier (times a parameter's own
        ``lr_mult`` where a module sets one), no frozen parameters,
        weight decay on conv / linear weights only (DeNet: not on BN parameters or biases)."""
        groups: dict[tuple, list] = {}
        seen = set()
        for node, module in self.layer_modules():
            for p in module.parameters():
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                decay = p.dim() > 1
                # a module may give a parameter its own multiplier (a deformable block's offsets)
                key = (node.lr * getattr(p, "lr_mult", 1.0), decay)
                groups.setdefault(key, []).append(p)
        return [
            {
                "params": params,
                "lr": lr * mult,
                "lr_mult": mult,
                "weight_decay": weight_decay if decay else 0.0,
            }
            for (mult, decay), params in groups.items()
        ]


def compile(
    desc: str,
    input_shape,
    classes: int | None = None,
    *,
    border_mode="valid",
    activation="relu",
    weight_init="he-backward",
    registry=None,
    limits=None,
) -> Model:
    """Compile a description string for inputs of ``input_shape`` = (C, H, W).

    ``classes`` is needed by ``R``. ``border_mode``, ``activation`` and ``weight_init`` are
    DeNet's global options (``weight_init`` may be a list, one entry per token, the last
    repeating). ``limits`` (a :class:`denet.dsl.Limits`) bounds what the string may ask for
    (default: the limits in force, docs/language.md "Limits"). Raises
    :class:`~denet.errors.DescError` for a bad string."""
    try:
        options = CompileOptions.make(border_mode, activation, weight_init)
    except ValueError as err:
        raise DenetError(str(err)) from None
    try:
        shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise DescError(f"input_shape must be (C, H, W), not {input_shape!r}") from None
    if len(shape) != 3:
        raise DescError(f"input_shape must be (C, H, W), not {input_shape!r}")
    graph = resolve(parse(desc, limits), shape, classes, options, registry, limits)
    return Model(graph, options.as_dict(), registry)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def summary(model: Model) -> str:
    """A table: index, token, output shape, parameters; and the total."""
    rows = [("index", "token", "output", "parameters")]
    rows.append(("", "input", "x".join(map(str, model.input_shape)), ""))
    for node in model.graph.nodes:
        m = model._modules.get(node.name)
        n = count_parameters(m) if m is not None else 0
        indent = "  " if node.nested else ""
        rows.append((str(node.index), indent + node.token, str(node.shape), f"{n:,}"))
    total = count_parameters(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for k, r in enumerate(rows):
        lines.append(
            f"{r[0]:>{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  "
            f"{r[3]:>{widths[3]}}".rstrip()
        )
        if k == 0:
            lines.append("-" * len(lines[0]))
    lines.append(f"total parameters: {total:,} (trainable {trainable:,})")
    return "\n".join(lines)
