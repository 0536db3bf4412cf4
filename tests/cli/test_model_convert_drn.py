"""model-convert --format drn / drnseg / deeplab-v2: fyu/drn's and isht7's networks, written by
hand in plain PyTorch (tests/cli/drn_oracle.py, deeplab_oracle.py) with random weights and
batch-norm statistics, convert to denet models that give the same outputs."""

import os
import sys

import pytest
import torch

import denet
from denet.cli.convert import example_desc
from denet.cli.convert_deeplab import deeplab_v2
from denet.cli.convert_drn import DRN_ARCHS, drn_classifier, drn_segmenter

sys.path.insert(0, os.path.dirname(__file__))
import deeplab_oracle  # noqa: E402
import drn_oracle  # noqa: E402

TOL = 1e-4  # relative error: max |ours - theirs| / max |theirs|


def rel_err(ours, theirs) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def drn_logits(model, x):
    """The converted classifier's probabilities and its logits (R's conv on R's input)."""
    r = getattr(model, [n for n in model.graph.nodes if n.type == "R"][0].name)
    seen = {}
    handle = r.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0]))
    with torch.no_grad():
        p = model(x)
    handle.remove()
    logits = torch.nn.functional.conv2d(seen["x"], r.weight, r.bias).flatten(1)
    return p, logits


@pytest.fixture(autouse=True)
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- DRN classifiers
@pytest.mark.parametrize("arch", sorted(DRN_ARCHS))
def test_drn_classifier_matches_the_original(arch):
    """Every DRN: the converted model's logits equal the hand-written network's on a 224 x 224
    image (DRN's AvgPool2d(28) needs 224), its probabilities are their softmax, and both have
    the same number of parameters."""
    torch.manual_seed(0)
    ref = drn_oracle.randomise(drn_oracle.drn(arch, num_classes=10))
    model = drn_classifier(arch, ref.state_dict()).eval()
    assert model.classes == 10
    assert n_params(model) == n_params(ref)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        want = ref(x)
    p, logits = drn_logits(model, x)
    assert rel_err(logits, want) < TOL
    assert torch.allclose(p, want.softmax(1), atol=1e-5)


def _tool(tool, *args):
    return tool("model-convert", *args, env={"OMP_NUM_THREADS": "2"})


def test_drn_tool_converts_a_training_checkpoint(tmp_path, tool):
    """classify.py's checkpoint ({"state_dict": DataParallel's 'module.' keys}) from PyTorch
    0.3 (no num_batches_tracked) converts, the input file is left as it was."""
    torch.manual_seed(1)
    ref = drn_oracle.randomise(drn_oracle.drn("drn_d_22", num_classes=7))
    state = {
        f"module.{k}": v for k, v in ref.state_dict().items() if "num_batches_tracked" not in k
    }
    src = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 3, "arch": "drn_d_22", "state_dict": state}, src)
    before = src.read_bytes()
    out = tmp_path / "d22.pt"
    res = _tool(tool, "--format", "drn", "--arch", "drn_d_22", "--input", src, "--output", out)
    assert res.returncode == 0, res.stderr
    assert src.read_bytes() == before
    assert "drn_d_22, 7 classes, 15,884,343 parameters" in res.stdout
    model = denet.load(out).eval()
    assert model.input_shape == (3, 224, 224)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want = ref(x)
    assert rel_err(drn_logits(model, x)[1], want) < TOL


