"""Builders of the data sets the data tests write (nothing is downloaded)."""

import os

import numpy as np
from PIL import Image


def write_digit_tree(root, images, targets, n=60, rgb_index=None):
    """ROOT/<digit>/<i>.png for the first n digits; returns [(path, label, uint8 array)]."""
    rows = []
    for i in range(n):
        folder = os.path.join(root, str(targets[i]))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{i:04d}.png")
        img = Image.fromarray(images[i], "L")
        if i == rgb_index:
            img = img.convert("RGB")
        img.save(path)
        rows.append((path, int(targets[i]), images[i]))
    return rows


# --------------------------------------------------------------------------- detection sets
# Each image is grey (128) with filled rectangles; a rectangle (x0, y0, x1, y1) paints the
# 0-based pixels x0 <= x < x1, y0 <= y < y1, so its box in continuous pixels is exactly that.
SCENES = [  # (width, height, [(x0, y0, x1, y1, category index, crowd/difficult), ...])
    (96, 64, [(10, 8, 40, 30, 0, False), (50, 20, 90, 60, 2, False)]),
    (48, 100, [(5, 10, 40, 50, 1, False), (0, 70, 48, 100, 0, True)]),
    (120, 40, [(100, 5, 118, 35, 2, False)]),
    (64, 64, []),
    (37, 81, [(3, 3, 20, 77, 1, False), (22, 40, 36, 60, 0, False), (10, 10, 30, 20, 2, False)]),
]
COLORS = [(230, 30, 30), (30, 200, 40), (40, 60, 230)]


def object_mask(width, height, obj, ellipses=False):
    """bool ``[height, width]``: the pixels an object paints, its rectangle or (``ellipses``)
    the pixels whose centres lie in the ellipse inscribed in it."""
    x0, y0, x1, y1 = obj[:4]
    if not ellipses:
        out = np.zeros((height, width), bool)
        out[y0:y1, x0:x1] = True
        return out
    yy, xx = np.mgrid[:height, :width] + 0.5
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1


def draw_scene(width, height, objects, ellipses=False):
    arr = np.full((height, width, 3), 128, np.uint8)
    for obj in objects:
        arr[object_mask(width, height, obj, ellipses)] = COLORS[obj[4]]
    return arr


def object_polygon(obj, ellipses=False, vertices=24):
    """COCO polygon ``[x, y, x, y, ...]`` of an object: its rectangle's corners (which
    pycocotools rasterises to exactly the painted pixels) or ``vertices`` points on its ellipse."""
    x0, y0, x1, y1 = (float(v) for v in obj[:4])
    if not ellipses:
        return [x0, y0, x1, y0, x1, y1, x0, y1]
    t = np.arange(vertices) * (2 * np.pi / vertices)
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    xy = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)
    return [round(float(v), 3) for v in xy.reshape(-1)]


