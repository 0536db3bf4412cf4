"""Boxes and captions drawn on images, shared by dataset-show and model-predict's ``,image``.

Each box is drawn in its class colour (``PALETTE[label % 20]``) over a black rim, and each
caption in the class colour with a black outline, so both stay readable on a dark, a bright or
a same-coloured background. Instance masks are a semi-transparent fill in the class colour;
keypoints are dots in the class colour with a black rim, joined by the skeleton's lines when
there is one.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# A fixed palette: class k gets PALETTE[k % len]; 255 (ignore) is drawn white.
PALETTE = np.array(
    [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
        (220, 190, 255),
        (170, 110, 40),
        (255, 250, 200),
        (128, 0, 0),
        (170, 255, 195),
        (128, 128, 0),
        (255, 215, 180),
        (0, 0, 128),
        (128, 128, 128),
    ],
    np.uint8,
)


def class_color(label: int) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in PALETTE[int(label) % len(PALETTE)])
    return r, g, b


def default_zoom(height: int, width: int, zoom: int = 0) -> int:
    """``zoom`` when positive, else the integer enlargement that brings a small image to at
    least 256 pixels on its longer side (1 for larger images)."""
    return zoom if zoom > 0 else max(1, 256 // max(height, width, 1))


def enlarge(rgb: np.ndarray, zoom: int) -> Image.Image:
    """An ``HxWx3`` uint8 array as a PIL image enlarged ``zoom`` times (nearest neighbour)."""
    h, w = rgb.shape[:2]
    img = Image.fromarray(rgb)
    return img if zoom == 1 else img.resize((w * zoom, h * zoom), Image.Resampling.NEAREST)


def draw_boxes(img: Image.Image, boxes, labels, captions, zoom: int = 1) -> None:
    """Draw xyxy ``boxes`` (pixels of the image before its ``zoom``-fold enlargement) on
    ``img`` in place, each in the colour of its label, with its caption at its top-left."""
    draw = ImageDraw.Draw(img)
    for box, label, caption in zip(boxes, labels, captions):
        color = class_color(label)
        x0, y0, x1, y1 = (float(v) * zoom for v in box)
        corners = [x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)]
        # a black rim first, so a box stays visible on an object of its own colour
        draw.rectangle(
            [corners[0] - 1, corners[1] - 1, corners[2] + 1, corners[3] + 1],
            outline=(0, 0, 0),
            width=4,
        )
        draw.rectangle(corners, outline=color, width=2)
        if caption:
            draw.text((x0 + 3, y0 + 2), caption, fill=color, stroke_width=1, stroke_fill=(0, 0, 0))


# COCO person's skeleton (1-based keypoint pairs, as person_keypoints_*.json gives it), used for
# a class named "person" with 17 keypoints when the data do not give a skeleton.
COCO_PERSON_SKELETON = [
    [16, 14],
    [14, 12],
    [17, 15],
    [15, 13],
    [12, 13],
    [6, 12],
    [7, 13],
    [6, 7],
    [6, 8],
    [7, 9],
    [8, 10],
    [9, 11],
    [2, 3],
    [1, 2],
    [1, 3],
    [2, 4],
    [3, 5],
    [4, 6],
    [5, 7],
]


def fill_masks(img: Image.Image, masks, labels, zoom: int = 1, alpha: float = 0.45) -> None:
    """Blend each binary mask (``[H, W]``, pixels of the image before its ``zoom``-fold
    enlargement) into ``img`` in place: ``(1 - alpha) * pixel + alpha * class colour``, later
    masks over earlier ones."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32).copy()
    for mask, label in zip(masks, labels):
        m = np.asarray(mask, dtype=bool)
        if zoom != 1:
            m = m.repeat(zoom, 0).repeat(zoom, 1)
        m = m[: arr.shape[0], : arr.shape[1]]
        color = np.array(class_color(label), np.float32)
        arr[m] = (1 - alpha) * arr[m] + alpha * color
    img.paste(Image.fromarray(np.round(arr).clip(0, 255).astype(np.uint8)))


def draw_keypoints(img: Image.Image, keypoints, labels, skeletons, zoom: int = 1) -> None:
    """Draw each detection's keypoints (``[K, 2+]`` x, y in pixels before the ``zoom``) as dots
    in its class colour over a black rim, after the lines of ``skeletons[label]`` (1-based
    pairs, as COCO writes them) where there is one; points that are not finite are skipped."""
    draw = ImageDraw.Draw(img)
    radius = 3
    for points, label in zip(keypoints, labels):
        color = class_color(label)
        xy = [(float(p[0]) * zoom, float(p[1]) * zoom) for p in points]
        finite = [bool(np.isfinite(x) and np.isfinite(y)) for x, y in xy]
        for a, b in skeletons.get(int(label), ()):
            a, b = int(a) - 1, int(b) - 1
            if 0 <= a < len(xy) and 0 <= b < len(xy) and finite[a] and finite[b]:
                draw.line([xy[a], xy[b]], fill=(0, 0, 0), width=4)
                draw.line([xy[a], xy[b]], fill=color, width=2)
        for (x, y), ok in zip(xy, finite):
            if ok:
                draw.ellipse(
                    [x - radius, y - radius, x + radius, y + radius],
                    fill=color,
                    outline=(0, 0, 0),
                )
