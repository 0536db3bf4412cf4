"""Model files: ``{"format_version", "desc", "input_shape", "classes", "class_names", "options",
"state_dict", "train_state"}`` written with ``torch.save`` and read with
``torch.load(weights_only=True)``; the module is rebuilt from ``desc``. Opening a model file can
never run code: a file holding any other pickled object is refused.
"""

from __future__ import annotations

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
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    return payload


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
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        raise ModelFileError(
            f"{path}: weights do not match the description ({str(err).splitlines()[0][:160]})"
        ) from None
    model.class_names = payload["class_names"]
    model.train_state = payload["train_state"]
    return model


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
