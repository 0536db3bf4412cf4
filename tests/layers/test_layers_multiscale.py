"""MSC: one body at several scales with one set of weights, against isht7's MS_Deeplab forward
and DRN's multi-scale log-probability sum written out with torch calls; SEG on its outputs."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import denet
from denet.dsl import canonical

BODY = "C[4,3] A C[3,1]"
DEEPLAB = f"C[4,3] MSC[1,0.75,0.5,align_corners=1,rule=deeplab,raw_below=0.75]({BODY})"


def compile_(desc, shape=(2, 17, 17), classes=3):
    torch.manual_seed(0)
    return denet.compile(desc, shape, classes, border_mode="half")


def body(m):
    """The shared body after a first C: branch 0's modules (l2_C, l4_C)."""
    return lambda t: m.l4_C(F.relu(m.l2_C(t)))


def ms_deeplab(scale, x):
    """isht7's MS_Deeplab.forward (deeplab_resnet.py), transcribed: the input size is read from
    x.size(2) (square inputs), outS is the size of the 1x output."""
    input_size = x.size()[2]
    interp1 = nn.UpsamplingBilinear2d(size=(int(input_size * 0.75) + 1, int(input_size * 0.75) + 1))
    interp2 = nn.UpsamplingBilinear2d(size=(int(input_size * 0.5) + 1, int(input_size * 0.5) + 1))
    out = [scale(x)]
    out_s = out[0].size()[2]
    interp3 = nn.UpsamplingBilinear2d(size=(out_s, out_s))
    x2 = interp1(x)
    x3 = interp2(x)
    out.append(interp3(scale(x2)))
    out.append(scale(x3))
    x2_out_interp = out[1]
    x3_out_interp = interp3(out[2])
    temp1 = torch.max(out[0], x2_out_interp)
    out.append(torch.max(temp1, x3_out_interp))
    return out


@pytest.mark.parametrize("size", [17, 21])
def test_msc_is_deeplab_v2_ms_deeplab(size):
    m = compile_(DEEPLAB, (2, size, size)).eval()
    x = torch.randn(2, 2, size, size)
    y = m(x)
    want = ms_deeplab(body(m), m.l0_C(x))
    assert list(y) == ["out", "ms0", "ms1", "ms2"]
    for got, w in zip([y["ms0"], y["ms1"], y["ms2"], y["out"]], want):
        assert got.shape == w.shape
        torch.testing.assert_close(got, w, atol=1e-6, rtol=1e-6)
    half = int(size * 0.5) + 1
    assert y["ms2"].shape[2:] == (half, half)
    # the resolver's shapes are the forward's
    shapes = {n.output_name: n.shape for n in m.graph.nodes if n.output_name}
    for name in ("ms0", "ms1", "ms2"):
        assert tuple(y[name].shape[1:]) == (shapes[name].channels, shapes[name].h, shapes[name].w)
    assert tuple(y["out"].shape[1:]) == (3, size, size)


def test_msc_holds_the_body_once_and_every_scale_trains_it():
    m = compile_(DEEPLAB).eval()
    assert list(m.state_dict()) == ["l0_C.weight", "l2_C.weight", "l4_C.weight"]
    x = torch.randn(1, 2, 17, 17)
    grads = []
    for name in ("ms0", "ms1", "ms2"):
        m.zero_grad()
        m(x)[name].sum().backward()
        grads.append(m.l2_C.weight.grad.clone())
        assert grads[-1].abs().sum() > 0
    m.zero_grad()
    y = m(x)
    (y["ms0"].sum() + y["ms1"].sum() + y["ms2"].sum()).backward()
    torch.testing.assert_close(m.l2_C.weight.grad, sum(grads), atol=1e-5, rtol=1e-5)


def drn_multiscale(net, x, scales, align):
    """DRN's segment.py test_ms, with torch resizing: every scale's log-probabilities resized
    to the first scale's output and summed."""
    outs = []
    for s in scales:
        xs = x if s == 1 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=align)
        outs.append(F.log_softmax(net(xs), 1))
    size = outs[0].shape[2:]
    return sum(
        F.interpolate(o, size=size, mode="bilinear", align_corners=align)
        if o.shape[2:] != size
        else o
        for o in outs
    )


@pytest.mark.parametrize("align", [0, 1])
def test_msc_logsum_is_drn_multiscale_test(align):
    scales = [1, 0.5, 0.75, 1.25, 1.5, 1.75]
    desc = f"C[4,3] MSC[{','.join(map(str, scales))},fuse=logsum,align_corners={align}]({BODY})"
    m = compile_(desc, (2, 12, 10)).eval()
    x = torch.randn(2, 2, 12, 10)
    y = m(x)
    want = drn_multiscale(body(m), m.l0_C(x), scales, bool(align))
    torch.testing.assert_close(y["out"], want, atol=1e-5, rtol=1e-5)
    assert list(y) == ["out"] + [f"ms{k}" for k in range(6)]
    # kept outputs are the logits, resized to the first branch's size
    net = body(m)
    xs = F.interpolate(m.l0_C(x), scale_factor=0.75, mode="bilinear", align_corners=bool(align))
    small = net(xs)
    assert y["ms2"].shape == (2, 3, 12, 10) and small.shape == (2, 3, 9, 7)
    torch.testing.assert_close(
        y["ms2"], F.interpolate(small, size=(12, 10), mode="bilinear", align_corners=bool(align))
    )