def uncompressed_rle(mask):
    """COCO's uncompressed RLE (as crowd regions are stored): run lengths of the column-major
    pixels, starting with a run of zeros."""
    flat = np.asarray(mask, np.uint8).reshape(-1, order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def compressed_rle(mask):
    """pycocotools' compressed RLE with ascii counts (as results files and LVIS store masks)."""
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


# make_coco's person keypoints: COCO's 17 names and skeleton (so pycocotools' COCOeval, whose
# OKS sigmas are COCO person's, scores them), and a figure facing the camera (the person's left
# on the image's right) as (x, y) fractions of the object's box, inside its inscribed ellipse.
KEYPOINT_NAMES = [
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
]
KEYPOINT_LAYOUT = [
    (0.5, 0.1),
    (0.56, 0.08),
    (0.44, 0.08),
    (0.6, 0.1),
    (0.4, 0.1),
    (0.72, 0.22),
    (0.28, 0.22),
    (0.8, 0.38),
    (0.2, 0.38),
    (0.85, 0.52),
    (0.15, 0.52),
    (0.62, 0.55),
    (0.38, 0.55),
    (0.64, 0.75),
    (0.36, 0.75),
    (0.65, 0.9),
    (0.35, 0.9),
]
KEYPOINT_SKELETON = [  # COCO's 1-based pairs
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


def object_keypoints(obj, ann_id):
    """COCO keypoints ``[x, y, v] * K`` of one object: KEYPOINT_LAYOUT inside its box, v = 2
    (visible) except a few v = 1 (labelled, not visible) and v = 0 (unlabelled, all zero), by
    ``(ann_id + k)``; crowd regions have none (all zero), as in COCO."""
    x0, y0, x1, y1, _, crowd = obj
    out = []
    for k, (fx, fy) in enumerate(KEYPOINT_LAYOUT):
        v = 0 if crowd or (ann_id + k) % 7 == 6 else 1 if (ann_id + k) % 5 == 4 else 2
        x, y = x0 + fx * (x1 - x0), y0 + fy * (y1 - y0)
        out += [x, y, v] if v else [0, 0, 0]
    return out


def make_coco(
    root,
    split="val",
    year=2017,
    scenes=SCENES,
    first_id=1,
    ext="jpg",
    segmentation=None,
    keypoints=False,
    ellipses=False,
):
    """Official layout: ROOT/annotations/instances_<split><year>.json, ROOT/<split><year>/.

    ``segmentation`` adds COCO segmentations: ``"polygon"`` (each object's rectangle, or
    ellipse, as a polygon), ``"rle"`` (compressed RLE with ascii counts) or ``"mixed"``
    (polygons and compressed RLE taking turns by annotation id); crowd regions are uncompressed
    RLE in every case, as in COCO, and ``area`` becomes the mask's. ``ellipses`` paints each
    object as the ellipse inscribed in its box (the box stays the annotation's ``bbox``).
    ``keypoints`` also writes ``person_keypoints_<split><year>.json``: the same images and
    annotations, every object a ``person`` (category id 1, KEYPOINT_NAMES, KEYPOINT_SKELETON)
    with :func:`object_keypoints`."""
    import json

    from pycocotools import mask as mask_util

    if segmentation not in (None, "polygon", "rle", "mixed"):
        raise ValueError(f"segmentation={segmentation!r}: None, polygon, rle or mixed")
    image_dir = os.path.join(root, f"{split}{year}")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    cats = [{"id": 7, "name": "cat"}, {"id": 1, "name": "dog"}, {"id": 3, "name": "bird"}]
    images, anns = [], []
    for k, (w, h, objects) in enumerate(scenes):
        image_id = first_id + 10 * k
        name = f"{image_id:012d}.{ext}"
        Image.fromarray(draw_scene(w, h, objects, ellipses)).save(
            os.path.join(image_dir, name), quality=95, subsampling=0
        )
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for obj in objects:
            x0, y0, x1, y1, cat, crowd = obj
            ann = {
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": cats[cat]["id"],
                "iscrowd": int(crowd),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
            }
            if segmentation is not None:
                mask = object_mask(w, h, obj, ellipses)
                polygon = segmentation == "polygon" or (
                    segmentation == "mixed" and ann["id"] % 2 == 1
                )
                if crowd:
                    ann["segmentation"] = uncompressed_rle(mask)
                elif polygon:
                    ann["segmentation"] = [object_polygon(obj, ellipses)]
                else:
                    ann["segmentation"] = compressed_rle(mask)
                segm = ann["segmentation"]
                if isinstance(segm, list):
                    rle = mask_util.merge(mask_util.frPyObjects(segm, h, w))
                elif isinstance(segm["counts"], list):
                    rle = mask_util.frPyObjects(segm, h, w)
                else:
                    rle = dict(segm, counts=segm["counts"].encode("ascii"))
                ann["area"] = float(mask_util.area(rle))
            anns.append(ann)
    # list images in reverse so the loader's ordering by id is not an accident of the file
    data = {"images": images[::-1], "annotations": anns, "categories": cats}
    path = os.path.join(root, "annotations", f"instances_{split}{year}.json")
    with open(path, "w") as fh:
        json.dump(data, fh)
    if keypoints:
        person = {
            "id": 1,
            "name": "person",
            "supercategory": "person",
            "keypoints": KEYPOINT_NAMES,
            "skeleton": KEYPOINT_SKELETON,
        }
        objects = [obj for _, _, objs in scenes for obj in objs]
        people = []
        for ann, obj in zip(anns, objects):
            kp = object_keypoints(obj, ann["id"])
            people.append(
                dict(ann, category_id=1, keypoints=kp, num_keypoints=sum(v > 0 for v in kp[2::3]))
            )
        data = {"images": images[::-1], "annotations": people, "categories": [person]}
        kp_path = os.path.join(root, "annotations", f"person_keypoints_{split}{year}.json")
        with open(kp_path, "w") as fh:
            json.dump(data, fh)
    return path


VOC_NAMES = ("aeroplane", "bicycle", "bird")


def make_voc(root, year=2007, split="test", scenes=SCENES):
    """ROOT/VOC<year>/{Annotations,JPEGImages,ImageSets/Main}; XML corners 1-based inclusive."""
    base = os.path.join(root, f"VOC{year}")
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    ids = []
    for k, (w, h, objects) in enumerate(scenes):
        file_id = f"{k:06d}"
        ids.append(file_id)
        Image.fromarray(draw_scene(w, h, objects)).save(
            os.path.join(base, "JPEGImages", file_id + ".jpg"), quality=95, subsampling=0
        )
        objs = "".join(
            f"<object><name>{VOC_NAMES[c]}</name><difficult>{int(d)}</difficult><bndbox>"
            f"<xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
            f"</bndbox></object>"
            for x0, y0, x1, y1, c, d in objects
        )
        xml = (
            f"<annotation><filename>{file_id}.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>"
        )
        with open(os.path.join(base, "Annotations", file_id + ".xml"), "w") as fh:
            fh.write(xml)
    with open(os.path.join(base, "ImageSets", "Main", f"{split}.txt"), "w") as fh:
        fh.write("\n".join(ids) + "\n")
    return base


def make_seglist(root, split="train", scenes=SCENES, ignore_border=3):
    """DRN lists; label = category index + 1 inside objects, 0 outside, 255 on a frame of
    ``ignore_border`` pixels. Images are PNG so colours are exact."""
    import json

    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "labels"), exist_ok=True)
    img_lines, lab_lines = [], []
    for k, (w, h, objects) in enumerate(scenes):
        arr = draw_scene(w, h, objects)
        lab = np.zeros((h, w), np.uint8)
        for x0, y0, x1, y1, cat, _ in objects:
            lab[y0:y1, x0:x1] = cat + 1
        b = ignore_border
        lab[:b], lab[-b:], lab[:, :b], lab[:, -b:] = 255, 255, 255, 255
        Image.fromarray(arr).save(os.path.join(root, "images", f"{split}{k}.png"))
        Image.fromarray(lab).save(os.path.join(root, "labels", f"{split}{k}.png"))
        img_lines.append(f"images/{split}{k}.png")
        lab_lines.append(f"labels/{split}{k}.png")
    with open(os.path.join(root, f"{split}_images.txt"), "w") as fh:
        fh.write("\n".join(img_lines) + "\n")
    with open(os.path.join(root, f"{split}_labels.txt"), "w") as fh:
        fh.write("\n".join(lab_lines) + "\n")
    with open(os.path.join(root, "info.json"), "w") as fh:
        json.dump(
            {
                "mean": [0.29, 0.33, 0.29],
                "std": [0.18, 0.19, 0.18],
                "classes": ["background", "cat", "dog", "bird"],
            },
            fh,
        )
    return root


