"""model-convert: turn another framework's checkpoint into a denet model file.

    model-convert --format torchvision --arch resnet50 --input resnet50.pth --output r50.pt
    model-convert --format denet --input denet34_skip.mdl.gz --output denet34_skip.pt

torchvision: the ResNet state dict maps key for key onto the matching ``examples/<arch>.desc``
string (compiled with border mode half): ``conv1`` -> the first ``C``, ``bn1`` -> the first
``BN``, ``layerN`` -> the N-th ``nRSN`` stage (block modules carry torchvision's names), ``fc`` ->
``R`` (its weight reshaped to a 1x1 conv). The FPN detectors (``fasterrcnn_resnet50_fpn``,
``maskrcnn_resnet50_fpn``, ``keypointrcnn_resnet50_fpn``) map likewise, module by module
(:mod:`denet.cli.convert_rcnn`).

denet: DeNet's own ``.mdl.gz`` files; the description string is rebuilt from the file's layer
list and the weights ported (kernels flipped, BN inverse std to variance), see
:mod:`denet.cli.convert_denet` and docs/model-convert.md.

drn, drnseg: fyu/drn's classifiers and DRNSeg segmenters onto ``examples/<arch>.desc`` and
``examples/drnseg_<arch>.desc`` (:mod:`denet.cli.convert_drn`); deeplab-v2: isht7's
pytorch-deeplab-resnet ``MS_Deeplab`` onto ``examples/deeplab-v2-msc.desc``
(:mod:`denet.cli.convert_deeplab`).
"""

from __future__ import annotations

import argparse
import os

import torch

from ..errors import DenetError, ModelFileError
from ._common import ArgumentParser, tool_main
from .convert_rcnn import RCNN_ARCHS, torchvision_rcnn

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
FORMATS = ("torchvision", "denet", "drn", "drnseg", "deeplab-v2")
_ARCH_FORMATS = ("torchvision", "drn", "drnseg")  # the formats that need --arch
_CLASS_FORMATS = ("drnseg", "deeplab-v2")  # the formats that take --classes
_EXAMPLES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples"
)


def example_desc(name: str) -> str:
    path = os.path.join(_EXAMPLES, f"{name}.desc")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        raise DenetError(f"example string {path} is missing") from None


def read_state_dict(path: str) -> dict:
    """A torchvision checkpoint: a state dict (or {"state_dict"|"model": state dict}),
    loaded with weights_only=True."""
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such file")
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelFileError(
            f"{path}: refused: the file holds pickled objects that are not weights"
        ) from None
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user error here
        raise ModelFileError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{path}: not a state dict of tensors")
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


def torchvision_resnet(arch: str, state: dict, image_size=(224, 224), class_names=None):
    """Build the denet model for a torchvision ResNet state dict."""
    import denet

    if "fc.weight" not in state:
        raise ModelFileError("the checkpoint has no fc.weight: not a torchvision ResNet")
    classes = state["fc.weight"].shape[0]
    model = denet.compile(example_desc(arch), (3, *image_size), classes, border_mode="half")
    names = [n for n in model.graph.nodes if n.name in model._modules]
    first = {t: next(n.name for n in names if n.type == t) for t in ("C", "BN", "R")}
    stages = [n.name for n in names if n.type == "nRSN"]
    prefix = {
        "conv1": first["C"],
        "bn1": first["BN"],
        "fc": first["R"],
        **{f"layer{i + 1}": s for i, s in enumerate(stages)},
    }

    def rename(key: str) -> str | None:
        head, _, rest = key.partition(".")
        return f"{prefix[head]}.{rest}" if head in prefix else None

    load_renamed(model, state, rename, arch)
    model.class_names = class_names
    return model


def load_renamed(model, state: dict, rename, arch: str, source_key=lambda key: key) -> None:
    """Loads the checkpoint ``state`` of torchvision's ``arch`` into ``model``: ``rename(key)``
    is each key's name in the model (None: not one of ``arch``'s), ``source_key`` a model key's
    name in the checkpoint, for the message that names the first unexpected or missing keys."""
    target = model.state_dict()
    converted, unknown = {}, []
    for key, value in state.items():
        new = rename(key)
        if new is None or new not in target:
            unknown.append(key)
            continue
        if value.numel() != target[new].numel():
            raise ModelFileError(
                f"{key}: shape {tuple(value.shape)} does not fit {arch} "
                f"({tuple(target[new].shape)}); is --arch right?"
            )
        converted[new] = value.reshape(target[new].shape).to(target[new].dtype)
    missing = sorted(source_key(k) for k in set(target) - set(converted))
    if unknown or missing:
        what = unknown[:3] if unknown else missing[:3]
        raise ModelFileError(
            f"the checkpoint does not match torchvision's {arch}: "
            f"{'unexpected' if unknown else 'missing'} keys "
            f"{', '.join(what)}{' ...' if len(unknown or missing) > 3 else ''}"
        )
    model.load_state_dict(converted, strict=True)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="model-convert",
        description="Convert a checkpoint of another framework into a denet model file. "
        "The input file is never changed, and reading it never runs code from it "
        "(torch.load(weights_only=True); DeNet's arrays with np.load(allow_pickle=False)).",
    )
    p.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="format of the input checkpoint (torchvision: a torchvision.models "
        "state dict, e.g. from torchvision's download URLs; denet: a model file of the "
        "original Theano DeNet, .mdl.gz; drn: a fyu/drn classifier state dict; drnseg: a "
        "fyu/drn segment.py DRNSeg state dict; deeplab-v2: an isht7/pytorch-deeplab-resnet "
        "MS_Deeplab state dict)",
    )
    p.add_argument(
        "--arch",
        metavar="ARCH",
        help="architecture, required by torchvision (resnet18 ... resnet152, "
        "fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn, keypointrcnn_resnet50_fpn), drn and "
        "drnseg "
        "(drn_a_18 ... drn_d_107); the model is built from examples/<arch>.desc "
        "(drnseg: examples/drnseg_<arch>.desc) with border mode half",
    )
    p.add_argument(
        "--classes",
        type=int,
        metavar="K",
        help="number of classes (drnseg, deeplab-v2; default: the checkpoint's); must match "
        "the checkpoint's classifier",
    )
    p.add_argument(
        "--input",
        required=True,
        metavar="CHECKPOINT",
        help="the checkpoint to convert (STATE_DICT.pth, or M.mdl.gz for --format denet)",
    )
    p.add_argument("--output", required=True, metavar="M.pt", help="denet model file to write")
    p.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input image size of the model (torchvision: default 224 224, the "
        "ResNet strings pool globally, so any size >= 32 works; the R-CNN detectors: default "
        "800 800, their RT resizes any input as torchvision's transform; drn: default 224 224, "
        "DRN's AvgPool2d(28) fits 224 only; drnseg: default 512 512; deeplab-v2: default "
        "321 321; the segmenters run on any size). A DeNet file gives its own "
        "size; change it afterwards with model-modify --image-size",
    )
    p.add_argument(
        "--class-names",
        metavar="FILE",
        help="text file with one class name per line, stored in the model (for a DeNet "
        "file: instead of its classLabels)",
    )
    p.add_argument("--summary", action="store_true", help="print the layer table afterwards")
    return p


