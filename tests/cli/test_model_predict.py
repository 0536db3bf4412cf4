"""model-predict --predict-mode classify: the JSON output against the model run in this process,
the three input kinds, and one-line errors for bad files."""
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
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32) / 255)[None]
                     for p in paths])
    with torch.no_grad():
        return model(x)


def test_tree_input_matches_the_model(tool, model_file, named_tree, tmp_path):
    out = tmp_path / "pred.json"
    res = tool("model-predict", "--model", model_file, "--input", named_tree,
               "--predict-mode", "classify", "--output", out, "--batch-size", 7,
               "--thread-num", 2)
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
    image = os.path.join(named_tree, NAMES[3], sorted(os.listdir(
        os.path.join(named_tree, NAMES[3])))[0])
    out = tmp_path / "one.json"
    res = tool("model-predict", "--model", model_file, "--input", image, "--output", out,
               "--thread-num", 0)
    assert res.returncode == 0, res.stderr
    (entry,) = json.loads(out.read_text())
    assert entry["path"] == image and "label" not in entry
    want = expected_probs(model_file, [image])[0]
    assert entry["top5"][0] == [NAMES[int(want.argmax())], pytest.approx(float(want.max()),
                                                                          abs=1e-6)]
    assert "accuracy" not in res.stdout

    flat = tmp_path / "flat"
    flat.mkdir()
    for k, name in enumerate((NAMES[1], NAMES[7])):
        src = os.path.join(named_tree, name, sorted(os.listdir(os.path.join(named_tree,
                                                                             name)))[0])
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
    res = tool("model-predict", "--model", model_file, "--input", folder,
               "--output", tmp_path / "o.json")
    one_line_error(res, str(folder / "b.png"), "12x10")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    for workers in (0, 1):
        res = tool("model-predict", "--model", model_file, "--input", folder,
                   "--output", tmp_path / "o.json", "--thread-num", workers)
        one_line_error(res, str(folder / "b.png"))
    assert not (tmp_path / "o.json").exists()

    missing = tmp_path / "missing-dir"
    one_line_error(tool("model-predict", "--model", model_file, "--input", missing), str(missing))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not a zip")
    one_line_error(tool("model-predict", "--model", corrupt, "--input", folder), str(corrupt))
    one_line_error(tool("model-predict", "--model", model_file, "--input", folder,
                        "--predict-mode", "detect,mscoco"), "detect")


def test_bad_description_in_a_model_file(tool, model_file, tmp_path):
    """A model file whose string does not compile: one line naming the file, exit 2."""
    payload = torch.load(model_file, weights_only=True)
    payload["desc"] = "C[16,3] BN A P[2] CX[32,3] R.B"
    bad = tmp_path / "bad-desc.pt"
    torch.save(payload, bad)
    res = tool("model-predict", "--model", bad, "--input", model_file)
    one_line_error(res, str(bad), "CX")
