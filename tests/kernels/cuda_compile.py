"""Compile every Triton kernel for a CUDA GPU on a machine without one.

Triton's interpreter (``TRITON_INTERPRET=1``, how the rest of the suite runs the kernels) does not
compile anything: it accepts code the real compiler rejects (types, layouts, ``tl.dot`` shapes and
precisions) and the launchers take their GPU-only branches (TF32x3 products, GPU tile sizes) only
outside it. This script drives each operator's Triton path through its public API, forward and
backward, with a stand-in driver that reports a CUDA target, so that every launch compiles the
kernel to PTX and a cubin (Triton ships ``ptxas``) and then returns without running it.

    python tests/kernels/cuda_compile.py [--arch 90] [--dtypes float32,float16,bfloat16,float64]

Prints one JSON object: ``{"target": ..., "compiled": {dtype: [kernel names]}, "errors": [...]}``.
The outputs of the operators are meaningless here (nothing runs); only compilation is checked.
Must start without ``TRITON_INTERPRET`` set: Triton reads it when the kernels are decorated.
"""

import argparse
import importlib
import importlib.util
import json
import os
import pkgutil
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


class CompileOnlyDriver:
    """What ``JITFunction.run`` asks of a driver, answered for a fixed CUDA target."""

    def __init__(self, target):
        self.target = target

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def is_active(self):
        return True


def install(arch: int, compiled: list) -> None:
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)  # compile, do not launch
        if kernel is not None and "cubin" in kernel.asm:
            compiled.append(
                f"{self.fn.__module__.split('.')[-2]}.{self.fn.__name__}"
            )  # <op>.<kernel>
        return None

    JITFunction.run = compile_only
    driver.set_active(CompileOnlyDriver(GPUTarget("cuda", arch, 32)))


def exercise(dtype):
    """Forward and backward of every operator on tiny inputs (CPU tensors: nothing runs)."""
    import torch

    import denet.kernels as K

    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(dtype).requires_grad_()

    def grad_of(out, *leaves):
        torch.autograd.grad(out, leaves, torch.ones_like(out), allow_unused=True)

    rois = torch.tensor([[0, 1.0, 1.0, 9.0, 7.0], [1, 0.0, 2.0, 5.0, 11.0]]).to(dtype)
    x = rand(2, 8, 12, 10)
    for aligned in (False, True):
        grad_of(K.roi_align(x, rois, 3, 0.5, -1, aligned), x)
    grad_of(K.roi_pool(x, rois, 3, 0.5), x)
    xp = rand(2, 18, 12, 10)  # 2 classes x 3x3 bins
    grad_of(K.ps_roi_align(xp, rois, 3, 0.5, 2), xp)
    grad_of(K.ps_roi_pool(xp, rois, 3, 0.5), xp)
    off = rand(2, 2 * 2, 3, 3)
    grad_of(K.deform_roi_pool(xp, rois, off, 3, 0.5, 3, 3, 2, 0.1), xp, off)
    grad_of(K.deform_roi_pool(x, rois, None, 3, 0.5, 1, 3, 2, 0.0), x)
    for cin, cout, groups, og in ((8, 16, 1, 1), (32, 64, 1, 2), (64, 64, 2, 1)):
        xi = rand(2, cin, 9, 11)
        w = rand(cout, cin // groups, 3, 3)
        b = rand(cout)
        o = rand(2, 2 * og * 9, 9, 11)
        m = rand(2, og * 9, 9, 11)
        for boundary in ("v2", "v1"):
            grad_of(
                K.deform_conv2d(xi, o, w, b, padding=1, mask=m, boundary=boundary), xi, o, w, b, m
            )
        grad_of(K.deform_conv2d(xi, o, w, None, padding=1), xi, o, w)
    feats = rand(2, 6, 9, 7)
    boxes = torch.rand(2, 5, 4, generator=g).to(dtype)
    for mode in ("nearest", "bilinear"):
        grad_of(K.sparse_sample(feats, boxes, 3, mode), feats)
    xi = rand(2, 3, 4, 5)
    grad_of(K.pool_inv(xi, (2, 3)), xi)
    b4 = torch.cat([boxes[0, :, :2] * 50, boxes[0, :, :2] * 50 + 20], dim=1).detach()
    scores = torch.rand(5, generator=g).to(dtype)
    K.nms(b4, scores, 0.5)
    K.denet_nms(b4, scores, 0.5)
    K.soft_nms(b4, scores)
    K.soft_nms(b4, scores, method="linear")
    K.box_iou(b4, b4)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--arch", type=int, default=90, help="compute capability x10 (default 90: H100/H200)"
    )
    ap.add_argument("--dtypes", default="float32,float16,bfloat16,float64")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        sys.exit(
            "cuda_compile.py: unset TRITON_INTERPRET: the kernels must be compiled, not interpreted"
        )
    os.environ["DENET_KERNEL_BACKEND"] = "triton"
    compiled = []
    install(args.arch, compiled)
    import torch

    import denet.kernels
    from denet.kernels import _dispatch

    # Every Triton module binds the real ``interpreting`` before it is patched below. An
    # operator without one (denet_rois: pure torch on every device) has nothing to compile.
    triton_modules = {
        info.name: importlib.import_module(f"denet.kernels.{info.name}.triton")
        for info in pkgutil.iter_modules(denet.kernels.__path__)
        if info.ispkg and importlib.util.find_spec(f"denet.kernels.{info.name}.triton") is not None
    }
    dcn_triton = triton_modules["deform_conv2d"]
    # CPU tensors may take the Triton path (the launches compile and return) ...
    _dispatch.interpreting = lambda: True
    # ... while the launchers keep their GPU branches, sized for an H100's 132 SMs.
    dcn_triton._num_sms = lambda device: 132
    report = {"target": f"cuda sm_{args.arch}", "compiled": {}, "errors": []}
    for name in args.dtypes.split(","):
        compiled.clear()
        try:
            exercise(getattr(torch, name))
        except Exception as exc:  # noqa: BLE001  (reported, the next dtype still runs)
            report["errors"].append(
                f"{name}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}"
            )
        report["compiled"][name] = sorted(set(compiled))
    print(json.dumps(report, indent=1))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
