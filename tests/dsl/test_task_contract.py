"""The task contract: model(images, targets=None), named losses in training, outputs by task."""

import pytest
import torch
import torch.nn.functional as F

import denet
from denet import DenetError, DescError

CLS = "C[8,3] BN A P[2] C[16,3] BN A P.A R.B"


def labels(*ks):
    return [{"label": k} for k in ks]


def test_classifier_losses_outputs_and_graphs():
    torch.manual_seed(0)
    m = denet.compile(CLS, (1, 8, 8), 10, border_mode="half")
    assert m.task == "classification" and m.loss_names == ("loss_cls", "top1")
    x = torch.randn(4, 1, 8, 8)
    m.train()
    logp = m(x)  # training mode, no targets: log-probabilities, as before the contract
    bn_free = {k: v.clone() for k, v in m.state_dict().items()}
    out = m(x, labels(1, 2, 3, 4))
    assert set(out) == {"loss_cls", "top1"}
    target = torch.tensor([1, 2, 3, 4])
    assert torch.allclose(out["loss_cls"], F.nll_loss(logp, target), atol=1e-6)
    assert out["top1"].item() == (logp.argmax(1) == target).float().mean().item()
    out["loss_cls"].backward()
    assert m.l0_C.weight.grad is not None
    m.load_state_dict(bn_free)
    m.eval()
    probs = m(x, labels(1, 2, 3, 4))  # evaluation ignores targets
    assert probs.shape == (4, 10)
    assert torch.allclose(probs.sum(1), torch.ones(4))
    assert "targets" in m.training_graph_module.code
    assert "targets" not in m.graph_module.code


def test_a_string_without_a_head_returns_its_tensor_and_cannot_train():
    m = denet.compile("C[4,3] BN A", (1, 8, 8), border_mode="half").train()
    assert m.task is None and m.loss_names == () and m.training_graph_module is None
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 4, 8, 8)
    with pytest.raises(DenetError, match="adds no losses"):
        m(torch.randn(2, 1, 8, 8), labels(0, 1))


def test_named_outputs_come_back_as_a_dict_with_out_first():
    m = denet.compile(
        "C[4,3] @a OUT[feat] C[3,1] PI[2] SEG OUT[last] $a C[3,1] SEG[name=aux]",
        (1, 8, 8),
        3,
        border_mode="half",
    ).eval()
    y = m(torch.randn(2, 1, 8, 8))
    assert list(y) == ["out", "feat", "last", "aux"]
    assert y["out"].shape == (2, 3, 16, 16) and y["feat"].shape == (2, 4, 8, 8)
    assert torch.equal(y["out"], y["last"])
    assert m.task == "segmentation" and m.loss_names == ("loss_seg", "loss_seg_aux")


def test_the_end_of_the_string_is_out_unless_a_layer_takes_the_name():
    m = denet.compile("C[4,3] OUT[mid] C[2,1]", (1, 8, 8), border_mode="half").eval()
    y = m(torch.randn(1, 1, 8, 8))
    assert list(y) == ["out", "mid"] and y["out"].shape == (1, 2, 8, 8)


def test_the_training_graph_adds_every_loss_of_every_branch():
    m = denet.compile(
        "C[3,3] @a SEG $a C[8,3] C[3,1] SEG[name=aux]", (1, 8, 8), 3, border_mode="half"
    ).train()
    out = m(torch.randn(1, 1, 8, 8), [{"mask": torch.zeros(8, 8, dtype=torch.long)}])
    assert list(out) == ["loss_seg", "loss_seg_aux"]
    assert list(m.eval()(torch.randn(1, 1, 8, 8))) == ["out", "aux"]


@pytest.mark.parametrize(
    "desc, message",
    [
        ("C[3,3] @a P.A R $a P[2] R", "R: loss_cls is already added by R"),
        ("C[3,3] SEG P.A R", "R: a classification head in a segmentation model"),
        (
            "C[3,3] SEG SPLIT C[3,1]",
            "SEG: it reads the targets, so it must come after the last split",
        ),
        ("C[4,3] SEG", "SEG: SEG takes one logit per class: 3 channels, not 4"),
    ],
)
def test_contract_errors_are_desc_errors(desc, message):
    with pytest.raises(DescError) as err:
        denet.compile(desc, (1, 8, 8), 3, border_mode="half")
    assert str(err.value).startswith(message), str(err.value)


def test_segmentation_loss_is_cross_entropy_with_ignore_and_nearest_resized_masks():
    torch.manual_seed(0)
    m = denet.compile("C[3,3] SEG", (1, 8, 8), 3, border_mode="half").train()
    x = torch.randn(2, 1, 8, 8)
    masks = [torch.randint(0, 3, (8, 8)), torch.randint(0, 3, (6, 7))]
    masks[0][0, :4] = 255
    logits = m.l0_C(x)
    out = m(x, [{"mask": masks[0]}, {"mask": masks[1]}])
    padded = torch.full((2, 8, 8), 255)
    padded[0], padded[1, :6, :7] = masks[0], masks[1]
    assert torch.allclose(out["loss_seg"], F.cross_entropy(logits, padded, ignore_index=255))
    # masks twice the logits' size: nearest resizing keeps pixel (2i, 2j)
    big = torch.randint(0, 3, (16, 16))
    out = m(x[:1], [{"mask": big}])
    assert torch.allclose(out["loss_seg"], F.cross_entropy(logits[:1], big[None, ::2, ::2]))
    # every pixel ignored: a zero loss that still backpropagates
    out = m(x[:1], [{"mask": torch.full((8, 8), 255)}])
    assert out["loss_seg"].item() == 0.0
    out["loss_seg"].backward()
