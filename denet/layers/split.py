"""``SPLIT``: DeNet's split point for "multiple executions" training, in PyTorch form.

In training mode (with gradients on), the segment of the network between the previous split
point (or the input) and this one runs under ``torch.utils.checkpoint`` (``use_reentrant=False``):
its activations are not kept but recomputed in the backward pass, so peak memory is about one
segment, as in DeNet. Evaluation is unchanged. ``SKIPSRC.X`` is a split point as well.
"""

from __future__ import annotations

from .registry import Call, LayerDef


class Split(LayerDef):
    type = "SPLIT"
    denet_name = "split"
    doc = (
        "Split point: the segment before it is activation-checkpointed in training "
        "(top level only)."
    )

    def split_point(self, call: Call) -> bool:
        return True
