"""Model files: ``{"format_version", "desc", "input_shape", "classes", "class_names", "options",
"state_dict", "train_state"}`` written with ``torch.save`` and read with
``torch.load(weights_only=True)``; the module is rebuilt from ``desc``. Opening a model file can
never run code: a file holding any other pickled object is refused.
"""

from __future__ import annotations

import glob
import os
import pickle
import tempfile
import zipfile

import torch

from .api import compile
from .errors import DenetError, ModelFileError

FORMAT_VERSION = 1
_KEYS = (
    "format_version",
    "desc",
    "input_shape",
    "classes",
    "class_names",
    "options",
    "state_dict",
    "train_state",
)


def save(model, path, train_state: dict | None = None) -> None:
    """Write ``model`` (and optionally the trainer's state) to ``path`` atomically."""
    path = os.fspath(path)
    payload = {
        "format_version": FORMAT_VERSION,
        "desc": model.desc,
        "input_shape": list(model.input_shape),
        "classes": model.classes,
        "class_names": list(model.class_names) if model.class_names is not None else None,
        "options": dict(model.options),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train_state": train_state,
    }
    directory, name = os.path.split(os.path.abspath(path))
    if os.path.isdir(path):
        raise ModelFileError(f"{path}: is a folder; give a file name for the model file")
    # named after its target, so a later run can find what a killed one left (stale_temporaries)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-", dir=directory)
    except OSError as err:
        raise ModelFileError(f"{path}: cannot write here ({err.strerror or err})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a model file is like the log
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise ModelFileError(f"{path}: cannot write ({err.strerror or err})") from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def stale_temporaries(prefix: str) -> list[str]:
    """Temporary files that :func:`save` left for ``<prefix>*`` targets when it was killed."""
    directory, name = os.path.split(os.path.abspath(prefix))
    return sorted(glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}*.tmp-*")))


def read_payload(path, map_location="cpu") -> dict:
    """The checked dictionary stored in a model file (weights only)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):
        # torch.save always writes a zip archive; anything else (text, a bare pickle, a
        # truncated download) is not ours, and is never handed to an unpickler.
        raise ModelFileError(f"{path}: not a denet model file (not a torch.save archive)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ModelFileError(
            f"{path}: refused: the file holds pickled objects that are not weights ({first[:120]})"
        ) from None
    except (zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError, KeyError) as err:
        raise ModelFileError(
            f"{path}: not a readable model file ({type(err).__name__}: {str(err)[:120]})"
        ) from None
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise ModelFileError(f"{path}: not a denet model file (no format_version)")
    if payload["format_version"] != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: unknown model file version {payload['format_version']!r} "
            f"(this denet reads version {FORMAT_VERSION})"
        )
    missing = [k for k in _KEYS if k not in payload]
    if missing:
        raise ModelFileError(f"{path}: corrupt model file (missing {', '.join(missing)})")
    problem = _field_problem(payload)
    if problem:
        raise ModelFileError(f"{path}: corrupt model file ({problem})")
    return payload


_OPTIONS = ("border_mode", "activation", "weight_init")  # the compile options a file stores


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _field_problem(p: dict) -> str | None:
    """What is wrong with the fields of a weights-only payload, or None."""
    if not isinstance(p["desc"], str):
        return f"desc is {type(p['desc']).__name__}, not a string"
    shape = p["input_shape"]
    if not (
        isinstance(shape, (list, tuple))
        and len(shape) == 3
        and all(_is_int(v) and v > 0 for v in shape)
    ):
        return f"input_shape is {str(shape)[:60]}, not three positive integers"
    classes = p["classes"]
    if classes is not None and not (_is_int(classes) and classes > 0):
        return f"classes is {str(classes)[:60]}, not a positive integer"
    names = p["class_names"]
    if names is not None:
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            return f"class_names is {str(names)[:60]}, not a list of strings"
        if len(names) != classes:
            return f"{len(names)} class_names for {classes} classes"
    options = p["options"]
    if options is not None:
        if not isinstance(options, dict):
            return f"options is {str(options)[:60]}, not a dictionary"
        unknown = [k for k in options if k not in _OPTIONS]
        if unknown:
            return f"unknown option {str(unknown[0])[:40]!r} in options"
    state = p["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        return "state_dict is not a dictionary of named tensors"
    if p["train_state"] is not None and not isinstance(p["train_state"], dict):
        return "train_state is neither empty nor a dictionary"
    return None


def model_from_payload(payload: dict, path="model file"):
    options = payload["options"] or {}
    try:
        model = compile(
            payload["desc"], tuple(payload["input_shape"]), payload["classes"], **options
        )
    except DenetError as err:
        raise ModelFileError(
            f"{path}: its description does not compile: {str(err).splitlines()[0]}"
        ) from None
    mismatch = _weight_mismatch(model.state_dict(), payload["state_dict"])
    if mismatch:
        raise ModelFileError(f"{path}: weights do not match the description: {mismatch}")
    model.load_state_dict(payload["state_dict"], strict=True)
    model.class_names = payload["class_names"]
    model.train_state = payload["train_state"]
    return model


def _weight_mismatch(want: dict, have: dict, shown: int = 3) -> str:
    """The first few missing, unexpected and wrongly shaped keys; empty when all fit."""
    parts = []
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    shapes = [
        f"{k} {tuple(have[k].shape)} (wants {tuple(want[k].shape)})"
        for k in want
        if k in have and have[k].shape != want[k].shape
    ]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
            parts.append(f"{label} {', '.join(keys[:shown])}{more}")
    return "; ".join(parts)


def load(path, map_location="cpu"):
    """Read a model file written by :func:`save`; never runs code from the file."""
    payload = read_payload(path, map_location)
    model = model_from_payload(payload, os.fspath(path))
    if (
        map_location is not None
        and not callable(map_location)
        and not isinstance(map_location, dict)
    ):
        model.to(map_location)
    return model
