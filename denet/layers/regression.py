"""``R``: the classifier head. A ``valid`` convolution with ``classes`` filters of k x k (k
defaults to the whole input, i.e. a fully connected layer), then softmax.

Output, shape [B, classes]:

* evaluation: class probabilities. With ``.C`` only the centre position is used; otherwise, if the
  conv output has several positions, the mean over positions of the per-position softmax.
* training: log-probabilities. With several positions this is the mean over positions of the
  per-position log-softmax, so the negative log-likelihood of the label equals DeNet's cost (the
  mean per-position negative log-likelihood).
* training with targets: also ``loss_cls`` (that negative log-likelihood, averaged over the
  batch, read from each target's ``label``) and the statistic ``top1`` (fraction of the batch
  whose most probable class is the label).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .init import init_conv
from .registry import Arg, Call, LayerDef
from .shape import ShapeSpec


class Regression(nn.Conv2d):
    """Classifier conv + softmax (state-dict keys ``weight`` and ``bias`` of the conv)."""

    def __init__(self, cin: int, classes: int, k: tuple[int, int], bias: bool, center: bool):
        super().__init__(cin, classes, k, bias=bias)
        self.center = center

    def forward(self, x, targets=None):
        if targets is not None:
            logp = self.log_probs(x)
            labels = torch.as_tensor([int(t["label"]) for t in targets], device=logp.device)
            nll = F.nll_loss(logp, labels)
            top1 = (logp.detach().argmax(1) == labels).double().mean()
            return logp, {"loss_cls": nll, "top1": top1}
        return self.log_probs(x) if self.training else self.probs(x)

    def _logits(self, x):
        y = super().forward(x)
        if self.center:
            y = y[:, :, y.shape[2] // 2, y.shape[3] // 2]
        elif y.shape[2] == 1 and y.shape[3] == 1:
            y = y.flatten(1)
        return y

    def log_probs(self, x):
        y = torch.log_softmax(self._logits(x), dim=1)
        return y.mean(dim=(2, 3)) if y.dim() == 4 else y

    def probs(self, x):
        y = torch.softmax(self._logits(x), dim=1)
        return y.mean(dim=(2, 3)) if y.dim() == 4 else y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", center={self.center}"


class RegressionDef(LayerDef):
    type = "R"
    denet_name = "regression"
    doc = (
        "Classifier head: valid k x k conv to `classes` channels (k = input size by "
        "default) and softmax. Evaluation: probabilities [B, classes]; training: "
        "log-probabilities; with targets: adds `loss_cls` (NLL of `label`) and `top1`. With "
        "several positions: the mean over positions of the per-position (log-)softmax, so "
        "the loss is DeNet's mean per-position cost."
    )
    task = "classification"
    tags = {
        "B": "add a bias to the classifier conv",
        "C": "classify from the centre position only",
        "T": "accepted for DeNet strings; as in DeNet's code it changes nothing (DeNet "
        "computed an init for it that was never used)",
    }
    args = (Arg("size", "int", None, min=1, doc="kernel size (default: the whole input)"),)
    has_params = True

    def losses(self, call: Call):
        return ("loss_cls", "top1")

    def shape(self, call: Call) -> ShapeSpec:
        i = call.input
        if call.classes is None:
            call.fail("R needs the number of classes: compile with classes=N")
        k = call.args["size"]
        kh, kw = (i.h, i.w) if k is None else (k, k)
        if kh > i.h or kw > i.w:
            call.fail(f"a {kh}x{kw} classifier does not fit the {i.h}x{i.w} input", "size")
        return ShapeSpec(call.classes, None, None, i.stride)

    def params(self, call: Call) -> int:
        i, k = call.input, call.args["size"]
        kh, kw = (i.h, i.w) if k is None else (k, k)
        classes = call.classes or 0
        return i.channels * classes * kh * kw + classes * call.has("B")

    def build(self, call: Call):
        i, k = call.input, call.args["size"]
        kk = (i.h, i.w) if k is None else (k, k)
        assert call.classes is not None  # shape() refused a missing class count
        conv = Regression(i.channels, call.classes, kk, call.has("B"), call.has("C"))
        init_conv(conv, call.init)
        return conv
