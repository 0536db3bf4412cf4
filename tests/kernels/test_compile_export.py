"""A small detection head using deform_conv2d and roi_align together: torch.compile with
fullgraph=True (the default Inductor backend) and torch.export give the eager outputs and
gradients, with the number of boxes left dynamic."""

import torch
from torch import nn

from denet.kernels import DeformConv2d, RoIAlign


class DeformableRoIHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.offset = nn.Conv2d(4, 3 * 3 * 3, 3, padding=1)
        self.dcn = DeformConv2d(4, 8, 3, padding=1)
        self.pool = RoIAlign(4, spatial_scale=0.5, sampling_ratio=2, aligned=True)
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x, rois):
        o = self.offset(x)
        feat = self.dcn(x, o[:, :18], torch.sigmoid(o[:, 18:])).relu()
        return self.fc(self.pool(feat, rois).flatten(1))


def _inputs(k):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(2, 4, 12, 10, generator=g)
    xy = torch.rand(k, 2, generator=g) * 16
    rois = torch.cat(
        [
            torch.randint(0, 2, (k, 1), generator=g).float(),
            xy,
            xy + torch.rand(k, 2, generator=g) * 10 + 1,
        ],
        dim=1,
    )
    return x, rois


def test_compile_fullgraph_inductor(monkeypatch):
    monkeypatch.setenv("DENET_KERNEL_BACKEND", "reference")
    torch.manual_seed(0)
    head = DeformableRoIHead()
    compiled = torch.compile(head, fullgraph=True)
    for k in (5, 9):  # a second box count: a recompile or a dynamic shape, never a graph break
        x, rois = _inputs(k)
        eager = head(x, rois)
        out = compiled(x, rois)
        torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
        grads = torch.autograd.grad(out.sum(), [head.dcn.weight, head.offset.weight])
        expected = torch.autograd.grad(eager.sum(), [head.dcn.weight, head.offset.weight])
        for a, b in zip(grads, expected):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_export_with_dynamic_box_count(monkeypatch):
    monkeypatch.setenv("DENET_KERNEL_BACKEND", "reference")
    torch.manual_seed(1)
    head = DeformableRoIHead().eval()
    x, rois = _inputs(6)
    k = torch.export.Dim("k", min=1)
    program = torch.export.export(head, (x, rois), dynamic_shapes=({}, {0: k}))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "denet.roi_align.default" in ops and "denet.deform_conv2d.default" in ops
    x, rois = _inputs(11)
    torch.testing.assert_close(program.module()(x, rois), head(x, rois))
