"""bin/ wrappers started by an interpreter without torch: they re-run with the checkout's .venv,
or, where there is none, say so in one line with exit status 2."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = ["model-train", "model-predict", "model-modify", "model-convert", "dataset-show"]
# -S: no site-packages, so this interpreter cannot import torch, like a fresh shell's python3
BARE = [getattr(sys, "_base_executable", sys.executable), "-S"]


def run(path, *args):
    return subprocess.run([*BARE, path, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(
    not os.path.exists(os.path.join(ROOT, ".venv", "bin", "python")),
    reason="the checkout has no .venv",
)
@pytest.mark.parametrize("tool", TOOLS)
def test_rerun_with_the_checkout_venv(tool):
    res = run(os.path.join(ROOT, "bin", tool), "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage:") and tool in res.stdout.splitlines()[0]


def test_no_torch_and_no_venv_is_one_line(tmp_path):
    shutil.copytree(os.path.join(ROOT, "bin"), tmp_path / "bin")
    res = run(str(tmp_path / "bin" / "model-train"), "--help")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("model-train: error: PyTorch is not installed")
    assert len(res.stderr.strip().splitlines()) == 1
