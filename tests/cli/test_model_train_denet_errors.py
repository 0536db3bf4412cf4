"""A DeNet detector given what cannot train it: each case is one line on stderr and exit status
2, and no model file is written; an image without boxes beside others is valid."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))
from data_builders import make_coco  # noqa: E402

DENET = "C[8,3] BNA P[2] C[8,3] BNA DNC[4] DNS[3,4,0.01,0.1] C.B[16,1] BNA DND[0.5,1,1]"
COCO = "mscoco,2017-train,crop=0"
BOX = [(2, 2, 20, 20, 0, False)]


@pytest.fixture(scope="module")
def sets(tmp_path_factory, digits_tree):
    root = tmp_path_factory.mktemp("sets")
    os.symlink(digits_tree[0], root / "digits")
    make_coco(str(root / "coco"), "train", 2017, [(32, 32, BOX), (32, 32, [])], ext="png")
    make_coco(str(root / "empty"), "train", 2017, [(32, 32, []), (32, 32, [])], ext="png")
    return root


def train(sets, capsys, desc, data, extension):
    from denet.cli.train import main

    prefix = sets / "out" / desc.split()[-1][:3]
    args = ["--model-desc", desc, "--train", str(sets / data), "--extension", extension]
    args += ["--border-mode", "half", "--epochs", "1", "--batch-size", "2", "--thread-num", "0"]
    rc = main(args + ["--output-prefix", str(prefix)])
    return rc, capsys.readouterr(), prefix


@pytest.mark.parametrize(
    "desc, data, extension, message",
    [
        (DENET, "digits", "png", "a classification set, but the network is a detection"),
        (DENET, "empty", COCO, "no image of this detection set has a box"),
        ("C[8,3] DNS[3,2] C[8,1] DND[0.5,1,1]", "coco", COCO, "put DNC"),
        ("C[8,3] DNC[4] C[8,1] DND[0.5,1,1]", "coco", COCO, "put DNS"),
    ],
)
def test_what_cannot_train_a_detector_is_one_line(sets, capsys, desc, data, extension, message):
    rc, out, prefix = train(sets, capsys, desc, data, extension)
    assert rc == 2
    lines = out.err.strip().splitlines()
    assert message in lines[0] and "Traceback" not in out.err
    assert len(lines) == 1 or lines[1].startswith("  ")  # a string error adds its caret lines
    assert not os.path.exists(f"{prefix}_final.pt")


def test_an_image_without_boxes_trains_beside_others(sets, capsys):
    rc, out, prefix = train(sets, capsys, DENET, "coco", COCO)
    assert rc == 0, out.err
    with open(f"{prefix}_log.jsonl", encoding="utf-8") as fh:
        log = [json.loads(line) for line in fh]
    assert {"train_loss_corner", "train_loss_cls", "train_loss_box"} <= set(log[-1])
