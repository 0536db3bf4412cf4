"""Careless tool invocations (issue 13): out-of-range numbers, unwritable outputs and argparse
mistakes are one line on stderr and exit status 2, never a traceback or a usage block."""

import os

import pytest
import torch

import denet
from denet.cli import dataset_show, modify, train

TRAIN = ["--model-desc", "C[4,3] P.A R", "--extension", "png", "--epochs", "1"]


def one_line_error(capsys, call, *phrases):
    """Run ``call``; it must exit 2 with one stderr line holding every phrase."""
    try:
        rc = call()
    except SystemExit as stop:  # argparse
        rc = stop.code
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tree(digits_tree):
    return digits_tree[0]


@pytest.mark.parametrize(
    "extra, phrases",
    [
        (["--seed", "4294967296"], ["--seed must be in [0, 4294967295]"]),
        (["--seed", "-1"], ["--seed must be in [0, 4294967295], not -1"]),
        (["--batch-size", str(2**63)], ["--batch-size must be in [1, 1048576]"]),
        (["--learn-rate", "nan"], ["--learn-rate must be a finite number"]),
        (["--learn-momentum", "inf"], ["--learn-momentum must be a finite number"]),
        (["--thread-num", "100000"], ["--thread-num must be in [0, 1024]"]),
        (["--bogus"], ["unrecognized arguments: --bogus", "(see"]),
        (["--epochs", "x"], ["argument --epochs: invalid int value: 'x'", "--help)"]),
    ],
)
def test_model_train_numbers_and_options(capsys, tree, tmp_path, extra, phrases):
    argv = [*TRAIN, "--train", tree, "--output-prefix", str(tmp_path / "m"), *extra]
    one_line_error(capsys, lambda: train.main(argv), *phrases)
    assert not os.path.exists(tmp_path / "m_final.pt")


def test_model_train_unwritable_outputs(capsys, tree, tmp_path):
    (tmp_path / "afile").write_text("x")
    argv = [*TRAIN, "--train", tree, "--output-prefix", str(tmp_path / "afile" / "m")]
    one_line_error(capsys, lambda: train.main(argv), "--output-prefix: cannot create")
    (tmp_path / "m_log.jsonl").mkdir()
    argv = [*TRAIN, "--train", tree, "--output-prefix", str(tmp_path / "m")]
    one_line_error(capsys, lambda: train.main(argv), "m_log.jsonl: cannot write the log")


def test_model_modify_unwritable_outputs(capsys, tmp_path):
    m = denet.compile("C[4,3] P.A R", (3, 8, 8), 2)
    denet.save(m, tmp_path / "in.pt")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "folder").mkdir()
    base = ["--input", str(tmp_path / "in.pt"), "--output"]
    one_line_error(
        capsys, lambda: modify.main(base + [str(tmp_path / "afile" / "o.pt")]), "cannot write"
    )
    one_line_error(capsys, lambda: modify.main(base + [str(tmp_path / "folder")]), "is a folder")
    assert sorted(os.listdir(tmp_path)) == ["afile", "folder", "in.pt"]  # no temporary left


@pytest.mark.parametrize(
    "extra, phrases",
    [
        (["--epoch", "-1"], ["argument --epoch: -1 is outside [0, 1000000]"]),
        (["--zoom", "100000"], ["argument --zoom: 100000 is outside [0, 32]"]),
        (["--seed", "4294967296"], ["argument --seed"]),
        (["-n", "-3"], ["argument -n/--count"]),
    ],
)
def test_dataset_show_numbers(capsys, tree, tmp_path, extra, phrases):
    argv = ["--input", tree, "--extension", "png", "--output", str(tmp_path / "o"), *extra]
    one_line_error(capsys, lambda: dataset_show.main(argv), *phrases)


def test_dataset_show_unwritable_output(capsys, tree, tmp_path):
    (tmp_path / "afile").write_text("x")
    argv = ["--input", tree, "--extension", "png", "--output", str(tmp_path / "afile")]
    one_line_error(capsys, lambda: dataset_show.main(argv), "cannot create the folder")


# ----------------------------------------------------------------------------- model-predict
@pytest.fixture
def predict_setup(tmp_path):
    """A 1-channel 8x8 classifier file and a folder of two images of its size."""
    import numpy as np
    from PIL import Image

    m = denet.compile("C[4,3] P.A R", (1, 8, 8), 3, border_mode="half")
    denet.save(m, tmp_path / "m.pt")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(images / f"{i}.png")
    return tmp_path


def test_model_predict_never_overwrites_its_inputs(capsys, predict_setup):
    from denet.cli import predict

    d = predict_setup
    model, image = str(d / "m.pt"), str(d / "images" / "0.png")
    before = (d / "images" / "0.png").read_bytes()
    for output in (model, image, str(d / "images" / ".." / "m.pt")):
        argv = ["--model", model, "--input", str(d / "images"), "--output", output]
        one_line_error(capsys, lambda a=argv: predict.main(a), "would overwrite the input")
    assert (d / "images" / "0.png").read_bytes() == before
    assert denet.load(model).desc == "C[4,3] P.A R"


def test_model_predict_skips_what_is_not_a_regular_file(capsys, predict_setup):
    import json

    from denet.cli import predict

    d = predict_setup
    os.mkfifo(d / "images" / "fifo.png")  # reading it would block forever
    out = d / "out.json"
    rc = predict.main(
        ["--model", str(d / "m.pt"), "--input", str(d / "images"), "--output", str(out)]
    )
    assert rc == 0, capsys.readouterr().err
    assert [os.path.basename(e["path"]) for e in json.loads(out.read_text())] == ["0.png", "1.png"]
    argv = ["--model", str(d / "m.pt"), "--input", str(d / "images" / "fifo.png")]
    one_line_error(capsys, lambda: predict.main(argv), "not a regular file")


def test_model_predict_writes_strict_json(capsys, predict_setup):
    import json

    from denet.cli import predict

    d = predict_setup
    m = denet.load(d / "m.pt")
    with torch.no_grad():
        m.l0_C.weight.fill_(float("nan"))
    denet.save(m, d / "nan.pt")
    out = d / "nan.json"
    rc = predict.main(
        ["--model", str(d / "nan.pt"), "--input", str(d / "images"), "--output", str(out)]
    )
    assert rc == 0, capsys.readouterr().err
    text = out.read_text()
    assert "NaN" not in text
    entries = json.loads(text)  # strict parsers accept it
    assert entries[0]["top5"][0][1] is None


def test_model_predict_numbers(capsys, predict_setup):
    from denet.cli import predict

    d = predict_setup
    argv = ["--model", str(d / "m.pt"), "--input", str(d / "images"), "--batch-size", str(2**63)]
    one_line_error(capsys, lambda: predict.main(argv), "argument --batch-size", "--help)")
