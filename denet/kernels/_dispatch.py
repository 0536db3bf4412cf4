"""Which implementation of an operator runs: Triton or the torch reference.

CUDA tensors use Triton, every other tensor uses the vectorised torch reference.
``DENET_KERNEL_BACKEND=triton|reference`` forces one. With ``TRITON_INTERPRET=1`` (set before
Triton is imported) the Triton kernels also run on CPU tensors: that is how CI tests them.
The variable is read at every call so tests can switch it with ``monkeypatch.setenv``.
"""

import importlib
import os
from types import ModuleType

import torch

BACKENDS = ("triton", "reference")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend_for(*tensors: torch.Tensor) -> str:
    forced = os.environ.get("DENET_KERNEL_BACKEND", "").strip().lower()
    if forced and forced not in BACKENDS:
        raise ValueError(f"DENET_KERNEL_BACKEND must be one of {BACKENDS}, got {forced!r}")
    on_cuda = any(t.is_cuda for t in tensors if isinstance(t, torch.Tensor))
    if forced == "reference":
        return "reference"
    if forced == "triton":
        if not on_cuda and not interpreting():
            raise RuntimeError(
                "DENET_KERNEL_BACKEND=triton on CPU tensors needs TRITON_INTERPRET=1 "
                "(set before Triton is first imported)"
            )
        return "triton"
    return "triton" if on_cuda else "reference"


def implementation(package: str, *tensors: torch.Tensor) -> ModuleType:
    """The module that computes an operator for these tensors: ``<package>.triton`` or
    ``<package>.reference``, as :func:`backend_for` decides. Imported on first use, so the
    reference path never imports Triton."""
    return importlib.import_module(f"{package}.{backend_for(*tensors)}")
