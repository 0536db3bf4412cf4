"""model-convert --format denet: DeNet's own model files (.mdl.gz) become denet models.

The files are written here by a small WRITER of DeNet's format, made from the reference
(denet-original.md 1.2-1.4 and 6.5: the layer JSON keys, the residual block sub-layer order, the
inverse std of batch norm, Theano's true convolution), the inverse of the converter: it takes a
network compiled by denet from a DeNet string, flips every kernel back, stores 1/sqrt(var) as
``std`` and writes the gzip'd JSON with base64 ``np.save`` arrays. The oracles are the network
compiled from the string itself (same outputs), scipy's true convolution and a hand-computed
batch norm.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import pickle
import re

import numpy as np
import pytest
import scipy.signal
import torch

import denet
from denet.cli import convert
from denet.cli.convert_denet import convert_object

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

DETECTOR = (
    "C.B[8,3] BNA nRSN.O[2,8,3] SKIPSRC.X[0] nRSN.O[1,16,3,2] PI[2] C[12,3] SKIP[0] BNA "
    "DNC[4,10] DNS[3,4,0.01,0.1] C.B[16,1] BNA DND[0.5,1,1]"
)
CLASSIFIER = (
    "C.B[8,3] BN A P[3,2,1] nRSN.O[2,8,3] nRSN.O[1,16,3,2] nRSN[1,16,3,1,4] nRSN[2,32,3,2,8] "
    "nRSN.O[1,48,3,1,8] nRSN[1,48,3] nRSN[1,64,3] SKIPSRC[0] C.BX[64,3,1] BN[0.8,0.001] A "
    "SKIP[0] D[0.2] SPLIT P.A[4] R.B"
)


# ------------------------------------------------------------------------------------------
# The writer: DeNet's export_json and json_util, from the reference text


def npy_json(a: np.ndarray) -> dict:
    """json_util.numpy_to_json: base64 of the np.save bytes."""
    buf = io.BytesIO()
    np.save(buf, a)
    return {"__class__": "numpy.ndarray", "__value__": base64.b64encode(buf.getvalue()).decode()}


def write_mdl(path, obj) -> None:
    """json_util.json_to_gz: gzip level 9, JSON with indent 2."""

    def default(o):
        if isinstance(o, np.ndarray):
            return npy_json(o)
        raise TypeError(type(o))

    with gzip.open(path, "wt", compresslevel=9) as f:
        json.dump(obj, f, indent=2, default=default)


def convert_num(s: str):
    """DeNet's common.convert_num: int, else float, else the string."""
    for kind in (int, float):
        try:
            return kind(s)
        except ValueError:
            pass
    return s


def parse_token(tok: str):
    """DeNet's build_layer split: TYPE.TAGS[ARG0,ARG1,...]."""
    m = re.fullmatch(r"([^.\[]+)(?:\.([^\[]*))?(?:\[(.*)\])?", tok)
    assert m, tok
    args = [convert_num(a) for a in m.group(3).split(",")] if m.group(3) else []
    pos = [a for a in args if not (isinstance(a, str) and "=" in a)]
    kws = dict(a.split("=") for a in args if isinstance(a, str) and "=" in a)
    return m.group(1), m.group(2) or "", pos, kws


