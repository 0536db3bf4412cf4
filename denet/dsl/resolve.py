"""AST -> :class:`LayerGraph`: binds every token's arguments against its registry entry, wires the
graph (taps, references, skips, branches) and infers every output shape.

Every problem is a :class:`~denet.errors.DescError` pointing at the token (or the argument) that
causes it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from ..errors import DescError
from ..layers import REGISTRY, Call, Registry, ShapeSpec
from ..layers.activation import ACTIVATIONS
from ..layers.init import WeightInit, parse_weight_init
from ..layers.registry import BORDER_MODES, REQUIRED, Arg
from . import ast

INPUT = "input"


@dataclass
class Node:
    """One token of the string, resolved.

    ``name`` is stable and unique (``l{index}_{TYPE}``; repeated copies inside ``REP`` get
    ``_{r}`` suffixes) and is the module name, hence the state-dict prefix.
    """

    name: str
    index: int                    # position of the token in the string (reading order)
    type: str                     # layer type, or "@" for a tap, "$" for a reference
    tags: str
    args: dict                    # every argument, defaults filled in
    inputs: tuple[str, ...]       # names of the input nodes ("input" is the image)
    shape: ShapeSpec
    item: object                  # the AST item
    top: int                      # index of the top-level item this node belongs to
    nested: bool = False          # inside a group branch
    split: bool = False
    lr: float = 1.0
    frozen: bool = False
    call: Call | None = None

    @property
    def token(self) -> str:
        from .printer import print_item
        return print_item(self.item, shallow=True)


@dataclass
class LayerGraph:
    """The resolved network: nodes in execution order, each with its inputs and output shape."""

    desc: ast.Description
    input_shape: ShapeSpec
    nodes: list[Node] = field(default_factory=list)
    output: str = INPUT
    classes: int | None = None
    options: dict = field(default_factory=dict)

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

    def signature(self) -> list[tuple]:
        """What makes two graphs the same network (used by canonical round-trip tests)."""
        return [(n.name, n.type, n.tags, tuple(sorted((k, repr(v)) for k, v in n.args.items())),
                 n.inputs, n.shape) for n in self.nodes] + [("output", self.output)]


@dataclass(frozen=True)
class CompileOptions:
    border_mode: str | int = "valid"
    activation: str = "relu"
    weight_init: tuple[WeightInit, ...] = (parse_weight_init("he-backward"),)

    @classmethod
    def make(cls, border_mode="valid", activation="relu", weight_init="he-backward"):
        """Validated options; raises ``ValueError`` naming the bad one."""
        if isinstance(border_mode, str) and border_mode not in BORDER_MODES:
            try:
                border_mode = int(border_mode)
            except ValueError:
                raise ValueError(f"unknown border mode {border_mode!r}; expected one of "
                                 f"{', '.join(BORDER_MODES)} or a padding in pixels") from None
        if not isinstance(border_mode, str) and (isinstance(border_mode, bool) or
                                                 int(border_mode) != border_mode or
                                                 border_mode < 0):
            raise ValueError(f"a border mode in pixels must be an integer >= 0, not "
                             f"{border_mode!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of "
                             f"{', '.join(ACTIVATIONS)}")
        inits = weight_init if isinstance(weight_init, (list, tuple)) else [weight_init]
        if not inits:
            raise ValueError("weight_init must not be empty")
        return cls(border_mode, activation, tuple(parse_weight_init(w) for w in inits))

    def init_for(self, index: int) -> WeightInit:
        """DeNet's per-token list: token i uses weight_init[min(len-1, i)]."""
        return self.weight_init[min(len(self.weight_init) - 1, index)]

    def as_dict(self) -> dict:
        inits = [w.text if w.std is None else w.std for w in self.weight_init]
        return {"border_mode": self.border_mode, "activation": self.activation,
                "weight_init": inits[0] if len(inits) == 1 else inits}


