"""model-convert --format drn / drnseg / deeplab-v2: fyu/drn's and isht7's networks, written by
hand in plain PyTorch (tests/cli/drn_oracle.py, deeplab_oracle.py) with random weights and
batch-norm statistics, convert to denet models that give the same outputs."""

import os
import sys

import pytest
import torch

import denet
from denet.cli.convert_drn import DRN_ARCHS, drn_classifier

sys.path.insert(0, os.path.dirname(__file__))
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
    res = convert({k: v for k, v in state.items() if not k.startswith("fc.")})
    _one_line_error(res, "no fc.weight")
    res = _tool(tool, "--format", "drn", "--input", tmp_path / "in.pth", "--output", out)
    _one_line_error(res, "needs --arch")
    assert not out.exists()