def np32(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def initial() -> dict:
    return {"type": "initial", "layers": []}


def conv_json(conv, border="half") -> dict:
    """ConvLayer.export_json; Theano convolves, so the stored kernel is ours flipped back."""
    w = np32(conv.weight)
    return {
        "type": "conv",
        "layers": [],
        "shape": list(w.shape),
        "stride": list(conv.stride),
        "border": border,
        "enabled": True,
        "useBias": conv.bias is not None,
        "bias": np32(conv.bias) if conv.bias is not None else None,
        "weight": np.ascontiguousarray(w[:, :, ::-1, ::-1]),
    }


def bn_json(bn, relu=False, momentum=0.9) -> dict:
    """BatchNormLayer / BatchNormReluLayer.export_json: ``std`` holds the inverse std."""
    j = {
        "type": "batchnorm-relu" if relu else "batchnorm",
        "layers": [],
        "momentum": momentum,
        "eps": bn.eps,
        "mean": np32(bn.running_mean),
        "std": (1.0 / np.sqrt(bn.running_var.double().numpy())).astype(np.float32),
        "gamma": np32(bn.weight),
        "bias": np32(bn.bias),
    }
    if not relu:
        j.update(renormMaxR=1, renormMaxD=0, renormMaxIt=0, enabled=True)
    return j


def act_json(kind="relu") -> dict:
    return {"type": "activation", "layers": [], "activation": kind}


def resnet_json(block, original: bool, bottleneck: int, bnrelu: bool) -> dict:
    """ResnetLayer.export_json: sub-layers in DeNet's order (reference 1.3)."""
    subs = [initial()]

    def bn_act(bn):
        if bnrelu:
            subs.append(bn_json(bn, relu=True))
        else:
            subs.extend([bn_json(bn), act_json()])

    if not original:
        bn_act(block.bn0)
    subs.append(conv_json(block.conv1))
    bn_act(block.bn1)
    subs.append(conv_json(block.conv2))
    if bottleneck:
        bn_act(block.bn2)
        subs.append(conv_json(block.conv3))
    if original:
        subs.append(bn_json(block.bn3 if bottleneck else block.bn2))
    if block.downsample is not None:
        subs.append(conv_json(block.downsample[0]))  # pre-activation: reads the first BN
        if original:
            subs.append(bn_json(block.downsample[1]))
    w = block.conv3.weight if bottleneck else block.conv2.weight
    k = block.conv2.weight.shape[-1]
    version = ("original" if original else "pre-activation") + (",bnrelu" if bnrelu else "")
    return {
        "type": "resnet",
        "layers": subs,
        "shape": [w.shape[0], block.conv1.weight.shape[1], k, k],
        "stride": [max(block.conv1.stride[0], block.conv2.stride[0])] * 2,
        "bottleneck": bottleneck,
        "bnParam": {"enabled": True},
        "activation": "relu",
        "version": version,
    }


def denet_layers(model, desc: str, bnrelu_blocks=False, v2_overlap=None) -> list[dict]:
    """The JSON layer list DeNet would save for ``desc`` with ``model``'s weights."""
    out: list[dict] = []
    for i, tok in enumerate(desc.split()):
        t, tags, a, kws = parse_token(tok)
        m = model._modules.get(f"l{i}_{t}")
        if t == "C":
            out.append(conv_json(m))
        elif t in ("BN", "BNA"):
            out.append(bn_json(m, relu=t == "BNA", momentum=a[0] if a else 0.9))
        elif t == "A":
            out.append(act_json())
        elif t == "P":
            size = a[0]
            stride = a[1] if len(a) > 1 else size
            pad = a[2] if len(a) > 2 else 0
            out.append(
                {
                    "type": "pool",
                    "layers": [],
                    "mode": "average_inc_pad" if "A" in tags else "max",
                    "size": [size, size],
                    "stride": [stride, stride],
                    "pad": [pad, pad],
                    "ignoreBorder": "B" not in tags,
                }
            )
        elif t == "PI":
            out.append({"type": "pool-inv", "layers": [], "size": [a[0], a[0]]})
        elif t == "D":
            out.append({"type": "dropout", "layers": [], "dropoutRate": a[0]})
        elif t == "SPLIT":
            out.append({"type": "split", "layers": [], "enabled": True})
        elif t == "SKIPSRC":
            out.append({"type": "skip-src", "layers": [], "index": a[0], "split": "X" in tags})
        elif t == "SKIP":
            proj = [initial(), conv_json(m)] if isinstance(m, torch.nn.Conv2d) else []
            out.append({"type": "skip", "layers": proj, "index": a[0], "combineMode": "proj-add"})
        elif t == "nRSN":
            bottleneck = a[4] if len(a) > 4 else 0
            for block in m:
                out.append(resnet_json(block, "O" in tags, bottleneck, bnrelu_blocks))
        elif t == "R":
            out.append(conv_json(m, border="valid"))
            valid = []
            if "C" in tags:  # RegressionLayer: the centre of the conv's output
                node = next(n for n in model.graph.nodes if n.name == f"l{i}_R")
                src = next(n for n in model.graph.nodes if n.name == node.inputs[0]).shape
                oh, ow = src.h - m.weight.shape[2] + 1, src.w - m.weight.shape[3] + 1
                valid = [[0, oh // 2, ow // 2]]
            out.append({"type": "regression", "layers": [], "valid": valid})
        elif t == "DNC":
            out.append(
                {
                    "type": "denet-corner",
                    "layers": [initial(), conv_json(m.conv, border=False)],
                    "sampleFeat": a[0],
                    "useCenter": "C" in tags,
                    "costFactor": a[1] if len(a) > 1 else 1.0,
                    "dropout": a[2] if len(a) > 2 else 0.0,
                }
            )
        elif t == "DNS":
            defaults = [3, 4, 0.01, 0.1, 0, 1.0]  # DeNetSparseLayer.parse_desc
            g, sn, thr, rand, local, nms = a + defaults[len(a) :]
            out.append(
                {
                    "type": "denet-sparse",
                    "layers": [],
                    "gridSize": g,
                    "sampleNum": sn,
                    "sampleGT": "G" not in tags,
                    "localMax": local,
                    "cornerThreshold": thr,
                    "randomSample": rand,
                    "nmsThreshold": nms,
                    "version": "v2",
                }
            )
        elif t == "DND":
            defaults = [0.5, 1.0, 0.0, 0.0]  # DeNetDetectLayer.parse_desc
            t0, cost, bbox, indfit = a + defaults[len(a) :]
            overlap = t0 if v2_overlap is None else v2_overlap
            out.append(
                {
                    "type": "denet-detect",
                    "layers": [conv_json(m.conv, border="valid")],
                    "costFactor": cost,
                    "bboxFactor": bbox,
                    "fitnessFactor": indfit,
                    "useJointFitness": "J" in tags,
                    "useBoundedIoU": "B" in tags,
                    "classNum": model.classes,
                    "overlapThreshold": overlap,
                }
            )
        else:
            raise AssertionError(f"the test writer has no {t}")
    return out


def denet_file(model, desc: str, **kw) -> dict:
    """ModelCNN.export_json."""
    return {
        "classifierType": "CNN",
        "classLabels": {f"class{i}": i for i in range(model.classes)},
        "classNum": model.classes,
        "dataShape": list(model.input_shape),
        "date": "2017-07-20 00:00:00",
        "user": "test",
        "version": 3,
        "layers": denet_layers(model, desc, **kw),
    }


def randomise(model, seed=0):
    """Random weights and BN statistics everywhere; corner and classifier heads made lively
    (DeNet zero-initialises them, which would give no RoIs and no detections)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (1.5 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


def run_convert(*args):
    return convert.main(["--format", "denet", *map(str, args)])


def detections_equal(a, b):
    assert len(a) == len(b)
    for da, db in zip(a, b):
        assert da["labels"].tolist() == db["labels"].tolist()
        assert torch.allclose(da["boxes"], db["boxes"], rtol=1e-4, atol=1e-4)
        assert torch.allclose(da["scores"], db["scores"], rtol=1e-4, atol=1e-6)


def _detector(desc, seed=0):
    model = denet.compile(desc, (3, 32, 32), 5, border_mode="half")
    return randomise(model, seed)


# ------------------------------------------------------------------------------------------
# Acceptance: a DeNet detector file converts and detects what the network compiled from its
# string does


def test_denet_detector_file_gives_the_same_detections(tmp_path, capsys):
    original = _detector(DETECTOR)
    src, out = tmp_path / "det.mdl.gz", tmp_path / "det.pt"
    write_mdl(src, denet_file(original, DETECTOR, bnrelu_blocks=True))
    before = src.read_bytes()
    assert run_convert("--input", src, "--output", out) == 0
    assert src.read_bytes() == before
    assert DETECTOR in capsys.readouterr().out

    model = denet.load(out).eval()
    assert model.desc == denet.dsl.canonical(DETECTOR)
    assert model.class_names == [f"class{i}" for i in range(5)]
    ref = original.state_dict()
    for k, v in model.state_dict().items():
        assert torch.allclose(v.float(), ref[k].float(), rtol=1e-6), k

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = original(x), model(x)
    assert sum(len(d["boxes"]) for d in want) >= 4  # the comparison is not vacuous
    assert len({int(v) for d in want for v in d["labels"]}) >= 2
    detections_equal(got, want)


def _calm_classifier(model, x):
    """Scale the R conv so the logits have a spread near 1: random residual stacks grow, and
    saturated probabilities (all 0 or 1) would make the comparison vacuous."""
    r = [m for n, m in model.named_children() if n.endswith("_R")][0]
    seen = {}
    handle = r.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0]))
    with torch.no_grad():
        model(x)
        handle.remove()
        logits = torch.nn.functional.conv2d(seen["x"], r.weight, r.bias)
        r.weight.div_(logits.std())
    return model


def test_denet_classifier_file_gives_the_same_probabilities(tmp_path):
    original = randomise(denet.compile(CLASSIFIER, (3, 32, 32), 7, border_mode="half"), seed=3)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    _calm_classifier(original, x)
    src, out = tmp_path / "cls.mdl.gz", tmp_path / "cls.pt"
    write_mdl(src, denet_file(original, CLASSIFIER))
    assert run_convert("--input", src, "--output", out) == 0
    model = denet.load(out).eval()
    assert model.desc == denet.dsl.canonical(CLASSIFIER)
    with torch.no_grad():
        want, got = original(x), model(x)
    assert want.shape == (3, 7) and want.max() < 0.9  # not saturated
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)


def _example(name: str) -> str:
    with open(os.path.join(ROOT, "examples", name), encoding="utf-8") as f:
        lines = [line.split("#")[0] for line in f]
    return " ".join(" ".join(lines).split())


def test_denet34_skip_file_gives_the_example_string():
    """DeNet-34 skip as DeNet's scripts make it (--convert-bn-relu on the ResNet-34 blocks):
    the rebuilt string is examples/denet34-skip.desc token for token, and every weight lands
    where it came from."""
    desc = _example("denet34-skip.desc")
    torch.manual_seed(0)
    original = denet.compile(desc, (3, 64, 64), 80, border_mode="half").eval()
    model, conv = convert_object(denet_file(original, desc, bnrelu_blocks=True), "denet34")
    assert conv.desc == desc
    assert conv.border_mode == "half" and conv.input_shape == (3, 64, 64)
    ref = original.state_dict()
    for k, v in model.state_dict().items():
        assert torch.allclose(v, ref[k], rtol=1e-6), k


@pytest.mark.parametrize(
    "desc",
    [
        "C.B[8,3] BNA P.B[3,2] C[8,3] BNA DNC.C[4,10,0.5] DNS.G[3,4,0.02,0.2,1,0.7] C.B[16,1] "
        "BNA DND[0.6,2,1]",
        "C.X[8,3,1] BN A C.B[8,1,2] BN[0.9,0.0001] A P.A[2,2,1] D[0.3] R.C[3]",
    ],
    ids=["detector-fields", "classifier-fields"],
)
def test_every_field_reaches_the_string(desc):
    """Tags and trailing arguments (P.B, DNC.C with dropout, DNS.G with local max and
    clustering, BN eps, R.C with a size) come back token for token, with the same outputs."""
    original = randomise(denet.compile(desc, (3, 32, 32), 5, border_mode="half"), seed=7)
    model, conv = convert_object(denet_file(original, desc), "fields")
    assert conv.desc == desc
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    model.eval()
    with torch.no_grad():
        want, got = original(x), model(x)
    if isinstance(want, list):
        assert sum(len(d["boxes"]) for d in want) >= 2
        detections_equal(got, want)
    else:
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-5)


def test_header_fields_and_per_conv_border():
    """imageSize + imageMode give the input shape; a conv whose border differs from the
    others keeps it as border=; enabled=false (not trained in DeNet) becomes frozen=1; class
    names that do not match classNum are left out with a note."""
    k = KERNEL[None, None]
    layers = [_conv_layer(k, "half"), _conv_layer(k, "valid"), _conv_layer(k, "half")]
    layers[2]["enabled"] = False
    obj = {
        "classLabels": {"a": 0, "b": 1, "c": 2},
        "classNum": 2,
        "imageSize": [7, 9],
        "imageMode": "L",
        "version": 3,
        "layers": layers,
    }
    model, conv = convert_object(obj, "header")
    assert conv.input_shape == (1, 7, 9) and conv.border_mode == "half"
    assert conv.desc == "C[1,3] C[1,3,border=valid] C[1,3,frozen=1]"
    assert model.class_names is None and "classNum is 2" in conv.notes[0]
    assert not any(p.requires_grad for p in model.l2_C.parameters())


# ------------------------------------------------------------------------------------------
# Golden cases: Theano's true convolution and DeNet's inverse-std batch norm


def _plain_file(shape, layers) -> dict:
    return {
        "classLabels": {"a": 0, "b": 1},
        "classNum": 2,
        "dataShape": list(shape),
        "version": 3,
        "layers": layers,
    }


KERNEL = np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0], [4.0, 0.0, 0.5]], np.float32)


def _conv_layer(w, border, bias=None):
    return {
        "type": "conv",
        "layers": [],
        "shape": list(w.shape),
        "stride": [1, 1],
        "border": border,
        "enabled": True,
        "useBias": bias is not None,
        "bias": bias,
        "weight": w,
    }


@pytest.mark.parametrize(
    "kernel, border, mode",
    [
        (KERNEL, "valid", "valid"),
        (KERNEL, "half", "same"),
        (KERNEL[:2], "valid", "valid"),
        (KERNEL[:2], "same", "same"),  # Theano crops the full output at (k-1)//2, as scipy
    ],
    ids=["3x3-valid", "3x3-half", "2x3-valid", "2x3-same"],
)
def test_kernel_flip_golden(tmp_path, kernel, border, mode):
    """A DeNet file with an asymmetric kernel gives the true convolution (scipy's convolve2d)."""
    src, out = tmp_path / "k.mdl.gz", tmp_path / "k.pt"
    w = kernel[None, None]
    write_mdl(src, _plain_file((1, 5, 6), [_conv_layer(w, border, np.array([0.25], np.float32))]))
    assert run_convert("--input", src, "--output", out) == 0
    model = denet.load(out).eval()
    x = np.arange(30, dtype=np.float32).reshape(5, 6) ** 1.5 / 10
    want = scipy.signal.convolve2d(x, kernel, mode=mode) + 0.25
    with torch.no_grad():
        got = model(torch.from_numpy(x)[None, None])[0, 0].numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_batchnorm_inverse_std_golden(tmp_path):
    """``std`` is the inverse std; DeNet's test-time output is gamma (x - mean) /
    sqrt(1/std**2 + eps) + beta, eps added once (not subtracted first)."""
    mean = np.array([0.5, -1.0], np.float32)
    std = np.array([10.0, 0.5], np.float32)  # inverse std: var 0.01 and 4
    gamma = np.array([2.0, 0.5], np.float32)
    beta = np.array([0.1, -0.2], np.float32)
    eps = 1e-3  # large enough that subtracting it would change the answer by 5%
    bn = {
        "type": "batchnorm",
        "layers": [],
        "momentum": 0.9,
        "eps": eps,
        "mean": mean,
        "std": std,
        "gamma": gamma,
        "bias": beta,
        "renormMaxR": 1,
        "renormMaxD": 0,
        "renormMaxIt": 0,
        "enabled": True,
    }
    src, out = tmp_path / "bn.mdl.gz", tmp_path / "bn.pt"
    write_mdl(src, _plain_file((2, 1, 3), [bn]))
    assert run_convert("--input", src, "--output", out) == 0
    model = denet.load(out).eval()
    x = np.array([[[1.0, 2.0, -3.0]], [[0.0, 4.0, -1.0]]], np.float32)
    want = [
        [
            2.0 * (1.0 - 0.5) / 0.011**0.5 + 0.1,
            2.0 * 1.5 / 0.011**0.5 + 0.1,
            2 * -3.5 / 0.011**0.5 + 0.1,
        ],
        [0.5 * 1.0 / 4.001**0.5 - 0.2, 0.5 * 5.0 / 4.001**0.5 - 0.2, 0.5 * 0.0 - 0.2],
    ]
    with torch.no_grad():
        got = model(torch.from_numpy(x)[None])[0, :, 0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# DND v2 (joint fitness, bounded IoU, independent fitness, overlapThreshold [t_cls, t_bbox])


@pytest.mark.parametrize(
    "head, overlap",
    [("DND.BJ[0.5,1,1,bbox_overlap=0.6]", [0.5, 0.6]), ("DND[0.5,1,1,1]", [0.5, 0.5])],
    ids=["joint-bounded", "independent-fitness"],
)
def test_denet_v2_detector_file(tmp_path, head, overlap):
    desc = DETECTOR.replace("DND[0.5,1,1]", head)
    original = _detector(desc, seed=5)
    src, out = tmp_path / "v2.mdl.gz", tmp_path / "v2.pt"
    write_mdl(src, denet_file(original, desc, bnrelu_blocks=True, v2_overlap=overlap))
    assert run_convert("--input", src, "--output", out) == 0
    model = denet.load(out).eval()
    assert model.desc == denet.dsl.canonical(desc)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = original(x), model(x)
    assert sum(len(d["boxes"]) for d in want) >= 4
    detections_equal(got, want)


# ------------------------------------------------------------------------------------------
# Damaged files: one line, exit status 2, no output file


class _Unpickled:
    """Unpickling this creates a file: the test proves the converter never unpickles."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _good_conv():
    return _plain_file((1, 5, 6), [_conv_layer(KERNEL[None, None], "valid")])


def _pickled(path, obj):
    _Unpickled.marker = str(path.parent / "UNPICKLED")
    buf = io.BytesIO()
    np.save(buf, np.array([_Unpickled()], dtype=object), allow_pickle=True)
    obj["layers"][0]["weight"] = {
        "__class__": "numpy.ndarray",
        "__value__": base64.b64encode(buf.getvalue()).decode(),
    }
    write_mdl(path, obj)


def _raw_pickle(path, obj):
    obj["layers"][0]["weight"] = {
        "__class__": "numpy.ndarray",
        "__value__": base64.b64encode(pickle.dumps([1.0, 2.0])).decode(),
    }
    write_mdl(path, obj)


def _truncated(path, obj):
    write_mdl(path, obj)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _not_gzip(path, obj):
    path.write_text('{"version": 3}')


def _no_layers(path, obj):
    del obj["layers"]
    write_mdl(path, obj)


def _unknown_type(path, obj):
    obj["layers"].append({"type": "magic", "layers": []})
    write_mdl(path, obj)


def _wrong_shape(path, obj):
    obj["layers"][0]["weight"] = np.zeros((1, 1, 3, 2), np.float32)
    write_mdl(path, obj)


def _version(v):
    def damage(path, obj):
        obj["version"] = v
        write_mdl(path, obj)

    return damage


def _missing_key(path, obj):
    del obj["layers"][0]["weight"]
    write_mdl(path, obj)


def _unused_array(path, obj):
    obj["layers"][0]["bias"] = np.zeros(1, np.float32)  # useBias is false
    write_mdl(path, obj)


def _zero_inverse_std(path, obj):
    one = np.ones(1, np.float32)
    obj["layers"].append(
        {"type": "batchnorm", "layers": [], "mean": one, "std": one * 0, "gamma": one, "bias": one}
    )
    write_mdl(path, obj)


def _lone_regression(path, obj):
    obj["layers"].insert(0, {"type": "regression", "layers": [], "valid": []})
    write_mdl(path, obj)


def _not_json(path, obj):
    with gzip.open(path, "wt") as f:
        f.write("{not json")


DAMAGED = {
    "truncated gzip": (_truncated, "damaged gzip"),
    "not gzip": (_not_gzip, "not gzip"),
    "not json": (_not_json, "bad JSON"),
    "no layers": (_no_layers, "no 'layers'"),
    "pickled array": (_pickled, "pickled"),
    "raw pickle": (_raw_pickle, "pickled"),
    "unknown layer type": (_unknown_type, "unknown layer type 'magic'"),
    "wrong array shape": (_wrong_shape, "array of shape (1, 1, 3, 2)"),
    "version 0": (_version(0), "version 0"),
    "version 7": (_version(7), "version 7"),
    "missing key": (_missing_key, "missing key 'weight'"),
    "unused array": (_unused_array, "does not use: layers[0].bias"),
    "zero inverse std": (_zero_inverse_std, "layers[1].std: the inverse std"),
    "regression without conv": (_lone_regression, "without the conv before it"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_file_is_one_line_and_status_2(tmp_path, capsys, case):
    damage, words = DAMAGED[case]
    src, out = tmp_path / "bad.mdl.gz", tmp_path / "bad.pt"
    damage(src, _good_conv())
    assert run_convert("--input", src, "--output", out) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(src) in err and words in err, err
    assert not out.exists()
    assert not (tmp_path / "UNPICKLED").exists()


def test_a_gzip_bomb_is_refused_before_it_is_read_whole(tmp_path, capsys, monkeypatch):
    """JSON padded with 3 MB of spaces expands 1000x; with the floor of the limit lowered to 1 MB
    (256 MB by default) the reader stops at the limit instead of filling the memory."""
    from denet.cli import convert_denet

    monkeypatch.setattr(convert_denet, "MIN_EXPANDED_LIMIT", 1 << 20)
    src, out = tmp_path / "bomb.mdl.gz", tmp_path / "bomb.pt"
    with gzip.open(src, "wt") as f:
        f.write('{"version": 3' + " " * (3 << 20) + "}")
    assert src.stat().st_size * 100 < 3 << 20
    assert run_convert("--input", src, "--output", out) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(src) in err and "expands beyond 1048576 bytes" in err, err
    assert not out.exists()


def test_inexpressible_block_is_refused(tmp_path, capsys):
    """A pre-activation block with a projection after --convert-bn-relu: DeNet's projection
    reads relu(BN(x)), which RSN cannot express, so the converter says so."""
    desc = "C[8,3] nRSN[1,16,3,2]"
    model = randomise(denet.compile(desc, (3, 8, 8), 2, border_mode="half"))
    src, out = tmp_path / "pre.mdl.gz", tmp_path / "pre.pt"
    write_mdl(src, denet_file(model, desc, bnrelu_blocks=True))
    assert run_convert("--input", src, "--output", out) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "relu(BN(x))" in err
    assert not out.exists()
    # the same block without --convert-bn-relu converts
    write_mdl(src, denet_file(model, desc))
    assert run_convert("--input", src, "--output", out) == 0


def test_bin_model_convert_denet_exit_status(tmp_path, tool):
    src = tmp_path / "bad.mdl.gz"
    _no_layers(src, _good_conv())
    res = tool("model-convert", "--format", "denet", "--input", src, "--output", tmp_path / "o.pt")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "model-convert: error:" in res.stderr
    assert not (tmp_path / "o.pt").exists()


def test_denet_format_refuses_torchvision_options(tmp_path, capsys):
    src = tmp_path / "k.mdl.gz"
    write_mdl(src, _good_conv())
    for extra in (["--arch", "resnet18"], ["--image-size", "64", "64"]):
        assert run_convert("--input", src, "--output", tmp_path / "o.pt", *extra) == 2
        assert "torchvision" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()