# VOC's colour map for the first classes and void, as the devkit's labelcolormap gives them.
VOC_SEG_COLOURS = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0)}
VOC_VOID_COLOUR = (224, 224, 192)


def voc_seg_label_image(label):
    """A VOC SegmentationClass PNG: mode P, palette indices = classes, VOC's first colours."""
    img = Image.fromarray(np.asarray(label, np.uint8), "P")
    palette = [0] * 768
    for k, rgb in {**VOC_SEG_COLOURS, 255: VOC_VOID_COLOUR}.items():
        palette[3 * k : 3 * k + 3] = rgb
    img.putpalette(palette)
    return img


def make_voc_seg(root, year=2012, split="val", scenes=SCENES, void_border=1):
    """ROOT/VOC<year>/{JPEGImages,SegmentationClass,ImageSets/Segmentation}: label = category
    index + 1 inside objects (VOC's aeroplane, bicycle, bird), 0 outside, 255 (void) on a
    ``void_border`` frame around each object, as VOC draws object outlines. Returns the
    (image path, label array) of every item."""
    base = os.path.join(root, f"VOC{year}")
    for sub in ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    ids, items = [], []
    for k, (w, h, objects) in enumerate(scenes):
        file_id = f"{year}_{k:06d}"
        ids.append(file_id)
        lab = np.zeros((h, w), np.uint8)
        b = void_border
        for x0, y0, x1, y1, _, _ in objects:
            lab[max(y0 - b, 0) : y1 + b, max(x0 - b, 0) : x1 + b] = 255
        for x0, y0, x1, y1, cat, _ in objects:
            lab[y0:y1, x0:x1] = cat + 1
        image = os.path.join(base, "JPEGImages", file_id + ".jpg")
        Image.fromarray(draw_scene(w, h, objects)).save(image, quality=95, subsampling=0)
        voc_seg_label_image(lab).save(os.path.join(base, "SegmentationClass", file_id + ".png"))
        items.append((image, lab))
    with open(os.path.join(base, "ImageSets", "Segmentation", f"{split}.txt"), "w") as fh:
        fh.write("\n".join(ids) + "\n")
    return items


