"""The layer registry: every layer type declares its tags, argument schema, shape rule, builder,
and its part in the task contract (what it reads, which losses it adds, which output it names).

A layer type is a module-level subclass of :class:`LayerDef` in any module of ``denet.layers``;
:func:`discover` collects them, so adding a type is adding a file. The compiler never names a
layer type; it asks the registry. Tests can build an isolated ``Registry()`` and register only
what they need.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from .init import WeightInit, parse_weight_init
from .shape import ShapeSpec


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()

BORDER_MODES = ("valid", "half", "full", "same")

# The largest stride or dilation torch's convolution and pooling kernels take (32-bit ints).
TORCH_INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Arg:
    """One argument of a layer type.

    ``kind``: ``int``, ``float``, ``str`` (one of ``choices``), ``bool`` (0/1), ``border``
    (valid/half/full/same or a padding >= 0), ``init`` (a weight-init name or a float std) or
    ``tap`` (the name of an ``@tap``: that tensor becomes an input of the layer, passed to its
    module as the keyword argument of the same name).
    ``default``: a value, ``REQUIRED``, or a callable ``f(call) -> value`` for defaults that depend
    on the input (``P``'s stride defaults to its size, ``R``'s size to the input size).
    """

    name: str
    kind: str = "int"
    default: Any = REQUIRED
    min: float | None = None
    max: float | None = None
    choices: tuple = ()
    doc: str = ""

    def convert(self, value):
        """The checked value, or raise ``ValueError`` with a message that names the argument."""
        kind = self.kind
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{self.name} must be an integer, not {_show(value)}")
        elif kind == "float":
            if isinstance(value, str):
                raise ValueError(f"{self.name} must be a number, not {_show(value)}")
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"{self.name} must be a finite number, not {_show(value)}")
        elif kind == "bool":
            if value in (0, 1) and not isinstance(value, float):
                value = bool(value)
            elif isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            else:
                raise ValueError(f"{self.name} must be 0 or 1, not {_show(value)}")
        elif kind in ("str", "tap"):
            if not isinstance(value, str):
                raise ValueError(f"{self.name} must be a name, not {_show(value)}")
        elif kind == "border":
            if isinstance(value, str):
                if value not in BORDER_MODES:
                    raise ValueError(
                        f"{self.name} must be one of {', '.join(BORDER_MODES)} or a "
                        f"padding in pixels, not {_show(value)}"
                    )
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"{self.name} must be one of {', '.join(BORDER_MODES)} or a "
                    f"padding in pixels, not {_show(value)}"
                )
        elif kind == "init":
            parse_weight_init(value)  # raises ValueError with the reason
        else:  # pragma: no cover - schema error in a layer family, not a user error
            raise TypeError(f"unknown argument kind {kind!r}")
        if self.choices and value not in self.choices:
            raise ValueError(
                f"{self.name} must be one of {', '.join(map(str, self.choices))}, "
                f"not {_show(value)}"
            )
        if self.min is not None and value < self.min:
            raise ValueError(f"{self.name} must be >= {_bound(self.min)}, not {_show(value)}")
        if self.max is not None and value > self.max:
            raise ValueError(f"{self.name} must be <= {_bound(self.max)}, not {_show(value)}")
        return value


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else f"{value}"


def _bound(value) -> str:
    """A schema bound in a message: ``1``, ``0.001``, ``2147483647`` (not ``2.14748e+09``)."""
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value)) if abs(value) < 1e16 else f"{value:g}"
    return f"{value:g}"


# Keywords every layer type with parameters accepts (see docs/language.md, "Training control").
PARAM_KEYWORDS = (
    Arg("lr", "float", 1.0, min=0.0, doc="learning-rate multiplier of this layer's parameters"),
    Arg("frozen", "bool", False, doc="1: parameters are not trained (requires_grad False)"),
    Arg("init", "init", None, doc="weight init of this layer, overriding --weight-init"),
)


class FunctionOp:
    """A builder's answer when a layer is a plain function of its inputs (no module, no state):
    the compiled graph calls ``fn(*inputs, **kwargs)`` directly; ``pack``: ``fn([inputs],
    **kwargs)``; ``reduce``: a chain of binary calls ``fn(fn(a, b), c)``."""

    def __init__(self, fn: Callable, pack: bool = False, reduce: bool = False, **kwargs):
        self.fn = fn
        self.pack = pack
        self.reduce = reduce
        self.kwargs = kwargs


@dataclass
class Call:
    """One use of a layer type in a string, as its shape rule and builder see it."""

    type: str
    tags: str
    args: dict
    inputs: list[ShapeSpec]
    border_mode: str | int = "valid"
    activation: str = "relu"
    weight_init: WeightInit = field(default_factory=lambda: parse_weight_init("he-backward"))
    classes: int | None = None
    name: str = ""
    out: ShapeSpec | None = None
    taps: dict[str, ShapeSpec] = field(default_factory=dict)  # shapes of ``tap`` arguments
    _fail: Callable[[str, str | None], NoReturn] | None = None

    @property
    def input(self) -> ShapeSpec:
        return self.inputs[0]

    def has(self, tag: str) -> bool:
        return tag in self.tags

    def fail(self, message: str, arg: str | None = None) -> NoReturn:
        """Raise the description error for this token (or for argument ``arg`` of it)."""
        if self._fail is None:
            raise ValueError(message)
        self._fail(message, arg)
        raise AssertionError("unreachable")  # pragma: no cover

    @property
    def init(self) -> WeightInit:
        """The weight init of this layer: its ``init=`` keyword, else the global option."""
        value = self.args.get("init")
        return parse_weight_init(value) if value is not None else self.weight_init

    @property
    def border(self):
        """The border mode of this layer: its ``border=`` keyword, else the global option."""
        value = self.args.get("border")
        return self.border_mode if value is None else value


class LayerDef:
    """Base class of a layer type. Subclasses set the class attributes and override
    :meth:`shape` and :meth:`build` (and, for the task contract, :meth:`losses`,
    :meth:`reads_targets` and :meth:`output_name`)."""

    type: str = ""
    denet_name: str | None = None  # DeNet's JSON type name, accepted where tools take a type
    doc: str = ""
    tags: dict[str, str] = {}
    args: tuple[Arg, ...] = ()  # positional (also accepted as keywords by name)
    keywords: tuple[Arg, ...] = ()  # keyword-only
    has_params: bool = False  # adds PARAM_KEYWORDS
    is_group: bool = False  # TYPE[args](branch | ...) instead of TYPE[args]
    min_branches: int = 2
    max_branches: int | None = None
    accepts: tuple[str, ...] = ("map",)  # kinds of input value (ShapeSpec.kind) it takes
    task: str | None = None  # the task of a model whose head this is (classification, ...)

    def positional(self, tags: str) -> tuple[Arg, ...]:
        """Positional schema; may depend on the tags (``C.X`` takes kh, kw, sh, sw)."""
        return self.args

    def all_keywords(self, tags: str) -> tuple[Arg, ...]:
        return tuple(self.keywords) + (PARAM_KEYWORDS if self.has_params else ())

    # -- graph links --------------------------------------------------------------------------
    def defines(self, call: Call) -> str | None:
        """Symbol this layer's output defines (``SKIPSRC[0]``), for a later layer to use."""
        return None

    def uses(self, call: Call) -> list[str]:
        """Symbols this layer needs as extra inputs (``SKIP[0]`` uses ``SKIPSRC[0]``)."""
        return []

    def missing_message(self, call: Call, symbol: str) -> str:
        return f"{symbol} is used before it is defined"

    def split_point(self, call: Call) -> bool:
        """True where the training forward is checkpointed (``SPLIT``, ``SKIPSRC.X``)."""
        return False

    def expand(self, ctx, item, call: Call, current: str) -> str:
        """Resolve this token into graph nodes; returns the node the chain continues from.

        ``ctx`` is the resolver (:class:`denet.dsl.resolve.Context`). The default adds one
        node (a layer) or runs every branch from ``current`` and adds the merge node (a group).
        Types that repeat or share sub-networks (``REP``, ``SHARE``) override this."""
        if not self.is_group:
            return ctx.add_layer(item, self, call, current)
        branches = item.branches
        if len(branches) < self.min_branches:
            call.fail(f"{item.type} needs at least {self.min_branches} branches separated by '|'")
        if self.max_branches is not None and len(branches) > self.max_branches:
            call.fail(
                f"{item.type} takes at most {self.max_branches} branch"
                f"{'es' if self.max_branches > 1 else ''}"
            )
        # each branch counts as a node: many empty ones still make a long merge
        ctx.charge(item, len(branches), f"its {len(branches):,} branches")
        ends = [ctx.run(b, current) for b in branches]
        return ctx.add_merge(item, self, call, ends)

    # -- task contract --------------------------------------------------------------------------
    def losses(self, call: Call) -> tuple[str, ...]:
        """Names of the scalars this layer adds in training. Its module is then called with
        ``targets=`` and returns ``(output, {name: scalar})``; names that begin with ``loss``
        are optimised, the others (``top1``) are statistics the trainer logs."""
        return ()

    def reads_targets(self, call: Call) -> bool:
        """True when the module needs the targets in training (passed as ``targets=``)."""
        return bool(self.losses(call))

    def reads_images(self, call: Call) -> bool:
        """True when the module needs the input images (passed as ``images=``), e.g. for their
        size."""
        return False

    def optional_uses(self, call: Call) -> dict[str, str]:
        """Keyword inputs taken from symbols when the string defines them, else not passed:
        ``{"frame": "RT.frame"}`` gives the detection heads the geometry of a resizing ``RT``
        before them. Their shapes are in ``call.taps`` under the keyword."""
        return {}

    def side_outputs(self, call: Call) -> dict[str, ShapeSpec]:
        """Values this layer makes besides its main output, by symbol name (``DNC.sample``),
        for later layers to read through :meth:`uses`. Its module then returns
        ``(output, {symbol: value})`` (and the losses third, in training)."""
        return {}

    def output_name(self, call: Call) -> str | None:
        """The name under which this layer's output is a final output (``out``, ``aux``)."""
        return None

    # -- size, for the compiler's limits (docs/language.md, Limits) ---------------------------
    def count(self, call: Call) -> int:
        """How many graph nodes this token counts as for the node limit (a stage of ``num``
        residual blocks counts ``num``)."""
        return 1

    def output_elements(self, call: Call) -> int:
        """Elements of this layer's output per image, for the limit on one value's bytes.
        The default counts its shape (C*H*W of a map); a layer whose output holds several
        such values per image (features of every RoI) says so."""
        out = call.out
        if out is None:
            return 0
        n = out.channels
        if out.height is not None:
            n *= out.height * (out.width or 1)
        return n

    def params(self, call: Call) -> int:
        """The number of parameters :meth:`build` makes, known before anything is allocated
        (called after :meth:`shape`, so that the input and output shapes are known and
        checked). The default: 0 for a type without parameters, else the module built on the
        meta device and counted. A type whose parameters grow with an argument that no shape
        bounds (a kernel size under border mode half) computes the count itself, in Python
        integers, so that a huge argument is refused instead of overflowing."""
        if not self.has_params:
            return 0
        import torch

        with torch.device("meta"):
            module = self.build(call)
        if not isinstance(module, torch.nn.Module):
            return 0
        return sum(p.numel() for p in module.parameters())

    # -- semantics ------------------------------------------------------------------------------
    def shape(self, call: Call) -> ShapeSpec:
        return call.input

    def build(self, call: Call):
        """An ``nn.Module`` called with the inputs, a :class:`FunctionOp`, or None (identity)."""
        return None


