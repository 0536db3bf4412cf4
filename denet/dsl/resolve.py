"""AST -> :class:`LayerGraph`: binds every token's arguments against its registry entry, wires the
graph (taps, references, skips, branches, tap arguments, targets) and infers every output shape.

The resolver knows no layer type: each token's registry entry expands it
(:meth:`~denet.layers.LayerDef.expand`) through the small :class:`Context` API below. Every
problem is a :class:`~denet.errors.DescError` pointing at the token (or the argument) that causes
it, quoted as the user typed it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ..errors import DescError
from ..layers import REGISTRY, Call, Registry, ShapeSpec
from ..layers.activation import ACTIVATIONS
from ..layers.init import WeightInit, parse_weight_init
from ..layers.registry import BORDER_MODES, REQUIRED, Arg
from ..layers.shape import KINDS
from . import ast
from .graph import INPUT, TARGETS, LayerGraph, Node
from .limits import Limits, current, describe
from .printer import print_item

__all__ = ["INPUT", "TARGETS", "CompileOptions", "Context", "LayerGraph", "Node", "resolve"]


CLASSES = "classes"  # an integer argument written as this word is the class count


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
                raise ValueError(
                    f"unknown border mode {border_mode!r}; expected one of "
                    f"{', '.join(BORDER_MODES)} or a padding in pixels"
                ) from None
        if not isinstance(border_mode, str) and (
            isinstance(border_mode, bool) or int(border_mode) != border_mode or border_mode < 0
        ):
            raise ValueError(
                f"a border mode in pixels must be an integer >= 0, not {border_mode!r}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}"
            )
        inits = weight_init if isinstance(weight_init, (list, tuple)) else [weight_init]
        if not inits:
            raise ValueError("weight_init must not be empty")
        return cls(border_mode, activation, tuple(parse_weight_init(w) for w in inits))

    def init_for(self, index: int) -> WeightInit:
        """DeNet's per-token list: token i uses weight_init[min(len-1, i)]."""
        return self.weight_init[min(len(self.weight_init) - 1, index)]

    def as_dict(self) -> dict:
        inits = [w.text if w.std is None else w.std for w in self.weight_init]
        return {
            "border_mode": self.border_mode,
            "activation": self.activation,
            "weight_init": inits[0] if len(inits) == 1 else inits,
        }


