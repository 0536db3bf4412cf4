"""Geometry and photometry applied to an image, its boxes and its label map together.

Coordinates are continuous pixels: pixel ``i`` covers ``[i, i+1)``, so a box ``(x0, y0, x1, y1)``
frames the pixels ``x0 <= x < x1``. Every geometric step is an affine map of the plane; a
``Sample`` carries the image (PIL), the label map (PIL ``L``, 255 = ignore), each box as its four
corners, and the 3x3 matrix from the original image to the current one. Boxes become axis-aligned
again only at the end, so several rotations do not inflate them step by step.

Randomness comes only from the ``numpy.random.Generator`` passed in (one per item, see
``ImageDataset``), never from global state.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from PIL import Image

from ..errors import DataError

LANCZOS = Image.Resampling.LANCZOS  # PIL's ANTIALIAS, which DeNet used for every resize
BICUBIC = Image.Resampling.BICUBIC
BILINEAR = Image.Resampling.BILINEAR
NEAREST = Image.Resampling.NEAREST
IGNORE = 255

# ImageNet statistics on the 0..1 scale (DeNet's subtract_mean and augment_color for ImageNet/VOC).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
PCA_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
)


# --------------------------------------------------------------------------- pixel helpers
# An image is one PIL image (L or RGB, 8 bit) or, for npy arrays, a list of float ``F`` planes.


def image_size(img):
    return img[0].size if isinstance(img, list) else img.size


def _fill(img, mask: bool):
    if mask:
        return IGNORE
    if img.mode == "RGB":
        return (0, 0, 0)
    return 0.0 if img.mode == "F" else 0


def _reflect_pad(img, mx: int, my: int):
    arr = np.asarray(img)
    pads = [(my, my), (mx, mx)] + [(0, 0)] * (arr.ndim - 2)
    mode = "reflect" if min(arr.shape[:2]) > 1 else "symmetric"
    return Image.fromarray(np.pad(arr, pads, mode=mode), img.mode)


def _resize(img, size, resample, box):
    x0, y0, x1, y1 = box
    if all(float(v).is_integer() for v in box) and (x1 - x0, y1 - y0) == tuple(size):
        return img.crop(tuple(int(v) for v in box))  # whole-pixel crop: exact, no resampling
    return img.resize(tuple(size), resample, box=box)


def _warp_axis(img, box, size, resample, fill):
    """The region ``box`` of ``img`` scaled to ``size``; parts outside ``img`` become ``fill``."""
    W, H = img.size
    x0, y0, x1, y1 = box
    ow, oh = size
    if (x0, y0, x1, y1) == (0, 0, W, H) and (ow, oh) == (W, H):
        return img
    eps = 1e-6
    if x0 >= -eps and y0 >= -eps and x1 <= W + eps and y1 <= H + eps:
        return _resize(img, size, resample, (max(x0, 0.0), max(y0, 0.0), min(x1, W), min(y1, H)))
    sx, sy = ow / (x1 - x0), oh / (y1 - y0)
    # the visible part lands on whole output pixels; its source box is recomputed from them so
    # the mapping stays exactly the affine one
    dx0 = min(max(round((0 - x0) * sx), 0), ow)
    dy0 = min(max(round((0 - y0) * sy), 0), oh)
    dx1 = min(max(round((W - x0) * sx), 0), ow)
    dy1 = min(max(round((H - y0) * sy), 0), oh)
    canvas = Image.new(img.mode, (ow, oh), fill)
    if dx1 <= dx0 or dy1 <= dy0:
        return canvas
    src = (
        min(max(x0 + dx0 / sx, 0.0), W),
        min(max(y0 + dy0 / sy, 0.0), H),
        min(max(x0 + dx1 / sx, 0.0), W),
        min(max(y0 + dy1 / sy, 0.0), H),
    )
    canvas.paste(_resize(img, (dx1 - dx0, dy1 - dy0), resample, src), (dx0, dy0))
    return canvas


def pack_masks(masks) -> list:
    """Binary masks ``[G, H, W]`` as ``ceil(G / 8)`` PIL ``L`` planes, mask ``g`` in bit
    ``g % 8`` of plane ``g // 8``: nearest sampling, flips and crops keep every bit, so the
    planes go through the label map's warps."""
    masks = np.asarray(masks, dtype=np.uint8)
    planes = []
    for start in range(0, len(masks), 8):
        chunk = (masks[start : start + 8] > 0).astype(np.uint8)
        bits = (chunk << np.arange(len(chunk), dtype=np.uint8)[:, None, None]).sum(0)
        planes.append(Image.fromarray(bits.astype(np.uint8), "L"))
    return planes


