"""R-CNN models through the tools: a small Mask R-CNN string trains on generated COCO scenes with
instance masks (ellipses, polygons) and reaches a mask AP50 of 0.5 through model-predict; bad
input (heads whose targets the data set lacks, a converter fed another architecture) is one
line with exit status 2."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))
from data_builders import make_coco  # noqa: E402
from test_model_train_tasks import read_log, scenes, train  # noqa: E402

# a small Mask R-CNN: one level at stride 4, an RPN with three anchor sizes, a 2-layer box
# head, a mask head of one conv and a 2x transposed conv (14x14 -> 28x28 masks)
MASK_RCNN = (
    "C[16,3] BN A P[2] C[32,3] BN A P[2] C[64,3] BN A @f "
    "RPN[12,20,32,pre_nms=300,post_nms=50,train_pre_nms=300,train_post_nms=100]($f) "
    "SAMPLE[64,0.25] @rois MRA[5,rois=rois,sampling_ratio=2]($f) C.B[128,5,border=valid] A "
    "DET.S[rois=rois] @dets MRA[14,rois=dets,sampling_ratio=2]($f) C.B[32,3] A "
    "DC[32,2,2,pad=0] A MASK[dets=dets]"
)
KEYPOINTS = (
    "C[16,3] BN A P[2] C[32,3] BN A @f RPN[16]($f) SAMPLE[32,0.25] @rois "
    "MRA[4,rois=rois]($f) C.B[32,4,border=valid] A DET.S[rois=rois] @dets "
    "MRA[8,rois=dets]($f) C.B[17,3] UP[2] KP[dets=dets]"
)
TRAIN, VAL = "mscoco,2017-train,crop=0,masks", "mscoco,2017-val,crop=0,masks"


def _segm_ap50(stdout: str) -> float:
    """AP50 of the segm table model-predict prints (pycocotools' summary)."""
    table = stdout[stdout.index("segm") :]
    line = next(x for x in table.splitlines() if "IoU=0.50 " in x and "(AP)" in x)
    return float(line.rsplit("=", 1)[1])


@pytest.mark.slow
def test_small_mask_rcnn_reaches_mask_ap50(tool, tmp_path):
    root = tmp_path / "coco"
    kw = {"segmentation": "polygon", "ellipses": True, "ext": "png"}
    make_coco(str(root), "train", 2017, scenes(300, 0, 64, (14, 30)), **kw)
    make_coco(str(root), "val", 2017, scenes(60, 1, 64, (14, 30)), first_id=5000, **kw)
    prefix = tmp_path / "out" / "mask"
    res = train(tool, MASK_RCNN, root, TRAIN, prefix, "0.003", "8", VAL)
    assert res.returncode == 0, res.stderr
    log = read_log(f"{prefix}_log.jsonl")
    assert {"train_loss_objectness", "train_loss_cls", "train_loss_mask"} <= set(log[-1])
    assert log[-1]["train_loss_mask"] < log[0]["train_loss_mask"]
    res = tool(
        "model-predict",
        "--model",
        f"{prefix}_final.pt",
        "--input",
        root,
        "--extension",
        VAL,
        "--predict-mode",
        "detect,mscoco",
        "--output",
        tmp_path / "det.json",
    )
    assert res.returncode == 0, res.stderr
    assert _segm_ap50(res.stdout) >= 0.5, res.stdout


def test_heads_need_their_targets(tool, tmp_path):
    """A mask head on a set without masks, a keypoint head on a set without keypoints."""
    root = tmp_path / "coco"
    make_coco(str(root), "train", 2017, scenes(4, 0, 32, (8, 15)), ext="png")
    for desc, what in ((MASK_RCNN, "instance masks"), (KEYPOINTS, "keypoints")):
        prefix = tmp_path / "out" / what.replace(" ", "_")
        res = train(tool, desc, root, "mscoco,2017-train,crop=0", prefix, "0.001", "1")
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and what in lines[0], res.stderr


def test_converter_refuses_another_architecture(tool, tmp_path):
    from denet.cli.convert_rcnn import reference_model

    faster = tmp_path / "faster.pth"
    torch.save(reference_model("fasterrcnn_resnet50_fpn").state_dict(), faster)
    resnet = tmp_path / "resnet.pth"
    torch.save(
        {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, resnet
    )
    cases = [
        ("maskrcnn_resnet50_fpn", faster, "missing keys"),  # masks asked of a box-only model
        ("fasterrcnn_resnet50_fpn", resnet, "not a torchvision R-CNN"),
    ]
    for arch, path, message in cases:
        out = tmp_path / f"{arch}.pt"
        res = tool(
            "model-convert",
            "--format",
            "torchvision",
            "--arch",
            arch,
            "--input",
            path,
            "--output",
            out,
        )
        assert res.returncode == 2, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr, res.stderr
        assert not out.exists()