def _one_line_error(res, *needles):
    assert res.returncode == 2, res.stdout + res.stderr
    err = res.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("model-convert: error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err


def test_drn_bad_checkpoints_are_one_line_errors(tmp_path, tool):
    ref = drn_oracle.drn("drn_c_26", num_classes=5)
    state = ref.state_dict()
    out = tmp_path / "o.pt"

    def convert(st, *extra, arch="drn_c_26"):
        src = tmp_path / "in.pth"
        torch.save(st, src)
        return _tool(
            tool, "--format", "drn", "--arch", arch, "--input", src, "--output", out, *extra
        )

    # missing keys: the message names a few and how many
    gone = {k: v for k, v in state.items() if not k.startswith("layer8.")}
    res = convert(gone)
    _one_line_error(res, "missing layer8.0.conv1.weight, layer8.0.bn1.weight", "(10 in all)")
    # extra keys
    res = convert({**state, "aux.weight": torch.zeros(3), "aux.bias": torch.zeros(3)})
    _one_line_error(res, "unexpected keys aux.weight, aux.bias (is --arch right?)")
    # the wrong --arch: a C-26 checkpoint read as D-22, as C-42 (more blocks), as C-58 (shapes)
    _one_line_error(convert(state, arch="drn_d_22"), "is --arch right?", "conv1.weight")
    _one_line_error(convert(state, arch="drn_c_42"), "missing layer3.2.conv1.weight")
    _one_line_error(convert(state, arch="drn_c_58"), "is --arch right?")
    # an --arch that is no DRN, options the format does not take, a checkpoint without fc
    _one_line_error(convert(state, arch="drn_e_99"), "not a drn architecture", "drn_d_105")
    _one_line_error(convert(state, arch="resnet18"), "not a drn architecture")
    _one_line_error(convert(state, "--classes", "5"), "--classes is for")
    res = convert({k: v for k, v in state.items() if not k.startswith("fc.")})
    _one_line_error(res, "no fc.weight")
    res = _tool(tool, "--format", "drn", "--input", tmp_path / "in.pth", "--output", out)
    _one_line_error(res, "needs --arch")
    assert not out.exists()


# ----------------------------------------------------------------------------------- DRNSeg
def drnseg_outputs(model, x):
    """The converted DRNSeg's two outputs as DRNSeg returns them: (LogSoftmax of the x8 logits,
    the logits at output stride 8)."""
    with torch.no_grad():
        out = model(x)
    assert list(out) == ["out", "seg"]
    return torch.log_softmax(out["out"], 1), out["seg"]


@pytest.mark.parametrize("arch", sorted(DRN_ARCHS))
def test_drnseg_matches_the_original(arch):
    """segment.py's DRNSeg on every DRN base: both outputs equal the hand-written network's
    (the first up to DRNSeg's LogSoftmax, which SEG's loss applies itself), parameter counts
    equal (the frozen up kernel included)."""
    torch.manual_seed(0)
    ref = drn_oracle.randomise(drn_oracle.DRNSeg(arch, classes=5))
    model = drn_segmenter(arch, ref.state_dict(), image_size=(64, 64)).eval()
    assert model.classes == 5 and model.task == "segmentation"
    assert n_params(model) == n_params(ref)
    x = torch.randn(2, 3, 64, 72)  # any size: the model is fully convolutional
    with torch.no_grad():
        want, want_seg = ref(x)
    got, got_seg = drnseg_outputs(model, x)
    assert got.shape == want.shape == (2, 5, 64, 72)
    assert rel_err(got, want) < TOL
    assert rel_err(got_seg, want_seg) < TOL


def test_drnseg_parameter_counts():
    """DRNSeg(D-22) and DRNSeg(C-26) at Cityscapes' 19 classes, as the issue gives them."""
    for arch, count in (("drn_d_22", 15_895_363), ("drn_c_26", 20_628_195)):
        with torch.device("meta"):
            model = denet.compile(
                example_desc(f"drnseg_{arch}"), (3, 512, 512), 19, border_mode="half"
            )
            ref = drn_oracle.DRNSeg(arch, 19)
        assert n_params(model) == n_params(ref) == count


def test_drnseg_tool(tmp_path, tool):
    """segment.py's training checkpoint (DataParallel keys, no up.weight: the bilinear kernel
    is filled in) converts with --classes; bad checkpoints are one-line errors."""
    torch.manual_seed(2)
    ref = drn_oracle.randomise(drn_oracle.DRNSeg("drn_d_22", classes=4))
    state = {f"module.{k}": v for k, v in ref.state_dict().items() if k != "up.weight"}
    src = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 9, "arch": "drn_d_22", "state_dict": state}, src)
    out = tmp_path / "seg.pt"
    args = ("--format", "drnseg", "--arch", "drn_d_22", "--input", src, "--output", out)
    res = _tool(tool, *args, "--classes", "4", "--image-size", "96", "128")
    assert res.returncode == 0, res.stderr
    assert "DRNSeg(drn_d_22), 4 classes" in res.stdout
    model = denet.load(out).eval()
    assert model.input_shape == (3, 96, 128)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        want, want_seg = ref(x)
    got, got_seg = drnseg_outputs(model, x)
    assert rel_err(got, want) < TOL and rel_err(got_seg, want_seg) < TOL

    _one_line_error(_tool(tool, *args, "--classes", "19"), "--classes 19", "seg.weight (4)")
    bad = dict(ref.state_dict())
    del bad["base.5.1.bn1.running_var"]
    bad["base.9.weight"] = torch.zeros(1)
    torch.save(bad, src)
    _one_line_error(
        _tool(tool, *args),
        "unexpected keys base.9.weight",
        "missing base.5.1.bn1.running_var",
    )
    torch.save(ref.state_dict(), src)
    wrong = ("--format", "drnseg", "--arch", "drn_c_26", "--input", src, "--output", out)
    _one_line_error(_tool(tool, *wrong), "is --arch right?", "does not fit")
    _one_line_error(_tool(tool, *args[:4], "--input", src, "--output", out, "--classes", "0"))


