"""model-modify: operations, kept weights, untouched input, one-line errors with exit 2."""

import hashlib
import os
import subprocess
import sys

import pytest
import torch

import denet

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
DESC = "C[8,3] BN A P[2] C[16,3] BN A P.A R.B"


def run(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "bin", "model-modify"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    m = denet.compile(DESC, (3, 16, 16), 5, border_mode="half")
    m.class_names = list("abcde")
    path = tmp_path / "in.pt"
    denet.save(m, path)
    return path


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_insert_append_keeps_weights_and_never_touches_input(model_file, tmp_path):
    before = digest(model_file)
    out = tmp_path / "out.pt"
    res = run(
        "--input",
        str(model_file),
        "--output",
        str(out),
        "--layer-remove",
        "2",
        "--layer-insert",
        "4:SKIPSRC",
        "7:C[16,1] SKIP",
        "--layer-append",
        "P.A",
        "R.B",
        "--summary",
    )
    assert res.returncode == 0, res.stderr
    assert digest(model_file) == before
    old, new = denet.load(model_file), denet.load(out)
    assert new.desc == "C[8,3] BN A P[2] SKIPSRC C[16,3] BN C[16] SKIP A P.A R.B"
    assert new.class_names == list("abcde")
    for a, b in [("l0_C", "l0_C"), ("l1_BN", "l1_BN"), ("l4_C", "l5_C"), ("l5_BN", "l6_BN")]:
        for k, v in getattr(old, a).state_dict().items():
            assert torch.equal(v, getattr(new, b).state_dict()[k]), (a, k)
    assert (
        "index" in res.stdout
        and "kept the weights of 4 layer(s), new weights for l7_C, l8_SKIP, l11_R" in res.stdout
    )


def test_class_num_and_image_size(model_file, tmp_path):
    out = tmp_path / "out.pt"
    res = run(
        "--input",
        str(model_file),
        "--output",
        str(out),
        "--class-num",
        "7",
        "--image-size",
        "32",
        "24",
    )
    assert res.returncode == 0, res.stderr
    new, old = denet.load(out), denet.load(model_file)
    assert new.classes == 7 and new.input_shape == (3, 32, 24) and new.class_names is None
    assert torch.equal(new.l4_C.weight, old.l4_C.weight)
    assert new.l8_R.weight.shape == (7, 16, 1, 1)
    new.eval()
    assert new(torch.randn(2, 3, 32, 24)).shape == (2, 7)
    assert "new weights for l8_R" in res.stdout


def test_modify_layer(model_file, tmp_path):
    out = tmp_path / "out.pt"
    res = run(
        "--input",
        str(model_file),
        "--output",
        str(out),
        "--modify-layer",
        "BN",
        "momentum=0.99",
        "eps=1e-3",
        "--modify-layer",
        "C",
        "filters=12",
    )
    assert res.returncode == 0, res.stderr
    new, old = denet.load(out), denet.load(model_file)
    assert new.desc.startswith("C[12,3] BN[0.99,0.001] A")
    assert new.l1_BN.momentum == pytest.approx(0.01) and new.l1_BN.eps == 1e-3
    assert torch.equal(new.l5_BN.running_mean, old.l5_BN.running_mean)  # unchanged layer
    assert new.l4_C.weight.shape == (16, 12, 3, 3)  # reshaped by the change: new weights
    res = run("--input", str(model_file), "--output", str(out), "--modify-layer", "BM", "x=1")
    assert res.returncode == 2 and "'BN'" in res.stderr and "did you mean" in res.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--layer-append", "C[8,3"], "unbalanced brackets"),
        (["--layer-remove", "2", "--layer-append", "C[8,3] XYZ"], "unknown layer type 'XYZ'"),
        (["--layer-append", "C[8,3,1,1,1]"], "at most 3 positional arguments"),
        (["--layer-append", "C[8,x]"], "size must be an integer"),
        (["--layer-insert", "0:SKIP[4]"], "SKIP[4] has no SKIPSRC[4]"),
        (["--layer-insert", "7:SUM(C[4,1] | )"], "channel mismatch at SUM"),
    ],
)
def test_bad_strings_exit_2_with_caret(model_file, tmp_path, args, message):
    out = tmp_path / "out.pt"
    res = run("--input", str(model_file), "--output", str(out), *args)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr
    lines = res.stderr.rstrip("\n").split("\n")
    assert len(lines) == 3 and lines[0].startswith("model-modify: error: ")
    assert lines[2].strip() == "^"
    assert not out.exists()


def test_other_errors(model_file, tmp_path):
    res = run("--input", str(model_file), "--output", str(model_file), "--class-num", "3")
    assert res.returncode == 2 and "never changed" in res.stderr
    res = run("--input", str(tmp_path / "nope.pt"), "--output", str(tmp_path / "o.pt"))
    assert res.returncode == 2 and "no such model file" in res.stderr
    res = run(
        "--input", str(model_file), "--output", str(tmp_path / "o.pt"), "--layer-remove", "99"
    )
    assert res.returncode == 2 and "top-level layers" in res.stderr


def test_help_documents_every_option():
    res = run("--help")
    assert res.returncode == 0
    for opt in (
        "--input",
        "--output",
        "--image-size",
        "--class-num",
        "--modify-layer",
        "--layer-remove",
        "--layer-insert",
        "--layer-append",
        "--summary",
        "--seed",
    ):
        assert opt in res.stdout


def test_summary_without_output_writes_nothing(model_file, tmp_path):
    before = sorted(os.listdir(tmp_path))
    res = run("--input", str(model_file), "--class-num", "3", "--summary")
    assert res.returncode == 0, res.stderr
    assert "R" in res.stdout and "not written (no --output)" in res.stdout
    assert sorted(os.listdir(tmp_path)) == before
    res = run("--input", str(model_file), "--class-num", "3")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--output M2 is required" in res.stderr.splitlines()[0]
