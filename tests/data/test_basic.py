"""Basic Dir and npy classification sets, --distort-mode, mirroring and determinism, on
scikit-learn's handwritten digits written to a temporary tree."""

import os

import numpy as np
import pytest
import torch
from data_builders import write_digit_tree
from PIL import Image

from denet.data import make_loader, open_dataset
from denet.errors import DataError


def _expected(rows):
    """Item order of a Basic Dir: classes by name, then files by name."""
    return sorted(rows, key=lambda r: (str(r[1]), os.path.basename(r[0])))


def test_basic_dir_items_match_the_digits(digit_tree):
    root, rows = digit_tree
    ds = open_dataset(root, "png")
    assert ds.classes == [str(d) for d in range(10)]
    assert ds.num_classes == 10 and len(ds) == len(rows)
    assert ds.input_shape == (1, 8, 8)  # every image greyscale -> one channel
    for i, (_, label, pixels) in enumerate(_expected(rows)):
        image, target = ds[i]
        assert target == {"label": label}
        assert image.dtype == torch.float32 and image.shape == (1, 8, 8)
        np.testing.assert_allclose(image[0].numpy(), pixels / 255.0, rtol=0, atol=1e-7)


def test_mixed_tree_becomes_rgb(tmp_path, digits):
    images, targets = digits
    rows = write_digit_tree(str(tmp_path), images, targets, n=20, rgb_index=5)
    ds = open_dataset(str(tmp_path), "png")
    assert ds.input_shape == (3, 8, 8)
    image, _ = ds[0]
    path, _, pixels = _expected(rows)[0]
    assert image.shape == (3, 8, 8)
    for c in range(3):  # a grey image converted to RGB repeats its grey value
        np.testing.assert_allclose(image[c].numpy(), pixels / 255.0, atol=1e-7)
    assert open_dataset(str(tmp_path), "png,channels=1").input_shape == (1, 8, 8)


def test_npy_prefix_reads_data_and_labels(tmp_path, digits):
    images, targets = digits
    data = images[:30, None].astype(np.float32) / 255.0
    labels = targets[:30].astype(np.int32)
    prefix = str(tmp_path / "digits")
    np.save(prefix + "_data.npy", data)
    np.save(prefix + "_labels.npy", labels)
    ds = open_dataset(prefix, "npy")
    assert len(ds) == 30 and ds.input_shape == (1, 8, 8)
    assert ds.num_classes == int(labels.max()) + 1
    for i in (0, 7, 29):
        x, t = ds[i]
        assert torch.equal(x, torch.from_numpy(data[i]))
        assert t == {"label": int(labels[i])}
    # geometry on float data goes through float planes and keeps the values
    flipped = open_dataset(prefix, "npy", train=True, distort="m100")
    assert torch.equal(flipped[3][0], torch.from_numpy(data[3][..., ::-1].copy()))


def test_mirror_flips_about_half_the_items(digit_tree):
    root, _ = digit_tree
    plain = open_dataset(root, "png")
    ds = open_dataset(root, "png", train=True, mirror=True)
    flips = 0
    for i in range(len(ds)):
        x, y = ds[i]
        ref = plain[i][0]
        if not torch.equal(x, ref):
            assert torch.equal(x, ref.flip(-1))
            flips += 1
    assert 0.25 * len(ds) < flips < 0.75 * len(ds)
    # mirroring is off at test time even when asked for
    test_ds = open_dataset(root, "png", train=False, mirror=True)
    assert all(torch.equal(test_ds[i][0], plain[i][0]) for i in range(5))


def test_distort_offset_is_a_whole_pixel_shift(digit_tree):
    root, _ = digit_tree
    plain = open_dataset(root, "png")
    ds = open_dataset(root, "png", train=True, distort="o2")
    shifted = 0
    for i in range(20):
        x = ds[i][0][0].numpy()
        ref = plain[i][0][0].numpy()
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                want = np.zeros_like(ref)
                H, W = ref.shape
                want[max(dy, 0) : H + min(dy, 0), max(dx, 0) : W + min(dx, 0)] = ref[
                    max(-dy, 0) : H - max(dy, 0), max(-dx, 0) : W - max(dx, 0)
                ]
                if np.allclose(x, want, atol=1e-6):
                    matches.append((dx, dy))
        assert matches, f"item {i} is not a shift of at most 2 px"
        shifted += (0, 0) not in matches
    assert shifted > 10


def test_distort_rotation_and_scale_keep_size_and_mass(digit_tree):
    root, _ = digit_tree
    plain = open_dataset(root, "png")
    ds = open_dataset(root, "png", train=True, distort="r15 s10")
    changed = 0
    for i in range(10):
        x, ref = ds[i][0], plain[i][0]
        assert x.shape == ref.shape
        changed += not torch.allclose(x, ref)
    assert changed >= 8


def test_distort_rejects_unknown_letters(digit_tree):
    root, _ = digit_tree
    with pytest.raises(DataError, match="oX"):
        open_dataset(root, "png", train=True, distort="q5")


