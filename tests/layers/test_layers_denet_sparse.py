"""DNS, DeNet's sparse sampling layer: the RoIs of denet_rois, the features of sparse_sample,
and DeNet's training RoI set (denet-original.md 3.2-3.3)."""

import pytest
import torch

import denet
from denet.kernels import denet_rois, sparse_sample

DESC = "C[8,3] DNC[4] DNS[3,4,0.01,0.25] C[6,1] BNA"


def model(tags=""):
    torch.manual_seed(0)
    m = denet.compile(DESC.replace("DNS[", f"DNS{tags}["), (3, 16, 16), border_mode="half")
    with torch.no_grad():  # corners that pass the threshold somewhere
        m.l1_DNC.conv.weight.normal_(std=2.0)
        m.l1_DNC.conv.bias.zero_()
    return m


def test_inference_reads_the_corners_and_samples_the_features():
    m = model().eval()
    x = torch.randn(2, 3, 16, 16)
    f = m.l0_C(x)
    _, sides = m.l1_DNC(f, images=x)
    boxes, _, counts = denet_rois(sides["DNC.corners"], 4, 0.01)
    assert counts.max() > 0
    want = sparse_sample(sides["DNC.sample"], boxes, 3).reshape(2, 3 * 3 * 4 + 2, 4, 4)
    out, dns_sides = m.l2_DNS(f, sides["DNC.corners"], sides["DNC.sample"], images=x)
    torch.testing.assert_close(out, want)
    assert torch.equal(dns_sides["DNS.rois"], boxes)
    assert torch.equal(dns_sides["DNS.counts"], counts)
    assert m.graph.node("l2_DNS").shape.channels == 38
    assert m(x).shape == (2, 6, 4, 4)


@pytest.mark.parametrize("tags, inserted", [("", True), (".G", False)])
def test_training_rois_are_a_subset_random_boxes_and_the_ground_truth(tags, inserted):
    m = model(tags)
    x = torch.randn(1, 3, 16, 16)
    f = m.l0_C(x)
    _, sides = m.l1_DNC(f, images=x)
    found, _, counts = denet_rois(sides["DNC.corners"], 4, 0.01)
    gt = torch.tensor([[0.0, 0.0, 8.0, 4.0], [4.0, 4.0, 16.0, 16.0]])
    torch.manual_seed(5)
    _, dns = m.l2_DNS(
        f, sides["DNC.corners"], sides["DNC.sample"], images=x, targets=[{"boxes": gt}]
    )
    rois = dns["DNS.rois"][0]
    assert rois.shape == (16, 4) and int(dns["DNS.counts"][0]) == 16
    assert torch.all(rois[:, 2] >= rois[:, 0]) and torch.all(rois[:, 3] >= rois[:, 1])
    assert torch.all((rois >= 0) & (rois <= 1))
    if inserted:
        torch.testing.assert_close(rois[-2:], gt / 16)
    # first at most n = 16 - floor(0.25 * 16) = 12 of denet_rois's boxes, then random ones
    real = found[0, : int(counts[0])]
    assert len(real) > 0
    n = min(12, len(real))
    assert all(bool((r == real).all(1).any()) for r in rois[:n])
    assert not any(bool((r == real).all(1).any()) for r in rois[n : 16 - 2 * inserted])


def test_dns_needs_a_dnc():
    with pytest.raises(denet.DescError, match="DNS reads the corners of a DNC layer"):
        denet.compile("C[8,3] DNS[3,4]", (3, 16, 16), border_mode="half")


def test_the_training_graph_threads_targets_through_dnc_and_dns():
    m = model().train()
    x = torch.randn(2, 3, 16, 16)
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]])}, {"boxes": torch.zeros(0, 4)}]
    losses = m(x, targets)
    assert list(losses) == ["loss_corner"]
    losses["loss_corner"].backward()
    assert m.l0_C.weight.grad.abs().sum() > 0
    # nothing after DNS adds a loss here, so the training graph leaves it out; a loss after it
    # (a per-RoI SEG stands in for DND) gets the targets through DNS
    assert "l2_DNS" not in m.training_graph_module.code
    m = denet.compile("C[8,3] DNC[4] DNS[3,4] C[2,1] SEG", (3, 16, 16), 2, border_mode="half")
    for t in targets:
        t["mask"] = torch.zeros(4, 4, dtype=torch.long)
    losses = m.train()(x, targets)
    assert list(losses) == ["loss_corner", "loss_seg"]
    code = m.training_graph_module.code
    assert "self.l2_DNS(" in code and "images = images, targets = targets" in code
