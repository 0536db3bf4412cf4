"""The worked example of CONTRIBUTING.md works as the text says: saved as one new file in a
layers package, the layer type is found, compiles, computes the SE block and reports errors."""

import importlib
import os
import re
import sys

import pytest
import torch

import denet
from denet.layers import REGISTRY, Registry, discover, layer_types

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def example_code():
    with open(os.path.join(ROOT, "CONTRIBUTING.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    return blocks[0]


@pytest.fixture
def registry_with_example(tmp_path, monkeypatch):
    package = tmp_path / "mylayers"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "squeeze_excite.py").write_text(example_code())
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    modules = discover(importlib.import_module("mylayers"))
    yield Registry([*REGISTRY, *(t for m in modules for t in layer_types(m))])
    for name in [n for n in sys.modules if n.startswith("mylayers")]:
        del sys.modules[name]


def test_the_example_layer_is_one_file_and_computes_squeeze_excitation(registry_with_example):
    torch.manual_seed(0)
    m = denet.compile(
        "C[32,3] SE[8] P.A R", (3, 8, 8), 5, border_mode="half", registry=registry_with_example
    ).eval()
    se = m.l1_SE
    x = torch.randn(2, 3, 8, 8)
    f = m.l0_C(x)
    # the block as the paper writes it, with fully connected layers
    z = f.mean((2, 3))
    w1, b1 = se.reduce.weight.flatten(1), se.reduce.bias
    w2, b2 = se.expand.weight.flatten(1), se.expand.bias
    gate = torch.sigmoid(torch.relu(z @ w1.T + b1) @ w2.T + b2)
    torch.testing.assert_close(se(f), f * gate[:, :, None, None])
    assert sum(p.numel() for p in se.parameters()) == 32 * 4 + 4 + 4 * 32 + 32
    assert "SE" in registry_with_example.names()


def test_the_example_layer_reports_a_bad_ratio(registry_with_example):
    with pytest.raises(denet.DescError) as err:
        denet.compile(
            "C[8,3] SE[16]", (3, 8, 8), border_mode="half", registry=registry_with_example
        )
    assert str(err.value).startswith("SE[16]: ratio 16 leaves no hidden unit for 8 channels")
    assert str(err.value).endswith("\n  C[8,3] SE[16]\n            ^")
