"""model-train end to end on scikit-learn's real handwritten digits and on a small segmentation
set, the log against the one written before the task contract, cost factors, and user errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import denet

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

DESC = "C[32,3] BN A C[32,3] BN A P[2] C[64,3] BN A P.A R.B"
RECIPE = (
    "--border-mode",
    "half",
    "--solver",
    "nesterov",
    "--learn-rate",
    "0.02",
    "--learn-momentum",
    "0.9",
    "--learn-anneal",
    "0.75",
    "--learn-decay",
    "0.0005",
    "--batch-size",
    "32",
    "--extension",
    "png",
)


def read_log(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def one_line_error(res, *needles):
    """Exit 2, no traceback, the first stderr line names the problem."""
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    first = res.stderr.strip().splitlines()[0]
    for needle in needles:
        assert needle in first, res.stderr
    return res.stderr


@pytest.mark.slow
def test_digits_reach_97_percent(tool, digits_tree, tmp_path):
    train, test, n_train, n_test = digits_tree
    prefix = tmp_path / "out" / "digits"
    epochs = 8
    res = tool(
        "model-train",
        "--model-desc",
        DESC,
        *RECIPE,
        "--epochs",
        epochs,
        "--train",
        train,
        "--test",
        test,
        "--thread-num",
        1,
        "--output-prefix",
        prefix,
    )
    assert res.returncode == 0, res.stderr
    log = read_log(f"{prefix}_log.jsonl")
    assert [r["epoch"] for r in log] == list(range(epochs))
    for r in log:
        for key in ("train_top1", "test_top1", "test_top5"):
            assert 0.0 <= r[key] <= 1.0
        assert r["train_samples"] == n_train and r["test_samples"] == n_test
        assert r["seconds"] > 0 and r["train_loss"] > 0
    assert log[-1]["lr"] == pytest.approx(0.02 * 0.75 ** (epochs - 1))
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert log[-1]["test_top1"] >= 0.97, log[-1]
    for e in range(epochs):
        assert os.path.isfile(f"{prefix}_epoch{e:03d}.pt")
    final = denet.load(f"{prefix}_final.pt")
    assert final.desc == DESC and final.input_shape == (1, 8, 8)
    assert final.class_names == [str(d) for d in range(10)]
    assert final.train_state["epoch"] == epochs - 1
    # the logged accuracy is the model's: recompute it from the final file on the test tree
    correct = total = 0
    final.eval()
    for label in range(10):
        folder = os.path.join(test, str(label))
        names = sorted(os.listdir(folder))
        x = torch.stack(
            [
                torch.from_numpy(
                    np.asarray(Image.open(os.path.join(folder, n)), dtype=np.float32) / 255
                )[None]
                for n in names
            ]
        )
        with torch.no_grad():
            correct += int((final(x).argmax(1) == label).sum())
        total += len(names)
    assert correct / total == pytest.approx(log[-1]["test_top1"])
    assert "epoch 7/8" in res.stdout


def test_bad_description_string(tool, digits_tree, tmp_path):
    train, test, _, _ = digits_tree
    res = tool(
        "model-train",
        "--model-desc",
        "C[32,3] BN A P[2] CC[64,3] R",
        "--train",
        train,
        "--extension",
        "png",
        "--epochs",
        1,
        "--output-prefix",
        tmp_path / "m",
    )
    err = one_line_error(res, "CC")
    lines = err.rstrip("\n").splitlines()
    assert "C[32,3] BN A P[2] CC[64,3] R" in lines[1]
    caret = lines[2].index("^")
    assert lines[1][caret : caret + 2] == "CC"
    assert not os.path.exists(tmp_path / "m_log.jsonl")


def test_missing_train_dir(tool, tmp_path):
    missing = tmp_path / "no-such-dir"
    res = tool(
        "model-train",
        "--model-desc",
        DESC,
        "--train",
        missing,
        "--extension",
        "png",
        "--output-prefix",
        tmp_path / "m",
    )
    one_line_error(res, str(missing))


def test_broken_image_is_named(tool, digits_tree, tmp_path):
    train, _, _, _ = digits_tree
    copy = tmp_path / "train"
    shutil.copytree(train, copy)
    broken = copy / "4" / "zz-broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    res = tool(
        "model-train",
        "--model-desc",
        DESC,
        "--train",
        copy,
        "--extension",
        "png",
        "--epochs",
        1,
        "--output-prefix",
        tmp_path / "m",
    )
    one_line_error(res, str(broken))


def test_corrupt_model_and_checkpoint_files(tool, digits_tree, tmp_path):
    train, _, _, _ = digits_tree
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    res = tool("model-train", "--model", bad, "--train", train, "--extension", "png")
    one_line_error(res, str(bad))
    res = tool("model-train", "--resume", bad)
    one_line_error(res, str(bad))
    res = tool("model-train", "--resume", tmp_path / "missing.pt")
    one_line_error(res, "missing.pt")


def test_option_errors(tool, digits_tree, tmp_path):
    train, _, _, _ = digits_tree
    base = (
        "--train",
        train,
        "--extension",
        "png",
        "--border-mode",
        "half",
        "--output-prefix",
        tmp_path / "m",
    )
    one_line_error(tool("model-train", "--model-desc", DESC, *base, "--distort-mode", "q3"), "q3")
    one_line_error(
        tool(
            "model-train",
            "--model-desc",
            DESC,
            *base,
            "--solver",
            "adam",
            "--learn-momentum",
            "0.9",
        ),
        "adam needs two values",
    )
    one_line_error(
        tool("model-train", "--model-desc", "C[8,3] BN A", *base), "adds no losses", "C[8,3] BN A"
    )
    one_line_error(
        tool(
            "model-train",
            "--model-desc",
            DESC,
            "--train",
            train,
            "--extension",
            "png",
            "--border-mode",
            "odd",
        ),
        "odd",
    )
    res = tool("model-train", "--model-desc", DESC, "--extension", "png")
    assert res.returncode == 2 and "--train" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_fine_tune_from_model_file(tool, digits_tree, tmp_path):
    """--model starts from the file's weights: epoch 0's loss is far below a fresh network's."""
    train, test, _, _ = digits_tree
    first = tmp_path / "a"
    res = tool(
        "model-train",
        "--model-desc",
        DESC,
        *RECIPE,
        "--epochs",
        2,
        "--train",
        train,
        "--max-samples",
        400,
        "--thread-num",
        0,
        "--output-prefix",
        first,
    )
    assert res.returncode == 0, res.stderr
    base = read_log(f"{first}_log.jsonl")
    assert base[0]["train_samples"] == 400
    res = tool(
        "model-train",
        "--model",
        f"{first}_final.pt",
        "--model-desc",
        DESC,
        "--train",
        train,
        "--extension",
        "png",
    )
    one_line_error(res, "--model-desc")
    tuned = tmp_path / "b"
    res = tool(
        "model-train",
        "--model",
        f"{first}_final.pt",
        "--solver",
        "nesterov",
        "--learn-rate",
        "0.01",
        "--learn-momentum",
        "0.9",
        "--epochs",
        1,
        "--train",
        train,
        "--test",
        test,
        "--extension",
        "png",
        "--thread-num",
        0,
        "--max-samples",
        400,
        "--output-prefix",
        tuned,
    )
    assert res.returncode == 0, res.stderr
    log = read_log(f"{tuned}_log.jsonl")
    assert len(log) == 1 and log[0]["train_loss"] < base[0]["train_loss"]
    assert denet.load(f"{tuned}_final.pt").desc == DESC


