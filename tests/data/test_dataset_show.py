"""bin/dataset-show writes what the network sees, with boxes and label maps drawn."""

import os
import subprocess
import sys

import numpy as np
from data_builders import SCENES, make_coco, make_seglist
from PIL import Image

from denet.cli.dataset_show import PALETTE, main
from denet.data import open_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_detection_items_with_boxes(tmp_path, capsys):
    make_coco(str(tmp_path / "coco"))
    out = tmp_path / "show"
    assert (
        main(
            [
                "--input",
                str(tmp_path / "coco"),
                "--extension",
                "mscoco,2017-val,scale=64,crop=64,scale_mode=large",
                "--output",
                str(out),
                "-n",
                "3",
                "--zoom",
                "2",
            ]
        )
        == 0
    )
    files = sorted(os.listdir(out))
    assert files == ["000000.png", "000001.png", "000002.png"]
    ds = open_dataset(str(tmp_path / "coco"), "mscoco,2017-val,scale=64,crop=64,scale_mode=large")
    _, t = ds[0]
    img = np.asarray(Image.open(out / "000000.png"))
    assert img.shape == (128, 128, 3)
    x0, y0 = (int(v * 2) for v in t["boxes"][0][:2])
    label = int(t["labels"][0])
    # the box outline is drawn in its class colour at its top-left corner
    assert tuple(img[y0 + 5, x0]) == tuple(PALETTE[label])
    # with a black rim just outside it, so it shows on an object of the same colour
    assert tuple(img[y0 + 5, x0 - 1]) == (0, 0, 0)
    assert "3 of 5 items" in capsys.readouterr().out


def test_segmentation_train_items_with_masks(tmp_path):
    make_seglist(str(tmp_path / "seg"), "train")
    out = tmp_path / "show"
    assert (
        main(
            [
                "--input",
                str(tmp_path / "seg"),
                "--extension",
                "seglist,random_rotate=10",
                "--output",
                str(out),
                "--train",
                "--distort-mode",
                "o2",
                "m50",
                "-n",
                "2",
            ]
        )
        == 0
    )
    assert len(os.listdir(out)) == 2
    w, h, _ = SCENES[0]
    assert Image.open(out / "000000.png").size == (w * (256 // w), h * (256 // w))


def test_bad_extension_is_one_line_and_status_2(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    res = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "bin", "dataset-show"),
            "--input",
            str(tmp_path),
            "--extension",
            "png,corp=3",
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "did you mean 'crop'" in res.stderr


def test_instance_masks_and_keypoints_are_drawn(tmp_path):
    """With the masks and keypoints flags, each mask is blended in its class colour (0.55 of the
    pixel, 0.45 of the colour) and each labelled keypoint is a dot of that colour."""
    from denet.cli.drawing import class_color

    make_coco(str(tmp_path / "coco"), segmentation="polygon", keypoints=True, ext="png")
    base, z = "mscoco,2017-val,crop=0", 3
    for name, ext in (("plain", base), ("instances", base + ",masks,keypoints")):
        argv = ["--input", str(tmp_path / "coco"), "--extension", ext, "--output"]
        assert main(argv + [str(tmp_path / name), "-n", "1", "--zoom", str(z)]) == 0
    plain = np.asarray(Image.open(tmp_path / "plain" / "000000.png")).astype(np.float64)
    drawn = np.asarray(Image.open(tmp_path / "instances" / "000000.png")).astype(np.float64)
    _, t = open_dataset(str(tmp_path / "coco"), base + ",masks,keypoints")[0]
    label = int(t["labels"][0])
    mask = t["masks"][0].numpy().astype(bool).repeat(z, 0).repeat(z, 1)
    # inside the mask, away from the box outline, its caption and the keypoint dots
    inner = mask.copy()
    x0, y0, x1, y1 = (int(v * z) for v in t["boxes"][0])
    inner[: y0 + 16], inner[y1 - 3 :], inner[:, : x0 + 4], inner[:, x1 - 3 :] = (False,) * 4
    for x, y, _ in t["keypoints"].reshape(-1, 3).tolist():
        inner[max(0, int(y * z) - 6) : int(y * z) + 7, max(0, int(x * z) - 6) : int(x * z) + 7] = 0
    assert inner.sum() > 50
    blended = np.round(0.55 * plain[inner] + 0.45 * np.array(class_color(label)))
    assert np.abs(drawn[inner] - blended).max() <= 1
    x, y, v = t["keypoints"][0, 0].tolist()
    assert v > 0 and tuple(drawn[int(y * z), int(x * z)]) == class_color(label)
