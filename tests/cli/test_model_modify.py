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


def test_readme_x768_line_with_denets_type_name(tmp_path):
    """DeNet's README: ``--image-size 768 768 --modify-layer denet-sparse sample_num=36``."""
    desc = "C[8,3] BNA P[2] C[8,3] BNA DNC[4] DNS[3,4,0.01,0.1] C.B[16,1] BNA DND[0.5,1,1]"
    m = denet.compile(desc, (3, 32, 32), 3, border_mode="half")
    denet.save(m, tmp_path / "in.pt")
    out = tmp_path / "x768.pt"
    args = ["--image-size", "48", "48", "--modify-layer", "denet-sparse", "sample_num=6"]
    res = run("--input", str(tmp_path / "in.pt"), "--output", str(out), *args)
    assert res.returncode == 0, res.stderr
    new = denet.load(out)
    assert "DNS[3,6]" in new.desc and new.input_shape == (3, 48, 48)
    dns = next(n for n in new.graph.nodes if n.type == "DNS")
    assert (dns.shape.height, dns.shape.width) == (6, 6)
    assert torch.equal(new.l9_DND.conv.weight, m.l9_DND.conv.weight)  # weights kept


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
        "--merge",
        "--use-cudnn-pool",
        "--convert-bn-relu",
        "--modify-bn",
        "--denet-indices",
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


# -- DeNet's base-model surgery options -----------------------------------------------------------
# Run in-process (main() returns the exit status) to keep the tests quick; the launcher is the
# same for every option and is exercised by the tests above.
NET = (
    "C[8,3] BN[0.95,0.001,lr=2] A SPLIT P.B[3,2] SKIPSRC.X[0] SUM(C[8,3] BN A | C[8,1] BN A[relu]) "
    "REP[2](BN A C[8,3]) SKIP[0] nRSN[2,8,3] BN A[sigmoid] P.A R.B"
)


def modify(capsys, *args):
    from denet.cli.modify import main

    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            mod.bias.data.copy_(torch.rand(n, generator=g) * 2 - 1)


@pytest.fixture
def net_file(tmp_path):
    torch.manual_seed(0)
    m = denet.compile(NET, (3, 16, 16), 5, border_mode="half")
    randomise_bn(m)
    path = tmp_path / "net.pt"
    denet.save(m, path)
    return path


def outputs(a, b, shape=(2, 3, 16, 16)):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    a.eval(), b.eval()
    with torch.no_grad():
        return a(x), b(x)


def test_convert_bn_relu(net_file, tmp_path, capsys):
    out = tmp_path / "out.pt"
    rc, stdout, err = modify(capsys, "--input", net_file, "--output", out, "--convert-bn-relu")
    assert rc == 0, err
    old, new = denet.load(net_file), denet.load(out)
    assert new.desc == (
        "C[8,3] BNA[0.95,0.001,lr=2] SPLIT P.B[3,2] SKIPSRC.X SUM(C[8,3] BNA | C[8] BNA) "
        "REP[2](BNA C[8,3]) SKIP nRSN[2,8,3] BN A[sigmoid] P.A R.B"
    )  # A[sigmoid] is not a relu; the blocks of nRSN are modules and stay as they are
    assert "4 BN A pair(s) now BNA" in stdout and "kept the weights of 13 layer(s)" in stdout
    # the BN weights under their new names, later tokens renumbered (REP copies too)
    renamed = [
        ("l1_BN", "l1_BNA"),
        ("l7_C", "l6_C"),
        ("l8_BN", "l7_BNA"),
        ("l14_BN_0", "l11_BNA_0"),
        ("l14_BN_1", "l11_BNA_1"),
        ("l16_C_1", "l12_C_1"),
        ("l18_nRSN", "l14_nRSN"),
        ("l19_BN", "l15_BN"),
    ]
    for a, b in renamed:
        sa, sb = getattr(old, a).state_dict(), getattr(new, b).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), (a, b)
    assert new.l1_BNA.momentum == pytest.approx(0.05) and new.l1_BNA.eps == 1e-3
    ya, yb = outputs(old, new)
    assert torch.equal(ya, yb)  # the same maths in eval mode ...
    old.train(), new.train()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(old(x), new(x))  # ... and in training (batch statistics)
    assert torch.equal(old.l8_BN.running_var, new.l7_BNA.running_var)