def test_help_documents_denet_options():
    """DeNet's option names and defaults (denet-original.md section 5.1), shown by --help."""
    from denet.cli.train import build_parser

    parser = build_parser()
    actions = {s: a for a in parser._actions for s in a.option_strings}
    expected = {
        "--border-mode": "valid",
        "--solver": "nesterov",
        "--learn-rate": 0.1,
        "--batch-size": 32,
        "--epochs": 30,
        "--seed": 23455,
        "--thread-num": 1,
        "--extension": "ppm",
        "--output-prefix": "./model",
        "--learn-anneal": 1.0,
        "--weight-init": ["he-backward"],
        "--learn-momentum": [0.0, 0.0],
        "--learn-anneal-epochs": [],
        "--learn-decay": 0.0,
        "--activation": "relu",
        "--distort-mode": [],
        "--augment-mirror": False,
        "--test-epochs": 1,
        "--model": None,
        "--test": None,
        "--max-samples": None,
        "--model-desc": "C[100,7] P[2] C[150,4] P[2] C[250,4] P[2] C[300,1] R",
    }
    for option, default in expected.items():
        assert actions[option].default == default, option
    text = " ".join(parser.format_help().split())
    for option in [*expected, "--resume", "--device", "--train"]:
        assert option in text
    assert "(default: valid)" in text and "(default: 23455)" in text


GOLDEN = os.path.join(ROOT, "tests", "train", "golden", "digits_log_before_task_contract.jsonl")
# the command that wrote GOLDEN, run in a folder holding DIGITS (write_digits_tree's tree)
GOLDEN_COMMAND = (
    "--model-desc",
    DESC,
    "--border-mode",
    "half",
    "--solver",
    "nesterov",
    "--learn-rate",
    "0.02",
    "--learn-momentum",
    "0.9",
    "--learn-anneal",
    "0.75",
    "--learn-decay",
    "0.0005",
    "--batch-size",
    "32",
    "--extension",
    "png",
    "--epochs",
    "4",
    "--train",
    "DIGITS/train",
    "--test",
    "DIGITS/test",
    "--thread-num",
    "0",
    "--output-prefix",
    "OUT/digits",
)


