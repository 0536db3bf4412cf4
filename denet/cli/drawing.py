"""Boxes and captions drawn on images, shared by dataset-show and model-predict's ``,image``.

Each box is drawn in its class colour (``PALETTE[label % 20]``) over a black rim, and each
caption in the class colour with a black outline, so both stay readable on a dark, a bright or
a same-coloured background.
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