# ------------------------------------------------------------------------------- DeepLab-v2
def test_deeplab_v2_matches_the_original():
    """isht7's MS_Deeplab: the four outputs (1x, 0.75x resized, 0.5x raw, their max) equal the
    hand-written network's on an odd size (int(0.75 s) + 1 and outS at work); the weights
    (parameters, plus the frozen BN scales and shifts that are buffers here) are as many as the
    original's parameters."""
    torch.manual_seed(0)
    ref = deeplab_oracle.randomise(deeplab_oracle.MSDeeplab(classes=5))
    model = deeplab_v2(ref.state_dict(), image_size=(73, 73)).eval()
    assert model.classes == 5 and model.task == "segmentation"
    assert n_weights(model) == n_params(ref)
    x = torch.randn(1, 3, 73, 73)
    with torch.no_grad():
        want = ref(x)
        got = model(x)
    assert list(got) == ["out", "ms0", "ms1", "ms2"]
    for name, i in (("out", 3), ("ms0", 0), ("ms1", 1), ("ms2", 2)):
        assert got[name].shape == want[i].shape
        assert rel_err(got[name], want[i]) < TOL, name


def n_weights(model) -> int:
    """Parameters plus the scale and shift of every frozen norm (buffers in FBN)."""
    params = {k for k, _ in model.named_parameters()}
    frozen = sum(
        v.numel()
        for k, v in model.state_dict().items()
        if k not in params and k.endswith((".weight", ".bias"))
    )
    return n_params(model) + frozen


def test_deeplab_v2_counts():
    """44,048,532 at 21 classes: isht7's parameters (BN affine included, frozen) = our
    parameters + the frozen norms' scales and shifts; four losses in training."""
    with torch.device("meta"):
        model = denet.compile(example_desc("deeplab-v2-msc"), (3, 321, 321), 21, border_mode="half")
        ref = deeplab_oracle.MSDeeplab(21)
    assert n_params(ref) == n_weights(model) == 44_048_532
    assert n_params(model) == 43_943_188
    assert model.loss_names == ("loss_seg", "loss_seg_ms0", "loss_seg_ms1", "loss_seg_ms2")
    out = {n.output_name: n.shape for n in model.graph.nodes if n.output_name}
    assert (out["ms0"].h, out["ms1"].h, out["ms2"].h) == (41, 41, 21)  # outS(321) = 41


def test_deeplab_v2_tool(tmp_path, tool):
    torch.manual_seed(3)
    ref = deeplab_oracle.randomise(deeplab_oracle.MSDeeplab(classes=3))
    src = tmp_path / "MS_DeepLab.pth"
    torch.save(ref.state_dict(), src)
    out = tmp_path / "dl.pt"
    args = ("--format", "deeplab-v2", "--input", src, "--output", out)
    res = _tool(tool, *args, "--classes", "3", "--image-size", "41", "41")
    assert res.returncode == 0, res.stderr
    assert "3 classes, 42,616,012 parameters" in res.stdout
    model = denet.load(out).eval()
    x = torch.randn(1, 3, 41, 41)
    with torch.no_grad():
        want = ref(x)
        got = model(x)
    assert rel_err(got["out"], want[3]) < TOL and rel_err(got["ms2"], want[2]) < TOL

    _one_line_error(_tool(tool, *args, "--classes", "21"), "--classes 21", "ASPP (3)")
    _one_line_error(_tool(tool, *args, "--arch", "drn_d_22"), "--arch is for")
    bad = dict(ref.state_dict())
    del bad["Scale.layer3.22.conv3.weight"]
    bad["Scale2.conv1.weight"] = bad["Scale.conv1.weight"]
    torch.save(bad, src)
    _one_line_error(
        _tool(tool, *args),
        "unexpected keys Scale2.conv1.weight",
        "missing Scale.layer3.22.conv3.weight",
    )
    torch.save({k: v for k, v in bad.items() if "layer5" not in k}, src)
    _one_line_error(_tool(tool, *args), "not an isht7 MS_Deeplab")