@pytest.mark.slow
def test_log_equals_the_log_written_before_the_task_contract(digits_tree, tmp_path):
    """The trainer that reads losses from the model logs what the classifier-only trainer
    logged: every key of its records (new keys may be added), seconds apart."""
    train, _, _, _ = digits_tree
    os.symlink(os.path.dirname(train), tmp_path / "DIGITS")
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bin", "model-train"), *GOLDEN_COMMAND],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert res.returncode == 0, res.stderr
    golden, log = read_log(GOLDEN), read_log(tmp_path / "OUT" / "digits_log.jsonl")
    assert len(log) == len(golden) == 4
    for old, new in zip(golden, log):
        for key, value in old.items():
            if key == "seconds":
                continue
            if isinstance(value, float):
                assert new[key] == pytest.approx(value, rel=1e-6), (key, old, new)
            else:
                assert new[key] == value, (key, old, new)
        # the classifier's loss and statistic under their own names
        assert new["train_loss_cls"] == new["train_loss"]
        assert 0 < new["train_top1"] <= 1


@pytest.mark.slow
def test_cost_factors_scale_the_gradient_not_the_logged_loss(tool, digits_tree, tmp_path):
    """Plain SGD (no momentum, no decay): a loss times 2 at half the rate takes the same steps
    as the plain loss, so the runs log the same losses and accuracies."""
    train, test, _, _ = digits_tree
    base = (
        "--model-desc",
        DESC,
        "--border-mode",
        "half",
        "--extension",
        "png",
        "--epochs",
        2,
        "--max-samples",
        300,
        "--train",
        train,
        "--test",
        test,
        "--thread-num",
        0,
    )
    runs = {
        "plain": ("--learn-rate", "0.02"),
        "named": ("--learn-rate", "0.01", "--cost-factors", "loss_cls=2"),
        "bare": ("--learn-rate", "0.01", "--cost-factors", "2"),
    }
    logs = {}
    for name, extra in runs.items():
        res = tool("model-train", *base, *extra, "--output-prefix", tmp_path / name)
        assert res.returncode == 0, res.stderr
        logs[name] = read_log(tmp_path / f"{name}_log.jsonl")
    assert "loss_cls x 2" in res.stdout
    for name in ("named", "bare"):
        for a, b in zip(logs["plain"], logs[name]):
            assert b["lr"] == a["lr"] / 2
            for key in a:
                if key not in ("seconds", "lr"):
                    assert b[key] == pytest.approx(a[key], rel=1e-7), (name, key)


def test_cost_factor_errors_name_the_losses(tool, digits_tree, tmp_path):
    train, _, _, _ = digits_tree
    base = (
        "--model-desc",
        DESC,
        "--train",
        train,
        "--extension",
        "png",
        "--border-mode",
        "half",
        "--output-prefix",
        tmp_path / "m",
    )
    one_line_error(
        tool("model-train", *base, "--cost-factors", "loss_box=2"), "loss_box", "loss_cls"
    )
    one_line_error(tool("model-train", *base, "--cost-factors", "1", "2"), "2 factors", "loss_cls")
    one_line_error(tool("model-train", *base, "--cost-factors", "loss_cls=x"), "loss_cls=x")
    assert not os.path.exists(tmp_path / "m_log.jsonl")


def _miou(model, images, labels, k):
    """mIoU from scratch: the model's argmax per pixel against the label maps, numpy."""
    confusion = np.zeros((k, k), np.int64)
    model.eval()
    for image, label in zip(images, labels):
        x = torch.from_numpy(np.asarray(Image.open(image), np.float32) / 255).permute(2, 0, 1)
        with torch.no_grad():
            pred = model(x[None])["out"][0].argmax(0).numpy()
        gt = np.asarray(Image.open(label)).astype(np.int64)
        valid = gt != 255
        confusion += np.bincount(gt[valid] * k + pred[valid], minlength=k * k).reshape(k, k)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


@pytest.mark.slow
def test_segmentation_network_trains_and_logs_miou(tool, seg_tree, tmp_path):
    root, _, val = seg_tree
    prefix = tmp_path / "seg"
    res = tool(
        "model-train",
        "--model-desc",
        "C[16,3] BN A C[16,3] BN A C[3,1] SEG",
        "--border-mode",
        "half",
        "--extension",
        "seglist",
        "--train",
        root,
        "--test",
        root,
        "--epochs",
        4,
        "--learn-rate",
        "0.1",
        "--learn-momentum",
        "0.9",
        "--batch-size",
        8,
        "--thread-num",
        0,
        "--output-prefix",
        prefix,
    )
    assert res.returncode == 0, res.stderr
    log = read_log(f"{prefix}_log.jsonl")
    assert [r["epoch"] for r in log] == [0, 1, 2, 3]
    last = log[-1]
    assert last["train_loss"] == last["train_loss_seg"] < log[0]["train_loss"]
    assert last["train_samples"] == 48
    for key in ("mIoU", "pixel_acc", "mean_acc", "fwIoU", "IoU_0", "IoU_1", "IoU_2"):
        assert 0 <= last[f"test_{key}"] <= 1, key
    assert last["test_mIoU"] > 0.9, last
    assert "test mIoU" in res.stdout
    final = denet.load(f"{prefix}_final.pt")
    with open(os.path.join(root, "info.json"), encoding="utf-8") as fh:
        classes = json.load(fh)["classes"]
    assert final.task == "segmentation" and final.class_names == classes
    labels = [p.replace("images", "labels") for p in val]
    assert last["test_mIoU"] == pytest.approx(_miou(final, val, labels, 3), abs=1e-12)