class _Resolver:
    def __init__(self, desc: ast.Description, registry: Registry, options: CompileOptions,
                 classes: int | None):
        self.desc = desc
        self.registry = registry
        self.options = options
        self.classes = classes
        self.nodes: list[Node] = []
        self.symbols: dict[str, str] = {}
        self.symbol_items: dict[str, object] = {}
        self.index = {}
        for i, item in enumerate(ast.walk(desc.items)):
            self.index[id(item)] = i

    # -- errors -----------------------------------------------------------------------------
    def error(self, message: str, where) -> DescError:
        return DescError(message, self.desc.source, where.column, where.line)

    def fail_at(self, item, message: str, arg: str | None = None):
        where = item
        if arg is not None:
            for a in getattr(item, "args", ()):
                if a.name == arg:
                    where = a
                    break
            else:
                pos = [a.name for a in self._positional_schema(item)]
                given = [a for a in getattr(item, "args", ()) if a.name is None]
                if arg in pos and pos.index(arg) < len(given):
                    where = given[pos.index(arg)]
        raise self.error(f"{_head(item)}: {message}", where)

    def _positional_schema(self, item):
        ltype = self.registry.get(item.type)
        return ltype.positional(item.tags) if ltype else ()

    # -- binding ----------------------------------------------------------------------------
    def lookup(self, item):
        ltype = self.registry.get(item.type)
        if ltype is None:
            hint = self.registry.suggest(item.type)
            msg = f"unknown layer type {item.type!r}"
            if hint:
                msg += "; did you mean " + " or ".join(repr(h) for h in hint) + "?"
            raise self.error(msg, item)
        if ltype.is_group and isinstance(item, ast.Layer):
            raise self.error(f"{item.type} combines branches: write "
                             f"{item.type}(branch | branch ...)", item)
        if not ltype.is_group and isinstance(item, ast.Group):
            raise self.error(f"{item.type} is a layer, not a combinator: it takes no "
                             f"(branches)", item)
        return ltype

    def bind(self, ltype, item) -> dict:
        tags = item.tags
        for t in tags:
            if t not in ltype.tags:
                allowed = ", ".join(ltype.tags) if ltype.tags else "none"
                raise self.error(f"{_head(item)}: {item.type} has no tag {t!r} "
                                 f"(its tags: {allowed})", item)
        pos = ltype.positional(tags)
        kws = ltype.all_keywords(tags)
        by_name: dict[str, Arg] = {a.name: a for a in tuple(pos) + tuple(kws)}
        values: dict = {}
        where: dict = {}
        n_pos = 0
        for a in item.args:
            if a.name is None:
                if values.keys() - {p.name for p in pos[:n_pos]}:
                    raise self.error(f"{_head(item)}: a positional argument cannot follow a "
                                     f"keyword argument", a)
                if n_pos >= len(pos):
                    if not pos:
                        msg = f"{item.type} takes no positional arguments"
                    else:
                        msg = (f"{item.type} takes at most {len(pos)} positional argument"
                               f"{'s' if len(pos) > 1 else ''} "
                               f"({_signature(item.type, tags, pos)}), got "
                               f"{sum(1 for x in item.args if x.name is None)}")
                    raise self.error(f"{_head(item)}: {msg}", a)
                spec = pos[n_pos]
                n_pos += 1
            else:
                spec = by_name.get(a.name)
                if spec is None:
                    import difflib
                    close = difflib.get_close_matches(a.name, list(by_name), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    known = ", ".join(by_name) or "none"
                    raise self.error(f"{_head(item)}: {item.type} has no argument {a.name!r}"
                                     f"{hint} (its arguments: {known})", a)
                if spec.name in values:
                    raise self.error(f"{_head(item)}: argument {spec.name!r} given twice", a)
            try:
                values[spec.name] = spec.convert(a.value)
            except ValueError as err:
                raise self.error(f"{_head(item)}: {err}", a) from None
            where[spec.name] = a
        missing = [p for p in tuple(pos) + tuple(kws)
                   if p.name not in values and p.default is REQUIRED]
        if missing:
            raise self.error(f"{_head(item)}: {item.type} needs {missing[0].name} "
                             f"({_signature(item.type, tags, pos)})", item)
        return values

    def fill_defaults(self, ltype, item, values: dict, call: Call):
        for spec in tuple(ltype.positional(item.tags)) + tuple(ltype.all_keywords(item.tags)):
            if spec.name not in values:
                d = spec.default
                values[spec.name] = d(call) if callable(d) else d

    # -- graph ------------------------------------------------------------------------------
    def add_node(self, item, type_, tags, args, inputs, shape, top, nested, suffix, call=None,
                 split=False):
        idx = self.index[id(item)]
        label = {"@": "tap", "$": "ref"}.get(type_, type_)
        tags = "".join(sorted(set(tags)))
        node = Node(f"l{idx}_{label}{suffix}", idx, type_, tags, args, tuple(inputs), shape, item,
                    top, nested, split, float(args.get("lr", 1.0)), bool(args.get("frozen", False)),
                    call)
        self.nodes.append(node)
        return node.name

    def shape_of(self, name):
        if name == INPUT:
            return self.input_shape
        for n in reversed(self.nodes):
            if n.name == name:
                return n.shape
        raise KeyError(name)

    def run(self, items, current: str, top: int | None, nested: bool, suffix: str) -> str:
        for k, item in enumerate(items):
            t = k if top is None else top
            current = self.item(item, current, t, nested, suffix)
        return current

    def item(self, item, current, top, nested, suffix):
        if isinstance(item, ast.Tap):
            key = "@" + item.name
            if key in self.symbols:
                first = self.symbol_items[key]
                raise self.error(f"@{item.name} is defined twice (first at column "
                                 f"{first.column})", item)
            name = self.add_node(item, "@", "", {"name": item.name}, [current],
                                 self.shape_of(current), top, nested, suffix)
            self.symbols[key] = name
            self.symbol_items[key] = item
            return name
        if isinstance(item, ast.Ref):
            key = "@" + item.name
            if key not in self.symbols:
                known = sorted(k[1:] for k in self.symbols if k.startswith("@"))
                hint = (" (taps so far: " + ", ".join("@" + k for k in known) + ")") if known \
                    else " (no @taps so far)"
                raise self.error(f"${item.name} refers to no earlier @{item.name}{hint}", item)
            target = self.symbols[key]
            return self.add_node(item, "$", "", {"name": item.name}, [target],
                                 self.shape_of(target), top, nested, suffix)

        ltype = self.lookup(item)
        values = self.bind(ltype, item)
        idx = self.index[id(item)]
        call = Call(item.type, item.tags, values, [self.shape_of(current)],
                    self.options.border_mode, self.options.activation,
                    self.options.init_for(idx), self.classes,
                    _fail=lambda msg, arg=None, _item=item: self.fail_at(_item, msg, arg))

        if isinstance(item, ast.Group):
            self.fill_defaults(ltype, item, values, call)
            if item.type == "REP":  # sequence repeated n times, own weights per copy
                if len(item.branches) != 1:
                    self.fail_at(item, "REP takes exactly one branch: REP[n](items)")
                for r in range(values["n"]):
                    current = self.run(item.branches[0], current, top, True, f"{suffix}_{r}")
                return current
            if len(item.branches) < 2:
                self.fail_at(item, f"{item.type} needs at least two branches separated by '|'")
            ends = [self.run(b, current, top, True, suffix) for b in item.branches]
            call.inputs = [self.shape_of(e) for e in ends]
            shape = ltype.shape(call)
            call.out = shape
            return self.add_node(item, item.type, item.tags, values, ends, shape, top, nested,
                                 suffix, call)

        inputs = [current]
        self.fill_defaults(ltype, item, values, call)
        for sym in ltype.uses(call):
            if sym not in self.symbols:
                self.fail_at(item, ltype.missing_message(call, sym))
            inputs.append(self.symbols[sym])
        call.inputs = [self.shape_of(i) for i in inputs]
        shape = ltype.shape(call)
        call.out = shape
        split = ltype.split_point(call)
        if split and nested:
            self.fail_at(item, f"{item.type} is a split point and must be at the top level, "
                               f"not inside a branch or REP")
        name = self.add_node(item, item.type, item.tags, values, inputs, shape, top, nested,
                             suffix, call, split)
        call.name = name
        sym = ltype.defines(call)
        if sym is not None:
            if sym in self.symbols:
                first = self.symbol_items[sym]
                self.fail_at(item, f"{sym} is marked twice (first at column {first.column})")
            self.symbols[sym] = name
            self.symbol_items[sym] = item
        return name

    def resolve(self, input_shape: ShapeSpec) -> LayerGraph:
        self.input_shape = input_shape
        out = self.run(self.desc.items, INPUT, None, False, "")
        graph = LayerGraph(self.desc, input_shape, self.nodes, out, self.classes,
                           self.options.as_dict())
        self.check_dead_ends(graph)
        return graph

    def check_dead_ends(self, graph: LayerGraph):
        used = {graph.output}
        for n in graph.nodes:
            used.update(n.inputs)
        for n in graph.nodes:
            if n.name not in used and n.type not in ("@",):
                raise self.error(f"{_head(n.item)}: its output is never used (a $reference "
                                 f"after it continues from another tensor)", n.item)


def _head(item) -> str:
    from .printer import print_item
    return print_item(item, shallow=True)


def _signature(type_: str, tags: str, pos) -> str:
    head = type_ + ("." + tags if tags else "")
    return head + "[" + ", ".join(p.name if p.default is REQUIRED else f"{p.name}=…"
                                  for p in pos) + "]"


def resolve(desc: ast.Description, input_shape, classes: int | None = None,
            options: CompileOptions | None = None, registry: Registry | None = None
            ) -> LayerGraph:
    """Resolve a parsed description for inputs of ``input_shape`` = (C, H, W)."""
    c, h, w = (int(v) for v in input_shape)
    if min(c, h, w) < 1:
        raise DescError(f"input shape must be positive (C, H, W), not {tuple(input_shape)}")
    if classes is not None and (int(classes) != classes or classes < 1):
        raise DescError(f"classes must be a positive integer, not {classes!r}")
    resolver = _Resolver(desc, registry or REGISTRY, options or CompileOptions(), classes)
    return resolver.resolve(ShapeSpec(c, h, w, Fraction(1)))