def test_convert_bn_relu_only_for_relu(tmp_path, capsys):
    m = denet.compile("C[4,3] BN A C[4,3] BN A[relu] BN A[tanh] R", (3, 8, 8), 3, activation="elu")
    denet.save(m, tmp_path / "in.pt")
    rc, _, err = modify(
        capsys, "--input", tmp_path / "in.pt", "--output", tmp_path / "o.pt", "--convert-bn-relu"
    )
    assert rc == 0, err
    assert denet.load(tmp_path / "o.pt").desc == "C[4,3] BN A C[4,3] BNA BN A[tanh] R"


def test_modify_bn(net_file, tmp_path, capsys):
    out = tmp_path / "out.pt"
    # DeNet's quirk: ENABLED is bool(string), so "0" means enabled
    rc, stdout, err = modify(
        capsys, "--input", net_file, "--output", out, "--modify-bn", "0", "0.99", "1e-5"
    )
    assert rc == 0, err
    old, new = denet.load(net_file), denet.load(out)
    assert new.desc == (
        "C[8,3] BN[0.99,lr=2] A SPLIT P.B[3,2] SKIPSRC.X SUM(C[8,3] BN[0.99] A | C[8] BN[0.99] "
        "A[relu]) REP[2](BN[0.99] A C[8,3]) SKIP nRSN[2,8,3,momentum=0.99] BN[0.99] A[sigmoid] "
        "P.A R.B"
    )
    assert "on 6 layer(s)" in stdout
    bns = lambda m: [x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)]  # noqa: E731
    assert len(bns(new)) == len(bns(old)) == 10
    assert all(b.momentum == pytest.approx(0.01) and b.eps == 1e-5 for b in bns(new))
    sa, sb = old.state_dict(), new.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ya, yb = outputs(old, new)
    assert not torch.equal(ya, yb)  # l1_BN's eps went from 1e-3 to 1e-5 ...
    # ... which is the only change of the maths (momentum acts in training only): do it by
    # hand on the original and the outputs agree exactly
    old.l1_BN.eps = 1e-5
    ya, yb = outputs(old, new)
    assert torch.equal(ya, yb)


def test_modify_bn_eps_and_bna(tmp_path, capsys):
    m = denet.compile("C[4,3] BNA[0.8] RSN.O[4,3,eps=0.01] BN R", (3, 8, 8), 3)
    randomise_bn(m)
    denet.save(m, tmp_path / "in.pt")
    out = tmp_path / "o.pt"
    rc, _, err = modify(
        capsys, "--input", tmp_path / "in.pt", "--output", out, "--modify-bn", "x", "0.5", "0.1"
    )
    assert rc == 0, err
    new, old = denet.load(out), denet.load(tmp_path / "in.pt")
    assert new.desc == "C[4,3] BNA[0.5,0.1] RSN.O[4,3,momentum=0.5,eps=0.1] BN[0.5,0.1] R"
    ya, yb = outputs(old, new, (2, 3, 8, 8))
    assert not torch.allclose(ya, yb)  # eps is part of the maths
    for b in old.modules():
        if isinstance(b, torch.nn.BatchNorm2d):
            b.eps = 0.1
    ya, yb = outputs(old, new, (2, 3, 8, 8))
    assert torch.equal(ya, yb)


@pytest.mark.parametrize(
    "values, message",
    [
        (["1", "x", "1e-5"], "--modify-bn: MOMENTUM must be a number, not 'x'"),
        (["1", "0.9", "1e-5x"], "--modify-bn: EPS must be a number, not '1e-5x'"),
        (["1", "1.5", "1e-5"], "--modify-bn: MOMENTUM must be between 0 and 1, not '1.5'"),
        (["1", "0.9", "-1"], "--modify-bn: EPS must be at least 0, not '-1'"),
        (["1", "0.9", "inf"], "--modify-bn: EPS must be at least 0, not 'inf'"),
        (["", "0.9", "1e-5"], "an empty ENABLED is False in DeNet"),
    ],
)
def test_modify_bn_errors(net_file, tmp_path, capsys, values, message):
    out = tmp_path / "out.pt"
    out.write_bytes(b"old")
    rc, _, err = modify(capsys, "--input", net_file, "--output", out, "--modify-bn", *values)
    assert rc == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "error: " in err
    assert out.read_bytes() == b"old"  # never a half-written or replaced output


