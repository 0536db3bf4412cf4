"""Model files whose weights-only load succeeds but whose fields are wrong are refused with a
ModelFileError naming the field; a weight mismatch names the keys; save leaves no temporary
behind, names its temporary after the target, and gives the file the umask's permissions."""

import os
import stat

import pytest
import torch

import denet
from denet.errors import ModelFileError
from denet.model_file import stale_temporaries

DESC = "C[4,3] BN A P.A R"


@pytest.fixture
def payload(tmp_path):
    m = denet.compile(DESC, (3, 8, 8), 2, border_mode="half")
    denet.save(m, tmp_path / "ok.pt")
    return torch.load(tmp_path / "ok.pt", weights_only=True)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("classes", "x", "classes is x, not a positive integer"),
        ("classes", 0, "classes is 0"),
        ("classes", True, "classes is True"),
        ("input_shape", None, "input_shape is None, not three positive integers"),
        ("input_shape", [3, 8], "input_shape is"),
        ("input_shape", [3, -8, 8], "input_shape is"),
        ("options", [1, 2], "options is [1, 2], not a dictionary"),
        ("options", {"border_mode": "half", "evil": 1}, "unknown option 'evil'"),
        ("state_dict", None, "state_dict is not a dictionary of named tensors"),
        ("state_dict", {"l0_C.weight": [1.0]}, "state_dict is not a dictionary of named tensors"),
        ("class_names", 7, "class_names is 7, not a list of strings"),
        ("class_names", ["a", "b", "c"], "3 class_names for 2 classes"),
        ("desc", 12, "desc is int, not a string"),
        ("train_state", [1], "train_state is neither empty nor a dictionary"),
    ],
)
def test_wrong_fields_are_named(tmp_path, payload, field, value, message):
    payload[field] = value
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match="corrupt model file") as err:
        denet.load(path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_weight_mismatch_names_keys_and_shapes(tmp_path, payload):
    state = payload["state_dict"]
    state["l0_C.weight"] = torch.zeros(5, 3, 3, 3)
    state["extra.weight"] = torch.zeros(1)
    del state["l1_BN.running_mean"]
    torch.save(payload, tmp_path / "w.pt")
    with pytest.raises(ModelFileError) as err:
        denet.load(tmp_path / "w.pt")
    text = str(err.value)
    assert "missing l1_BN.running_mean" in text
    assert "unexpected extra.weight" in text
    assert "l0_C.weight (5, 3, 3, 3) (wants (4, 3, 3, 3))" in text


def test_save_leaves_nothing_behind_and_follows_the_umask(tmp_path):
    m = denet.compile(DESC, (3, 8, 8), 2, border_mode="half")
    old = os.umask(0o022)
    try:
        denet.save(m, tmp_path / "run_epoch000.pt")
    finally:
        os.umask(old)
    assert sorted(os.listdir(tmp_path)) == ["run_epoch000.pt"]
    assert stat.S_IMODE(os.stat(tmp_path / "run_epoch000.pt").st_mode) == 0o644
    # what a save killed mid-write leaves is found by the prefix of its target
    (tmp_path / ".run_final.pt.tmp-abc123").write_bytes(b"half a file")
    (tmp_path / ".other_final.pt.tmp-zzz").write_bytes(b"not ours")
    assert [os.path.basename(p) for p in stale_temporaries(str(tmp_path / "run"))] == [
        ".run_final.pt.tmp-abc123"
    ]
