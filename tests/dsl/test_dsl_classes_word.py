"""The word `classes` as an integer argument is the compile option's class count, so one
segmentation string serves every data set (DRNSeg's seg conv, DeepLab's ASPP)."""

import pytest
import torch

import denet
from denet.dsl import canonical


@pytest.mark.parametrize("classes", [3, 19])
def test_classes_word_takes_the_class_count(classes):
    m = denet.compile("C[8,3] BN A C.B[classes,1] SEG", (3, 16, 16), classes, border_mode="half")
    assert m.eval()(torch.rand(1, 3, 16, 16))["out"].shape == (1, classes, 16, 16)
    assert m.desc == "C[8,3] BN A C.B[classes] SEG"  # the canonical form keeps the word


def test_classes_word_needs_a_class_count_and_an_integer_argument():
    with pytest.raises(denet.DescError, match=r"`classes` stands for the class count") as err:
        denet.compile("C[8,3] C.B[classes,1]", (3, 16, 16))
    assert str(err.value).splitlines()[-1].index("^") == len("  C[8,3] C.B[")
    with pytest.raises(denet.DescError, match="border"):
        denet.compile("C[8,3,border=classes]", (3, 16, 16), 4)
    assert canonical("C.B[classes,3]") == "C.B[classes,3]"