class Context:
    """The resolver, as a layer type's :meth:`~denet.layers.LayerDef.expand` sees it.

    ``run(items, current)`` resolves a branch and returns its end node; ``add_layer`` and
    ``add_merge`` add the token's own node; ``scope()`` keeps taps made inside local;
    ``share(names)`` makes the nodes added inside reuse the modules of ``names``, in order;
    ``definitions`` is where a type keeps what a later token of its family looks up (``SHARE``
    bodies for ``USE``); ``index_of(item)`` is a token's position in the string.

    ``limits`` bound what the string may ask for (docs/language.md, Limits): ``counted`` is the
    number of nodes so far (each node, each branch run, each block of a stage: see
    :meth:`charge`), ``params`` the parameters so far; a type that repeats a sub-network calls
    :meth:`charge` with what the remaining copies will cost before making them.
    """

    def __init__(
        self,
        desc: ast.Description,
        registry: Registry,
        options: CompileOptions,
        classes: int | None,
        limits: Limits | None = None,
    ):
        self.desc = desc
        self.registry = registry
        self.options = options
        self.classes = classes
        self.limits = limits or current()
        self.counted = 0
        self.params = 0
        self.activation_bytes = 0
        self.nodes: list[Node] = []
        self._by_name: dict[str, Node] = {}
        self.symbols: dict[str, str] = {}
        self.symbol_items: dict[str, Any] = {}
        self.definitions: dict[str, object] = {}
        self.index = {id(item): i for i, item in enumerate(ast.walk(desc.items))}
        self.top = 0
        self.nested = False
        self.suffix = ""
        self._shared: list[str] | None = None

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
            raise self.error(
                f"{item.type} combines branches: write {item.type}(branch | branch ...)", item
            )
        if not ltype.is_group and isinstance(item, ast.Group):
            raise self.error(
                f"{item.type} is a layer, not a combinator: it takes no (branches)", item
            )
        return ltype

    def bind(self, ltype, item) -> dict:
        tags = item.tags
        for t in tags:
            if t not in ltype.tags:
                allowed = ", ".join(ltype.tags) if ltype.tags else "none"
                raise self.error(
                    f"{_head(item)}: {item.type} has no tag {t!r} (its tags: {allowed})", item
                )
        pos = ltype.positional(tags)
        kws = ltype.all_keywords(tags)
        by_name: dict[str, Arg] = {a.name: a for a in tuple(pos) + tuple(kws)}
        values: dict = {}
        n_pos = 0
        for a in item.args:
            if a.name is None:
                if values.keys() - {p.name for p in pos[:n_pos]}:
                    raise self.error(
                        f"{_head(item)}: a positional argument cannot follow a keyword argument", a
                    )
                if n_pos >= len(pos):
                    if not pos:
                        msg = f"{item.type} takes no positional arguments"
                    else:
                        msg = (
                            f"{item.type} takes at most {len(pos)} positional argument"
                            f"{'s' if len(pos) > 1 else ''} "
                            f"({_signature(item.type, tags, pos)}), got "
                            f"{sum(1 for x in item.args if x.name is None)}"
                        )
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
                    raise self.error(
                        f"{_head(item)}: {item.type} has no argument {a.name!r}"
                        f"{hint} (its arguments: {known})",
                        a,
                    )
                if spec.name in values:
                    raise self.error(f"{_head(item)}: argument {spec.name!r} given twice", a)
            value = a.value
            if value == CLASSES and spec.kind == "int":
                # the word `classes` stands for the class count of the compile options
                if self.classes is None:
                    raise self.error(
                        f"{_head(item)}: `classes` stands for the class count: compile with "
                        "classes=N",
                        a,
                    )
                value = self.classes
            try:
                values[spec.name] = spec.convert(value)
            except ValueError as err:
                raise self.error(f"{_head(item)}: {err}", a) from None
        missing = [
            p for p in tuple(pos) + tuple(kws) if p.name not in values and p.default is REQUIRED
        ]
        if missing:
            raise self.error(
                f"{_head(item)}: {item.type} needs {missing[0].name} "
                f"({_signature(item.type, tags, pos)})",
                item,
            )
        return values

    def fill_defaults(self, ltype, item, values: dict, call: Call):
        for spec in tuple(ltype.positional(item.tags)) + tuple(ltype.all_keywords(item.tags)):
            if spec.name not in values:
                d = spec.default
                values[spec.name] = d(call) if callable(d) else d

    # -- the API of expand() ----------------------------------------------------------------
    def index_of(self, item) -> int:
        return self.index[id(item)]

    def shape_of(self, name):
        if name == INPUT:
            return self.input_shape
        return self._by_name[name].shape

    def charge(self, item, nodes: int, what: str = "") -> None:
        """Counts ``nodes`` more nodes against the node limit (see :meth:`reserve`)."""
        self.reserve(item, nodes, what)
        self.counted += nodes

    def reserve(self, item, nodes: int, what: str = "") -> None:
        """Refuses ``item`` when ``nodes`` more nodes would pass the node limit; ``what``
        says what makes them (``3 copies of 5 nodes``)."""
        total = self.counted + nodes
        if total > self.limits.nodes:
            made = f"{what} would make the graph" if what else "the graph reaches"
            self.fail_at(
                item,
                f"{made} {total:,} nodes, more than {describe('nodes', self.limits.nodes)}",
            )

    def run(self, items, current: str, suffix: str = "") -> str:
        """Resolve a branch (nested items) starting from node ``current``; its end node."""
        saved = self.nested, self.suffix
        self.nested, self.suffix = True, self.suffix + suffix
        try:
            for item in items:
                current = self.item(item, current)
        finally:
            self.nested, self.suffix = saved
        return current

    @contextlib.contextmanager
    def scope(self):
        """Taps (and skip sources) defined inside are forgotten on exit."""
        symbols, items = dict(self.symbols), dict(self.symbol_items)
        try:
            yield
        finally:
            self.symbols, self.symbol_items = symbols, items

    @contextlib.contextmanager
    def share(self, names):
        """Nodes added inside reuse the modules of ``names``, one each, in order."""
        saved, self._shared = self._shared, list(names)
        try:
            yield
        finally:
            self._shared = saved

    def _keyword_inputs(self, item, ltype, call: Call) -> dict[str, str]:
        """Keyword inputs of a layer: its tap arguments, the images when it reads them, and
        the symbols of :meth:`LayerDef.optional_uses` that the string defines."""
        kwinputs = {}
        for spec in tuple(ltype.positional(item.tags)) + tuple(ltype.all_keywords(item.tags)):
            tap = call.args.get(spec.name)
            if spec.kind != "tap" or tap is None:
                continue
            if "@" + tap not in self.symbols:
                self.fail_at(
                    item,
                    f"{spec.name}={tap} refers to no earlier @{tap}{self._taps_so_far()}",
                    spec.name,
                )
            kwinputs[spec.name] = self.symbols["@" + tap]
            call.taps[spec.name] = self.shape_of(kwinputs[spec.name])
        if ltype.reads_images(call):
            kwinputs["images"] = INPUT
        for keyword, sym in ltype.optional_uses(call).items():
            if sym in self.symbols:
                kwinputs[keyword] = self.symbols[sym]
                call.taps[keyword] = self.shape_of(self.symbols[sym])
        return kwinputs

    def _contract(self, ltype, call: Call) -> dict:
        """A node's part in the task contract, as :meth:`add_node` records it."""
        return {
            "losses": tuple(ltype.losses(call)),
            "reads_targets": ltype.reads_targets(call),
            "output_name": ltype.output_name(call),
        }

    def add_layer(self, item, ltype, call: Call, current: str) -> str:
        """The node of a layer token: checks its input kind, adds its extra inputs (skip
        symbols, tap arguments), infers its shape and records its part in the task contract."""
        inputs = [current]
        for sym in ltype.uses(call):
            if sym not in self.symbols:
                self.fail_at(item, ltype.missing_message(call, sym))
            inputs.append(self.symbols[sym])
        kwinputs = self._keyword_inputs(item, ltype, call)
        call.inputs = [self.shape_of(i) for i in inputs]
        if call.input.kind not in ltype.accepts:
            self.fail_at(
                item,
                f"{item.type} needs {_kinds(ltype.accepts)} as input, not "
                f"{call.input.describe()} ({call.input})",
            )
        count = ltype.count(call)
        if count > 1:  # its node counts one of them
            self.reserve(item, count, f"its {count:,} blocks")
            self.counted += count - 1
        shape = self._checked_shape(item, ltype, call)
        split = ltype.split_point(call)
        if split and self.nested:
            self.fail_at(
                item,
                f"{item.type} is a split point and must be at the top level, "
                f"not inside a branch or a repeated sequence",
            )
        name = self.add_node(
            item,
            item.type,
            item.tags,
            call.args,
            inputs,
            shape,
            call,
            split,
            kwinputs=kwinputs,
            **self._contract(ltype, call),
        )
        call.name = name
        node = self.nodes[-1]
        for sym, side_shape in ltype.side_outputs(call).items():
            if sym in self.symbols:
                first = self.symbol_items[sym]
                self.fail_at(item, f"{sym} is made twice (first at column {first.column})")
            side = self.add_node(
                item,
                "^",
                "",
                {"side": sym},
                [name],
                side_shape,
                label=f"{item.type}_{sym.rpartition('.')[2]}",
            )
            node.sides[sym] = side
            self.symbols[sym] = side
            self.symbol_items[sym] = item
        sym = ltype.defines(call)
        if sym is not None:
            if sym in self.symbols:
                first = self.symbol_items[sym]
                self.fail_at(item, f"{sym} is marked twice (first at column {first.column})")
            self.symbols[sym] = name
            self.symbol_items[sym] = item
        if self._shared is None:  # a shared node reuses its source's parameters
            self._check_params(item, ltype, call)
        elements = ltype.output_elements(call)
        if elements != shape_elements(shape):  # more than its shape says (RoI features)
            self._check_bytes(item, elements - shape_elements(shape), shape, elements)
        return name

    def _check_params(self, item, ltype, call: Call) -> None:
        n = ltype.params(call)
        self.params += n
        if self.params > self.limits.params:
            self.fail_at(
                item,
                f"the model would have {self.params:,} parameters with this layer's {n:,}, "
                f"more than {describe('params', self.limits.params)}",
            )

    def _check_bytes(self, item, added: int, shape, elements: int | None = None) -> None:
        """Refuses an output of ``elements`` (default ``added``) per image over the limit of
        one value, and ``added`` more over the limit of all of them (float32)."""
        size = 4 * (added if elements is None else elements)
        if size > self.limits.map_bytes:
            self.fail_at(
                item,
                f"its output ({shape}) would take {size:,} bytes per image, more than "
                f"{describe('map_bytes', self.limits.map_bytes)}",
            )
        self.activation_bytes += 4 * added
        if self.activation_bytes > self.limits.activation_bytes:
            self.fail_at(
                item,
                f"the outputs of the layers up to here would take {self.activation_bytes:,} "
                f"bytes per image, more than "
                f"{describe('activation_bytes', self.limits.activation_bytes)}",
            )

    def add_merge(self, item, ltype, call: Call, ends: list[str]) -> str:
        """The node of a group token that merges the branch ends ``ends``; it takes part in
        the task contract as a layer does (an RPN or RoI pooling over feature levels)."""
        kwinputs = self._keyword_inputs(item, ltype, call)
        call.inputs = [self.shape_of(e) for e in ends]
        for k, s in enumerate(call.inputs, start=1):
            if s.kind not in ltype.accepts:
                self.fail_at(
                    item,
                    f"{item.type} merges {_kinds(ltype.accepts)}; branch {k} "
                    f"gives {s.describe()} ({s})",
                )
        shape = self._checked_shape(item, ltype, call)
        name = self.add_node(
            item,
            item.type,
            item.tags,
            call.args,
            ends,
            shape,
            call,
            kwinputs=kwinputs,
            **self._contract(ltype, call),
        )
        call.name = name
        if self._shared is None:
            self._check_params(item, ltype, call)
        return name

    # -- internals ----------------------------------------------------------------------------
    def _checked_shape(self, item, ltype, call: Call) -> ShapeSpec:
        shape = ltype.shape(call)
        if shape.kind == "map" and (shape.height < 1 or shape.width < 1):
            self.fail_at(
                item,
                f"output would be empty ({shape.height}x{shape.width}) for the {call.input} input",
            )
        call.out = shape
        return shape

    def _taps_so_far(self) -> str:
        known = sorted(k[1:] for k in self.symbols if k.startswith("@"))
        return (
            (" (taps so far: " + ", ".join("@" + k for k in known) + ")")
            if known
            else " (no @taps so far)"
        )

    def add_node(
        self, item, type_, tags, args, inputs, shape, call=None, split=False, label=None, **extra
    ):
        idx = self.index[id(item)]
        label = label or {"@": "tap", "$": "ref"}.get(type_, type_)
        tags = "".join(sorted(set(tags)))
        node = Node(
            f"l{idx}_{label}{self.suffix}",
            idx,
            type_,
            tags,
            args,
            tuple(inputs),
            shape,
            item,
            self.top,
            self.nested,
            split,
            float(args.get("lr", 1.0)),
            bool(args.get("frozen", False)),
            call,
            **extra,
        )
        if self._shared is not None:
            if not self._shared:  # pragma: no cover - a shared body resolves to the same nodes
                raise AssertionError("shared sub-network resolved to more nodes")
            node.shared = self._shared.pop(0)
        self.charge(item, 1)
        # a tap or a reference is another name for a value already counted
        self._check_bytes(item, 0 if type_ in ("@", "$") else shape_elements(shape), shape)
        self.nodes.append(node)
        self._by_name[node.name] = node
        return node.name

    def item(self, item, current):
        if isinstance(item, ast.Tap):
            key = "@" + item.name
            if key in self.symbols:
                first = self.symbol_items[key]
                raise self.error(
                    f"@{item.name} is defined twice (first at column {first.column})", item
                )
            name = self.add_node(
                item, "@", "", {"name": item.name}, [current], self.shape_of(current)
            )
            self.symbols[key] = name
            self.symbol_items[key] = item
            return name
        if isinstance(item, ast.Ref):
            key = "@" + item.name
            if key not in self.symbols:
                raise self.error(
                    f"${item.name} refers to no earlier @{item.name}{self._taps_so_far()}", item
                )
            target = self.symbols[key]
            return self.add_node(
                item, "$", "", {"name": item.name}, [target], self.shape_of(target)
            )

        ltype = self.lookup(item)
        values = self.bind(ltype, item)
        idx = self.index[id(item)]
        call = Call(
            item.type,
            item.tags,
            values,
            [self.shape_of(current)],
            self.options.border_mode,
            self.options.activation,
            self.options.init_for(idx),
            self.classes,
            _fail=lambda msg, arg=None, _item=item: self.fail_at(_item, msg, arg),
        )
        self.fill_defaults(ltype, item, values, call)
        return ltype.expand(self, item, call, current)

    def resolve(self, input_shape: ShapeSpec) -> LayerGraph:
        self.input_shape = input_shape
        current = INPUT
        for k, item in enumerate(self.desc.items):
            self.top = k
            current = self.item(item, current)
        graph = LayerGraph(
            self.desc, input_shape, self.nodes, current, self.classes, self.options.as_dict()
        )
        self.check_dead_ends(graph)
        self.check_contract(graph)
        return graph

    def check_dead_ends(self, graph: LayerGraph):
        """Every layer must feed an output or a loss; a tap nobody reads does not count."""
        sinks = [graph.output, *graph.outputs.values()]
        sinks += [n.name for n in graph.nodes if n.losses]
        live = set()
        by_name = {n.name: n for n in graph.nodes}
        stack = list(sinks)
        while stack:
            name = stack.pop()
            if name in live or name not in by_name:
                continue
            live.add(name)
            node = by_name[name]
            stack.extend(node.inputs)
            stack.extend(node.kwinputs.values())
        for n in graph.nodes:
            if n.name not in live and n.type not in ("@", "$", "^"):
                raise self.error(
                    f"{_head(n.item)}: its output is never used (nothing after it "
                    f"reads it: a $reference or an unread @tap leaves it behind)",
                    n.item,
                )

    def check_contract(self, graph: LayerGraph):
        seen: dict[str, Node] = {}
        tasks: dict[str, Node] = {}
        last_split = max((k for k, n in enumerate(graph.nodes) if n.split), default=-1)
        for k, n in enumerate(graph.nodes):
            for name in n.losses:
                if name in seen:
                    raise self.error(
                        f"{_head(n.item)}: {name} is already added by "
                        f"{_head(seen[name].item)} (column "
                        f"{seen[name].item.column})",
                        n.item,
                    )
                seen[name] = n
            if n.reads_targets and k < last_split:
                raise self.error(
                    f"{_head(n.item)}: it reads the targets, so it must come after "
                    f"the last split point (checkpointed segments take images only)",
                    n.item,
                )
            ltype = self.registry.get(n.type)
            task = ltype.task if ltype is not None else None
            if task is not None:
                tasks.setdefault(task, n)
        if len(tasks) > 1:
            (t1, n1), (t2, n2) = list(tasks.items())[:2]
            raise self.error(
                f"{_head(n2.item)}: a {t2} head in a {t1} model (first head: {_head(n1.item)})",
                n2.item,
            )
        graph.task = next(iter(tasks), None)