def unpack_masks(planes, count: int, size) -> np.ndarray:
    """uint8 ``[count, H, W]`` from :func:`pack_masks` planes of ``size`` = (W, H)."""
    W, H = size
    out = np.zeros((count, H, W), np.uint8)
    for p, plane in enumerate(planes):
        arr = np.asarray(plane, dtype=np.uint8)
        for b in range(min(8, count - 8 * p)):
            out[8 * p + b] = (arr >> b) & 1
    return out


class Sample:
    """An image with its label map, boxes (as corners) and the original->current matrix; for
    instance tasks also binary masks (packed by :func:`pack_masks`, warped as the label map but
    filled with 0) and points (keypoints, moved as box corners; ``points_inside`` turns False
    for good once a point leaves the image at any step, as its pixels are then lost)."""

    __slots__ = (
        "image",
        "mask",
        "corners",
        "matrix",
        "instances",
        "instance_count",
        "points",
        "points_inside",
    )

    def __init__(self, image, mask=None, boxes=None, masks=None, points=None):
        self.image = image
        self.mask = mask
        boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, dtype=np.float64)
        boxes = boxes.reshape(-1, 4)
        x0, y0, x1, y1 = boxes.T
        self.corners = np.stack(
            [
                np.stack([x0, y0], 1),
                np.stack([x1, y0], 1),
                np.stack([x1, y1], 1),
                np.stack([x0, y1], 1),
            ],
            1,
        )
        self.matrix = np.eye(3)
        if mask is not None and mask.size != image_size(image):
            raise DataError(
                f"label map size {mask.size} differs from image size {image_size(image)}"
            )
        self.instances, self.instance_count = None, 0
        if masks is not None:
            masks = np.asarray(masks, dtype=np.uint8)
            W, H = image_size(image)
            if masks.ndim != 3 or masks.shape[1:] != (H, W):
                raise DataError(
                    f"instance masks of shape {masks.shape} do not fit image size {(W, H)}"
                )
            self.instances, self.instance_count = pack_masks(masks), len(masks)
        self.points = self.points_inside = None
        if points is not None:
            self.points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
            self.points_inside = self._within(self.points)

    @property
    def size(self):
        return image_size(self.image)

    def copy(self):
        out = Sample.__new__(Sample)
        out.image, out.mask = self.image, self.mask  # PIL operations below never mutate in place
        out.corners, out.matrix = self.corners.copy(), self.matrix.copy()
        out.instances = None if self.instances is None else list(self.instances)
        out.instance_count = self.instance_count
        out.points = None if self.points is None else self.points.copy()
        out.points_inside = None if self.points is None else self.points_inside.copy()
        return out

    @property
    def boxes(self):
        """Axis-aligned boxes enclosing the transformed corners, ``[N, 4]`` float64."""
        if len(self.corners) == 0:
            return np.zeros((0, 4))
        return np.concatenate([self.corners.min(1), self.corners.max(1)], 1)

    @property
    def masks(self):
        """The instance masks in current pixels, uint8 ``[G, H, W]`` (None without)."""
        if self.instances is None:
            return None
        return unpack_masks(self.instances, self.instance_count, self.size)

    def _within(self, pts):
        W, H = self.size
        return (pts[:, 0] >= 0) & (pts[:, 0] <= W) & (pts[:, 1] >= 0) & (pts[:, 1] <= H)

    def _warp_instances(self, warp):
        if self.instances is not None:
            self.instances = [warp(p) for p in self.instances]

    def _apply_matrix(self, A):
        """Called after the image has its new size."""
        if len(self.corners):
            self.corners = self.corners @ A[:2, :2].T + A[:2, 2]
        if self.points is not None:
            self.points = self.points @ A[:2, :2].T + A[:2, 2]
            self.points_inside &= self._within(self.points)
        self.matrix = A @ self.matrix


