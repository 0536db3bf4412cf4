"""torchvision's FPN R-CNN detectors onto ``examples/<arch>.desc``.

The string's modules that hold weights, in graph order, are matched to torchvision's module
prefixes in the order below (the example strings are written in that order); inside a module
the keys are torchvision's own (``nRSN`` blocks, ``RPN.head``, ``DET``) up to the renames of
:data:`RENAMES`. A fully connected layer becomes the conv over the 7x7 RoI map it is written as
(its weight reshaped). The state dict must be torchvision's for ``--arch``: an unknown or
missing key, or a shape that does not fit, is an error naming it.
"""

from __future__ import annotations

from ..errors import ModelFileError

RCNN_ARCHS = ("fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn")

_BACKBONE = ["backbone.body.conv1", "backbone.body.bn1"] + [
    f"backbone.body.layer{i}" for i in range(1, 5)
]
_FPN = [f"backbone.fpn.{kind}_blocks.{k}.0" for k in (3, 2, 1, 0) for kind in ("inner", "layer")]
_BOX = ["rpn", "roi_heads.box_head.fc6", "roi_heads.box_head.fc7", "roi_heads.box_predictor"]
_MASK = [f"roi_heads.mask_head.{k}.0" for k in range(4)] + [
    "roi_heads.mask_predictor.conv5_mask",
    "roi_heads.mask_predictor",  # MASK owns mask_fcn_logits
]
_KEYPOINT = [f"roi_heads.keypoint_head.{2 * k}" for k in range(8)] + [
    "roi_heads.keypoint_predictor.kps_score_lowres"
]
PREFIXES = {
    "fasterrcnn_resnet50_fpn": _BACKBONE + _FPN + _BOX,
    "maskrcnn_resnet50_fpn": _BACKBONE + _FPN + _BOX + _MASK,
    "keypointrcnn_resnet50_fpn": _BACKBONE + _FPN + _BOX + _KEYPOINT,
}
RENAMES = {
    "head.conv.0.0.": "head.conv."
}  # torchvision's RPN head wraps its conv in two Sequentials
CLASSIFIER = "roi_heads.box_predictor.cls_score.weight"


def _rest(key: str) -> str:
    for old, new in RENAMES.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def _torchvision_name(key: str, nodes: list[str], prefixes: list[str]) -> str:
    """The torchvision key a denet key would come from (for the missing-key message)."""
    node, _, rest = key.partition(".")
    for old, new in RENAMES.items():
        if rest.startswith(new):
            rest = old + rest[len(new) :]
    return f"{prefixes[nodes.index(node)]}.{rest}" if node in nodes else key


def torchvision_rcnn(arch: str, state: dict, image_size=(800, 800), class_names=None):
    """Build the denet model of torchvision's detector ``arch`` from its state dict."""
    import denet

    from .convert import example_desc, load_renamed

    if CLASSIFIER not in state:
        raise ModelFileError(f"the checkpoint has no {CLASSIFIER}: not a torchvision R-CNN")
    classes = state[CLASSIFIER].shape[0] - 1  # torchvision counts the background
    model = denet.compile(example_desc(arch), (3, *image_size), classes, border_mode="half")
    target = model.state_dict()
    nodes = [
        n.name
        for n in model.graph.nodes
        if n.shared is None and any(k.startswith(n.name + ".") for k in target)
    ]
    prefixes = PREFIXES[arch]
    if len(nodes) != len(prefixes):  # pragma: no cover - the example strings are fixed
        raise AssertionError(f"{arch}: {len(nodes)} weighted layers, {len(prefixes)} expected")

    def rename(key: str) -> str | None:
        owner = next((p for p in prefixes if key.startswith(p + ".")), None)
        if owner is None:
            return None
        return f"{nodes[prefixes.index(owner)]}.{_rest(key[len(owner) + 1 :])}"

    load_renamed(model, state, rename, arch, lambda key: _torchvision_name(key, nodes, prefixes))
    model.class_names = class_names
    return model


def reference_model(arch: str, num_classes: int | None = None):
    """torchvision's ``arch`` as its pretrained weights build it (FrozenBatchNorm2d, three
    trainable stages), with random weights: the oracle of the tests and the benchmark."""
    from torchvision.models import detection, resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3)
    if arch == "fasterrcnn_resnet50_fpn":
        return detection.FasterRCNN(backbone, num_classes or 91)
    if arch == "maskrcnn_resnet50_fpn":
        return detection.MaskRCNN(backbone, num_classes or 91)
    if arch == "keypointrcnn_resnet50_fpn":
        return detection.KeypointRCNN(backbone, num_classes or 2)
    raise ValueError(arch)