def test_use_cudnn_pool_resnet_stem(tmp_path, capsys):
    torch.manual_seed(0)
    stem = denet.compile("C[8,7,2] BNA P.B[3,2]", (3, 224, 224), border_mode="half")
    randomise_bn(stem)
    denet.save(stem, tmp_path / "stem.pt")
    for size, pooled in ((224, 56), (512, 128), (225, 57)):
        out = tmp_path / f"{size}.pt"
        args = ["--use-cudnn-pool", "--image-size", size, size]
        rc, stdout, err = modify(capsys, "--input", tmp_path / "stem.pt", "--output", out, *args)
        assert rc == 0, err
        new = denet.load(out)
        assert new.desc == "C[8,7,2] BNA P[3,2,1]" and "1 ceil-mode pool(s)" in stdout
        ceil = denet.compile("C[8,7,2] BNA P.B[3,2]", (3, size, size), border_mode="half")
        # the conv gives 112, 256, 113: the same size for an even map, one more for an odd one
        assert new.graph.nodes[-1].shape.h == pooled
        assert ceil.graph.nodes[-1].shape.h == {224: 56, 512: 128, 225: 56}[size]
    # the maths: the window grid moves up and left by one pixel (windows 2i-1..2i+1 instead of
    # 2i..2i+2), as DeNet's switch to the padded cuDNN pool did
    x = torch.randn(1, 8, 112, 112)
    padded = torch.nn.functional.max_pool2d(x, 3, 2, 1)
    shifted = torch.nn.functional.pad(x, (1, 0, 1, 0), value=-float("inf"))
    assert torch.equal(padded, torch.nn.functional.max_pool2d(shifted, 3, 2, ceil_mode=True))
    new, old = denet.load(tmp_path / "224.pt"), denet.load(tmp_path / "stem.pt")
    assert torch.equal(new.l1_BNA.running_var, old.l1_BNA.running_var)


def test_use_cudnn_pool_cases(tmp_path, capsys):
    m = denet.compile(
        "C[4,3] P.AB[2] SUM(P.B[3,2] | C[4] P.B[3,2]) P.B[2,2,1] P.B R", (3, 12, 12), 3
    )
    denet.save(m, tmp_path / "in.pt")
    out = tmp_path / "o.pt"
    rc, stdout, err = modify(
        capsys, "--input", tmp_path / "in.pt", "--output", out, "--use-cudnn-pool"
    )
    assert rc == 0, err
    # global pooling has no border and stays; an existing pad becomes 1, as in DeNet
    assert (
        denet.load(out).desc == "C[4,3] P.A[2,pad=1] SUM(P[3,2,1] | C[4] P[3,2,1]) P[2,2,1] P.B R"
    )
    assert "4 ceil-mode pool(s)" in stdout
    m = denet.compile("C[4,3] P.B[1] R", (3, 8, 8), 3)
    denet.save(m, tmp_path / "in1.pt")
    rc, _, err = modify(capsys, "--input", tmp_path / "in1.pt", "--output", out, "--use-cudnn-pool")
    assert rc == 2 and "--use-cudnn-pool: P.B[1] cannot become a padded pool" in err
    assert len(err.strip().splitlines()) == 1


def test_merge(net_file, tmp_path, capsys):
    out = tmp_path / "out.pt"
    rc, stdout, err = modify(capsys, "--input", net_file, "--output", out, "--merge")
    assert rc == 0, err
    old, new = denet.load(net_file), denet.load(out)
    assert new.desc == (
        "C[8,3] BN[0.95,0.001,lr=2] A P.B[3,2] SKIPSRC SUM(C[8,3] BN A | C[8] BN A[relu]) "
        "REP[2](BN A C[8,3]) SKIP nRSN[2,8,3] BN A[sigmoid] P.A R.B"
    )
    assert "2 split point(s) removed" in stdout and "kept the weights of 13 layer(s)" in stdout
    assert not any(n.split for n in new.graph.nodes)
    # SPLIT was token 3: every later token, and its state-dict keys, moves down by one
    sa, sb = old.state_dict(), new.state_dict()
    assert len(sa) == len(sb) and "l17_nRSN.0.conv1.weight" in sb
    for k, v in sb.items():
        idx, rest = k[1:].split("_", 1)
        old_key = f"l{int(idx) + (int(idx) >= 3)}_{rest}"
        assert torch.equal(v, sa[old_key]), k
    ya, yb = outputs(old, new)
    assert torch.equal(ya, yb)
    old.train(), new.train()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(old(x), new(x))  # checkpointing changes memory, not the maths


