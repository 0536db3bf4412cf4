"""--resume: a run killed (SIGKILL) in the middle of epoch 2 and resumed from P_epoch001.pt, by
repeating its command line with --resume appended, logs exactly the per-epoch losses of an
uninterrupted run with the same seed and thread count, and ends with the same weights. The kill
comes from the test: a launcher installs model-train's on_step hook."""

import json
import os
import signal

import pytest
import torch

import denet

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# dropout (global torch RNG), augmentation (per-item RNG), DeNet's EMA sgd (optimizer state),
# an annealed rate (schedule) and two loader workers: everything --resume has to restore.
ARGS = (
    "--model-desc",
    "C[16,3] BN A D[0.2] P[2] C[32,3] BN A P.A R.B",
    "--border-mode",
    "half",
    "--extension",
    "npy",
    "--solver",
    "sgd",
    "--learn-rate",
    "0.1",
    "--learn-momentum",
    "0.9",
    "--learn-anneal",
    "0.8",
    "--learn-decay",
    "0.0001",
    "--distort-mode",
    "o1",
    "--batch-size",
    "64",
    "--thread-num",
    "2",
    "--seed",
    "7",
)

# model-train with a hook that kills the process (like a crash: no clean-up, no final files)
# after optimizer step STEP (counted from 1) of epoch EPOCH: kill_at.py EPOCH STEP ARGS...
KILLER = f"""
import os, signal, sys
sys.path.insert(0, {ROOT!r})
from denet.cli import train

EPOCH, STEP = int(sys.argv[1]), int(sys.argv[2])


def kill(epoch, step):
    if (epoch, step) == (EPOCH, STEP):
        os.kill(os.getpid(), signal.SIGKILL)


sys.exit(train.main(sys.argv[3:], on_step=kill))
"""


def read_log(prefix):
    with open(f"{prefix}_log.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def same_weights(a, b):
    sa, sb = denet.load(a).state_dict(), denet.load(b).state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_killed_and_resumed_equals_uninterrupted(train_tool, digits_npy, tmp_path):
    train, test, _, _ = digits_npy
    data = ("--train", train, "--test", test)
    full, killed = tmp_path / "full" / "run", tmp_path / "killed" / "run"
    killer = tmp_path / "kill_at.py"
    killer.write_text(KILLER)

    res = train_tool(*ARGS, *data, "--epochs", 3, "--output-prefix", full)
    assert res.returncode == 0, res.stderr

    command = (*ARGS, *data, "--epochs", 3, "--output-prefix", killed)
    res = train_tool(*command, program=[killer, 2, 5])
    assert res.returncode == -signal.SIGKILL, (res.returncode, res.stderr)
    assert os.path.isfile(f"{killed}_epoch001.pt")
    assert not os.path.exists(f"{killed}_epoch002.pt")
    assert not os.path.exists(f"{killed}_final.pt")
    assert len(read_log(killed)) == 2

    # the user repeats the command line with --resume appended
    res = train_tool(*command, "--resume", f"{killed}_epoch001.pt")
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


@pytest.mark.slow
def test_resume_accepts_the_command_line_and_names_a_changed_option(
    train_tool, digits_npy, tmp_path
):
    train, _, _, _ = digits_npy
    prefix = tmp_path / "run"
    first = (*ARGS, "--train", train, "--max-samples", 128, "--output-prefix", prefix)
    res = train_tool(*first, "--epochs", 1)
    assert res.returncode == 0, res.stderr
    res = train_tool("--resume", f"{prefix}_epoch000.pt")
    assert res.returncode == 2 and "--epochs N" in res.stderr and "Traceback" not in res.stderr

    res = train_tool(
        *first, "--epochs", 2, "--resume", f"{prefix}_epoch000.pt", "--learn-rate", "0.5"
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    line = res.stderr.splitlines()[0]
    assert "--learn-rate" in line and "0.1" in line and "0.5" in line

    # the same options written differently: the description as tokens, 0.10 for 0.1
    tokens = ("--model-desc", *ARGS[1].split())
    assert ARGS[8:10] == ("--learn-rate", "0.1")
    res = train_tool(
        *tokens,
        *ARGS[2:8],
        "--learn-rate",
        "0.10",
        *ARGS[10:],
        "--train",
        train,
        "--max-samples",
        128,
        "--output-prefix",
        prefix,
        "--epochs",
        2,
        "--resume",
        f"{prefix}_epoch000.pt",
        "--thread-num",
        0,
    )
    assert res.returncode == 0, res.stderr
    assert [r["epoch"] for r in read_log(prefix)] == [0, 1]

    plain = tmp_path / "plain.pt"
    denet.save(denet.compile("C[4,3] BN A P.A R", (1, 8, 8), 10), plain)
    res = train_tool("--resume", plain, "--epochs", 2)
    assert res.returncode == 2 and str(plain) in res.stderr and "no training state" in res.stderr


def test_a_kill_while_the_final_file_is_written_is_finished_by_resume(digits_npy, tmp_path):
    """The last epoch's checkpoint exists, P_final.pt does not, and the killed save left its
    temporary file: --resume of that checkpoint writes P_final.pt (the same weights and state)
    and removes the temporary instead of refusing a finished run."""
    from denet.cli import train

    data, _, _, _ = digits_npy
    prefix = tmp_path / "run"
    args = ["--model-desc", "C[4,3] BN A P.A R.B", "--border-mode", "half", "--extension"]
    args += ["npy", "--train", data, "--epochs", "2", "--batch-size", "256", "--thread-num"]
    args += ["0", "--output-prefix", str(prefix), "--log-level", "warning"]
    assert train.main(args) == 0
    os.unlink(f"{prefix}_final.pt")
    stale = tmp_path / ".run_final.pt.tmp-k1ll3d"
    stale.write_bytes(b"half a model file")
    log = read_log(prefix)
    assert train.main(args + ["--resume", f"{prefix}_epoch001.pt"]) == 0
    assert not stale.exists()
    assert same_weights(f"{prefix}_final.pt", f"{prefix}_epoch001.pt")
    assert denet.load(f"{prefix}_final.pt").train_state["epoch"] == 1
    assert read_log(prefix) == log
    # with P_final.pt present the run is finished, as before
    assert train.main(args + ["--resume", f"{prefix}_epoch001.pt"]) == 2