def test_msc_mean_and_raw_outputs():
    m = compile_(f"MSC[1,0.5,fuse=mean,raw_below=10]({BODY})", (2, 8, 12)).eval()
    x = torch.randn(1, 2, 8, 12)
    y = m(x)
    net = lambda t: m.l3_C(F.relu(m.l1_C(t)))  # noqa: E731
    big, small = net(x), net(F.interpolate(x, scale_factor=0.5, mode="bilinear"))
    assert torch.equal(y["ms0"], big) and torch.equal(y["ms1"], small)  # raw, 4x6
    torch.testing.assert_close(
        y["out"], (big + F.interpolate(small, size=(8, 12), mode="bilinear")) / 2
    )


def test_msc_first_scale_sets_the_output_size_and_the_stride():
    m = compile_(f"C[4,3] P[2] MSC[0.5,1]({BODY})", (2, 16, 16)).eval()
    y = m(torch.randn(1, 2, 16, 16))
    assert y["out"].shape == (1, 3, 4, 4) and y["ms1"].shape == (1, 3, 4, 4)
    assert m.graph.output_shape.stride == 4


def test_seg_on_every_branch_output_is_deeplab_v2_four_losses():
    m = compile_(DEEPLAB + " SEG[branches=1]").train()
    assert m.loss_names == ("loss_seg", "loss_seg_ms0", "loss_seg_ms1", "loss_seg_ms2")
    x = torch.randn(2, 2, 17, 17)
    masks = [torch.randint(0, 3, (17, 17)) for _ in range(2)]
    masks[0][:3] = 255
    losses = m(x, [{"mask": k} for k in masks])
    y = m.eval()(x)
    labels = torch.stack(masks)
    small = F.interpolate(labels[:, None].float(), size=(9, 9), mode="nearest")[:, 0].long()
    for name, logits, lab in [
        ("loss_seg", y["out"], labels),
        ("loss_seg_ms0", y["ms0"], labels),
        ("loss_seg_ms1", y["ms1"], labels),
        ("loss_seg_ms2", y["ms2"], small),
    ]:
        torch.testing.assert_close(losses[name], F.cross_entropy(logits, lab, ignore_index=255))
    assert list(y) == ["out", "ms0", "ms1", "ms2"]


def test_one_seg_on_one_kept_output_takes_its_name():
    m = compile_(f"C[4,3] MSC[1,0.5]({BODY}) SEG $ms1 SEG[name=ms1]").eval()
    assert m.loss_names == ("loss_seg", "loss_seg_ms1")
    y = m(torch.randn(1, 2, 17, 17))
    assert list(y) == ["out", "ms0", "ms1"]
    assert sum(n.output_name == "ms1" for n in m.graph.nodes) == 1


def test_a_tiny_msc_segmentation_network_trains_and_returns_its_named_outputs():
    torch.manual_seed(0)
    desc = "C[8,3] BN A MSC[1,0.75,0.5,align_corners=1,rule=deeplab,raw_below=0.75](C[8,3] A C[2,1]) SEG[branches=1]"
    m = denet.compile(desc, (1, 16, 16), 2, border_mode="half")
    x = torch.randn(4, 1, 16, 16)
    targets = [{"mask": (img[0] > 0).long()} for img in x]  # learnable: the sign of the pixel
    opt = torch.optim.SGD(m.param_groups(0.05, 0.0), lr=0.05, momentum=0.9)
    m.train()
    history = []
    for _ in range(30):
        losses = m(x, targets)
        history.append({k: v.item() for k, v in losses.items()})
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert set(history[0]) == {"loss_seg", "loss_seg_ms0", "loss_seg_ms1", "loss_seg_ms2"}
    for name in history[0]:
        assert history[-1][name] < 0.7 * history[0][name], (name, history[0], history[-1])
    y = m.eval()(x)
    assert list(y) == ["out", "ms0", "ms1", "ms2"]
    assert [tuple(v.shape) for v in y.values()] == [(4, 2, 16, 16)] * 3 + [(4, 2, 9, 9)]
    acc = (y["out"].argmax(1) == torch.stack([t["mask"] for t in targets])).float().mean()
    assert acc > 0.8


def test_msc_canonical_form_round_trips():
    desc = f"C[4,3] MSC[1.0,0.75,scale3=0.5,fuse=max,align_corners=1,name=ms]({BODY}) SEG"
    text = canonical(desc)
    assert text == "C[4,3] MSC[1.0,0.75,0.5,align_corners=1](C[4,3] A C[3]) SEG"
    assert compile_(desc).graph.signature() == compile_(text).graph.signature()