class Registry:
    """Layer types by name."""

    def __init__(self, types: Iterable = ()) -> None:
        self._types: dict[str, LayerDef] = {}
        for t in types:
            self.register(t)

    def register(self, cls):
        """Register a :class:`LayerDef` subclass (or instance); usable as a class decorator."""
        inst = cls() if isinstance(cls, type) else cls
        if not inst.type:
            raise TypeError(f"{cls!r} has no type name")
        if inst.type in self._types:
            raise ValueError(f"layer type {inst.type!r} is registered twice")
        self._types[inst.type] = inst
        return cls

    def get(self, name: str) -> LayerDef | None:
        return self._types.get(name)

    def resolve(self, name: str) -> LayerDef | None:
        """A type by its name in the language or by DeNet's JSON name (``denet-sparse``), as
        tools that take a layer type accept both."""
        found = self._types.get(name)
        if found is None:
            found = next((t for t in self._types.values() if t.denet_name == name), None)
        return found

    def __contains__(self, name: str) -> bool:
        return name in self._types

    def __iter__(self):
        return iter(self._types[n] for n in self.names())

    def names(self) -> list[str]:
        return sorted(self._types)

    def suggest(self, name: str) -> list[str]:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        upper = [n for n in names if n.upper() == name.upper() and n not in close]
        return upper + close


def layer_types(module) -> list[type[LayerDef]]:
    """The layer types a module defines (module-level ``LayerDef`` subclasses with a type)."""
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, LayerDef)
        and obj.type
        and obj.__module__ == module.__name__
    ]


def discover(package) -> list:
    """Import every module of ``package`` and return them (sorted by name), so that a layer
    type needs no list to be registered: it is found in its file."""
    import importlib
    import pkgutil

    modules = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        modules.append(importlib.import_module(f"{package.__name__}.{info.name}"))
    return modules
