"""model-predict: classify (the JSON output against the model run in this process, the three
input kinds, one-line errors for bad files), segment (label maps against the model and the
ground truth, at the original size) and detect (boxes mapped back to original pixels, COCO
evaluation), and modes that do not fit the model. DeNet's detect modes (mscoco, voc, image) and
--params are in test_model_predict_detect.py."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import denet

DESC = "C[16,3] BN A P[2] C[32,3] BN A P.A R.B"
NAMES = [f"digit-{i}" for i in range(10)]


def one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    first = res.stderr.strip().splitlines()[0]
    for needle in needles:
        assert needle in first, res.stderr


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A digits classifier with spread-out probabilities: a compiled network whose BN running
    statistics were set by a few forward passes (no training needed for these tests)."""
    torch.manual_seed(0)
    model = denet.compile(DESC, (1, 8, 8), 10, border_mode="half")
    model.class_names = NAMES
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(64, 1, 8, 8))
    path = tmp_path_factory.mktemp("predict-model") / "digits.pt"
    denet.save(model, path)
    return str(path)


@pytest.fixture(scope="module")
def named_tree(digits_tree, tmp_path_factory):
    """The digits test tree with folders renamed to the model's class names (2 images each)."""
    _, test, _, _ = digits_tree
    root = tmp_path_factory.mktemp("named")
    for d in range(10):
        os.makedirs(root / NAMES[d])
        for name in sorted(os.listdir(os.path.join(test, str(d))))[:2]:
            shutil.copy(os.path.join(test, str(d), name), root / NAMES[d] / name)
    return str(root)


def expected_probs(model_path, paths):
    model = denet.load(model_path)
    model.eval()
    x = torch.stack(
        [torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32) / 255)[None] for p in paths]
    )
    with torch.no_grad():
        return model(x)


def test_tree_input_matches_the_model(tool, model_file, named_tree, tmp_path):
    out = tmp_path / "pred.json"
    res = tool(
        "model-predict",
        "--model",
        model_file,
        "--input",
        named_tree,
        "--predict-mode",
        "classify",
        "--output",
        out,
        "--batch-size",
        7,
        "--thread-num",
        2,
    )
    assert res.returncode == 0, res.stderr
    results = json.loads(out.read_text())
    paths = [r["path"] for r in results]
    assert len(paths) == 20 and paths == sorted(paths)
    probs = expected_probs(model_file, paths)
    hits = 0
    for r, p in zip(results, probs):
        assert r["label"] == os.path.basename(os.path.dirname(r["path"]))
        assert len(r["top5"]) == 5
        want_p, want_i = p.topk(5)
        assert [c for c, _ in r["top5"]] == [NAMES[i] for i in want_i.tolist()]
        np.testing.assert_allclose([q for _, q in r["top5"]], want_p.numpy(), atol=1e-6)
        hits += r["top5"][0][0] == r["label"]
    assert f"top-1 accuracy {100 * hits / 20:.2f}%" in res.stdout
    assert "20 labelled images" in res.stdout


def test_single_image_and_plain_folder(tool, model_file, named_tree, tmp_path):
    image = os.path.join(
        named_tree, NAMES[3], sorted(os.listdir(os.path.join(named_tree, NAMES[3])))[0]
    )
    out = tmp_path / "one.json"
    res = tool(
        "model-predict", "--model", model_file, "--input", image, "--output", out, "--thread-num", 0
    )
    assert res.returncode == 0, res.stderr
    (entry,) = json.loads(out.read_text())
    assert entry["path"] == image and "label" not in entry
    want = expected_probs(model_file, [image])[0]
    assert entry["top5"][0] == [
        NAMES[int(want.argmax())],
        pytest.approx(float(want.max()), abs=1e-6),
    ]
    assert "accuracy" not in res.stdout

    flat = tmp_path / "flat"
    flat.mkdir()
    for k, name in enumerate((NAMES[1], NAMES[7])):
        src = os.path.join(named_tree, name, sorted(os.listdir(os.path.join(named_tree, name)))[0])
        shutil.copy(src, flat / f"img{k}.png")
    (flat / "notes.txt").write_text("not an image")
    out = tmp_path / "flat.json"
    res = tool("model-predict", "--model", model_file, "--input", flat, "--output", out)
    assert res.returncode == 0, res.stderr
    results = json.loads(out.read_text())
    assert [os.path.basename(r["path"]) for r in results] == ["img0.png", "img1.png"]
    assert all("label" not in r for r in results)


