"""model-convert --format deeplab-v2: isht7/pytorch-deeplab-resnet's ``MS_Deeplab`` checkpoints
(the converted Caffe DeepLab-v2 ResNet-101, ``MS_DeepLab_resnet_trained_VOC.pth``, the COCO
init, or train.py's snapshots) become ``examples/deeplab-v2-msc.desc``.

Keys: ``Scale.conv1``, ``Scale.bn1``, ``Scale.layer1`` ... ``Scale.layer4`` (bottleneck blocks
with torchvision's module names: ``conv1``, ``bn1``, ..., ``downsample.0``/``.1``) and
``Scale.layer5.conv2d_list.{0..3}`` (ASPP). ``Scale`` is the one trunk the three scales share,
which is the ``MSC`` body of the string: its first ``C``, ``FBN``, the four ``nRSN`` stages and
the four ``C.B`` of the ``SUM``. The BN layers become frozen norms (isht7 trains in eval mode
with the BN parameters fixed); their ``num_batches_tracked`` counters are dropped.
"""

from __future__ import annotations

from ..errors import DenetError, ModelFileError
from .convert import example_desc
from .convert_drn import port_state, renamer, unit_nodes

EXAMPLE = "deeplab-v2-msc"
_ASPP = "Scale.layer5.conv2d_list"
UNITS = [
    ("Scale.conv1", "C"),
    ("Scale.bn1", "FBN"),
    *((f"Scale.layer{i}", "nRSN") for i in range(1, 5)),
    *((f"{_ASPP}.{i}", "C") for i in range(4)),
]


def deeplab_v2(state: dict, classes: int | None = None, image_size=(321, 321), class_names=None):
    """The denet model of an isht7 ``MS_Deeplab`` state dict."""
    import denet

    first = f"{_ASPP}.0.weight"
    if first not in state:
        raise ModelFileError(
            f"the checkpoint has no {first}: not an isht7 MS_Deeplab (DeepLab-v2 MSC)"
        )
    k = state[first].shape[0]
    if classes is not None and classes != k:
        raise DenetError(f"--classes {classes} does not match the checkpoint's ASPP ({k})")
    model = denet.compile(example_desc(EXAMPLE), (3, *image_size), k, border_mode="half")
    nodes = unit_nodes(model, ("C", "FBN", "nRSN"))
    if [t for _, t in UNITS] != [n.type for n in nodes]:
        raise DenetError(f"examples/{EXAMPLE}.desc does not have MS_Deeplab's layout")
    rename, unrename = renamer({prefix: n.name for (prefix, _), n in zip(UNITS, nodes)})
    what = "isht7's MS_Deeplab (DeepLab-v2 ResNet-101)"
    port_state(model, state, rename, unrename, what, hint="not an MS_Deeplab checkpoint?")
    model.class_names = class_names
    return model