def resize_region(s: Sample, box, size, resample=LANCZOS, pad_mode="constant") -> Sample:
    """Map the region ``box`` (x0, y0, x1, y1 in current pixels) onto a ``size`` image.

    Parts of the region outside the image are black (``pad_mode=constant``) or mirrored
    (``reflect``); the label map always gets 255 there, instance masks 0."""
    x0, y0, x1, y1 = (float(v) for v in box)
    ow, oh = (int(v) for v in size)
    if ow <= 0 or oh <= 0 or x1 <= x0 or y1 <= y0:
        raise DataError(f"empty crop or resize {box} -> {size}")
    W, H = s.size
    img, ibox = s.image, (x0, y0, x1, y1)
    if pad_mode == "reflect" and (x0 < 0 or y0 < 0 or x1 > W or y1 > H):
        mx = int(math.ceil(max(0.0, -x0, x1 - W)))
        my = int(math.ceil(max(0.0, -y0, y1 - H)))
        pad = lambda p: _reflect_pad(p, mx, my)
        img = [pad(p) for p in img] if isinstance(img, list) else pad(img)
        ibox = (x0 + mx, y0 + my, x1 + mx, y1 + my)
    warp = lambda p: _warp_axis(p, ibox, (ow, oh), resample, _fill(p, False))
    s.image = [warp(p) for p in img] if isinstance(img, list) else warp(img)
    if s.mask is not None:
        s.mask = _warp_axis(s.mask, (x0, y0, x1, y1), (ow, oh), NEAREST, IGNORE)
    s._warp_instances(lambda p: _warp_axis(p, (x0, y0, x1, y1), (ow, oh), NEAREST, 0))
    sx, sy = ow / (x1 - x0), oh / (y1 - y0)
    s._apply_matrix(np.array([[sx, 0, -x0 * sx], [0, sy, -y0 * sy], [0, 0, 1.0]]))
    return s


def affine(s: Sample, A, size=None, resample=BILINEAR, pad_mode="constant") -> Sample:
    """Apply the 3x3 matrix ``A`` (current pixels -> new pixels) onto an image of ``size``.

    ``reflect`` mirrors the image by its own size on each side first (DRN's RandomRotate); the
    label map gets 255 outside (instance masks 0)."""
    A = np.asarray(A, dtype=np.float64)
    W, H = s.size
    size = (W, H) if size is None else tuple(int(v) for v in size)
    img, A_img = s.image, A
    if pad_mode == "reflect":
        pad = lambda p: _reflect_pad(p, W, H)
        img = [pad(p) for p in img] if isinstance(img, list) else pad(img)
        A_img = A @ np.array([[1, 0, -W], [0, 1, -H], [0, 0, 1.0]])

    def warp(p, M, res, fill):
        inv = np.linalg.inv(M)
        return p.transform(
            size, Image.Transform.AFFINE, tuple(inv[:2].ravel()), res, fillcolor=fill
        )

    s.image = (
        [warp(p, A_img, resample, _fill(p, False)) for p in img]
        if isinstance(img, list)
        else warp(img, A_img, resample, _fill(img, False))
    )
    if s.mask is not None:
        s.mask = warp(s.mask, A, NEAREST, IGNORE)
    s._warp_instances(lambda p: warp(p, A, NEAREST, 0))
    s._apply_matrix(A)
    return s


def mirror(s: Sample) -> Sample:
    """Horizontal flip: x -> W - x."""
    W, _ = s.size
    flip = Image.Transpose.FLIP_LEFT_RIGHT
    s.image = (
        [p.transpose(flip) for p in s.image]
        if isinstance(s.image, list)
        else s.image.transpose(flip)
    )
    if s.mask is not None:
        s.mask = s.mask.transpose(flip)
    s._warp_instances(lambda p: p.transpose(flip))
    s._apply_matrix(np.array([[-1.0, 0, W], [0, 1, 0], [0, 0, 1]]))
    return s


