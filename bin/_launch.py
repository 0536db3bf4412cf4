"""What the bin/ wrappers share: find the checkout's denet and an interpreter that has torch.

Run as ``bin/model-train`` with a python that lacks torch (a fresh shell after ``make demo``),
a wrapper re-runs itself with the checkout's ``.venv`` instead of failing with a traceback."""

import importlib
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv")
VENV_PYTHON = os.path.join(VENV, "bin", "python")


def run(module: str) -> None:
    if importlib.util.find_spec("torch") is None:
        # sys.prefix, not the executable: a venv's python is a symlink to the base interpreter
        if os.path.exists(VENV_PYTHON) and os.path.realpath(sys.prefix) != os.path.realpath(VENV):
            os.execv(VENV_PYTHON, [VENV_PYTHON, *sys.argv])
        tool = os.path.basename(sys.argv[0])
        print(
            f"{tool}: error: PyTorch is not installed for {sys.executable}; run `make venv` in "
            f"{ROOT} or install denet with pip",
            file=sys.stderr,
        )
        sys.exit(2)
    sys.path.insert(0, ROOT)
    sys.exit(importlib.import_module(module).main())
