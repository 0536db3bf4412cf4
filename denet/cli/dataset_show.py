"""dataset-show: write a dataset's items as the network sees them, after loading and
augmentation, with boxes and label maps drawn. See docs/dataset-show.md."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data import open_dataset
from ..errors import DenetError
from ._common import ArgumentParser, bounded_int, tool_main
from .drawing import PALETTE, default_zoom, draw_boxes, draw_keypoints, enlarge, fill_masks

MAX_PIXELS = 1 << 26  # one written image: 64 Mpixel, 192 MB in RGB


def build_parser():
    p = ArgumentParser(
        prog="dataset-show",
        description="Write the first N items of a dataset as PNG files, as the network sees "
        "them after loading and augmentation, with boxes and label maps drawn.",
    )
    p.add_argument("--input", required=True, help="dataset path (as for --train/--test)")
    p.add_argument(
        "--extension",
        default="ppm",
        help="FORMAT,SUBSET,key=value,... (see docs/datasets.md); default ppm",
    )
    p.add_argument("--output", required=True, help="folder for the PNG files (created)")
    p.add_argument(
        "-n", "--count", type=bounded_int(0, 100_000), default=8, help="number of items (default 8)"
    )
    p.add_argument(
        "--start", type=bounded_int(0, 2**62), default=0, help="first item index (default 0)"
    )
    p.add_argument(
        "--train", action="store_true", help="apply the training-time random augmentation"
    )
    p.add_argument(
        "--distort-mode",
        nargs="+",
        default=None,
        metavar="MODE",
        help="DeNet --distort-mode tokens (oX sX rX mX), with --train",
    )
    p.add_argument(
        "--augment-mirror", action="store_true", help="random horizontal flips, with --train"
    )
    p.add_argument(
        "--seed",
        type=bounded_int(0, 2**32 - 1),
        default=23455,
        help="augmentation seed (default 23455)",
    )
    p.add_argument(
        "--epoch",
        type=bounded_int(0, 1_000_000),
        default=0,
        help="epoch whose augmentation to show",
    )
    p.add_argument(
        "--zoom",
        type=bounded_int(0, 32),
        default=0,
        help="integer enlargement; 0 (default) enlarges small images to >= 256 px",
    )
    return p


def _to_uint8(image: torch.Tensor, ds) -> np.ndarray:
    """[C,H,W] network input -> HxWx3 uint8, undoing subtract_mean; float data is stretched."""
    x = image.detach().double()
    if ds.options.get("subtract_mean"):
        mean = torch.tensor(ds.mean, dtype=torch.float64)
        std = torch.tensor(ds.std, dtype=torch.float64)
        if x.shape[0] == 1:
            mean, std = mean.mean().view(1), std.mean().view(1)
        x = x * std[:, None, None] + mean[:, None, None]
    if ds.format == "npy":  # stored values of any range: stretch to 0..1
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) if hi > lo else x * 0
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    elif x.shape[0] != 3:
        x = x[:3] if x.shape[0] > 3 else x[:1].expand(3, -1, -1)
    return (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def _overlay_mask(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    color = np.where((mask == 255)[..., None], 255, PALETTE[mask % len(PALETTE)])
    return ((rgb.astype(np.uint16) + color.astype(np.uint16)) // 2).astype(np.uint8)


def render(image: torch.Tensor, target: dict, ds, zoom: int = 0) -> Image.Image:
    """One item as a PIL image: label map blended in, boxes and class names drawn, instance
    masks blended in and keypoints (with their category's skeleton) drawn where the set has them."""
    if image.dim() == 4:  # multicrop: tile the crops in two rows
        tiles = [_to_uint8(c, ds) for c in image]
        half = (len(tiles) + 1) // 2
        rows = [np.concatenate(tiles[:half], 1), np.concatenate(tiles[half:], 1)]
        rgb = np.concatenate(rows, 0)
    else:
        rgb = _to_uint8(image, ds)
    if "mask" in target:
        rgb = _overlay_mask(rgb, target["mask"].numpy())
    h, w = rgb.shape[:2]
    zoom = default_zoom(h, w, zoom)
    img = enlarge(rgb, zoom)
    boxes = target.get("boxes")
    if boxes is not None:
        flags = target.get("iscrowd", target.get("difficult"))
        labels = target["labels"].tolist()
        captions = []
        for k, label in enumerate(labels):
            name = ds.classes[label] if label < len(ds.classes) else str(label)
            if flags is not None and bool(flags[k]):
                name += " (crowd)" if "iscrowd" in target else " (difficult)"
            captions.append(name)
        if "masks" in target:
            fill_masks(img, target["masks"].numpy(), labels, zoom)
        draw_boxes(img, boxes.tolist(), labels, captions, zoom)
        if "keypoints" in target:
            points = target["keypoints"].numpy().copy()
            points[points[..., 2] <= 0, :2] = np.nan  # v = 0: not labelled, not drawn
            draw_keypoints(img, points, labels, getattr(ds, "skeletons", {}), zoom)
    if "label" in target:
        label = int(target["label"])
        name = ds.classes[label] if label < len(ds.classes) else str(label)
        ImageDraw.Draw(img).text((2, 1), name, fill=(255, 255, 0))
    return img


@tool_main
def main(argv=None):
    args = build_parser().parse_args(argv)
    ds = open_dataset(
        args.input,
        args.extension,
        train=args.train,
        seed=args.seed,
        distort=args.distort_mode,
        mirror=True if args.augment_mirror else None,
    )
    ds.set_epoch(args.epoch)
    try:
        os.makedirs(args.output, exist_ok=True)
    except OSError as err:
        raise DenetError(
            f"--output {args.output}: cannot create the folder ({err.strerror})"
        ) from None
    stop = min(len(ds), args.start + args.count)
    for index in range(args.start, stop):
        image, target = ds[index]
        path = os.path.join(args.output, f"{index:06d}.png")
        h, w = image.shape[-2:]
        zoom = default_zoom(h, w, args.zoom)
        if h * w * zoom * zoom > MAX_PIXELS:
            raise DenetError(
                f"--zoom {zoom}: item {index} would be {w * zoom}x{h * zoom} pixels, more than "
                f"{MAX_PIXELS} (lower --zoom)"
            )
        try:
            render(image, target, ds, args.zoom).save(path)
        except OSError as err:
            raise DenetError(f"{path}: cannot write ({err.strerror or err})") from None
        shape = "x".join(str(v) for v in image.shape)
        if "boxes" in target:
            count = len(target["boxes"])
            what = f"{count} box" + ("" if count == 1 else "es")
        elif "mask" in target:
            what = "classes " + ",".join(
                str(v) for v in sorted(set(target["mask"].unique().tolist()))
            )
        else:
            what = f"label {ds.classes[int(target['label'])]}"
        print(f"{path}: {shape} {what}")
    print(f"{stop - args.start} of {len(ds)} items written to {args.output}")
    return 0