def test_items_depend_only_on_seed_epoch_and_index(digit_tree):
    root, _ = digit_tree
    ds = open_dataset(root, "png", train=True, distort="o2 r10 s10 m50", seed=7)
    ds.set_epoch(3)
    first = [ds[i][0] for i in range(10)]
    torch.manual_seed(123)
    np.random.seed(123)
    again = [ds[i][0] for i in reversed(range(10))][::-1]  # other order, other global seeds
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    ds.set_epoch(4)
    other = [ds[i][0] for i in range(10)]
    assert sum(not torch.equal(a, b) for a, b in zip(first, other)) >= 5
    ds.seed = 8
    ds.set_epoch(3)
    assert sum(not torch.equal(a, ds[i][0]) for i, a in enumerate(first)) >= 5


def _epoch_batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), torch.tensor([t["label"] for t in y])) for x, y in loader]


def test_resumed_run_replays_epochs_with_any_worker_count(digit_tree):
    root, _ = digit_tree
    opts = dict(train=True, distort="o1 r10 m50")
    one = make_loader(open_dataset(root, "png", **opts), 8, True, 0, seed=5)
    two = make_loader(open_dataset(root, "png", **opts), 8, True, 2, seed=5)
    run_a = [_epoch_batches(one, e) for e in range(3)]
    # persistent workers are already running when epoch 2 is set: they must see it
    run_b = [_epoch_batches(two, e) for e in range(3)]
    resumed = make_loader(open_dataset(root, "png", **opts), 8, True, 2, seed=5)
    run_c = _epoch_batches(resumed, 2)
    for a, b in zip(run_a[2], run_c):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for ea, eb in zip(run_a, run_b):
        for a, b in zip(ea, eb):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(run_a[0], run_a[1]))  # reshuffled


def test_a_batch_holds_one_target_dict_per_image(digit_tree):
    root, rows = digit_tree
    loader = make_loader(open_dataset(root, "png"), 16, False, 0, seed=0)
    images, targets = next(iter(loader))
    assert images.shape == (16, 1, 8, 8)
    assert [t["label"] for t in targets] == [r[1] for r in _expected(rows)[:16]]


def test_missing_and_corrupt_files_name_the_file(tmp_path, digit_tree):
    root, rows = digit_tree
    with pytest.raises(DataError, match="nowhere"):
        open_dataset(str(tmp_path / "nowhere"), "png")
    with pytest.raises(DataError, match="digits_data.npy"):
        open_dataset(str(tmp_path / "digits"), "npy")
    victim = _expected(rows)[4][0]
    with open(victim, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(DataError, match=os.path.basename(victim)):
        open_dataset(root, "png")
    ds = open_dataset(root, "png", skip_broken=True)
    assert len(ds) == len(rows) - 1 and ds.broken_count == 1


def test_truncated_image_fails_on_load_or_is_skipped(digit_tree, digits):
    root, rows = digit_tree
    images, _ = digits
    victim = _expected(rows)[2][0]
    big = np.kron(images[0], np.ones((8, 8), np.uint8))  # header intact, pixel data cut
    Image.fromarray(big).save(victim)
    data = open(victim, "rb").read()
    open(victim, "wb").write(data[: len(data) // 2])
    ds = open_dataset(root, "png")
    with pytest.raises(DataError, match=os.path.basename(victim)):
        ds[2]
    loader = make_loader(ds, 4, False, 2, seed=0)
    with pytest.raises(DataError) as err:
        list(loader)
    assert os.path.basename(victim) in str(err.value) and "Traceback" not in str(err.value)
    skipping = open_dataset(root, "png", skip_broken=True)
    with pytest.warns(UserWarning):
        x, t = skipping[2]
    assert torch.equal(x, ds[3][0]) and skipping.broken_count == 1
    batches = list(make_loader(skipping, 4, False, 2, seed=0))
    assert sum(len(b[1]) for b in batches) == len(ds)
    assert skipping.broken_count == 2  # the worker's skip is counted in the parent


def test_extension_errors(digit_tree):
    root, _ = digit_tree
    with pytest.raises(DataError, match="did you mean 'crop'"):
        open_dataset(root, "png,corp=4")
    with pytest.raises(DataError, match="did you mean 'mscoco'"):
        open_dataset(root, "mscocoo")
    with pytest.raises(DataError, match="images_per_subset"):
        open_dataset(root, "png,images_per_subset=1280")
    with pytest.raises(DataError, match="scale_mode"):
        open_dataset(root, "png,scale_mode=huge")
    with pytest.raises(DataError, match="skip_crowd applies only"):
        open_dataset(root, "png,skip_crowd")


def test_loader_keys_on_a_basic_dir(digit_tree):
    root, _ = digit_tree
    ds = open_dataset(root, "png,scale=16,scale_mode=warp,crop=12,crop_mode=center")
    assert ds.input_shape == (1, 12, 12) and ds[0][0].shape == (1, 12, 12)
    multi = open_dataset(root, "png,scale=16,crop=12,multicrop")
    x, _ = multi[0]
    assert x.shape == (10, 1, 12, 12)
    assert torch.equal(x[5], x[0].flip(-1))