def test_denet34_style_surgery(tmp_path, capsys):
    """The shape of papers/dss/denet34.sh's base-model surgery, on a narrow ResNet: every option
    in one call, in DeNet's order (merge, cudnn pool, convert, modify-bn, remove, insert, append)."""
    torch.manual_seed(0)
    base = "C.B[8,7,2] BN A P.B[3,2] nRSN.O[2,8,3] nRSN.O[2,16,3,2] nRSN.O[2,32,3,2] P.A R.BT"
    m = denet.compile(base, (3, 64, 64), 10, border_mode="half")
    randomise_bn(m)
    denet.save(m, tmp_path / "r.pt")
    out = tmp_path / "skip.pt"
    args = ["--modify-bn", "1", "0.9", "1e-5", "--convert-bn-relu", "--use-cudnn-pool"]
    args += ["--class-num", "4", "--image-size", "96", "96", "--layer-remove", "2"]
    args += ["--layer-insert", "4:SKIPSRC.X[0]", "6:SKIPSRC.X[1]"]
    args += ["--layer-append", "PI[2] C[16,3] SKIP[1] BNA PI[2] C[8,3] SKIP[0] BNA P.A R"]
    rc, stdout, err = modify(capsys, "--input", tmp_path / "r.pt", "--output", out, *args)
    assert rc == 0, err
    new, old = denet.load(out), denet.load(tmp_path / "r.pt")
    assert new.desc == (
        "C.B[8,7,2] BNA P[3,2,1] nRSN.O[2,8,3] SKIPSRC.X nRSN.O[2,16,3,2] SKIPSRC.X[1] "
        "nRSN.O[2,32,3,2] PI[2] C[16,3] SKIP[1] BNA PI[2] C[8,3] SKIP BNA P.A R"
    )
    assert new.classes == 4 and new.input_shape == (3, 96, 96)
    assert torch.equal(new.l1_BNA.running_mean, old.l1_BN.running_mean)
    for a, b in [(old.l4_nRSN, new.l3_nRSN), (old.l6_nRSN, new.l7_nRSN)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert "kept the weights of 5 layer(s)" in stdout


# -- DeNet's layer indices (--denet-indices) ------------------------------------------------------
# DeNet's papers/dss scripts (denet-original.md 2.1, 2.2), verbatim: their indices count DeNet's
# layer list (0 the input layer, one per residual block, R two), not our top-level items.
DENET_SURGERY = ["--modify-bn", "1", "0.9", "1e-5", "--convert-bn-relu", "--use-cudnn-pool"]
DENET_INSERTS = {
    "std": [],
    "skip": ["--layer-insert", "11:SKIPSRC.X[0]", "18:SKIPSRC.X[1]"],
    "wide": ["--layer-insert", "7:SKIPSRC[0]", "12:SKIPSRC.X[1]", "19:SKIPSRC.X[2]"],
}
DENET34_HEADS = {  # papers/dss/denet34.sh, verbatim (denet-original.md 2.1)
    "std": "PI[2] C.B[256,3] BNA PI[2] C.B[128,3] BNA DNC[96,100] DNS[7,24,0.01,0.1] C.B[1536,1] "
    "BNA C.B[1024,1] BNA C.B[768,1] BNA C.B[512,1] BNA DND[0.5,1,1]",
    "skip": "PI[2] C[256,3] SKIP[1] BNA PI[2] C[128,3] SKIP[0] BNA DNC[96,100] "
    "DNS[7,24,0.01,0.1] C[1536,1] BNA C.B[1024,1] BNA C.B[768,1] BNA C.B[512,1] BNA DND[0.5,1,1]",
    "wide": "PI[2] C[256,3] SKIP[2] BNA PI[2] C[128,3] SKIP[1] BNA PI[2] C[64,3] SKIP[0] BNA "
    "SPLIT DNC[48,400] DNS[10,48,0.01,0.1] C.B[1536,1] BNA C.B[1024,1] BNA C.B[768,1] BNA "
    "C.B[512,1] BNA DND[0.5,1,1]",
}


def example(name):
    with open(os.path.join(ROOT, "examples", f"{name}.desc"), encoding="utf-8") as f:
        return " ".join(line.strip() for line in f if not line.lstrip().startswith("#")).strip()


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def resnet34_file(tmp_path_factory):
    """DeNet's ImageNet ResNet-34 (examples/resnet34-imagenet.desc): 3x224x224, 1000 classes."""
    torch.manual_seed(0)
    m = denet.compile(example("resnet34-imagenet"), (3, 224, 224), 1000, border_mode="half")
    assert sum(p.numel() for p in m.parameters()) == 21_797_736  # torchvision's resnet34
    randomise_bn(m)
    path = tmp_path_factory.mktemp("r34") / "resnet34.pt"
    denet.save(m, path)
    return path


@pytest.mark.parametrize(
    "kind, params", [("skip", 32_807_481), ("wide", 33_020_809), ("std", 32_809_401)]
)
def test_denet34_surgery_verbatim(resnet34_file, tmp_path, capsys, kind, params):
    from denet.dsl import canonical

    out = tmp_path / f"denet34-{kind}.pt"
    args = ["--input", resnet34_file, "--output", out, *DENET_SURGERY, "--class-num", "80"]
    args += ["--image-size", "512", "512", "--layer-remove", "3", *DENET_INSERTS[kind]]
    args += ["--denet-indices", "--layer-append", DENET34_HEADS[kind]]
    rc, stdout, err = modify(capsys, *args)
    assert rc == 0, err
    new, old = denet.load(out), denet.load(resnet34_file)
    assert new.desc == canonical(example(f"denet34-{kind}"))
    assert new.classes == 80 and new.input_shape == (3, 512, 512)
    assert sum(p.numel() for p in new.parameters()) == params
    # the backbone is the input's: stem conv, its BN (now BNA) and the four stages, in order
    assert torch.equal(new.l0_C.weight, old.l0_C.weight)
    assert same_weights(old.l1_BN, new.l1_BNA)
    stages = lambda m: [getattr(m, n.name) for n in m.graph.nodes if n.type == "nRSN"]  # noqa: E731
    assert len(stages(new)) == len(stages(old)) == 4
    assert all(same_weights(a, b) for a, b in zip(stages(old), stages(new)))
    assert "kept the weights of 6 layer(s)" in stdout
    assert "--layer-remove 3 (DeNet's layers): removed P.A[7] R.BT" in stdout


# DeNet-101 (bottleneck stages of 3, 4, 23, 3), narrow enough to run: the skip script's `18:`
# lands after the 6th of the 23 conv4 blocks (denet-original.md 2.3), the wide one's `24:SPLIT`
# after the 11th.
NARROW101 = (
    "C.B[8,7,2] BN A P[3,2,1] nRSN.O[3,16,3,1,4] nRSN.O[4,32,3,2,8] nRSN.O[23,64,3,2,16] "
    "nRSN.O[3,128,3,2,32] P.A R.BT"
)


@pytest.fixture
def narrow101_file(tmp_path):
    torch.manual_seed(0)
    m = denet.compile(NARROW101, (3, 32, 32), 10, border_mode="half")
    randomise_bn(m)
    path = tmp_path / "r101.pt"
    denet.save(m, path)
    return path


def stage_blocks(model):
    """Every residual block of the model's nRSN stages, in order."""
    return [b for n in model.graph.nodes if n.type == "nRSN" for b in getattr(model, n.name)]


@pytest.mark.parametrize(
    "inserts, stages",
    [
        (["18:SKIPSRC[0]"], "nRSN.O[6,64,3,2,16] SKIPSRC nRSN.O[17,64,3,1,16]"),
        (  # two splits of one stage: the third part's blocks are 7.. of the original
            ["15:SKIPSRC[0]", "20:SKIPSRC[1]"],
            "nRSN.O[3,64,3,2,16] SKIPSRC nRSN.O[4,64,3,1,16] SKIPSRC[1] nRSN.O[16,64,3,1,16]",
        ),
    ],
)
def test_denet_indices_split_a_stage(narrow101_file, tmp_path, capsys, inserts, stages):
    out = tmp_path / "split.pt"
    args = ["--input", narrow101_file, "--output", out, "--denet-indices", "--layer-insert"]
    rc, stdout, err = modify(capsys, *args, *inserts)
    assert rc == 0, err
    new, old = denet.load(out), denet.load(narrow101_file)
    assert new.desc == NARROW101.replace("nRSN.O[23,64,3,2,16]", stages)
    assert "the stage is split into nRSN.O[" in stdout
    old_blocks, new_blocks = stage_blocks(old), stage_blocks(new)
    assert len(old_blocks) == len(new_blocks) == 33
    assert all(same_weights(a, b) for a, b in zip(old_blocks, new_blocks))
    assert same_weights(old, new) is False  # the keys moved (l6_nRSN.6 -> l8_nRSN.0) ...
    ya, yb = outputs(old, new, (2, 3, 32, 32))
    assert torch.equal(ya, yb)  # ... and the identity SKIPSRC changes nothing


@pytest.mark.parametrize(
    "kind, inserts, backbone",
    [
        (
            "skip",
            ["11:SKIPSRC.X[0]", "18:SKIPSRC.X[1]"],
            "nRSN.O[4,32,3,2,8] SKIPSRC.X nRSN.O[6,64,3,2,16] SKIPSRC.X[1] "
            "nRSN.O[17,64,3,1,16] nRSN.O[3,128,3,2,32]",
        ),
        (
            "wide",
            ["7:SKIPSRC[0]", "12:SKIPSRC.X[1]", "24:SPLIT", "37:SKIPSRC.X[2]"],
            "SKIPSRC nRSN.O[4,32,3,2,8] SKIPSRC.X[1] nRSN.O[11,64,3,2,16] SPLIT "
            "nRSN.O[12,64,3,1,16] SKIPSRC.X[2] nRSN.O[3,128,3,2,32]",
        ),
    ],
)
def test_denet101_style_surgery(narrow101_file, tmp_path, capsys, kind, inserts, backbone):
    out = tmp_path / f"{kind}.pt"
    args = ["--input", narrow101_file, "--output", out, *DENET_SURGERY, "--class-num", "4"]
    args += ["--layer-remove", "3", "--denet-indices", "--layer-insert", *inserts]
    rc, stdout, err = modify(capsys, *args)
    assert rc == 0, err
    new, old = denet.load(out), denet.load(narrow101_file)
    assert new.desc == "C.B[8,7,2] BNA P[3,2,1] nRSN.O[3,16,3,1,4] " + backbone
    assert all(same_weights(a, b) for a, b in zip(stage_blocks(old), stage_blocks(new)))
    assert len(stage_blocks(new)) == 33


def test_denet_indices_keywords_and_remove_inside_a_stage(tmp_path, capsys):
    """The second part of a split stage keeps every tag and keyword but the stride and the first
    block's dilation; a remove that ends inside a stage keeps its first blocks."""
    torch.manual_seed(0)
    desc = "C[8,3] nRSN[4,16,3,2,dilation=3,first_dilation=2,momentum=0.8] BN A P.A R"
    m = denet.compile(desc, (3, 16, 16), 3, border_mode="half")
    randomise_bn(m)
    denet.save(m, tmp_path / "in.pt")
    out = tmp_path / "o.pt"
    # DeNet's layers: 1 C, 2-5 the blocks, 6 BN, 7 A, 8 P.A, 9-10 R; 3 is after the first block
    args = ["--input", tmp_path / "in.pt", "--output", out, "--denet-indices"]
    rc, _, err = modify(capsys, *args, "--layer-insert", "3:SKIPSRC")
    assert rc == 0, err
    new, old = denet.load(out), denet.load(tmp_path / "in.pt")
    assert new.desc == (
        "C[8,3] nRSN[1,16,3,2,dilation=3,first_dilation=2,momentum=0.8] SKIPSRC "
        "nRSN[3,16,3,dilation=3,momentum=0.8] BN A P.A R"
    )
    assert all(same_weights(a, b) for a, b in zip(stage_blocks(old), stage_blocks(new)))
    ya, yb = outputs(old, new)
    assert torch.equal(ya, yb)
    # remove R (2), P.A, A, BN and the last block: 6 of DeNet's layers
    rc, stdout, err = modify(capsys, *args, "--layer-remove", "6")
    assert rc == 0, err
    new = denet.load(out)
    assert new.desc == "C[8,3] nRSN[3,16,3,2,dilation=3,first_dilation=2,momentum=0.8]"
    assert "removed the last 1 block(s) of nRSN[4,16,3,2" in stdout
    assert all(same_weights(a, b) for a, b in zip(stage_blocks(old), stage_blocks(new)))
    # our own indices stay the default: 3 is after the BN
    rc, _, err = modify(
        capsys, "--input", tmp_path / "in.pt", "--output", out, "--layer-insert", "3:SKIPSRC"
    )
    assert rc == 0, err
    assert denet.load(out).desc == desc.replace("BN A", "BN SKIPSRC A")


@pytest.mark.parametrize(
    "args, message",
    [
        (  # our indices: DeNet's script without the option
            ["--layer-insert", "18:SKIPSRC.X[1]"],
            "--layer-insert 18:SKIPSRC.X[1]: index 18 is past the end: the model has 10 top-level "
            "layers (..., 4 nRSN.O[3,16,3,1,4], 5 nRSN.O[4,32,3,2,8], 6 nRSN.O[23,64,3,2,16], "
            "7 nRSN.O[3,128,3,2,32], 8 P.A, 9 R.BT), so 10 appends; DeNet's indices (0 = the input "
            "layer, one per residual block, R two) need --denet-indices",
        ),
        (
            ["--denet-indices", "--layer-insert", "42:SKIPSRC"],
            "DeNet's index 42 is past the end: after the input layer 0 the model has 40 DeNet "
            "layers (..., 5-7 nRSN.O[3,16,3,1,4], 8-11 nRSN.O[4,32,3,2,8], 12-34 "
            "nRSN.O[23,64,3,2,16], 35-37 nRSN.O[3,128,3,2,32], 38 P.A, 39-40 R.BT); 41 appends",
        ),
        (
            ["--denet-indices", "--layer-remove", "42"],
            "--layer-remove 42: after the input layer the model has 40 DeNet layers (...",
        ),
        (["--layer-remove", "11"], "--layer-remove 11: the model has 10 top-level layers (..."),
        (  # between R's conv (39) and its regression (40)
            ["--denet-indices", "--layer-insert", "40:SKIPSRC"],
            "DeNet's index 40 falls between the conv and the regression of R.BT (DeNet's layers "
            "39-40, our index 9), which is one layer here and cannot be split",
        ),
        (
            ["--denet-indices", "--layer-remove", "1"],
            "DeNet's last 1 layer(s) end between the conv and the regression of R.BT",
        ),
        (["--denet-indices", "--layer-insert", "0:SKIPSRC"], "DeNet's index 0 is its input layer"),
    ],
)
def test_index_errors(narrow101_file, tmp_path, capsys, args, message):
    out = tmp_path / "out.pt"
    rc, _, err = modify(capsys, "--input", narrow101_file, "--output", out, *args)
    assert rc == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_denet_indices_stop_at_groups_and_taps(net_file, tmp_path, capsys):
    """DeNet had no groups, taps or references: its indices can land before a group, but cannot
    be counted past one, nor placed beside a tap (before or after it?)."""
    out = tmp_path / "out.pt"
    args = ["--input", net_file, "--output", out, "--denet-indices", "--layer-insert"]
    # DeNet's layers: 1 C, 2 BN, 3 A, 4 SPLIT, 5 P.B, 6 SKIPSRC.X, then the SUM group
    rc, stdout, err = modify(capsys, *args, "7:C[8,1]")
    assert rc == 0, err
    assert denet.load(out).desc.startswith(
        "C[8,3] BN[0.95,0.001,lr=2] A SPLIT P.B[3,2] SKIPSRC.X C[8] SUM("
    )
    rc, _, err = modify(capsys, *args, "8:C[8,1]")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert (
        "--layer-insert 8:C[8,1]: DeNet's indices cannot be counted at or past SUM(C[8,3] BN A | "
        "C[8] BN A[relu]) (our index 6): DeNet had no groups, taps or references; give our index "
        "without --denet-indices"
    ) in err
    m = denet.compile("C[4,3] @t BN A SUM( | $t) R", (3, 8, 8), 3)
    denet.save(m, tmp_path / "tap.pt")
    args[1] = tmp_path / "tap.pt"
    rc, _, err = modify(capsys, *args, "2:SKIPSRC")
    assert rc == 2 and "cannot be counted at or past @t (our index 1)" in err