def _image_size(args, default: tuple[int, int]) -> tuple[int, int]:
    if args.image_size is None:
        return default
    h, w = args.image_size
    if min(h, w) < 1:
        raise DenetError(f"--image-size must be positive, not {h} {w}")
    return h, w


def _convert_segment_formats(args, names):
    """--format drn, drnseg, deeplab-v2: (model, description for the closing line)."""
    state = read_state_dict(args.input)
    if args.format == "deeplab-v2":
        from .convert_deeplab import deeplab_v2

        model = deeplab_v2(state, args.classes, _image_size(args, (321, 321)), names)
        return model, "DeepLab-v2 MSC ResNet-101 (isht7/pytorch-deeplab-resnet)"
    from .convert_drn import drn_classifier, drn_segmenter

    if args.format == "drn":
        return drn_classifier(args.arch, state, _image_size(args, (224, 224)), names), args.arch
    model = drn_segmenter(args.arch, state, args.classes, _image_size(args, (512, 512)), names)
    return model, f"DRNSeg({args.arch})"


@tool_main
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import denet

    if os.path.abspath(args.output) == os.path.abspath(args.input):
        raise DenetError("--output must differ from --input (the input file is never changed)")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        raise DenetError(f"{args.output}: its directory does not exist")
    if args.format in _ARCH_FORMATS:
        from .convert_drn import DRN_ARCHS

        if args.arch is None:
            raise DenetError(f"--format {args.format} needs --arch")
        valid = ARCHS + RCNN_ARCHS if args.format == "torchvision" else tuple(DRN_ARCHS)
        if args.arch not in valid:
            raise DenetError(
                f"--arch {args.arch} is not a {args.format} architecture "
                f"(one of {', '.join(valid)})"
            )
    elif args.arch is not None:
        raise DenetError(
            f"--arch is for --format {', '.join(_ARCH_FORMATS)}; "
            + (
                "a DeNet file describes its own network"
                if args.format == "denet"
                else f"{args.format} has one architecture"
            )
        )
    if args.classes is not None and args.format not in _CLASS_FORMATS:
        raise DenetError(
            f"--classes is for --format {', '.join(_CLASS_FORMATS)}; {args.format} "
            "checkpoints give their class count"
        )
    if args.classes is not None and args.classes < 1:
        raise DenetError(f"--classes must be a positive number, not {args.classes}")
    if args.format == "denet":
        if args.image_size is not None:
            raise DenetError(
                "--image-size is for --format torchvision, drn, drnseg and deeplab-v2; a DeNet "
                "file gives its own input "
                "size (change it afterwards with model-modify --image-size)"
            )
    names = None
    if args.class_names:
        try:
            with open(args.class_names, encoding="utf-8") as f:
                names = [line.strip() for line in f if line.strip()]
        except OSError as err:
            raise DenetError(f"{args.class_names}: {err.strerror}") from None
    if args.format == "torchvision":
        assert args.arch is not None  # checked above
        state = read_state_dict(args.input)
        if args.arch in RCNN_ARCHS:
            model = torchvision_rcnn(args.arch, state, _image_size(args, (800, 800)), names)
        else:
            model = torchvision_resnet(args.arch, state, _image_size(args, (224, 224)), names)
        what = args.arch
    elif args.format in ("drn", "drnseg", "deeplab-v2"):
        model, what = _convert_segment_formats(args, names)
    else:
        from .convert_denet import convert_file

        model, conv = convert_file(args.input)
        for note in conv.notes:
            print(f"note: {note}")
        if names is not None:
            model.class_names = names
        what = f"DeNet model (file version {conv.version}), {conv.desc}"
    if names is not None and len(names) != model.classes:
        raise DenetError(f"{args.class_names}: {len(names)} names for {model.classes} classes")
    denet.save(model, args.output)
    if args.summary:
        print(denet.summary(model))
    print(
        f"wrote {args.output}: {what}, {model.classes} classes, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters"
    )
    return 0
