"""model-train-multi: model-train on several devices (and machines), one worker process per
device, started by torch.distributed's elastic launcher (the engine behind torchrun).

    model-train-multi --gpus 0 1 2 3 --model-desc "..." --train T --test V --extension png
    model-train-multi --gpus cpu cpu ...            # two CPU workers (Gloo)
    model-train-multi --nproc 4 --device cpu ...    # the same with four

Every worker runs model-train's trainer (``denet.cli.train``) under DistributedDataParallel,
``--batch-size`` per worker as in DeNet. ``--max-restarts N`` lets the launcher restart the
whole group after a worker dies; restarted workers resume from the newest ``P_epochNNN.pt``
this run wrote (DeNet's ``--restart``; ``--restart`` resumes from the newest checkpoint of the
prefix in a new launch). Across machines: ``--nnodes``, ``--node-rank`` and
``--rdzv-endpoint`` go to the launcher's rendezvous. See docs/model-train-multi.md.

``main(argv, worker=[script, ...])`` runs ``python script ... <model-train options>`` as the
worker instead of this module (a hook for tests; the script calls :func:`worker_main`).
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import re
import sys
import tempfile
import time
import uuid

from ..errors import DenetError
from . import train as train_cli
from ._common import ArgumentParser, tool_main

PROG = "model-train-multi"
# what the launcher tells its workers through the environment
ENV_STARTED = "DENET_MULTI_STARTED"  # time.time() of the launch: restarts resume only newer files
ENV_RESTART = "DENET_MULTI_RESTART"  # "1": --restart, resume from the newest checkpoint at once
ENV_ABORT = "DENET_MULTI_ABORT"  # a file a worker writes on a user error: restarts stop at once
WORKER_FLAG = "--denet-multi-worker"


# ----------------------------------------------------------------------------- options
def add_multi_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("several processes (model-train-multi)")
    a = g.add_argument
    a(
        "--gpus",
        nargs="+",
        default=None,
        metavar="DEVICE",
        help="one worker per device on this machine: GPU ids (0 1 2 3; DeNet's gpu0 gpu1 and "
        "cuda:N are accepted) or cpu, once per CPU worker (cpu cpu: two workers with Gloo)",
    )
    a(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="N workers: on --device cpu N CPU workers, else GPUs 0..N-1 (instead of --gpus)",
    )
    a("--nnodes", type=int, default=1, help="machines taking part (each runs this command)")
    a(
        "--node-rank",
        type=int,
        default=None,
        help="this machine's rank in [0, --nnodes) (static rendezvous at --rdzv-endpoint, "
        "which is node 0's address); without it the machines rendezvous in arrival order",
    )
    a(
        "--rdzv-endpoint",
        default=None,
        metavar="HOST:PORT",
        help="rendezvous address, the same on every machine (required with --nnodes > 1)",
    )
    a(
        "--rdzv-id",
        default=None,
        metavar="ID",
        help="run id shared by the machines of one run (default: denet, or a fresh id alone)",
    )
    a(
        "--max-restarts",
        type=int,
        default=0,
        metavar="N",
        help="restart the worker group up to N times after a worker fails; restarted workers "
        "resume from the newest P_epochNNN.pt of this run",
    )
    a(
        "--restart",
        action="store_true",
        help="resume from the newest P_epochNNN.pt of --output-prefix (DeNet's --restart)",
    )


MULTI_OPTIONS = (
    "gpus",
    "nproc",
    "nnodes",
    "node_rank",
    "rdzv_endpoint",
    "rdzv_id",
    "max_restarts",
    "restart",
)


def build_parser() -> argparse.ArgumentParser:
    p = train_cli.build_parser()
    p.prog = PROG
    p.description = (
        "Train a network written as a DeNet description string on several devices or "
        "machines: one worker per device, each running model-train's trainer under "
        "DistributedDataParallel (--batch-size per worker). Every model-train option applies."
    )
    p.epilog = "See docs/model-train-multi.md."
    add_multi_options(p)
    return p


def split_argv(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(the launcher's options, model-train's command line without them)."""
    p = ArgumentParser(prog="model-train-multi", add_help=False, allow_abbrev=False)
    add_multi_options(p)
    ns, rest = p.parse_known_args(argv)
    return ns, rest


# ----------------------------------------------------------------------------- devices
def parse_device_token(token: str) -> int | str:
    """``cpu`` or a GPU index from ``3``, ``gpu3``, ``cuda3`` or ``cuda:3``."""
    text = token.strip().lower()
    if text == "cpu":
        return "cpu"
    m = re.fullmatch(r"(?:gpu|cuda:?)?(\d+)", text)
    if not m:
        raise DenetError(f"--gpus: {token!r} is neither a GPU id (0, gpu0, cuda:0) nor cpu")
    return int(m.group(1))


