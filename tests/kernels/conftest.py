"""The ``device`` fixture of the operator tests: every test that takes it runs once per backend
and device, the torch reference and Triton (interpreted on CPU tensors, compiled on CUDA),
with ``DENET_KERNEL_BACKEND`` forcing the backend. The CUDA cases carry the ``cuda`` marker, so
``pytest -m "not cuda"`` deselects them instead of skipping them."""

import pytest
import torch

from denet.kernels._dispatch import interpreting

CASES = [("reference", "cpu"), ("triton", "cpu"), ("reference", "cuda"), ("triton", "cuda")]
PARAMS = [
    pytest.param((b, d), id=f"{b}-{d}", marks=[pytest.mark.cuda] if d == "cuda" else [])
    for b, d in CASES
]


@pytest.fixture(params=PARAMS)
def device(request, monkeypatch):
    backend, dev = request.param
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if dev == "cpu" and backend == "triton" and not interpreting():
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    monkeypatch.setenv("DENET_KERNEL_BACKEND", backend)
    return dev
