"""Every Triton kernel compiles for an H100 (sm_90) in every dtype, on a machine without a GPU:
the interpreter the other tests use never compiles, so this is where a kernel that only the real
compiler rejects would show. ``cuda_compile.py`` does the work in a fresh process."""

import ast
import glob
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join(HERE, "..", "..", "denet", "kernels")


def launched_kernels():
    """``<op>.<name>`` of every ``@triton.jit`` function that a launcher calls as ``name[grid]``."""
    names = set()
    for path in glob.glob(os.path.join(KERNELS, "*", "triton.py")):
        tree = ast.parse(open(path, encoding="utf-8").read())
        op = os.path.basename(os.path.dirname(path))
        jitted = {
            f.name
            for f in tree.body
            if isinstance(f, ast.FunctionDef)
            and any("jit" in ast.unparse(d) for d in f.decorator_list)
        }
        launched = {
            n.value.id
            for n in ast.walk(tree)
            if isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name)
        }
        names |= {f"{op}.{name}" for name in jitted & launched}
    return names


@pytest.mark.slow  # minutes: compiles all 18 kernels in four dtypes with ptxas
@pytest.mark.timeout(900)
def test_every_kernel_compiles_for_sm90():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run(
        [sys.executable, os.path.join(HERE, "cuda_compile.py"), "--arch", "90"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert res.stdout, res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert report["errors"] == [], "\n".join(report["errors"])
    expected = launched_kernels()
    assert len(expected) >= 18
    for dtype, names in report["compiled"].items():
        assert set(names) == expected, (dtype, expected ^ set(names))
    assert res.returncode == 0, res.stderr[-3000:]