def plan_workers(ns_multi, device: str | None) -> tuple[int, bool, list[int]]:
    """(workers on this machine, on the CPU?, GPU ids) from --gpus / --nproc / --device."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if ns_multi.gpus is not None:
        if ns_multi.nproc is not None:
            raise DenetError("--gpus and --nproc both set the workers; give one")
        if device is not None:
            raise DenetError("--gpus sets the devices; --device cannot be given with it")
        tokens = [parse_device_token(t) for t in ns_multi.gpus]
        cpus = [t for t in tokens if t == "cpu"]
        if cpus and len(cpus) != len(tokens):
            raise DenetError("--gpus: give GPU ids or cpu, not both")
        if cpus:
            return len(tokens), True, []
        for k, t in enumerate(tokens):
            if t in tokens[:k]:
                raise DenetError(f"--gpus: GPU {t} is given twice")
        for t in tokens:
            if t >= count:
                raise DenetError(
                    f"--gpus {t}: this machine has {count} CUDA device(s)"
                    + (f" (0 to {count - 1})" if count else "")
                )
        return len(tokens), False, list(tokens)
    on_cpu = (device or ("cuda" if count else "cpu")).startswith("cpu")
    if not on_cpu and device not in (None, "cuda"):
        raise DenetError(f"--device {device}: give the GPUs with --gpus (or --nproc N)")
    n = 1 if ns_multi.nproc is None else ns_multi.nproc
    if not 1 <= n <= 1024:
        raise DenetError(f"--nproc must be in [1, 1024], not {n}")
    if on_cpu:
        return n, True, []
    if n > count:
        raise DenetError(f"--nproc {n}: this machine has {count} CUDA device(s)")
    return n, False, list(range(n))


def visible_devices(ids: list[int]) -> str:
    """CUDA_VISIBLE_DEVICES for the workers (worker k uses cuda:k, the k-th id), through an
    existing CUDA_VISIBLE_DEVICES when one is set."""
    outer = os.environ.get("CUDA_VISIBLE_DEVICES")
    if outer:
        names = [s.strip() for s in outer.split(",") if s.strip()]
        return ",".join(names[i] for i in ids)
    return ",".join(str(i) for i in ids)


# ----------------------------------------------------------------------------- checkpoints
def newest_checkpoint(prefix: str, since: float | None = None) -> str | None:
    """The ``P_epochNNN.pt`` of ``prefix`` with the highest epoch (written at or after ``since``
    when given, so that a restarted run never picks up an older run's files)."""
    best = None
    for path in glob.glob(glob.escape(prefix) + "_epoch*.pt"):
        m = re.fullmatch(re.escape(prefix) + r"_epoch(\d+)\.pt", path)
        if not m:
            continue
        if since is not None and os.path.getmtime(path) < since:
            continue
        epoch = int(m.group(1))
        if best is None or epoch > best[0]:
            best = (epoch, path)
    return best[1] if best else None


def _without_resume(argv: list[str]) -> list[str]:
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        if token == "--resume":
            skip = True
            continue
        if token.startswith("--resume="):
            continue
        out.append(token)
    return out


def _prefix_of(argv: list[str]) -> str:
    ns, _ = train_cli.build_parser().parse_known_args(argv)
    if ns.output_prefix != "./model" or not ns.resume:
        return ns.output_prefix
    import denet  # --resume alone: the prefix is the checkpoint's

    try:
        state = denet.load(ns.resume).train_state or {}
    except Exception:  # the trainer reports a bad file itself
        return ns.output_prefix
    return state.get("args", {}).get("output_prefix", ns.output_prefix)


# ----------------------------------------------------------------------------- the worker
def worker_main(argv=None, on_step=None) -> int:
    """One worker: model-train's ``main`` on ``argv``; after a restart by the launcher (or with
    ``--restart``) with ``--resume`` the newest checkpoint of the run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    rank = os.environ.get("RANK", "0")
    sys.argv[0] = f"{PROG}[rank {rank}]"  # the error lines name the worker
    abort = os.environ.get(ENV_ABORT)
    if abort and os.path.exists(abort):
        return 2  # a user error stopped the run; its message is on the console already
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restarts > 0 or os.environ.get(ENV_RESTART) == "1":
        since = os.environ.get(ENV_STARTED)
        # a restart after a failure takes only this launch's files; --restart any
        newest = newest_checkpoint(
            _prefix_of(argv), float(since) - 1.0 if since and restarts > 0 else None
        )
        if newest is None and os.environ.get(ENV_RESTART) == "1" and restarts > 0:
            newest = newest_checkpoint(_prefix_of(argv))
        if newest is not None:
            argv = _without_resume(argv) + ["--resume", newest]
            if rank == "0":
                print(f"{PROG}: resuming from {newest}", file=sys.stderr, flush=True)
    code = train_cli.main(argv, on_step=on_step)
    if code == 2 and abort:
        with open(abort, "a", encoding="utf-8"):
            pass
    return code


# ----------------------------------------------------------------------------- the launcher
def _launch(ns_multi, train_argv: list[str], nproc: int, worker: list[str] | None) -> int:
    import torch.distributed.elastic.multiprocessing.errors as elastic_errors
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    nnodes = ns_multi.nnodes
    if nnodes > 1:
        if not ns_multi.rdzv_endpoint:
            raise DenetError(
                "--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)"
            )
        static = ns_multi.node_rank is not None
        endpoint, backend = ns_multi.rdzv_endpoint, ("static" if static else "c10d")
        run_id = ns_multi.rdzv_id or "denet"
        configs = {"rank": ns_multi.node_rank} if static else {}
    else:
        endpoint = ns_multi.rdzv_endpoint or "localhost:0"
        backend, configs = "c10d", {}
        run_id = ns_multi.rdzv_id or str(uuid.uuid4())
    config = LaunchConfig(
        min_nodes=nnodes,
        max_nodes=nnodes,
        nproc_per_node=nproc,
        run_id=run_id,
        rdzv_endpoint=endpoint,
        rdzv_backend=backend,
        rdzv_configs=configs,
        max_restarts=ns_multi.max_restarts,
        monitor_interval=0.5,
        start_method="spawn",
    )
    cmd = [*worker, *train_argv] if worker else ["-u", "-m", __name__, WORKER_FLAG, *train_argv]
    try:
        elastic_launch(config, sys.executable)(*cmd)
    except elastic_errors.ChildFailedError as err:
        codes = {rank: f.exitcode for rank, f in err.failures.items()}
        if 2 in codes.values():
            return 2  # a user error (bad data, option): the worker printed it
        rank, failure = err.get_first_failure()
        what = (
            f"killed by signal {-failure.exitcode}"
            if failure.exitcode < 0
            else f"exit status {failure.exitcode}"
        )
        restarts = ns_multi.max_restarts
        print(
            f"{PROG}: error: worker {rank} failed ({what})"
            + (f" after {restarts} restart(s)" if restarts else "; --max-restarts N restarts"),
            file=sys.stderr,
        )
        return 1
    except Exception as err:  # rendezvous failures and the like
        print(f"{PROG}: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


@tool_main
def main(argv=None, worker: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ns = parser.parse_args(argv)  # every option checked (and --help) before any worker starts
    ns_multi, train_argv = split_argv(argv)
    if not ns.train and not ns.resume and not ns.restart:
        parser.error("--train is required")
    if ns.batch_size_factor < 1:
        raise DenetError(f"--batch-size-factor must be >= 1, not {ns.batch_size_factor}")
    if ns.batch_size < 1:
        raise DenetError(f"--batch-size must be >= 1, not {ns.batch_size}")
    if ns.nnodes < 1:
        raise DenetError(f"--nnodes must be >= 1, not {ns.nnodes}")
    if ns.node_rank is not None and not 0 <= ns.node_rank < ns.nnodes:
        raise DenetError(f"--node-rank must be in [0, {ns.nnodes}), not {ns.node_rank}")
    if ns.max_restarts < 0:
        raise DenetError(f"--max-restarts must be >= 0, not {ns.max_restarts}")
    if not ns.resume:  # a bad string or option: one message here, not one per worker
        opts = train_cli.options_from_args(ns)
        opts.check()
    nproc, on_cpu, ids = plan_workers(ns_multi, ns.device)
    if on_cpu and ns.device is None:
        train_argv += ["--device", "cpu"]
    if not on_cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_devices(ids)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = root + (os.pathsep + path if path else "")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun: workers share the cores
    os.environ[ENV_STARTED] = repr(time.time())
    if ns.restart:
        os.environ[ENV_RESTART] = "1"
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="denet-multi-") as tmp:
        os.environ[ENV_ABORT] = os.path.join(tmp, "abort")
        return _launch(ns_multi, train_argv, nproc, worker)


def _module_main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == WORKER_FLAG:
        return worker_main(sys.argv[2:])
    return main()


if __name__ == "__main__":
    sys.exit(_module_main())
