"""model-train under torchrun (two CPU processes, Gloo): the same program trains one model with
DistributedDataParallel; rank 0 alone writes the log and checkpoints, and the logged counts cover
the whole training and test sets."""

import json
import sys

import pytest

import denet

pytestmark = pytest.mark.multiprocess

LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.mark.slow
def test_two_processes_train_one_model(train_tool, digits_npy, tmp_path):
    train, test, n_train, n_test = digits_npy
    prefix = tmp_path / "ddp"
    res = train_tool(
        "--model-desc",
        "C[16,3] BN A P[2] C[32,3] BN A P.A R.B",
        "--border-mode",
        "half",
        "--extension",
        "npy",
        "--train",
        train,
        "--test",
        test,
        "--epochs",
        3,
        "--batch-size",
        16,
        "--solver",
        "sgd",
        "--learn-rate",
        "0.1",
        "--learn-momentum",
        "0.9",
        "--thread-num",
        0,
        "--output-prefix",
        prefix,
        "--device",
        "cpu",
        launcher=LAUNCH,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    with open(f"{prefix}_log.jsonl", encoding="utf-8") as fh:
        log = [json.loads(line) for line in fh]
    assert [r["epoch"] for r in log] == [0, 1, 2]
    # DistributedSampler pads to an even split; the test set is split without padding
    assert log[0]["train_samples"] == n_train + n_train % 2
    assert log[0]["test_samples"] == n_test  # the evaluators of both ranks, merged
    assert log[0]["train_loss_cls"] == log[0]["train_loss"] and 0 < log[0]["train_top1"] <= 1
    assert log[2]["train_loss"] < log[1]["train_loss"] < log[0]["train_loss"]
    assert log[2]["test_top1"] > 0.8
    assert res.stdout.count("epoch 2/3") == 1  # rank 0 prints, rank 1 is quiet
    model = denet.load(f"{prefix}_final.pt")
    assert model.train_state["epoch"] == 2 and model.class_names == [str(i) for i in range(10)]
    assert not any(k.startswith("module.") for k in model.state_dict())
