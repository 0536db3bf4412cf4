"""model-update-bn: batch-norm statistics recomputed as true averages over images (precise BN).
Oracle: the mean and unbiased variance of the conv's output over every image and pixel,
computed here in float64 with torch's conv2d from the model's weights."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import denet
from denet.cli import update_bn


@pytest.fixture
def garbage_bn_model(tmp_path):
    """(model path, data prefix, images): C[5,3] BN ... with nonsense running statistics, and 45
    images (three batches of 16 with a shorter last one)."""
    model = denet.compile("C[5,3] BN A P.A R", (3, 10, 10), 4, border_mode="half")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.fill_(100.0)
                m.running_var.fill_(1e-3)
    path = tmp_path / "garbage.pt"
    denet.save(model, path)
    rng = np.random.default_rng(3)
    images = (rng.normal(size=(45, 3, 10, 10)) * 2 + 0.5).astype(np.float32)
    np.save(tmp_path / "set_data.npy", images)
    np.save(tmp_path / "set_labels.npy", rng.integers(0, 4, 45).astype(np.int32))
    return path, tmp_path / "set", images


def conv_moments(model_path, images):
    state = denet.load(model_path).state_dict()
    wkey = [k for k, v in state.items() if k.endswith("weight") and v.dim() == 4][0]
    bias = state.get(wkey[: -len("weight")] + "bias")
    y = F.conv2d(
        torch.from_numpy(images).double(),
        state[wkey].double(),
        None if bias is None else bias.double(),
        padding=1,
    )
    y = y.transpose(0, 1).reshape(y.shape[1], -1)
    return y.mean(dim=1), y.var(dim=1, unbiased=True)


def bn_of(path):
    (bn,) = [m for m in denet.load(path).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    return bn


def test_statistics_are_the_exact_mean_and_unbiased_variance(garbage_bn_model, tmp_path, capsys):
    path, data, images = garbage_bn_model
    before = open(path, "rb").read()
    out = tmp_path / "updated.pt"
    argv = [
        "--model",
        str(path),
        "--output",
        str(out),
        "--input",
        str(data),
        "--extension",
        "npy",
        "--batch-size",
        "16",
        "--thread-num",
        "0",
    ]
    assert update_bn.main(argv) == 0
    assert "updated 1 batch norm(s) over 3 batch(es)" in capsys.readouterr().out
    mean, var = conv_moments(path, images)
    bn = bn_of(out)
    torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-5, atol=1e-5)
    assert int(bn.num_batches_tracked) == 3 and bn.momentum == pytest.approx(0.1)
    assert open(path, "rb").read() == before  # the input model is untouched
    assert denet.load(out).train_state is None
    # the updated model predicts with those statistics: eval output of the first layer
    model = denet.load(out).eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(images[:4]))
    assert torch.isfinite(ref).all()


def test_a_fixed_number_of_batches_and_bad_arguments(garbage_bn_model, tmp_path, capsys):
    path, data, _ = garbage_bn_model
    out = tmp_path / "two.pt"
    base = ["--input", str(data), "--extension", "npy", "--batch-size", "16", "--thread-num", "0"]
    assert (
        update_bn.main(["--model", str(path), "--output", str(out), *base, "--batches", "2"]) == 0
    )
    bn = bn_of(out)
    assert int(bn.num_batches_tracked) == 2
    assert (bn.running_mean.abs() < 50).all()  # the garbage is gone
    assert update_bn.main(["--model", str(path), "--output", str(path), *base]) == 2
    assert "is the input model" in capsys.readouterr().err
    no_bn = tmp_path / "nobn.pt"
    denet.save(denet.compile("C[5,3] A P.A R", (3, 10, 10), 4, border_mode="half"), no_bn)
    assert update_bn.main(["--model", str(no_bn), "--output", str(tmp_path / "o.pt"), *base]) == 2
    assert "no batch norm" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o.pt")