def test_msc_exports_with_a_dynamic_batch():
    m = compile_(DEEPLAB).eval()
    batch = torch.export.Dim("batch", min=1, max=8)
    ep = torch.export.export(m, (torch.randn(2, 2, 17, 17),), dynamic_shapes=({0: batch},))
    x = torch.randn(3, 2, 17, 17)
    got, want = ep.module()(x), m(x)
    assert list(got) == list(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k])


@pytest.mark.parametrize(
    "desc, message, at",
    [
        (f"C[4,3] MSC[1,0]({BODY})", "MSC[1,0](…): a scale must be > 0, not 0", "0]"),
        (f"C[4,3] MSC[1,-0.5]({BODY})", "MSC[1,-0.5](…): a scale must be > 0, not -0.5", "-0.5"),
        ("C[4,3] MSC[1,0.5]", "MSC combines branches", "MSC"),
        ("C[4,3] MSC[1,0.5]()", "MSC[1,0.5](…): MSC needs one body to apply at every scale", "MSC"),
        (
            f"C[4,3] MSC[1,0.5]({BODY} | C[3,1])",
            "MSC[1,0.5](…): MSC needs one body to apply",
            "MSC",
        ),
        (
            f"C[4,3] MSC[1,0.05]({BODY})",
            "MSC[1,0.05](…): scale 0.05 makes the 17x17 input 0x0",
            "0.05",
        ),
        (
            f"C[4,3] MSC[1,scale3=0.5]({BODY})",
            "MSC[1,scale3=0.5](…): scale3 is given but scale2",
            "scale3",
        ),
        (
            f"C[4,3] MSC[1,0.5,fuse=sum]({BODY})",
            "MSC[1,0.5,fuse=sum](…): fuse must be one of max, mean, logsum",
            "fuse",
        ),
        (
            f"C[4,3] MSC[1,0.5]({BODY}) @a MSC[1,0.5]({BODY}) SUM( | $a)",
            "MSC[1,0.5](…): an output or tap named 'ms0' exists already",
            "MSC[1,0.5](C[4,3] A C[3,1]) SUM",
        ),
        (f"C[4,3] MSC[1,0.5](@t {BODY}) $t", "$t refers to no earlier @t", "$t"),
        (
            "C[3,3] SEG[branches=1]",
            "SEG[branches=1]: branches=1 adds the loss to the outputs of an MSC",
            "branches",
        ),
        (
            f"C[4,3] MSC[1,0.5]({BODY}) C[3,1] SEG[branches=1]",
            "SEG[branches=1]: branches=1",
            "branches",
        ),
        (
            "C[4,3] MSC[1,0.5](C[3,3] P[2] BOXES[4])",
            "MSC[1,0.5](…): the body must end in a feature map, not a set of boxes",
            "MSC",
        ),
    ],
)
def test_msc_misuse_is_one_desc_error_with_a_caret(desc, message, at):
    with pytest.raises(denet.DescError) as err:
        denet.compile(desc, (2, 17, 17), 3, border_mode="half")
    first, shown, caret = str(err.value).split("\n")
    assert first.startswith(message), first
    assert caret == "  " + " " * desc.index(at) + "^", str(err.value)


def test_msc_counts_parameters_once_for_the_limits():
    m = compile_(DEEPLAB)
    n = sum(p.numel() for p in m.parameters())
    assert n == 2 * 4 * 9 + 4 * 4 * 9 + 4 * 3 == 228
    with denet.dsl.limit(params=228):
        compile_(DEEPLAB)
    with denet.dsl.limit(params=227), pytest.raises(denet.DescError, match="parameters"):
        compile_(DEEPLAB)
    assert math.isclose(float(m.graph.node("l1_MSC_in1").shape.stride), 4 / 3)


def segmentation_examples():
    """The toy strings of docs/language.md, section Segmentation (its last code block)."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "language.md")
    with open(path, encoding="utf-8") as f:
        section = f.read().split("\n## Segmentation\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```\n")[-2].strip().split("\n")


@pytest.mark.parametrize("desc", segmentation_examples())
def test_the_documented_segmentation_examples_compile_train_and_predict(desc):
    m = compile_(desc, (3, 32, 32), 5)
    x = torch.randn(2, 3, 32, 32)
    losses = m.train()(x, [{"mask": torch.randint(0, 5, (32, 32))} for _ in range(2)])
    sum(losses.values()).backward()
    assert all(k.startswith("loss_seg") for k in losses) and torch.isfinite(sum(losses.values()))
    y = m.eval()(x)
    assert next(iter(y)) == "out" and y["out"].shape == (2, 5, 32, 32)
    assert canonical(m.desc) == m.desc and compile_(m.desc, (3, 32, 32), 5).desc == m.desc
