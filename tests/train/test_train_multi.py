"""bin/model-train-multi: one worker per device through torch.distributed's elastic launcher.

Oracles: the same trainer under plain torchrun (the same maths, so the same numbers), one process
with the doubled batch (the workers' batches together are that batch: ShardedShuffleSampler
splits one process's order), an uninterrupted run for a killed and restarted one, and the
processes table for "no worker left running"."""

import json
import os
import sys

import numpy as np
import pytest
import torch

import denet
from denet.cli import train_multi

# The whole module: its in-process tests are quick, and one mark keeps the file together.
pytestmark = pytest.mark.multiprocess

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MULTI = [os.path.join(ROOT, "bin", "model-train-multi")]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
PLAIN = "C[16,3] A P[2] C[32,3] A P.A R.B"  # no batch norm: 2 x 8 is exactly one batch of 16
WITH_BN = "C[16,3] BN A P[2] C[32,3] BNA P.A R.B"  # BN and the fused BNA


def args(train, test, prefix, *more, desc=PLAIN):
    return (
        "--model-desc",
        desc,
        "--border-mode",
        "half",
        "--extension",
        "npy",
        "--train",
        train,
        "--test",
        test,
        "--max-samples",
        200,
        "--solver",
        "nesterov",
        "--learn-rate",
        "0.1",
        "--learn-momentum",
        "0.9",
        "--thread-num",
        0,
        "--seed",
        5,
        "--output-prefix",
        prefix,
        *more,
    )


def read_log(prefix):
    with open(f"{prefix}_log.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def assert_same_logs(a, b, rel):
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if k != "seconds":
                assert ra[k] == pytest.approx(rb[k], rel=rel, abs=1e-7), (k, ra[k], rb[k])


def assert_same_weights(a, b, tol):
    sa, sb = denet.load(a).state_dict(), denet.load(b).state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=tol, atol=tol)


