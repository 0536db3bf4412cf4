"""model-convert: a torchvision ResNet becomes a denet model with the same outputs."""

import os
import subprocess
import sys

import pytest
import torch
import torchvision

import denet
from denet.cli.convert import torchvision_resnet

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def run(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "bin", "model-convert"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _random_torchvision(arch, classes=1000):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)(num_classes=classes)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
        # Small scales on each residual branch's last norm, as in trained ResNets: with all
        # scales near 1, ResNet-101/152 activations grow to 1e10 and no fixed tolerance holds.
        for block in tv.modules():
            if isinstance(block, torchvision.models.resnet.Bottleneck):
                block.bn3.weight.mul_(0.2)
            elif isinstance(block, torchvision.models.resnet.BasicBlock):
                block.bn2.weight.mul_(0.2)
    return tv.eval()


def _compare(tv, model):
    model.eval()
    feats = {}
    r = [n for n in model.graph.nodes if n.type == "R"][0]
    getattr(model, r.name).register_forward_hook(lambda mod, inp, out: feats.update(x=inp[0]))
    tv_feats = {}
    tv.avgpool.register_forward_hook(lambda mod, inp, out: tv_feats.update(x=out))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        p = model(x)
        logits = tv(x)
    assert torch.allclose(p, torch.softmax(logits, 1), atol=1e-4)
    assert (feats["x"] - tv_feats["x"]).abs().max() < 1e-4
    logit_ours = torch.nn.functional.conv2d(
        feats["x"], getattr(model, r.name).weight, getattr(model, r.name).bias
    ).flatten(1)
    assert torch.allclose(logit_ours, logits, rtol=1e-5, atol=1e-4)


def test_convert_tool_resnet18(tmp_path):
    tv = _random_torchvision("resnet18")
    src = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), src)
    before = src.read_bytes()
    out = tmp_path / "r18.pt"
    res = run(
        "--format",
        "torchvision",
        "--arch",
        "resnet18",
        "--input",
        str(src),
        "--output",
        str(out),
        "--image-size",
        "64",
        "64",
    )
    assert res.returncode == 0, res.stderr
    assert src.read_bytes() == before
    model = denet.load(out)
    assert model.input_shape == (3, 64, 64)
    _compare(tv, model)


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_convert_every_arch_in_process(arch):
    tv = _random_torchvision(arch, classes=10)
    model = torchvision_resnet(arch, tv.state_dict(), (64, 64))
    assert model.classes == 10
    _compare(tv, model)


def test_convert_errors_exit_2(tmp_path):
    tv = torchvision.models.resnet18()
    src = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), src)
    res = run(
        "--format",
        "torchvision",
        "--arch",
        "resnet50",
        "--input",
        str(src),
        "--output",
        str(tmp_path / "x.pt"),
    )
    assert res.returncode == 2 and "is --arch right?" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().split("\n")) == 1
    res = run(
        "--format",
        "torchvision",
        "--arch",
        "resnet18",
        "--input",
        str(tmp_path / "nope.pth"),
        "--output",
        str(tmp_path / "x.pt"),
    )
    assert res.returncode == 2 and "no such file" in res.stderr
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as f:
        import pickle

        pickle.dump({"fc.weight": _Evil(str(marker))}, f)
    res = run(
        "--format",
        "torchvision",
        "--arch",
        "resnet18",
        "--input",
        str(tmp_path / "evil.pth"),
        "--output",
        str(tmp_path / "x.pt"),
    )
    assert res.returncode == 2 and "refused" in res.stderr and not marker.exists()
    assert not (tmp_path / "x.pt").exists()


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_help_documents_every_option():
    res = run("--help")
    assert res.returncode == 0
    for opt in (
        "--format",
        "--arch",
        "--input",
        "--output",
        "--image-size",
        "--class-names",
        "--summary",
    ):
        assert opt in res.stdout
