"""Read DeNet's own model files (``.mdl.gz``) and rebuild them as denet models.

A DeNet model file (denet-original.md 6.5) is gzip'd JSON: ``version``, ``classLabels``,
``classNum``, ``dataShape`` (or ``imageSize`` + ``imageMode``) and ``layers``, the list of
layers in the order of the original description string, each ``{"type": ..., "layers": [...],
...}``. Every numpy array is ``{"__class__": "numpy.ndarray", "__value__": base64(np.save
bytes)}``; it is read with ``np.load(..., allow_pickle=False)``, so opening a file never runs
code from it.

The conversion has three steps:

1. **The description string** is rebuilt from the layer list with DeNet's own syntax (our
   layer types and argument orders are DeNet's): ``conv`` -> ``C`` (``.B`` bias, ``.X``
   rectangular), ``conv`` + ``regression`` -> ``R``, ``batchnorm`` -> ``BN``,
   ``batchnorm-relu`` -> ``BNA``, consecutive ``resnet`` blocks of one stage ->
   ``nRSN[num, filters, size, stride, bottleneck]`` (the first block carries the stride),
   ``skip-src``/``skip`` -> ``SKIPSRC``/``SKIP``, ``denet-corner``/``-sparse``/``-detect`` ->
   ``DNC``/``DNS``/``DND``, and so on. The global border mode is that of the convs with a
   kernel larger than 1 (a conv that differs gets ``border=``), the global activation that of
   the residual blocks (or the most common ``activation`` layer).
2. **Compile** it with ``denet.compile(desc, dataShape, classNum, border_mode=...)``.
3. **Weights**: every array goes to one state-dict key of the compiled model. Theano's
   ``conv2d`` is a true convolution and PyTorch's a cross-correlation, so every kernel is
   flipped spatially (``w[:, :, ::-1, ::-1]``; a no-op on 1x1 kernels). DeNet's batch norm
   ``std`` holds the running *inverse* std and its test-time op uses ``var = 1/std**2`` and then
   adds ``eps`` again, so ``running_var = 1/std**2`` (eps is *not* subtracted): the converted
   model's evaluation outputs equal DeNet's test-time outputs exactly. Every key must be filled
   exactly once and every array used (``num_batches_tracked`` is PyTorch's own counter and
   starts at 0).

Anything wrong with the file is one :class:`~denet.errors.ModelFileError` naming the file and
the place in it (``layers[5].layers[2]``); anything DeNet could express that the language
cannot (say a pre-activation block whose projection reads relu(BN(x)) after
``--convert-bn-relu``) is refused with the reason.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import json
import math
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import NoReturn

import numpy as np
import torch

from ..errors import DenetError, ModelFileError

_MISSING = object()
SUPPORTED_VERSIONS = (1, 2, 3)  # DeNet writes 3 and refuses 0; no later version exists
BORDER_MODES = ("valid", "half", "full", "same")
ACTIVATIONS = ("none", "sigmoid", "relu", "relu-safe", "elu", "tanh", "softmax", "softplus")
POOL_MODES = {"max": "", "average_inc_pad": "A"}
BN_MOMENTUM, BN_EPS = 0.9, 1e-5

# how an array becomes a state-dict value
FLIP = "flip"  # a Theano conv kernel: flip both spatial axes
PLAIN = "plain"
INV_STD = "inverse std"  # DeNet's BN "std": running_var = 1 / std**2


class _FileProblem(Exception):
    """Raised inside the JSON decoder; becomes a ModelFileError naming the file."""


class _Array:
    """One decoded array of the file, with where it sits and whether a key took it."""

    __slots__ = ("value", "path", "used")

    def __init__(self, value: np.ndarray):
        self.value = value
        self.path = "?"
        self.used = False


def _decode_array(d: dict):
    if d.get("__class__") != "numpy.ndarray" or not isinstance(d.get("__value__"), str):
        raise _FileProblem(f"an object of class {d.get('__class__')!r} where arrays are expected")
    try:
        raw = base64.b64decode(d["__value__"], validate=True)
    except (binascii.Error, ValueError):
        raise _FileProblem("an array whose __value__ is not base64") from None
    try:
        value = np.load(io.BytesIO(raw), allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err):
            raise _FileProblem(
                "refused: an array holds pickled objects (reading never unpickles)"
            ) from None
        raise _FileProblem(f"an array that is not numpy .npy data ({err})") from None
    except Exception as err:  # noqa: BLE001 - any undecodable array is a damaged file
        raise _FileProblem(f"an array that is not numpy .npy data ({type(err).__name__})") from None
    if not isinstance(value, np.ndarray):
        if hasattr(value, "close"):
            value.close()
        raise _FileProblem("an array that is an .npz archive, not .npy data")
    if value.dtype.kind not in "fiu":
        raise _FileProblem(f"an array of dtype {value.dtype} (expected numbers)")
    return _Array(value)


def _object_hook(d: dict):
    if "__class__" in d:
        return _decode_array(d)
    return d


def _assign_paths(obj, path: str, arrays: list) -> None:
    if isinstance(obj, _Array):
        obj.path = path
        arrays.append(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _assign_paths(v, f"{path}.{k}" if path else str(k), arrays)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _assign_paths(v, f"{path}[{i}]", arrays)


# A DeNet file's JSON is mostly base64 of trained float arrays, which gzip shrinks by less than
# 2x: data that expands far more (a gzip bomb) is refused before it fills the memory.
MAX_EXPANSION = 100
MIN_EXPANDED_LIMIT = 256 << 20


def _read_gzip(path: str) -> bytes:
    limit = max(MIN_EXPANDED_LIMIT, MAX_EXPANSION * os.path.getsize(path))
    chunks, total = [], 0
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            total += len(chunk)
            if total > limit:
                raise ModelFileError(
                    f"{path}: refused: its gzip data expands beyond {limit} bytes, more than "
                    f"{MAX_EXPANSION}x the file (a DeNet model file does not compress so well)"
                )
            chunks.append(chunk)
    return b"".join(chunks)


def read_mdl(path: str) -> tuple[dict, list]:
    """The JSON object of a DeNet model file and the list of its arrays. Raises
    :class:`ModelFileError` for a missing, non-gzip, truncated or non-JSON file, one that
    expands beyond :data:`MAX_EXPANSION` times its size, or an array that is not plain numeric
    ``.npy`` data."""
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such file")
    try:
        data = _read_gzip(path)
    except gzip.BadGzipFile:
        raise ModelFileError(f"{path}: not a DeNet model file (not gzip data)") from None
    except (EOFError, zlib.error) as err:
        raise ModelFileError(f"{path}: damaged gzip data ({str(err)[:100]})") from None
    except OSError as err:
        raise ModelFileError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        obj = json.loads(data.decode("utf-8"), object_hook=_object_hook)
    except _FileProblem as err:
        raise ModelFileError(f"{path}: {err}") from None
    except UnicodeDecodeError:
        raise ModelFileError(f"{path}: not a DeNet model file (not UTF-8 JSON)") from None
    except json.JSONDecodeError as err:
        raise ModelFileError(
            f"{path}: not a DeNet model file (bad JSON at line {err.lineno}: {err.msg})"
        ) from None
    except RecursionError:
        raise ModelFileError(f"{path}: not a DeNet model file (JSON nested too deeply)") from None
    if not isinstance(obj, dict):
        raise ModelFileError(f"{path}: not a DeNet model file (the JSON is not an object)")
    arrays: list = []
    _assign_paths(obj, "", arrays)
    return obj, arrays


# ------------------------------------------------------------------------------------------
# Field access with one-line errors


def _num(v) -> str:
    """A number as DeNet strings write it: integers bare, floats in their shortest form."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v) if isinstance(v, float) else str(v)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _Layer:
    """A JSON layer with its place in the file, for reading fields and failing clearly."""

    def __init__(self, file: str, obj, where: str):
        self.file, self.where = file, where
        if not isinstance(obj, dict):
            raise ModelFileError(f"{file}: {where}: a layer must be a JSON object")
        self.obj = obj
        t = obj.get("type")
        if not isinstance(t, str):
            raise ModelFileError(f"{file}: {where}: the layer has no 'type'")
        self.type = t

    def fail(self, msg: str) -> NoReturn:
        raise ModelFileError(f"{self.file}: {self.where} ({self.type}): {msg}")

    def get(self, key: str, default=_MISSING):
        if key in self.obj:
            return self.obj[key]
        if default is _MISSING:
            self.fail(f"missing key {key!r}")
        return default

    def number(self, key: str, default=_MISSING, lo=None, integer=False):
        v = self.get(key, default)
        if not _is_num(v) or (integer and float(v) != int(v)):
            self.fail(f"{key} must be {'an integer' if integer else 'a number'}, not {v!r}")
        if integer:
            v = int(v)
        if lo is not None and v < lo:
            self.fail(f"{key} must be >= {lo}, not {v!r}")
        return v

    def flag(self, key: str, default=_MISSING) -> bool:
        v = self.get(key, default)
        if not isinstance(v, (bool, int)) or isinstance(v, float):
            self.fail(f"{key} must be true or false, not {v!r}")
        return bool(v)

    def text(self, key: str, default=_MISSING) -> str:
        v = self.get(key, default)
        if not isinstance(v, str):
            self.fail(f"{key} must be a string, not {v!r}")
        return v

    def ints(self, key: str, n: int, default=_MISSING, lo=1) -> list[int]:
        v = self.get(key, default)
        if (
            not isinstance(v, list)
            or len(v) != n
            or not all(_is_num(x) and float(x) == int(x) and x >= lo for x in v)
        ):
            self.fail(f"{key} must be a list of {n} integers >= {lo}, not {v!r}")
        return [int(x) for x in v]

    def square(self, key: str, default=_MISSING, lo=1) -> int:
        """A DeNet (h, w) pair that the language writes as one number: both must agree."""
        a, b = self.ints(key, 2, default, lo)
        if a != b:
            self.fail(f"{key} {[a, b]} is not square, which the layer type cannot express")
        return a

    def array(self, key: str) -> _Array:
        v = self.get(key)
        if not isinstance(v, _Array):
            self.fail(f"{key} must be an array")
        return v

    def children(self) -> list[_Layer]:
        """The nested ``layers``, without DeNet's ``initial`` and old ``identity`` entries."""
        subs = self.get("layers", [])
        if not isinstance(subs, list):
            self.fail("'layers' must be a list")
        out = []
        for i, s in enumerate(subs):
            child = _Layer(self.file, s, f"{self.where}.layers[{i}]")
            if child.type not in ("initial", "identity"):
                out.append(child)
        return out