def worker_processes(marker):
    """Processes whose command line mentions ``marker`` (a test's tmp path)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if marker.encode() in fh.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


# ----------------------------------------------------------------------------- fast checks
def test_device_tokens_and_plans():
    assert [train_multi.parse_device_token(t) for t in ("0", "gpu1", "cuda:2", "CPU")] == [
        0,
        1,
        2,
        "cpu",
    ]

    class NS:
        gpus, nproc = ["cpu", "cpu"], None

    assert train_multi.plan_workers(NS, None) == (2, True, [])
    NS.gpus, NS.nproc = None, 3
    assert train_multi.plan_workers(NS, "cpu") == (3, True, [])


def test_sharded_order_is_one_process_order_split():
    from denet.data.loader import EpochShuffleSampler
    from denet.train.distributed import ShardedShuffleSampler

    one = EpochShuffleSampler(10, seed=3)
    one.set_epoch(4)
    shards = [ShardedShuffleSampler(10, 3, r, 2) for r in range(2)]
    for s in shards:
        s.set_epoch(4)
    a, b = (list(s) for s in shards)
    assert [x for pair in zip(a, b) for x in pair] == list(one)
    three = [list(ShardedShuffleSampler(10, 3, r, 3)) for r in range(3)]
    assert all(len(s) == 4 for s in three)  # padded to 12 from the start of the order
    assert sorted(sum(three, [])) == sorted(list(range(10)) + list(three[0][:1]) + three[1][:1])


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--gpus", "7"), "--gpus 7: this machine has"),
        (("--gpus", "0", "gpu0"), "GPU 0 is given twice"),
        (("--gpus", "cpu", "0"), "not both"),
        (("--gpus", "tpu"), "neither a GPU id"),
        (("--gpus", "cpu", "--batch-size-factor", "0"), "--batch-size-factor"),
        (("--gpus", "cpu", "--nproc", "2"), "give one"),
    ],
)
def test_bad_device_options_are_one_line_errors(train_tool, digits_npy, tmp_path, extra, message):
    if extra[:2] == ("--gpus", "7") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a GPU 7")
    train, test, _, _ = digits_npy
    res = train_tool(*args(train, test, tmp_path / "x"), *extra, program=MULTI)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not worker_processes(str(tmp_path))


# ----------------------------------------------------------------------------- two workers
@pytest.mark.slow
def test_two_cpu_workers_equal_torchrun_and_one_process_with_the_doubled_batch(
    train_tool, digits_npy, tmp_path
):
    train, test, _, _ = digits_npy
    runs = {
        "multi": dict(program=MULTI, extra=("--gpus", "cpu", "cpu", "--batch-size", 8)),
        "torchrun": dict(launcher=TORCHRUN, extra=("--device", "cpu", "--batch-size", 8)),
        "single": dict(extra=("--device", "cpu", "--batch-size", 16)),
    }
    for name, run in runs.items():
        more = (*run["extra"], "--epochs", 2)
        res = train_tool(
            *args(train, test, tmp_path / name, *more),
            program=run.get("program"),
            launcher=run.get("launcher"),
            timeout=600,
        )
        assert res.returncode == 0, (name, res.stderr[-3000:])
    multi, plain, single = (tmp_path / n for n in runs)
    assert read_log(multi)[0]["train_samples"] == 200
    # the same program under the same launcher engine: the same numbers
    assert_same_logs(read_log(multi), read_log(plain), rel=1e-12)
    assert_same_weights(f"{multi}_final.pt", f"{plain}_final.pt", 0)
    # the two batches of 8 are the one batch of 16 (sums in another order)
    assert_same_logs(read_log(multi), read_log(single), rel=1e-5)
    assert_same_weights(f"{multi}_final.pt", f"{single}_final.pt", 1e-5)


@pytest.mark.slow
def test_two_nodes_on_localhost_equal_two_workers_on_one(train_tool, digits_npy, tmp_path):
    """Two launchers with --nnodes 2 (static rendezvous on localhost, one CPU worker each) log
    what one launcher with two workers logs, and end with the same weights."""
    import socket
    import subprocess

    train, test, _, _ = digits_npy
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    nodes = tmp_path / "nodes"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, *MULTI]
            + [
                str(a)
                for a in args(train, test, nodes, "--gpus", "cpu", "--batch-size", 8)
                + ("--epochs", 2, "--nnodes", 2, "--node-rank", rank)
                + ("--rdzv-endpoint", f"127.0.0.1:{port}")
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    one = tmp_path / "one"
    more = ("--gpus", "cpu", "cpu", "--batch-size", 8, "--epochs", 2)
    res = train_tool(*args(train, test, one, *more), program=MULTI, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_logs(read_log(nodes), read_log(one), rel=1e-12)
    assert_same_weights(f"{nodes}_final.pt", f"{one}_final.pt", 0)


@pytest.mark.slow
def test_sync_bn_workers_equal_one_process_with_the_doubled_batch(train_tool, digits_npy, tmp_path):
    """With batch norm the workers equal the larger batch only with --sync-bn (statistics over
    both workers' images); the fused BNA converts too."""
    train, test, _, _ = digits_npy
    more = ("--epochs", 2, "--learn-momentum", "0.0")
    res = train_tool(
        *args(train, test, tmp_path / "sync", *more, desc=WITH_BN),
        "--gpus",
        "cpu",
        "cpu",
        "--batch-size",
        8,
        "--sync-bn",
        program=MULTI,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "synchronised batch norm" in res.stdout
    res = train_tool(
        *args(train, test, tmp_path / "one", *more, desc=WITH_BN),
        "--device",
        "cpu",
        "--batch-size",
        16,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_logs(read_log(tmp_path / "sync"), read_log(tmp_path / "one"), rel=1e-5)
    assert_same_weights(tmp_path / "sync_final.pt", tmp_path / "one_final.pt", 1e-4)


# a worker that SIGKILLs itself (rank 1, first attempt only) after step STEP of epoch EPOCH
KILLER = f"""
import os, signal, sys
sys.path.insert(0, {ROOT!r})
from denet.cli import train_multi

EPOCH, STEP = int(sys.argv[1]), int(sys.argv[2])


def kill(epoch, step):
    first = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if first and os.environ["RANK"] == "1" and (epoch, step) == (EPOCH, STEP):
        os.kill(os.getpid(), signal.SIGKILL)


sys.exit(train_multi.worker_main(sys.argv[3:], on_step=kill))
"""

LAUNCHER = f"""
import sys
sys.path.insert(0, {ROOT!r})
from denet.cli import train_multi

sys.exit(train_multi.main(sys.argv[4:], worker=sys.argv[1:4]))
"""


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_resumes_from_the_last_checkpoint(
    train_tool, digits_npy, tmp_path
):
    train, test, _, _ = digits_npy
    (tmp_path / "kill_at.py").write_text(KILLER)
    (tmp_path / "launch.py").write_text(LAUNCHER)
    more = ("--gpus", "cpu", "cpu", "--batch-size", 8, "--epochs", 3, "--learn-anneal", "0.8")
    full, killed = tmp_path / "full" / "run", tmp_path / "killed" / "run"
    res = train_tool(*args(train, test, full, *more), program=MULTI, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    res = train_tool(
        *args(train, test, killed, *more, "--max-restarts", 1),
        program=[tmp_path / "launch.py", tmp_path / "kill_at.py", 2, 3],
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming from {killed}_epoch001.pt" in res.stderr
    assert_same_logs(read_log(full), read_log(killed), rel=1e-12)  # every epoch once
    assert_same_weights(f"{full}_final.pt", f"{killed}_final.pt", 0)
    # a checkpoint of two workers resumes in one process (batch 8 per process now) and finishes
    res = train_tool(
        "--resume", f"{full}_epoch001.pt", "--output-prefix", tmp_path / "one", "--device", "cpu"
    )
    assert res.returncode == 0, res.stderr[-3000:]
    log = read_log(tmp_path / "one")
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert log[:2] == read_log(full)[:2]
    assert not worker_processes(str(tmp_path))


@pytest.mark.slow
def test_a_broken_image_stops_the_run_with_its_name_and_no_worker_left(train_tool, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "set" / cls).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "set" / cls / f"{i}.png")
    broken = tmp_path / "set" / "b" / "5.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    res = train_tool(
        "--model-desc",
        PLAIN,
        "--border-mode",
        "half",
        "--train",
        tmp_path / "set",
        "--extension",
        "png",
        "--epochs",
        2,
        "--batch-size",
        4,
        "--thread-num",
        0,
        "--gpus",
        "cpu",
        "cpu",
        "--max-restarts",
        2,
        "--output-prefix",
        tmp_path / "out",
        program=MULTI,
        timeout=300,
    )
    assert res.returncode == 2, res.stderr[-3000:]
    assert str(broken) in res.stderr and "error:" in res.stderr
    assert "Traceback" not in res.stderr
    assert not worker_processes(str(tmp_path))


# ----------------------------------------------------------------------------- mixed precision
def train_in_process(train, test, prefix, *more):
    from denet.cli import train as train_cli

    argv = [str(a) for a in args(train, test, prefix, "--device", "cpu", *more)]
    assert train_cli.main(argv) == 0


def test_amp_bf16_trains_and_stays_close_to_float32(digits_npy, tmp_path):
    train, test, _, _ = digits_npy
    more = ("--epochs", 1, "--batch-size", 32, "--max-samples", 200)
    train_in_process(train, test, tmp_path / "f32", *more)
    train_in_process(train, test, tmp_path / "bf16", *more, "--amp", "bf16")
    a, b = read_log(tmp_path / "f32")[0], read_log(tmp_path / "bf16")[0]
    assert a["train_loss"] != b["train_loss"]  # the forward pass did run in bfloat16
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=2e-2)
    state = denet.load(tmp_path / "bf16_final.pt").state_dict()
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_amp_fp16_resume_keeps_the_loss_scale_and_is_exact(digits_npy, tmp_path):
    train, test, _, _ = digits_npy
    more = ("--batch-size", 32, "--amp", "fp16", "--max-samples", 120)
    train_in_process(train, test, tmp_path / "full", *more, "--epochs", 3)
    state = denet.load(tmp_path / "full_epoch001.pt").train_state
    assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]
    os.makedirs(tmp_path / "r", exist_ok=True)
    from denet.cli import train as train_cli

    assert (
        train_cli.main(
            [
                "--resume",
                str(tmp_path / "full_epoch001.pt"),
                "--output-prefix",
                str(tmp_path / "r" / "run"),
            ]
        )
        == 0
    )
    assert_same_logs(read_log(tmp_path / "full"), read_log(tmp_path / "r" / "run"), rel=0)
    assert_same_weights(tmp_path / "full_final.pt", tmp_path / "r" / "run_final.pt", 0)


def test_channels_last_gives_the_same_training(digits_npy, tmp_path):
    train, test, _, _ = digits_npy
    more = ("--epochs", 1, "--batch-size", 32, "--max-samples", 120)
    train_in_process(train, test, tmp_path / "a", *more)
    train_in_process(train, test, tmp_path / "b", *more, "--channels-last")
    assert_same_logs(read_log(tmp_path / "a"), read_log(tmp_path / "b"), rel=1e-5)
    assert_same_weights(tmp_path / "a_final.pt", tmp_path / "b_final.pt", 1e-5)


@pytest.mark.parametrize("cpu", [False, True])
def test_sync_bn_conversion_keeps_statistics_and_the_fused_relu(cpu):
    from denet.train.distributed import (
        GlooSyncBatchNorm,
        GlooSyncBatchNormReLU,
        SyncBatchNormReLU,
        convert_sync_batchnorm,
    )

    model = denet.compile("C[4,3] BN A C[4,3] BNA P.A R", (3, 8, 8), 3, border_mode="half")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(-1, 1)
    model.eval()
    before, state = model(x), {k: v.clone() for k, v in model.state_dict().items()}
    _, count = convert_sync_batchnorm(model, cpu=cpu)
    plain, fused = (
        (GlooSyncBatchNorm, GlooSyncBatchNormReLU)
        if cpu
        else (torch.nn.SyncBatchNorm, SyncBatchNormReLU)
    )
    kinds = [type(m) for m in model.modules()]
    assert count == 2 and plain in kinds and fused in kinds
    assert not any(type(m) is torch.nn.BatchNorm2d for m in model.modules())
    assert model.state_dict().keys() == state.keys()
    torch.testing.assert_close(model(x), before)  # eval: running statistics, ReLU kept
