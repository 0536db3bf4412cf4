"""The ``device`` fixture of the operator tests: every test that takes it runs once per backend
and device, the torch reference and Triton (interpreted on CPU tensors, compiled on CUDA),
with ``DENET_KERNEL_BACKEND`` forcing the backend."""
import pytest
import torch

from denet.kernels._dispatch import interpreting

CASES = [("reference", "cpu"), ("triton", "cpu"), ("reference", "cuda"), ("triton", "cuda")]


@pytest.fixture(params=CASES, ids=[f"{b}-{d}" for b, d in CASES])
def device(request, monkeypatch):
    backend, dev = request.param
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if dev == "cpu" and backend == "triton" and not interpreting():
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    monkeypatch.setenv("DENET_KERNEL_BACKEND", backend)
    return dev
