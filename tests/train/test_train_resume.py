"""--resume: a run killed (SIGKILL) in the middle of epoch 2 and resumed from P_epoch001.pt logs
exactly the per-epoch losses of an uninterrupted run with the same seed and thread count, and
ends with the same weights."""
import json
import os
import signal

import torch

import denet
from denet.train.trainer import KILL_ENV

# dropout (global torch RNG), augmentation (per-item RNG), DeNet's EMA sgd (optimizer state),
# an annealed rate (schedule) and two loader workers: everything --resume has to restore.
ARGS = ("--model-desc", "C[16,3] BN A D[0.2] P[2] C[32,3] BN A P.A R.B", "--border-mode", "half",
        "--extension", "npy", "--solver", "sgd", "--learn-rate", "0.1", "--learn-momentum",
        "0.9", "--learn-anneal", "0.8", "--learn-decay", "0.0001", "--distort-mode", "o1",
        "--batch-size", "64", "--thread-num", "2", "--seed", "7")


def read_log(prefix):
    with open(f"{prefix}_log.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def same_weights(a, b):
    sa, sb = denet.load(a).state_dict(), denet.load(b).state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_killed_and_resumed_equals_uninterrupted(train_tool, digits_npy, tmp_path):
    train, test, _, _ = digits_npy
    data = ("--train", train, "--test", test)
    full, killed = tmp_path / "full" / "run", tmp_path / "killed" / "run"

    res = train_tool(*ARGS, *data, "--epochs", 3, "--output-prefix", full)
    assert res.returncode == 0, res.stderr

    res = train_tool(*ARGS, *data, "--epochs", 3, "--output-prefix", killed,
                     env={KILL_ENV: "2:5"})
    assert res.returncode == -signal.SIGKILL, (res.returncode, res.stderr)
    assert os.path.isfile(f"{killed}_epoch001.pt")
    assert not os.path.exists(f"{killed}_epoch002.pt")
    assert not os.path.exists(f"{killed}_final.pt")
    assert len(read_log(killed)) == 2

    res = train_tool("--resume", f"{killed}_epoch001.pt")
    assert res.returncode == 0, res.stderr
    assert "resuming" in res.stdout

    a, b = read_log(full), read_log(killed)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [0, 1, 2]
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    for ra, rb in zip(a, b):
        ra.pop("seconds"), rb.pop("seconds")
        assert ra == rb
    assert same_weights(f"{full}_final.pt", f"{killed}_final.pt")
    assert same_weights(f"{full}_epoch002.pt", f"{killed}_epoch002.pt")

    # a finished run continues with a larger --epochs; its first epochs are untouched
    res = train_tool("--resume", f"{killed}_final.pt", "--epochs", 4, "--log-level", "warning")
    assert res.returncode == 0, res.stderr
    c = read_log(killed)
    assert [r["epoch"] for r in c] == [0, 1, 2, 3]
    assert [r["train_loss"] for r in c[:3]] == [r["train_loss"] for r in a]
    assert c[3]["lr"] == 0.1 * 0.8 * 0.8 * 0.8


def test_resume_errors(train_tool, digits_npy, tmp_path):
    train, _, _, _ = digits_npy
    prefix = tmp_path / "run"
    res = train_tool(*ARGS, "--train", train, "--epochs", 1, "--max-samples", 128,
                     "--output-prefix", prefix)
    assert res.returncode == 0, res.stderr
    res = train_tool("--resume", f"{prefix}_epoch000.pt")
    assert res.returncode == 2 and "--epochs N" in res.stderr and "Traceback" not in res.stderr
    res = train_tool("--resume", f"{prefix}_epoch000.pt", "--learn-rate", "0.5")
    assert res.returncode == 2 and "--learn-rate" in res.stderr.splitlines()[0]
    plain = tmp_path / "plain.pt"
    denet.save(denet.compile("C[4,3] BN A P.A R", (1, 8, 8), 10), plain)
    res = train_tool("--resume", plain, "--epochs", 2)
    assert res.returncode == 2 and str(plain) in res.stderr and "no training state" in res.stderr
