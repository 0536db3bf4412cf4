"""Checkpoints: the ``train_state`` a model file carries so that ``--resume`` continues a run
exactly.

``train_state`` (weights-only safe: tensors, numbers, strings, lists, dicts)::

    {"version": 1,
     "epoch": e,                 # the last finished epoch (0-based); training resumes at e + 1
     "iteration": n,             # optimizer steps taken so far
     "args": {...},              # the run's options (model-train's argparse namespace)
     "optimizer": optimizer.state_dict(),
     "schedule": AnnealSchedule.state_dict(),
     "rng": {"torch": uint8 tensor, "cuda": [uint8 tensor, ...], "numpy": {...},
             "python": {...}},
     "log": {"path": str, "offset": bytes, "records": [per-epoch dicts]}}

The log records up to epoch ``e`` travel in the checkpoint; resuming rewrites the log with them
(truncating whatever a killed run wrote after the checkpoint), so the resumed log is the log an
uninterrupted run writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import random

import numpy as np
import torch

from ..errors import DenetError, ModelFileError

TRAIN_STATE_VERSION = 1


# ----------------------------------------------------------------------------- RNG states
def capture_rng_state(cuda: bool = False) -> dict:
    """Every global random state, as weights-only safe values."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "cuda": [],
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": None if py_gauss is None else float(py_gauss),
        },
    }
    if cuda and torch.cuda.is_available():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))


# ----------------------------------------------------------------------------- train state
def make_train_state(
    *,
    epoch: int,
    iteration: int,
    args: dict,
    optimizer,
    schedule,
    log_path: str,
    log_records: list,
    cuda: bool = False,
) -> dict:
    return {
        "version": TRAIN_STATE_VERSION,
        "epoch": int(epoch),
        "iteration": int(iteration),
        "args": dict(args),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": capture_rng_state(cuda),
        "log": {
            "path": str(log_path),
            "offset": len(render_log(log_records)),
            "records": [dict(r) for r in log_records],
        },
    }


def check_train_state(state, path) -> dict:
    """The ``train_state`` of a checkpoint, or ``ModelFileError`` when it cannot be resumed."""
    if not isinstance(state, dict):
        raise ModelFileError(
            f"{path}: holds no training state (a final model or a converted "
            "file?); resume from one of the P_epochNNN.pt checkpoints, or use "
            "--model to fine-tune from it"
        )
    if state.get("version") != TRAIN_STATE_VERSION:
        raise ModelFileError(f"{path}: unknown training-state version {state.get('version')!r}")
    missing = [
        k
        for k in ("epoch", "iteration", "args", "optimizer", "schedule", "rng", "log")
        if k not in state
    ]
    if missing:
        raise ModelFileError(f"{path}: corrupt training state (missing {', '.join(missing)})")
    return state


# ----------------------------------------------------------------------------- JSON-lines log
def render_log(records) -> bytes:
    """The bytes of a log holding ``records``: one JSON object per line."""
    return "".join(json.dumps(r, sort_keys=False) + "\n" for r in records).encode("utf-8")


def rewrite_log(path, records) -> None:
    """Replace the log at ``path`` by ``records`` (what resuming does)."""
    data = render_log(records)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise DenetError(f"{path}: cannot write the log ({err.strerror or err})") from None


def append_log(path, record) -> None:
    try:
        with open(path, "ab") as fh:
            fh.write(render_log([record]))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        raise DenetError(f"{path}: cannot write the log ({err.strerror or err})") from None