# ------------------------------------------------------------------------------------------
# The string and its weights


@dataclass
class _Token:
    text: str
    where: str
    weights: list[tuple[str, _Array, str]] = field(default_factory=list)  # (key, array, how)


@dataclass
class DenetConversion:
    """What a DeNet file describes: the string, the compile arguments and the weights."""

    desc: str
    input_shape: tuple[int, int, int]
    classes: int | None
    class_names: list[str] | None
    border_mode: str | int
    activation: str
    version: int
    tokens: list[_Token]
    arrays: list[_Array]
    notes: list[str] = field(default_factory=list)

    def compile_kwargs(self) -> dict:
        return {"border_mode": self.border_mode, "activation": self.activation}


def _border(layer: _Layer) -> str | int:
    """A conv's border mode in the language's terms."""
    b = layer.get("border", "half")  # DeNet's ConvLayer default when the key is absent
    if isinstance(b, str):
        if b not in BORDER_MODES:
            layer.fail(f"unknown border mode {b!r}")
        return b
    if isinstance(b, bool):  # DeNet's corner conv passes False, which Theano reads as 0
        return int(b)
    if _is_num(b) and float(b) == int(b) and b >= 0:
        return int(b)
    if isinstance(b, list):
        n = layer.square("border", lo=0)
        return n
    layer.fail(f"unknown border mode {b!r}")


