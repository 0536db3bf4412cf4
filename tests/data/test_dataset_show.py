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