def rotation_about_center(size, degrees, scale=1.0, offset=(0.0, 0.0)):
    """Matrix that rotates by ``degrees`` (counter-clockwise on screen), scales by ``scale`` about
    the image centre, then shifts by ``offset`` pixels."""
    W, H = size
    cx, cy = W / 2.0, H / 2.0
    t = math.radians(degrees)
    c, s_ = math.cos(t) * scale, math.sin(t) * scale
    # y points down, so a counter-clockwise turn on screen is (x, y) -> (c x + s y, -s x + c y)
    return np.array(
        [
            [c, s_, cx + offset[0] - c * cx - s_ * cy],
            [-s_, c, cy + offset[1] + s_ * cx - c * cy],
            [0, 0, 1.0],
        ]
    )


def is_mirrored(matrix) -> bool:
    """Whether ``matrix`` flips the image (negative determinant: an odd number of mirrors), so
    left and right keypoints trade places."""
    A = np.asarray(matrix, dtype=np.float64)
    return bool(A[0, 0] * A[1, 1] - A[0, 1] * A[1, 0] < 0)


# --------------------------------------------------------------------------- --distort-mode


class Distort:
    """DeNet's ``--distort-mode``: ``oX`` random offset of up to X px in x and y, ``sX`` scale
    by up to X percent either way, ``rX`` rotation by up to X degrees either way, ``mX`` mirror
    with probability X percent. Offset, scale and rotation are one affine map about the image
    centre (bilinear, black outside, 255 in the label map); the output keeps the input size.

    ``Distort("o4 m50")``; tokens may be separated by spaces, ``:``, ``;`` or ``+``.
    """

    def __init__(self, spec):
        if isinstance(spec, (list, tuple)):
            spec = " ".join(str(t) for t in spec)
        self.spec = str(spec or "").strip()
        self.offset = self.scale = self.rotate = self.mirror = 0.0
        for token in re.split(r"[\s:;+]+", self.spec):
            if not token:
                continue
            m = re.fullmatch(r"([osrm])(\d+(?:\.\d*)?|\.\d+)", token.lower())
            if not m:
                raise DataError(
                    f"--distort-mode: {token!r} is not oX (offset px), sX (scale %), "
                    "rX (rotation degrees) or mX (mirror %)"
                )
            value = float(m.group(2))
            attr = {"o": "offset", "s": "scale", "r": "rotate", "m": "mirror"}[m.group(1)]
            setattr(self, attr, value)
        if self.scale >= 100:
            raise DataError("--distort-mode: sX must be below 100 (percent)")
        if self.mirror > 100:
            raise DataError("--distort-mode: mX is a probability in percent (0..100)")

    def __bool__(self):
        return bool(self.offset or self.scale or self.rotate or self.mirror)

    def __repr__(self):
        return f"Distort({self.spec!r})"

    def __call__(self, s: Sample, rng: np.random.Generator, pad_mode="constant") -> Sample:
        if self.offset or self.scale or self.rotate:
            if float(self.offset).is_integer():
                dx, dy = rng.integers(-int(self.offset), int(self.offset) + 1, size=2)
            else:
                dx, dy = rng.uniform(-self.offset, self.offset, size=2)
            scale = 1.0 + rng.uniform(-self.scale, self.scale) / 100.0
            angle = rng.uniform(-self.rotate, self.rotate)
            affine(
                s,
                rotation_about_center(s.size, angle, scale, (float(dx), float(dy))),
                pad_mode=pad_mode,
            )
        if self.mirror and rng.random() < self.mirror / 100.0:
            mirror(s)
        return s


# --------------------------------------------------------------------------- loader geometry


