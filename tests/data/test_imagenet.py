"""imagenet format: class order, the DeNet test transform against a PIL oracle, lenet crops."""

import copy
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from denet.data import open_dataset
from denet.errors import DataError


@pytest.fixture
def imagenet_root(tmp_path):
    rng = np.random.default_rng(0)
    for wnid in ["n02", "n01", "n03"]:
        os.makedirs(tmp_path / wnid)
        for j in range(3):
            w, h = (90, 60) if j % 2 else (50, 80)
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / wnid / f"{wnid}_{j}.JPEG", quality=90)
    (tmp_path / "class_labels.txt").write_text("n03 crane\nn01 goldfish\nn02 shark\n")
    return str(tmp_path)


def test_class_order_and_test_transform(imagenet_root):
    ds = open_dataset(imagenet_root, "imagenet,crop=32")
    assert ds.classes == ["n03", "n01", "n02"] and ds.input_shape == (3, 32, 32)
    path, label = ds.items[4]
    assert label == 1 and os.path.basename(os.path.dirname(path)) == "n01"
    # oracle: PIL, shorter side -> 32 with ANTIALIAS, the other ceil-ed, centre crop
    img = Image.open(path).convert("RGB")
    w, h = img.size
    size = (32, int(np.ceil(h * 32 / w))) if w <= h else (int(np.ceil(w * 32 / h)), 32)
    img = img.resize(size, Image.Resampling.LANCZOS)
    x0, y0 = (size[0] - 32) // 2, (size[1] - 32) // 2
    want = np.asarray(img.crop((x0, y0, x0 + 32, y0 + 32)), np.float32).transpose(2, 0, 1)
    assert torch.allclose(ds[4][0], torch.from_numpy(want / 255.0), atol=1e-6)


def test_lenet_crop_and_mirror_in_training(imagenet_root):
    ds = open_dataset(imagenet_root, "imagenet,crop=24,crop_mode=lenet", train=True)
    shapes = {tuple(ds[i][0].shape) for i in range(len(ds))}
    assert shapes == {(3, 24, 24)}
    test = open_dataset(imagenet_root, "imagenet,crop=24,crop_mode=lenet")
    assert not torch.equal(ds[0][0], test[0][0])


def test_dataset_pickles_and_copies_with_its_epoch(imagenet_root):
    ds = open_dataset(imagenet_root, "imagenet,crop=24", train=True, seed=11)
    ds.set_epoch(5)
    for clone in (copy.deepcopy(ds), pickle.loads(pickle.dumps(ds))):
        assert clone.seed == 11 and clone.epoch == 5
        assert torch.equal(clone[2][0], ds[2][0])


def test_missing_class_folder(imagenet_root):
    with open(os.path.join(imagenet_root, "class_labels.txt"), "a") as fh:
        fh.write("n09 ghost\n")
    with pytest.raises(DataError, match="n09"):
        open_dataset(imagenet_root, "imagenet")