class _Reader:
    def __init__(self, file: str, obj: dict, arrays: list):
        self.file, self.obj, self.arrays = file, obj, arrays
        self.tokens: list[_Token] = []
        self.notes: list[str] = []

    def fail(self, msg: str) -> NoReturn:
        raise ModelFileError(f"{self.file}: {msg}")

    # -- top level -------------------------------------------------------------------------

    def header(self):
        obj = self.obj
        if "version" not in obj:
            self.fail("not a DeNet model file (no 'version')")
        version = obj["version"]
        if version == 0:
            self.fail("an old DeNet format (version 0) that DeNet itself refuses")
        if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
            self.fail(f"unknown DeNet model file version {version!r} (DeNet wrote versions 1 to 3)")
        ctype = obj.get("classifierType", "CNN")
        if ctype != "CNN":
            self.fail(f"classifierType {ctype!r} (only DeNet's CNN models exist)")
        if obj.get("imageBorder", 0) != 0:
            self.fail("imageBorder is not 0 (DeNet itself refuses such a file)")
        if "layers" not in obj:
            self.fail("not a DeNet model file (no 'layers')")
        if not isinstance(obj["layers"], list) or not obj["layers"]:
            self.fail("'layers' must be a non-empty list")
        if "classLabels" not in obj:
            self.fail("missing key 'classLabels'")
        self.version = int(version)
        self.input_shape = self._input_shape()
        self.classes, self.class_names = self._classes()

    def _input_shape(self) -> tuple[int, int, int]:
        obj = self.obj
        if "imageSize" in obj and "imageMode" in obj:
            size, mode = obj["imageSize"], obj["imageMode"]
            channels = {"RGB": 3, "L": 1}.get(mode) if isinstance(mode, str) else None
            if channels is None:
                self.fail(f"imageMode must be 'RGB' or 'L', not {mode!r}")
            shape = [channels, *(size if isinstance(size, list) else [size])]
            what = "imageSize"
        elif "dataShape" in obj:
            shape, what = obj["dataShape"], "dataShape"
        else:
            self.fail("missing key 'dataShape' (and no imageSize + imageMode)")
        # DeNet uses dataShape (and imageSize) in the order stored as (C, dim2, dim3) of its
        # input tensor: for imageSize that is (C, size[0], size[1]), as its loader does.
        if (
            not isinstance(shape, list)
            or len(shape) != 3
            or not all(_is_num(v) and float(v) == int(v) and v >= 1 for v in shape)
        ):
            self.fail(f"{what} must give (C, H, W) as positive integers, not {obj.get(what)!r}")
        c, h, w = (int(v) for v in shape)
        return c, h, w

    def _classes(self):
        obj = self.obj
        labels = obj["classLabels"]
        names = None
        if isinstance(labels, dict):
            idx = labels.values()
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in idx) or sorted(
                idx
            ) != list(range(len(labels))):
                self.fail("classLabels must map each class name to its index 0..N-1")
            names = [""] * len(labels)
            for name, i in labels.items():
                names[i] = str(name)
        elif isinstance(labels, list):
            names = [str(n) for n in labels]
        elif labels is not None:
            self.fail(f"classLabels must be an object (name -> index), not {type(labels).__name__}")
        if "classNum" in obj:
            n = obj["classNum"]
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                self.fail(f"classNum must be a positive integer, not {n!r}")
        elif names:
            n = len(names)
        else:
            n = None
        if names and n is not None and len(names) != n:
            self.notes.append(
                f"classLabels names {len(names)} classes but classNum is {n}: no class names stored"
            )
            names = None
        return n, (names or None)

    # -- globals ---------------------------------------------------------------------------

    def globals_(self, layers: list[_Layer]):
        borders: list = []
        acts: list[str] = []
        block_acts: set[str] = set()
        for i, layer in enumerate(layers):
            if layer.type == "conv":
                regression = i + 1 < len(layers) and layers[i + 1].type == "regression"
                shape = layer.ints("shape", 4)
                if not regression and max(shape[2], shape[3]) > 1:
                    borders.append(_border(layer))
            elif layer.type == "activation":
                acts.append(self._activation_kind(layer, "activation"))
            elif layer.type == "resnet":
                block_acts.add(self._activation_kind(layer, "activation"))
        if len(block_acts) > 1:
            raise ModelFileError(
                f"{self.file}: residual blocks with different activations "
                f"({', '.join(sorted(block_acts))}): the language has one global activation "
                "for RSN blocks"
            )
        self.border = Counter(borders).most_common(1)[0][0] if borders else "half"
        if block_acts:
            self.activation = block_acts.pop()
        else:
            self.activation = Counter(acts).most_common(1)[0][0] if acts else "relu"

    @staticmethod
    def _activation_kind(layer: _Layer, key: str) -> str:
        kind = layer.text(key, "relu")
        if kind not in ACTIVATIONS:
            layer.fail(f"unknown activation {kind!r}")
        return kind

    # -- layers ----------------------------------------------------------------------------

    def run(self) -> DenetConversion:
        self.header()
        layers = [
            _Layer(self.file, layer, f"layers[{i}]") for i, layer in enumerate(self.obj["layers"])
        ]
        layers = [layer for layer in layers if layer.type != "identity"]
        self.globals_(layers)
        i = 0
        while i < len(layers):
            layer = layers[i]
            if layer.type == "resnet":
                j = i
                while j < len(layers) and layers[j].type == "resnet":
                    j += 1
                self.resnet_stages(layers[i:j])
                i = j
                continue
            if layer.type == "conv" and i + 1 < len(layers) and layers[i + 1].type == "regression":
                self.regression(layer, layers[i + 1])
                i += 2
                continue
            handler = getattr(self, "layer_" + layer.type.replace("-", "_"), None)
            if handler is None:
                layer.fail(
                    f"unknown layer type {layer.type!r}"
                    if layer.type not in ("deconv", "crop-mirror", "initial")
                    else f"layer type {layer.type!r} is not supported by this converter"
                )
            handler(layer)
            i += 1
        desc = " ".join(t.text for t in self.tokens)
        return DenetConversion(
            desc,
            self.input_shape,
            self.classes,
            self.class_names,
            self.border,
            self.activation,
            self.version,
            self.tokens,
            self.arrays,
            self.notes,
        )

    def add(self, text: str, layer: _Layer, weights=()):
        self.tokens.append(_Token(text, layer.where, list(weights)))

    def conv_params(self, layer: _Layer, bias_allowed=True, nested=True):
        """(shape, stride, use_bias, weights) of a DeNet conv; weights keyed weight / bias.
        ``enabled: false`` (DeNet then leaves the conv out of training) can be expressed only
        for a top-level conv (``frozen=1``)."""
        if nested and not layer.flag("enabled", True):
            layer.fail("a disabled conv (enabled=false) inside a layer cannot be expressed")
        shape = layer.ints("shape", 4)
        stride = layer.ints("stride", 2, [1, 1])
        use_bias = layer.flag("useBias", False)
        weights = [("weight", layer.array("weight"), FLIP)]
        if use_bias:
            if not bias_allowed:
                layer.fail("a conv with a bias here cannot be expressed (the layer has none)")
            weights.append(("bias", layer.array("bias"), PLAIN))
        return shape, stride, use_bias, weights

    def layer_conv(self, layer: _Layer):
        shape, stride, use_bias, weights = self.conv_params(layer, nested=False)
        f, _, kh, kw = shape
        border = _border(layer)
        if border == "same" and stride != [1, 1]:
            layer.fail("border mode 'same' with a stride (DeNet itself refuses it)")
        tags = "B" if use_bias else ""
        if kh == kw and stride[0] == stride[1]:
            args = [f, kh] + ([stride[0]] if stride[0] != 1 else [])
        else:
            tags += "X"
            args = [f, kh, kw] + (stride if stride != [1, 1] else [])
        kws = []
        if max(kh, kw) > 1 and border != self.border:
            kws.append(f"border={border}")
        if not layer.flag("enabled", True):
            kws.append("frozen=1")  # DeNet's enabled=False leaves the conv out of training
        self.add(_tok("C", tags, args, kws), layer, weights)

    def layer_regression(self, layer: _Layer):
        layer.fail("a regression layer without the conv before it (R writes conv + regression)")

    def regression(self, conv: _Layer, reg: _Layer):
        shape, stride, use_bias, weights = self.conv_params(conv, nested=False)
        f, _, kh, kw = shape
        if stride != [1, 1] or (max(kh, kw) > 1 and _border(conv) != "valid"):
            conv.fail("the conv before a regression layer must be a valid conv of stride 1 (R)")
        if self.classes is not None and f != self.classes:
            conv.fail(f"the classifier has {f} outputs but classNum is {self.classes}")
        if self.classes is None:
            self.classes = f
        h, w = self._map_size(conv)
        if kh != kw and (kh, kw) != (h, w):
            conv.fail(f"a {kh}x{kw} classifier on a {h}x{w} map cannot be expressed (R is square)")
        tags = "B" if use_bias else ""
        valid = reg.get("valid", [])
        if not isinstance(valid, list):
            reg.fail(f"valid must be a list, not {valid!r}")
        oh, ow = h - kh + 1, w - kw + 1
        if valid:
            if (
                len(valid) != 1
                or not isinstance(valid[0], list)
                or valid[0][1:] != [oh // 2, ow // 2]
            ):
                reg.fail(
                    f"valid {valid} is not the centre position: only R (every position) and "
                    "R.C (the centre) can be expressed"
                )
            tags += "C"
        args = [] if (kh, kw) == (h, w) else [kh]
        kws = [] if conv.flag("enabled", True) else ["frozen=1"]
        self.add(_tok("R", tags, args, kws), conv, weights)

    def _map_size(self, layer: _Layer) -> tuple[int, int]:
        """The spatial size of the map the next token reads (resolving the string so far)."""
        from ..dsl import CompileOptions, parse, resolve

        desc = " ".join(t.text for t in self.tokens)
        if not desc:
            return self.input_shape[1], self.input_shape[2]
        try:
            graph = resolve(
                parse(desc),
                self.input_shape,
                self.classes,
                CompileOptions.make(self.border, self.activation),
            )
        except DenetError as err:
            layer.fail(
                f"the layers before it do not form a valid network: {str(err).splitlines()[0]}"
            )
        last = [n for n in graph.nodes if n.type not in ("^", "@", "$")][-1]
        if last.shape.h is None or last.shape.w is None:
            layer.fail("it does not follow a feature map")
        return int(last.shape.h), int(last.shape.w)

    def _bn(self, layer: _Layer, prefix: str = ""):
        if not layer.flag("enabled", True):
            layer.fail("a disabled batch norm (enabled=false) cannot be expressed")
        momentum = layer.number("momentum", BN_MOMENTUM, lo=0)
        eps = layer.number("eps", BN_EPS, lo=0)
        weights = [
            (prefix + "weight", layer.array("gamma"), PLAIN),
            (prefix + "bias", layer.array("bias"), PLAIN),
            (prefix + "running_mean", layer.array("mean"), PLAIN),
            (prefix + "running_var", layer.array("std"), INV_STD),
        ]
        # renormMaxR/D/It are stored but DeNet's renormalisation code is commented out: they
        # change nothing, so they are not carried over.
        return momentum, eps, weights

    def layer_batchnorm(self, layer: _Layer, type_="BN"):
        momentum, eps, weights = self._bn(layer)
        if eps != BN_EPS:
            args = [momentum, eps]
        elif momentum != BN_MOMENTUM:
            args = [momentum]
        else:
            args = []
        self.add(_tok(type_, "", args), layer, weights)

    def layer_batchnorm_relu(self, layer: _Layer):
        self.layer_batchnorm(layer, "BNA")

    def layer_activation(self, layer: _Layer):
        kind = self._activation_kind(layer, "activation")
        self.add("A" if kind == self.activation else f"A[{kind}]", layer)

    def layer_dropout(self, layer: _Layer):
        rate = layer.number("dropoutRate", lo=0)
        if rate >= 1:
            layer.fail(f"dropoutRate must be below 1, not {rate!r}")
        self.add(_tok("D", "", [rate]), layer)

    def layer_border(self, layer: _Layer):
        b = layer.get("border", 0)
        if _is_num(b):
            sides = [b] * 4
        elif isinstance(b, list) and len(b) in (1, 4):
            sides = b * (4 // len(b))
        else:
            layer.fail(f"border must be n or [left, right, top, bottom], not {b!r}")
        if len(set(sides)) != 1 or not (_is_num(sides[0]) and sides[0] >= 0):
            layer.fail(f"border {b!r} is not the same on every side, which B cannot express")
        self.add(_tok("B", "", [int(sides[0])]), layer)

    def layer_pool(self, layer: _Layer):
        mode = layer.text("mode", "max")
        if mode not in POOL_MODES:
            layer.fail(f"pool mode {mode!r} cannot be expressed (P is max, P.A average_inc_pad)")
        size = layer.square("size", [2, 2])
        stride = size if layer.get("stride", None) is None else layer.square("stride")
        pad = layer.square("pad", [0, 0], lo=0)
        tags = POOL_MODES[mode] + ("" if layer.flag("ignoreBorder", True) else "B")
        args = [size] + ([stride, pad] if pad else [stride] if stride != size else [])
        self.add(_tok("P", tags, args), layer)

    def layer_pool_inv(self, layer: _Layer):
        self.add(_tok("PI", "", [layer.square("size", [2, 2])]), layer)

    def layer_split(self, layer: _Layer):
        if layer.flag("enabled", True):
            self.add("SPLIT", layer)
        # a disabled split (model-modify --merge) is an identity: nothing to write

    def layer_skip_src(self, layer: _Layer):
        index = layer.number("index", 0, lo=0, integer=True)
        split = layer.flag("split", False)
        self.add(_tok("SKIPSRC", "X" if split else "", [index]), layer)

    def layer_skip(self, layer: _Layer):
        index = layer.number("index", 0, lo=0, integer=True)
        mode = layer.text("combineMode", "proj-add")
        subs = layer.children()
        if mode == "concat":
            if subs:
                layer.fail("a concat skip with sub-layers")
            self.add(f"SKIP[{index},mode=concat]", layer)
            return
        if mode != "proj-add":
            layer.fail(f"unknown combineMode {mode!r}")
        weights = []
        if subs:
            if len(subs) != 1 or subs[0].type != "conv":
                layer.fail("the projection of a skip must be one conv")
            shape, _, _, weights = self.conv_params(subs[0], bias_allowed=False)
            if shape[2:] != [1, 1]:
                subs[0].fail("the projection of a skip must be a 1x1 conv")
        self.add(_tok("SKIP", "", [index]), layer, weights)

    def layer_denet_corner(self, layer: _Layer):
        feat = layer.number("sampleFeat", 512, lo=1, integer=True)
        cost = layer.number("costFactor", 1, lo=0)
        dropout = layer.number("dropout", 0, lo=0)
        center = layer.flag("useCenter", False)
        subs = layer.children()
        if len(subs) != 1 or subs[0].type != "conv":
            layer.fail("a corner layer holds one conv (layers = [initial, conv])")
        shape, _, use_bias, weights = self.conv_params(subs[0])
        if not use_bias or shape[2:] != [1, 1]:
            subs[0].fail("the corner conv must be 1x1 with a bias")
        args = [feat, cost] + ([dropout] if dropout else [])
        self.add(_tok("DNC", "C" if center else "", args), layer, _under("conv.", weights))

    def layer_denet_sparse(self, layer: _Layer):
        grid = layer.number("gridSize", 3, lo=1, integer=True)
        sn = layer.number("sampleNum", 16, lo=1, integer=True)
        threshold = layer.number("cornerThreshold", 0.01, lo=0)
        random = layer.number("randomSample", 0.0, lo=0)
        local = layer.number("localMax", 0, lo=0, integer=True)
        nms = layer.number("nmsThreshold", 0.7, lo=0)
        args = [grid, sn, threshold, random]
        if nms != 1:
            args += [local, nms]
        elif local:
            args += [local]
        tags = "" if layer.flag("sampleGT", True) else "G"
        self.add(_tok("DNS", tags, args), layer)

    def layer_denet_detect(self, layer: _Layer):
        cost = layer.number("costFactor", 1.0, lo=0)
        bbox = layer.number("bboxFactor", 0.0, lo=0)
        indfit = layer.number("fitnessFactor", 0.0, lo=0)
        joint = layer.flag("useJointFitness", False)
        bounded = layer.flag("useBoundedIoU", False)
        n = layer.number("classNum", self.classes if self.classes else _MISSING, lo=1, integer=True)
        if self.classes is not None and n != self.classes:
            layer.fail(f"classNum {n} differs from the file's classNum {self.classes}")
        self.classes = n
        t = layer.get("overlapThreshold", 0.5)
        if _is_num(t):
            t_cls = t_box = t
        elif isinstance(t, list) and len(t) == 2 and all(_is_num(v) for v in t):
            t_cls, t_box = t
        else:
            layer.fail(f"overlapThreshold must be a number (v1) or [t_cls, t_bbox] (v2), not {t!r}")
        subs = layer.children()
        if not subs and isinstance(layer.obj.get("conv"), dict):  # DeNet's older layout
            subs = [_Layer(self.file, layer.obj["conv"], f"{layer.where}.conv")]
        if len(subs) != 1 or subs[0].type != "conv":
            layer.fail("a detection layer holds one conv (layers = [conv])")
        shape, _, use_bias, weights = self.conv_params(subs[0])
        if not use_bias or shape[2:] != [1, 1]:
            subs[0].fail("the classifier conv must be 1x1 with a bias")
        args = [t_cls, cost, bbox] + ([indfit] if indfit else [])
        kws = [] if t_box == t_cls else [f"bbox_overlap={_num(t_box)}"]
        tags = ("J" if joint else "") + ("B" if bounded else "")
        self.add(_tok("DND", tags, args, kws), layer, _under("conv.", weights))

    # -- residual blocks -------------------------------------------------------------------

    def resnet_stages(self, layers: list[_Layer]):
        blocks = [self.resnet_block(layer) for layer in layers]
        stage: list[dict] = []
        for block in blocks:
            if stage and block["key"] == stage[0]["key"] and block["stride"] == 1:
                stage.append(block)
                continue
            if stage:
                self._emit_stage(stage)
            stage = [block]
        self._emit_stage(stage)

    def _emit_stage(self, stage: list[dict]):
        first = stage[0]
        original, filters, size, bottleneck, _, momentum, eps = first["key"]
        args = [len(stage), filters, size]
        if bottleneck:
            args += [first["stride"], bottleneck]
        elif first["stride"] != 1:
            args += [first["stride"]]
        kws = []
        if momentum != BN_MOMENTUM:
            kws.append(f"momentum={_num(momentum)}")
        if eps != BN_EPS:
            kws.append(f"eps={_num(eps)}")
        weights = []
        for i, block in enumerate(stage):
            weights += _under(f"{i}.", block["weights"])
        layer = first["layer"]
        self.tokens.append(
            _Token(_tok("nRSN", "O" if original else "", args, kws), layer.where, weights)
        )

    def resnet_block(self, layer: _Layer) -> dict:
        f, _, kh, kw = layer.ints("shape", 4)
        if kh != kw:
            layer.fail(f"a {kh}x{kw} residual block kernel cannot be expressed (RSN is square)")
        stride = layer.square("stride", [1, 1])
        bottleneck = layer.number("bottleneck", 0, lo=0, integer=True)
        activation = self._activation_kind(layer, "activation")
        version = layer.text("version", "original")
        original = "original" in version
        if original == ("pre-activation" in version):
            layer.fail(f"unknown residual block version {version!r}")
        bn_param = layer.get("bnParam", {})
        if isinstance(bn_param, dict) and bn_param.get("enabled", True) is False:
            layer.fail("a residual block with batch norm disabled cannot be expressed")
        bnrelu = "bnrelu" in version and activation == "relu"
        subs = layer.children()
        types = [s.type for s in subs]
        plan = None
        for proj in (False, True):
            candidate = _block_plan(not original, bool(bottleneck), bnrelu, proj)
            if types == [t for t, _ in candidate]:
                plan, has_proj = candidate, proj
                break
        if plan is None:
            layer.fail(
                f"its sub-layers ({', '.join(types)}) are not DeNet's {version!r} block"
                f"{' (bottleneck)' if bottleneck else ''}"
            )
        if not original and bnrelu and has_proj:
            layer.fail(
                "a pre-activation block after --convert-bn-relu with a projection shortcut: "
                "DeNet's projection then reads relu(BN(x)), which RSN cannot express (its "
                "projection reads BN(x))"
            )
        weights: list = []
        bn_settings = set()
        for sub, (t, key) in zip(subs, plan):
            if t == "activation":
                kind = self._activation_kind(sub, "activation")
                if kind != activation:
                    sub.fail(
                        f"activation {kind!r} inside a block whose activation is {activation!r}"
                    )
            elif t == "conv":
                shape, _, _, w = self.conv_params(sub, bias_allowed=False)
                if _border(sub) != "half":
                    sub.fail("a residual block conv whose border mode is not half")
                weights += _under(key + ".", w)
            else:
                momentum, eps, w = self._bn(sub, key + ".")
                bn_settings.add((momentum, eps))
                weights += w
        if len(bn_settings) != 1:
            layer.fail("its batch norms differ in momentum or eps, which RSN cannot express")
        momentum, eps = bn_settings.pop()
        key = (original, f, kh, bottleneck, activation, momentum, eps)
        return {"key": key, "stride": stride, "weights": weights, "layer": layer}


def _block_plan(pre: bool, bottleneck: bool, bnrelu: bool, proj: bool) -> list:
    """DeNet's sub-layer list of a residual block (denet-original.md 1.3), as (JSON type,
    module key of our block): ``activation`` entries have no key."""
    plan: list[tuple[str, str | None]] = []

    def bn_act(key):
        if bnrelu:
            plan.append(("batchnorm-relu", key))
        else:
            plan.extend([("batchnorm", key), ("activation", None)])

    if pre:
        bn_act("bn0")
    plan.append(("conv", "conv1"))
    bn_act("bn1")
    plan.append(("conv", "conv2"))
    if bottleneck:
        bn_act("bn2")
        plan.append(("conv", "conv3"))
    if not pre:
        plan.append(("batchnorm", "bn3" if bottleneck else "bn2"))
    if proj:
        plan.append(("conv", "downsample.0"))
        if not pre:
            plan.append(("batchnorm", "downsample.1"))
    return plan


def _under(prefix: str, weights):
    return [(prefix + k, a, how) for k, a, how in weights]


def _tok(type_: str, tags: str, args, kws=()) -> str:
    inner = [_num(a) for a in args] + list(kws)
    head = type_ + ("." + "".join(sorted(tags)) if tags else "")
    return head + (f"[{','.join(inner)}]" if inner else "")


# ------------------------------------------------------------------------------------------
# Public entry points


def describe(obj: dict, arrays: list, path: str = "model file") -> DenetConversion:
    """The description string, compile arguments and weight plan of a decoded DeNet file."""
    return _Reader(path, obj, arrays).run()


def _value(item: _Array, how: str, path: str) -> torch.Tensor:
    a = item.value
    if how == FLIP:
        if a.ndim != 4:
            raise ModelFileError(
                f"{path}: {item.path}: a conv kernel of shape {tuple(a.shape)} (expected 4-D)"
            )
        a = a[:, :, ::-1, ::-1]
    elif how == INV_STD:
        std = a.astype(np.float64)
        with np.errstate(over="ignore", divide="ignore"):
            a = 1.0 / np.square(std)
        if not np.all(np.isfinite(std) & (std > 0) & np.isfinite(a.astype(np.float32))):
            raise ModelFileError(
                f"{path}: {item.path}: the inverse std of a batch norm must be positive "
                "(and give a finite variance)"
            )
    # a fresh C-ordered copy: a flipped 1x1 kernel counts as contiguous but keeps its
    # negative strides, which torch refuses
    return torch.from_numpy(np.array(a, dtype=np.float32, order="C", copy=True))


def build_model(conv: DenetConversion, path: str = "model file"):
    """Compile the string and fill every state-dict key from the file's arrays."""
    import denet

    try:
        model = denet.compile(conv.desc, conv.input_shape, conv.classes, **conv.compile_kwargs())
    except DenetError as err:
        raise ModelFileError(
            f"{path}: the network it describes does not compile ({conv.desc}): "
            f"{str(err).splitlines()[0]}"
        ) from None
    prefixes = {}
    for node in model.graph.nodes:
        if node.name in model._modules and node.type not in ("^", "@", "$"):
            prefixes[node.index] = node.name
    target = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for index, token in enumerate(conv.tokens):
        for key, item, how in token.weights:
            if index not in prefixes:
                raise ModelFileError(f"{path}: {item.path}: {token.text} has no weights")
            full = f"{prefixes[index]}.{key}"
            if full not in target:
                raise ModelFileError(
                    f"{path}: {item.path}: {token.text} has no weight {key!r} for it"
                )
            if full in state:
                raise ModelFileError(f"{path}: {item.path}: a second array for {full}")
            if item.used:
                raise ModelFileError(f"{path}: {item.path}: one array used twice")
            value = _value(item, how, path)
            if tuple(value.shape) != tuple(target[full].shape):
                raise ModelFileError(
                    f"{path}: {item.path}: array of shape {tuple(item.value.shape)} where "
                    f"{token.text} needs {tuple(target[full].shape)}"
                )
            item.used = True
            state[full] = value
    missing = [k for k in target if k not in state and not k.endswith(".num_batches_tracked")]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelFileError(f"{path}: no weights in the file for {', '.join(missing[:3])}{more}")
    unused = [a.path for a in conv.arrays if not a.used]
    if unused:
        more = f" and {len(unused) - 3} more" if len(unused) > 3 else ""
        raise ModelFileError(
            f"{path}: arrays the network does not use: {', '.join(unused[:3])}{more}"
        )
    for k, v in target.items():
        if k.endswith(".num_batches_tracked"):
            state[k] = torch.zeros_like(v)
    model.load_state_dict(state, strict=True)
    model.class_names = conv.class_names
    return model


def convert_file(path: str):
    """(model, conversion) for the DeNet model file at ``path``."""
    obj, arrays = read_mdl(path)
    conv = describe(obj, arrays, path)
    return build_model(conv, path), conv


def convert_object(obj: dict, name: str = "model"):
    """(model, conversion) for a DeNet model held in memory: the JSON object with numpy arrays
    in place of the encoded ones (what DeNet's ``export_json`` returns)."""

    def wrap(v):
        if isinstance(v, np.ndarray):
            return _Array(v)
        if isinstance(v, dict):
            return {k: wrap(x) for k, x in v.items()}
        if isinstance(v, list):
            return [wrap(x) for x in v]
        return v

    obj = wrap(obj)
    arrays: list = []
    _assign_paths(obj, "", arrays)
    conv = describe(obj, arrays, name)
    return build_model(conv, name), conv