def scale_size(size, scale, scale_mode):
    """DeNet's resize target: ``small`` shorter side -> scale, ``large`` longer side -> scale,
    ``warp`` both; the other side is ``ceil``-ed as in DeNet."""
    W, H = size
    if scale_mode == "warp":
        return scale, scale
    short = scale_mode == "small"
    if (W <= H) == short:
        return scale, max(1, math.ceil(H * scale / W))
    return max(1, math.ceil(W * scale / H)), scale


def scale_image(s: Sample, scale, scale_mode) -> Sample:
    W, H = s.size
    ow, oh = scale_size((W, H), scale, scale_mode)
    if (ow, oh) == (W, H):
        return s
    return resize_region(s, (0, 0, W, H), (ow, oh), LANCZOS)


def center_crop(s: Sample, crop, pad_mode="constant") -> Sample:
    W, H = s.size
    # whole pixels; negative = letterbox padding, the odd pixel going right/bottom either way
    x0 = (W - crop) // 2 if W >= crop else -((crop - W) // 2)
    y0 = (H - crop) // 2 if H >= crop else -((crop - H) // 2)
    if (x0, y0, W, H) == (0, 0, crop, crop):
        return s
    return resize_region(s, (x0, y0, x0 + crop, y0 + crop), (crop, crop), pad_mode=pad_mode)


def random_crop(s: Sample, crop, rng, pad_mode="constant") -> Sample:
    """A crop x crop window at a random whole-pixel place; a side shorter than the crop is padded
    and the image placed at a random offset inside it."""
    W, H = s.size
    x0 = int(rng.integers(min(0, W - crop), max(0, W - crop) + 1))
    y0 = int(rng.integers(min(0, H - crop), max(0, H - crop) + 1))
    if (x0, y0, W, H) == (0, 0, crop, crop):
        return s
    return resize_region(s, (x0, y0, x0 + crop, y0 + crop), (crop, crop), pad_mode=pad_mode)


