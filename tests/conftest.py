"""Test-wide set-up. Runs before any test module imports torch or triton."""

import os
import shutil

# Without a GPU, Triton kernels run in the interpreter on CPU tensors. The switch is read when a
# kernel is decorated, so it must be set before denet.kernels (and triton) is first imported.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (`make test` runs one worker per core) each worker computes on one thread:
# two workers with two OpenMP threads each on two cores stall each other's parallel regions.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