def test_wrong_size_broken_image_and_bad_files(tool, model_file, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(folder / "a.png")
    Image.fromarray(np.zeros((10, 12), np.uint8), "L").save(folder / "b.png")
    res = tool(
        "model-predict", "--model", model_file, "--input", folder, "--output", tmp_path / "o.json"
    )
    one_line_error(res, str(folder / "b.png"), "12x10")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    for workers in (0, 1):
        res = tool(
            "model-predict",
            "--model",
            model_file,
            "--input",
            folder,
            "--output",
            tmp_path / "o.json",
            "--thread-num",
            workers,
        )
        one_line_error(res, str(folder / "b.png"))
    assert not (tmp_path / "o.json").exists()

    missing = tmp_path / "missing-dir"
    one_line_error(tool("model-predict", "--model", model_file, "--input", missing), str(missing))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not a zip")
    one_line_error(tool("model-predict", "--model", corrupt, "--input", folder), str(corrupt))
    one_line_error(
        tool(
            "model-predict",
            "--model",
            model_file,
            "--input",
            folder,
            "--predict-mode",
            "detect,mscoco",
        ),
        "detect",
    )


def test_bad_description_in_a_model_file(tool, model_file, tmp_path):
    """A model file whose string does not compile: one line naming the file, exit 2."""
    payload = torch.load(model_file, weights_only=True)
    payload["desc"] = "C[16,3] BN A P[2] CX[32,3] R.B"
    bad = tmp_path / "bad-desc.pt"
    torch.save(payload, bad)
    res = tool("model-predict", "--model", bad, "--input", model_file)
    one_line_error(res, str(bad), "CX")


# ----------------------------------------------------------------------------- segment
@pytest.fixture(scope="module")
def colour_segmenter(tmp_path_factory):
    """A segmentation model that reads the seg_tree's colours, set by hand: per pixel,
    background 0.2, red R - G, green G - R (a 1x1 conv with bias, then SEG)."""
    model = denet.compile("C.B[3,1] SEG", (3, 24, 24), 3)
    with torch.no_grad():
        model.l0_C.weight.copy_(
            torch.tensor([[0.0, 0, 0], [1, -1, 0], [-1, 1, 0]])[..., None, None]
        )
        model.l0_C.bias.copy_(torch.tensor([0.2, 0.0, 0.0]))
    model.class_names = ["background", "red", "green"]
    path = tmp_path_factory.mktemp("seg-model") / "colours.pt"
    denet.save(model, path)
    return str(path)


def _label(path):
    return np.asarray(Image.open(path)).astype(np.int64)


def test_segment_writes_label_maps_and_prints_miou(tool, colour_segmenter, seg_tree, tmp_path):
    root, _, val = seg_tree
    out = tmp_path / "maps"
    res = tool(
        "model-predict",
        "--model",
        colour_segmenter,
        "--input",
        root,
        "--extension",
        "seglist,val",
        "--output",
        out,
        "--batch-size",
        5,
    )
    assert res.returncode == 0, res.stderr
    model = denet.load(colour_segmenter).eval()
    for image in val:
        written = _label(out / os.path.relpath(image, root))
        x = torch.from_numpy(np.asarray(Image.open(image), np.float32) / 255).permute(2, 0, 1)
        with torch.no_grad():
            want = model(x[None])["out"][0].argmax(0).numpy()
        assert np.array_equal(written, want), image
        gt = _label(image.replace("images", "labels"))
        assert np.array_equal(written[gt != 255], gt[gt != 255])  # the colours are exact
    assert "segmented 12 image(s)" in res.stdout and "mIoU 100.0%" in res.stdout

    # the same images enlarged 1.5x for the model: the maps come back at the original size
    scaled = tmp_path / "scaled"
    res = tool(
        "model-predict",
        "--model",
        colour_segmenter,
        "--input",
        root,
        "--extension",
        "seglist,val,scale=36,crop=0",
        "--output",
        scaled,
    )
    assert res.returncode == 0, res.stderr
    agree = total = 0
    for image in val:
        written = _label(scaled / os.path.relpath(image, root))
        gt = _label(image.replace("images", "labels"))
        assert written.shape == gt.shape == (24, 24)
        agree += int((written == gt)[gt != 255].sum())
        total += int((gt != 255).sum())
    assert agree / total > 0.97, agree / total

    # plain images: maps named after the files, no mIoU without label maps
    plain = tmp_path / "plain"
    res = tool(
        "model-predict",
        "--model",
        colour_segmenter,
        "--input",
        os.path.dirname(val[0]),
        "--output",
        plain,
        "--thread-num",
        0,
    )
    assert res.returncode == 0, res.stderr
    assert sorted(os.listdir(plain)) == sorted(
        os.path.basename(p) for p in os.listdir(os.path.dirname(val[0]))
    )
    assert "mIoU" not in res.stdout


def test_modes_must_fit_the_model(tool, colour_segmenter, model_file, named_tree, seg_tree):
    root, _, _ = seg_tree
    one_line_error(
        tool(
            "model-predict",
            "--model",
            colour_segmenter,
            "--input",
            root,
            "--predict-mode",
            "classify",
        ),
        "classify",
        "segmentation",
    )
    one_line_error(
        tool(
            "model-predict",
            "--model",
            model_file,
            "--input",
            named_tree,
            "--predict-mode",
            "segment",
        ),
        "segment",
        "classification",
    )
    one_line_error(
        tool(
            "model-predict",
            "--model",
            model_file,
            "--input",
            named_tree,
            "--predict-mode",
            "multicrop",
        ),
        "multicrop",
    )
    one_line_error(
        tool("model-predict", "--model", colour_segmenter, "--input", root, "--extension", "npy"),
        "npy",
    )


# ----------------------------------------------------------------------------- detect
class ColourBoxes(torch.nn.Module):
    """A stand-in detector (the contract's evaluation output, no DET layer needed): one box per
    colour around the pixels where that channel is bright and the other dark, in the pixels of
    the image it is given."""

    task, classes, input_shape, class_names = "detection", 2, (3, 32, 32), ["red", "green"]

    def forward(self, images):
        out = []
        for img in images:
            boxes, labels = [], []
            for label, (on, off) in enumerate(((0, 1), (1, 0))):
                ys, xs = torch.nonzero((img[on] > 0.5) & (img[off] < 0.5), as_tuple=True)
                if len(xs):
                    boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                    labels.append(label)
            out.append(
                {
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    "scores": torch.full((len(boxes),), 0.9),
                    "labels": torch.tensor(labels, dtype=torch.int64),
                }
            )
        return out


def write_coco(root):
    """ROOT/annotations/instances_val2017.json and ROOT/val2017/: black images of several sizes,
    a red and a green rectangle each; returns {file name: [(label, [x0, y0, x1, y1]), ...]}."""
    scenes = [
        (40, 30, [(0, (4, 5, 20, 25)), (1, (22, 2, 38, 12))]),
        (30, 50, [(1, (3, 30, 27, 47))]),
        (64, 48, [(0, (10, 10, 50, 40)), (1, (52, 4, 62, 20))]),
    ]
    os.makedirs(os.path.join(root, "val2017"))
    os.makedirs(os.path.join(root, "annotations"))
    images, anns, truth = [], [], {}
    for k, (w, h, objects) in enumerate(scenes):
        arr = np.zeros((h, w, 3), np.uint8)
        name = f"{k + 1:012d}.png"
        for label, (x0, y0, x1, y1) in objects:
            arr[y0:y1, x0:x1] = (230, 20, 20) if label == 0 else (20, 230, 20)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": k + 1,
                    "category_id": 5 + label,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
        Image.fromarray(arr).save(os.path.join(root, "val2017", name))
        images.append({"id": k + 1, "file_name": name, "width": w, "height": h})
        truth[name] = objects
    with open(os.path.join(root, "annotations", "instances_val2017.json"), "w") as fh:
        json.dump(
            {
                "images": images,
                "annotations": anns,
                "categories": [{"id": 5, "name": "red"}, {"id": 6, "name": "green"}],
            },
            fh,
        )
    return truth


def test_detect_maps_boxes_to_original_pixels_and_evaluates(tmp_path, capsys):
    """mscoco images scaled (shorter side 64, so factors 2.13, 2.13 and 1.33) and batched with
    padding: the boxes the stand-in finds in the scaled images come back within a pixel of
    the annotations, and pycocotools scores them AP50 = 1."""
    from denet.cli import predict, predict_detect

    truth = write_coco(str(tmp_path / "coco"))
    out = tmp_path / "det.json"
    ns = predict.build_parser().parse_args(
        [
            "--model",
            "colour-boxes",
            "--input",
            str(tmp_path / "coco"),
            "--extension",
            "mscoco,2017-val,scale=64,crop=0",
            "--output",
            str(out),
            "--batch-size",
            "2",
            "--thread-num",
            "0",
        ]
    )
    model = ColourBoxes()
    predict_detect.run_detect(ns, model, model.class_names, torch.device("cpu"))
    results = json.loads(out.read_text())
    assert [os.path.basename(r["path"]) for r in results] == sorted(truth)
    for r in results:
        objects = truth[os.path.basename(r["path"])]
        assert r["labels"] == [label for label, _ in sorted(objects)]
        assert r["classes"] == [model.class_names[k] for k in r["labels"]]
        assert r["scores"] == [0.9] * len(objects)
        for box, (_, want) in zip(r["boxes"], sorted(objects)):
            np.testing.assert_allclose(box, want, atol=1.0)
    printed = capsys.readouterr().out
    assert "detected 5 object(s) in 3 image(s)" in printed
    ap50 = [line for line in printed.splitlines() if "IoU=0.50 " in line and "Precision" in line]
    assert ap50 and ap50[0].rstrip().endswith("1.000"), printed


def test_to_original_inverts_the_geometry():
    from denet.cli.predict import to_original

    target = {
        "scale": torch.tensor([2.0, 0.5], dtype=torch.float64),
        "offset": torch.tensor([-3.0, 4.0], dtype=torch.float64),
    }
    original = torch.tensor([[1.0, 2.0, 5.0, 10.0]])
    seen = original * torch.tensor([2.0, 0.5, 2.0, 0.5]) + torch.tensor([-3.0, 4.0, -3.0, 4.0])
    assert torch.allclose(to_original(seen, target), original.double())
    rotated = {"scale": torch.full((2,), float("nan")), "offset": torch.zeros(2)}
    assert torch.equal(to_original(seen, rotated), seen.double())