def shape_elements(shape: ShapeSpec) -> int:
    """Elements of one value per image: C*H*W of a map, 5 per box of a set of boxes."""
    n = shape.channels
    if shape.height is not None:
        n *= shape.height * (shape.width or 1)
    if shape.kind == "boxes":
        n *= 5
    elif shape.kind == "corners":  # [2, K, H, W]: both corner probabilities
        n *= 2
    return n


def _kinds(kinds) -> str:
    return " or ".join(KINDS[k] for k in kinds)


def _head(item) -> str:
    """The token as the user typed it (its canonical form when it was not typed)."""
    written = getattr(item, "written", "")
    if written:
        return written + ("(…)" if isinstance(item, ast.Group) else "")
    return print_item(item, shallow=True)


def _signature(type_: str, tags: str, pos) -> str:
    head = type_ + ("." + tags if tags else "")
    return (
        head
        + "["
        + ", ".join(p.name if p.default is REQUIRED else f"{p.name}=…" for p in pos)
        + "]"
    )


def resolve(
    desc: ast.Description,
    input_shape,
    classes: int | None = None,
    options: CompileOptions | None = None,
    registry: Registry | None = None,
    limits: Limits | None = None,
) -> LayerGraph:
    """Resolve a parsed description for inputs of ``input_shape`` = (C, H, W), within
    ``limits`` (default: the limits in force, :mod:`denet.dsl.limits`)."""
    c, h, w = (int(v) for v in input_shape)
    if min(c, h, w) < 1:
        raise DescError(f"input shape must be positive (C, H, W), not {tuple(input_shape)}")
    if classes is not None and (int(classes) != classes or classes < 1):
        raise DescError(f"classes must be a positive integer, not {classes!r}")
    resolver = Context(desc, registry or REGISTRY, options or CompileOptions(), classes, limits)
    return resolver.resolve(ShapeSpec(c, h, w, Fraction(1)))