def _onscreen(boxes, region, threshold):
    """Fraction test: which boxes have at least ``threshold`` of their area inside ``region``."""
    if len(boxes) == 0:
        return np.zeros(0, bool)
    x0, y0, x1, y1 = region
    ix = np.clip(np.minimum(boxes[:, 2], x1) - np.maximum(boxes[:, 0], x0), 0, None)
    iy = np.clip(np.minimum(boxes[:, 3], y1) - np.maximum(boxes[:, 1], y0), 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return (ix * iy >= threshold * area) & (area > 0)


def lenet_crop(s: Sample, crop, rng, area_min, aspect_factor, max_trials, scale=None):
    """Inception-style crop: area ~ U(area_min, 1) of the image, aspect ~ U(a, 1/a), w/h swapped
    half of the time, resized (bicubic) to crop x crop; falls back to scale + centre crop."""
    W, H = s.size
    for _ in range(max_trials):
        area = rng.uniform(area_min, 1.0) * W * H
        aspect = rng.uniform(aspect_factor, 1.0 / aspect_factor)
        w = int(round(math.sqrt(area * aspect)))
        h = int(round(math.sqrt(area / aspect)))
        if rng.random() < 0.5:
            w, h = h, w
        if 0 < w <= W and 0 < h <= H:
            x0 = int(rng.integers(0, W - w + 1))
            y0 = int(rng.integers(0, H - h + 1))
            return resize_region(s, (x0, y0, x0 + w, y0 + h), (crop, crop), BICUBIC)
    scale_image(s, scale or crop, "small")
    return center_crop(s, crop)


def denet_crop(s: Sample, crop, rng, area_min, aspect_factor, max_trials, onscreen=0.5):
    """DeNet's detection crop: pad to a centred black square of side max(W, H); try a window of
    area U(area_min, 1) S^2 and aspect aspect_factor^U(-1, 1) at a random place, accepted when
    some box has >= ``onscreen`` of its area inside; warp it to crop x crop. Falls back to the
    whole square (also when there are no boxes)."""
    W, H = s.size
    S = float(max(W, H))
    ox, oy = (W - S) / 2.0, (H - S) / 2.0
    region = (ox, oy, ox + S, oy + S)
    boxes = s.boxes
    if len(boxes):
        for _ in range(max_trials):
            area = rng.uniform(area_min, 1.0) * S * S
            r = aspect_factor ** rng.uniform(-1.0, 1.0)
            w, h = math.sqrt(area * r), math.sqrt(area / r)
            if w > S or h > S:
                continue
            x0 = ox + rng.uniform(0.0, S - w)
            y0 = oy + rng.uniform(0.0, S - h)
            if _onscreen(boxes, (x0, y0, x0 + w, y0 + h), onscreen).any():
                region = (x0, y0, x0 + w, y0 + h)
                break
    return resize_region(s, region, (crop, crop), LANCZOS)


def drn_random_scale(s: Sample, factor, rng) -> Sample:
    """DRN's RandomScale: ratio ~ U(1/factor, factor); antialias when shrinking, bicubic when
    enlarging, nearest for the label map."""
    ratio = rng.uniform(1.0 / factor, factor)
    W, H = s.size
    ow, oh = max(1, int(W * ratio)), max(1, int(H * ratio))
    return resize_region(s, (0, 0, W, H), (ow, oh), LANCZOS if ratio < 1 else BICUBIC)


def drn_random_rotate(s: Sample, degrees, rng, pad_mode="reflect") -> Sample:
    """DRN's RandomRotate: angle ~ U{-a..a} (whole degrees when a is whole), about the centre,
    bilinear with reflection padding for the image, nearest with 255 for the label map."""
    if float(degrees).is_integer():
        angle = float(rng.integers(-int(degrees), int(degrees) + 1))
    else:
        angle = rng.uniform(-degrees, degrees)
    if angle == 0:
        return s
    return affine(s, rotation_about_center(s.size, angle), pad_mode=pad_mode)


def multicrop(s: Sample, crop):
    """DeNet's 10-crop test: four corners and the centre, each also mirrored."""
    W, H = s.size
    if W < crop or H < crop:
        raise DataError(f"multicrop: image {W}x{H} is smaller than crop={crop}; set scale >= crop")
    places = [
        (0, 0),
        (W - crop, 0),
        (0, H - crop),
        (W - crop, H - crop),
        ((W - crop) // 2, (H - crop) // 2),
    ]
    crops = [resize_region(s.copy(), (x, y, x + crop, y + crop), (crop, crop)) for x, y in places]
    return crops + [mirror(c.copy()) for c in crops]


class Pipeline:
    """Everything the loader options ask for, in this order (training-only steps marked *):

    1. scale: resize by ``scale_mode`` (skipped for lenet/denet crops in training, which resize
       themselves);
    2. * ``random_rotate`` and 3. * ``random_scale`` (DRN);
    4. crop: ``crop_mode`` in training, centre crop at test (``multicrop`` gives ten);
    5. * ``distort`` (DeNet --distort-mode) and 6. * ``mirror`` (p = 0.5);
    7. boxes: kept when ``check_onscreen`` of their area (or, with ``check_center``, their
       centre) is inside the image, then clipped;
    8. tensor; * ``augment_photo``, * ``augment_color``; ``subtract_mean``.
    """

    def __init__(self, options: dict, train: bool, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.o = dict(options)
        self.train = train
        self.distort = Distort(self.o["distort"])
        self.mean, self.std = mean, std

    @property
    def output_size(self):
        """(H, W) every item has, or None when it depends on the image."""
        c = self.o["crop"]
        return (c, c) if c else None

    def geometry(self, s: Sample, rng):
        o, train = self.o, self.train
        crop, scale, mode = o["crop"], o["scale"], o["crop_mode"]
        self_sizing = train and crop and mode in ("lenet", "denet")
        if scale and not self_sizing:
            scale_image(s, scale, o["scale_mode"])
        if train and o["random_rotate"]:
            drn_random_rotate(s, o["random_rotate"], rng, o["pad_mode"])
        if train and o["random_scale"] and o["random_scale"] != 1:
            drn_random_scale(s, o["random_scale"], rng)
        if crop:
            if not train and o["multicrop"]:
                return multicrop(s, crop)
            if not train or mode == "center":
                center_crop(s, crop, o["pad_mode"])
            elif mode == "default":
                random_crop(s, crop, rng, o["pad_mode"])
            elif mode == "lenet":
                lenet_crop(s, crop, rng, o["area_min"], o["aspect_factor"], o["max_trials"], scale)
            else:
                denet_crop(
                    s,
                    crop,
                    rng,
                    o["area_min"],
                    o["aspect_factor"],
                    o["max_trials"],
                    o["check_onscreen"],
                )
        if train:
            if self.distort:
                self.distort(s, rng, o["pad_mode"])
            if o["mirror"] and rng.random() < 0.5:
                mirror(s)
        return s

    def final_boxes(self, s: Sample):
        """``(boxes [K,4] float64 clipped to the image, keep [N] bool)``."""
        boxes = s.boxes
        W, H = s.size
        if len(boxes) == 0:
            return boxes, np.zeros(0, bool)
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        center_in = (cx >= 0) & (cx <= W) & (cy >= 0) & (cy <= H)
        if self.o["check_center"]:
            keep = center_in
        else:
            keep = _onscreen(boxes, (0, 0, W, H), self.o["check_onscreen"])
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            keep |= (area <= 0) & center_in  # degenerate annotations: keep if they are on screen
        clipped = boxes[keep].copy()
        clipped[:, 0::2] = clipped[:, 0::2].clip(0, W)
        clipped[:, 1::2] = clipped[:, 1::2].clip(0, H)
        return clipped, keep

    def tensor(self, img, rng) -> torch.Tensor:
        """PIL -> float32 [C,H,W] (8-bit images / 255; float planes as stored), then photometry."""
        if isinstance(img, list):
            x = torch.from_numpy(np.stack([np.asarray(p, dtype=np.float32) for p in img]))
        else:
            arr = np.asarray(img, dtype=np.float32)
            arr = np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            # numpy, not torch: a torch op here would wake the intra-op thread pool per image,
            # which costs milliseconds on a busy machine
            arr /= 255.0
            x = torch.from_numpy(arr)
        return self.photometric(x, rng)

    def photometric(self, x: torch.Tensor, rng) -> torch.Tensor:
        o = self.o
        if self.train and o["augment_photo"]:
            x = photo_augment(x, rng)
        if self.train and o["augment_color"]:
            x = color_augment(x, rng)
        if o["subtract_mean"]:
            x = normalize(x, self.mean, self.std)
        return x


def _gray(x):
    if x.shape[0] == 3:
        return 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    return x.mean(0)


def photo_augment(x: torch.Tensor, rng) -> torch.Tensor:
    """DeNet's augment_photo: brightness, contrast and saturation in random order, each with a
    factor U(0.6, 1.4), on 0..1 floats without clipping. Saturation needs colour (skipped on 1
    channel)."""
    for op in rng.permutation(3):
        alpha = float(rng.uniform(0.6, 1.4))
        if op == 0:
            x = x * alpha
        elif op == 1:
            m = _gray(x).mean()
            x = (x - m) * alpha + m
        elif x.shape[0] == 3:
            g = _gray(x)[None]
            x = (x - g) * alpha + g
    return x


def color_augment(x: torch.Tensor, rng, std=0.1) -> torch.Tensor:
    """AlexNet PCA colour noise: add eigvec @ (alpha * eigval), alpha ~ N(0, std), per image."""
    if x.shape[0] != 3:
        raise DataError("augment_color needs RGB images (3 channels)")
    alpha = rng.normal(0.0, std, size=3)
    shift = PCA_EIGVEC @ (alpha * PCA_EIGVAL)
    return x + torch.as_tensor(shift, dtype=x.dtype)[:, None, None]


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std per channel; one channel uses the average of the three statistics."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    if x.shape[0] != len(mean):
        if x.shape[0] == 1:
            mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
        else:
            raise DataError(f"subtract_mean: {len(mean)} statistics for {x.shape[0]} channels")
    m = torch.as_tensor(mean, dtype=x.dtype)[:, None, None]
    s = torch.as_tensor(std, dtype=x.dtype)[:, None, None]
    return (x - m) / s