# --------------------------------------------------------------------------- textured seglist
TEXTURED_CLASSES = ["background", "solid", "checker"]


def textured_scene(rng, size=32):
    """(image uint8 [size,size,3], label uint8 [size,size]) of one scene whose classes are
    textures, never colours: the background is colour noise or stripes (horizontal or vertical,
    period 3 to 6, two random colours); class 1 is a disk of one random colour, class 2 a
    rectangle filled with a checkerboard of two random colours (2-pixel cells; the two colours
    of stripes and checks differ clearly). Every colour
    is drawn at random, so a pixel's colour says nothing about its class."""
    yy, xx = np.mgrid[:size, :size]

    def colours(n):  # n random colours; a pair differs by at least 150 (summed over RGB)
        while True:
            out = rng.integers(0, 256, (n, 3))
            if n == 1 or np.abs(out[0] - out[1]).sum() >= 150:
                return out

    if rng.random() < 0.5:
        image = rng.integers(0, 256, (size, size, 3))
    else:
        period = int(rng.integers(3, 7))
        axis = yy if rng.random() < 0.5 else xx
        image = colours(2)[((axis + int(rng.integers(period))) % period < period // 2) * 1]
    label = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        if rng.random() < 0.5:
            r = rng.uniform(4, 8)
            cy, cx = rng.uniform(r, size - r, 2)
            inside = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r * r
            image[inside] = colours(1)[0]
            label[inside] = 1
        else:
            h, w = rng.integers(7, 15, 2)
            y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
            inside = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
            image[inside] = colours(2)[((yy // 2 + xx // 2) % 2)[inside]]
            label[inside] = 2
    label[0, :], label[-1, :], label[:, 0], label[:, -1] = 255, 255, 255, 255
    return image.astype(np.uint8), label


def make_textured_seglist(root, split, n, seed, size=32):
    """DRN's lists under ``root`` for ``split``: ``n`` :func:`textured_scene` PNGs (seeded)
    with their label maps (a 1-pixel frame of 255 = ignore); ``info.json`` names the classes.
    Returns the (image path, label path) of every item."""
    import json

    rng = np.random.default_rng([seed, 0x5E6])
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    items = []
    for k in range(n):
        image, label = textured_scene(rng, size)
        rel = (f"images/{split}{k:04d}.png", f"labels/{split}{k:04d}.png")
        Image.fromarray(image).save(os.path.join(root, rel[0]))
        Image.fromarray(label).save(os.path.join(root, rel[1]))
        items.append(rel)
    for i, name in enumerate(("images", "labels")):
        with open(os.path.join(root, f"{split}_{name}.txt"), "w") as fh:
            fh.write("\n".join(item[i] for item in items) + "\n")
    with open(os.path.join(root, "info.json"), "w") as fh:
        json.dump({"classes": TEXTURED_CLASSES}, fh)
    return [(os.path.join(root, a), os.path.join(root, b)) for a, b in items]
