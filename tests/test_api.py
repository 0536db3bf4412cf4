"""Public API: compile, summary, save/load (safe model files), parameter counts."""

import os
import pickle

import pytest
import torch

import denet
from denet import DescError, ModelFileError

EX = os.path.join(os.path.dirname(__file__), "..", "examples")


def example(name):
    with open(os.path.join(EX, f"{name}.desc")) as f:
        return f.read()


@pytest.mark.parametrize("name, border", [("cifar-readme", "half"), ("simple-cifar10", "same")])
def test_cifar_strings_give_one_probability_vector_per_image(name, border):
    m = denet.compile(example(name), (3, 32, 32), 10, border_mode=border, activation="relu")
    m.eval()
    p = m(torch.rand(3, 3, 32, 32))
    assert p.shape == (3, 10)
    assert torch.allclose(p.sum(1), torch.ones(3), atol=1e-5) and (p >= 0).all()
    m.train()
    lp = m(torch.rand(3, 3, 32, 32))
    assert torch.allclose(lp.exp().sum(1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize(
    "name, count",
    [
        ("resnet34-imagenet", 21_797_736),
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("resnet101", 44_549_160),
        ("resnet152", 60_192_808),
    ],
)
def test_exact_parameter_counts(name, count):
    with torch.device("meta"):
        m = denet.compile(example(name), (3, 224, 224), 1000, border_mode="half")
    assert sum(p.numel() for p in m.parameters()) == count
    assert m.graph.output_shape.channels == 1000


def test_torchvision_parameter_counts_agree():
    import torchvision

    with torch.device("meta"):
        for arch in ("resnet18", "resnet50"):
            tv = getattr(torchvision.models, arch)()
            m = denet.compile(example(arch), (3, 224, 224), 1000, border_mode="half")
            assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in tv.parameters())


def test_model_contract_attributes():
    m = denet.compile(
        "C[8,3]  BN A P.A R",
        input_shape=(3, 8, 8),
        classes=4,
        border_mode="half",
        activation="elu",
        weight_init="xavier-forward",
    )
    assert m.desc == "C[8,3] BN A P.A R"
    assert m.input_shape == (3, 8, 8) and m.classes == 4 and m.class_names is None
    assert m.options == {
        "border_mode": "half",
        "activation": "elu",
        "weight_init": "xavier-forward",
    }
    assert m.graph.output_shape.channels == 4
    assert isinstance(m.l2_A, torch.nn.ELU)


def test_bad_strings_raise_desc_error_with_caret():
    for desc in (
        "C[8,3",
        "C[8,3] XX",
        "C[8,3,1,1]",
        "C[8,x]",
        "SKIP[0]",
        "C[8,3] SUM(C[4,1] | C[8,1])",
    ):
        with pytest.raises(DescError) as e:
            denet.compile(desc, (3, 8, 8), 2)
        lines = str(e.value).split("\n")
        assert len(lines) == 3 and lines[1] == "  " + desc and lines[2].strip() == "^"
        assert f"(column {e.value.column})" in lines[0]


def test_summary_table():
    m = denet.compile("C[8,3] BN A P.A R.B", (3, 8, 8), 4, border_mode="half")
    text = denet.summary(m)
    lines = text.split("\n")
    assert lines[0].split() == ["index", "token", "output", "parameters"]
    assert lines[3].split() == ["0", "C[8,3]", "8x8x8", "216"]
    assert lines[-2].split() == ["4", "R.B", "4", "36"]
    assert lines[-1] == "total parameters: 268 (trainable 268)"


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    m = denet.compile(
        "C[8,3] BN A P.A R", (3, 8, 8), 3, border_mode="half", weight_init=["he-forward", 0.1]
    )
    m.class_names = ["a", "b", "c"]
    opt = torch.optim.SGD(m.param_groups(0.1, 1e-4), lr=0.1, momentum=0.9)
    m.train()
    torch.nn.functional.nll_loss(m(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    state = {
        "epoch": 3,
        "optimizer": opt.state_dict(),
        "rng": torch.get_rng_state(),
        "name": "run",
        "losses": [1.0, 0.5],
    }
    path = tmp_path / "m.pt"
    denet.save(m, path, train_state=state)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    loaded = denet.load(path)
    assert loaded.desc == m.desc and loaded.class_names == ["a", "b", "c"]
    assert loaded.options == m.options and loaded.classes == 3
    assert loaded.train_state["epoch"] == 3
    assert torch.equal(loaded.train_state["rng"], state["rng"])
    opt2 = torch.optim.SGD(loaded.param_groups(0.1, 1e-4), lr=0.1, momentum=0.9)
    opt2.load_state_dict(loaded.train_state["optimizer"])
    m.eval(), loaded.eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(m(x), loaded(x))


class _Marker:
    """Unpickling this creates a marker file (what a malicious model file would do)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_payload_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    m = denet.compile("C[4,3] P.A R", (3, 8, 8), 2)
    path = tmp_path / "evil.pt"
    payload = {
        "format_version": 1,
        "desc": m.desc,
        "input_shape": [3, 8, 8],
        "classes": 2,
        "class_names": None,
        "options": m.options,
        "state_dict": m.state_dict(),
        "train_state": {"x": _Marker(str(marker))},
    }
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match="refused"):
        denet.load(path)
    assert not marker.exists()
    # the same with a plain pickle file
    with open(tmp_path / "evil2.pt", "wb") as f:
        pickle.dump(_Marker(str(marker)), f)
    with pytest.raises(ModelFileError):
        denet.load(tmp_path / "evil2.pt")
    assert not marker.exists()


def test_bad_model_files(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        denet.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError, match="junk.pt"):
        denet.load(tmp_path / "junk.pt")
    m = denet.compile("C[4,3] P.A R", (3, 8, 8), 2)
    denet.save(m, tmp_path / "ok.pt")
    payload = torch.load(tmp_path / "ok.pt", weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "v99.pt")
    with pytest.raises(ModelFileError, match="unknown model file version 99"):
        denet.load(tmp_path / "v99.pt")
    payload["format_version"] = 1
    payload["desc"] = "C[4,3] P.A R.B"
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(ModelFileError, match="weights do not match"):
        denet.load(tmp_path / "mismatch.pt")
    for err in (ModelFileError, DescError):
        assert err("x").exit_status == 2


def test_compile_takes_limits():
    from denet.dsl import Limits

    with pytest.raises(DescError, match="more than the limit of 1,000 .DENET_MAX_PARAMS."):
        denet.compile("C[64,3] C[64,3]", (3, 8, 8), limits=Limits(params=1000))
    m = denet.compile("C[4,3]", (3, 8, 8), limits=Limits(params=1000))
    assert sum(p.numel() for p in m.parameters()) == 108
