"""Canonical strings: every example round-trips to the same graph; the form is stable."""

import os

import pytest
import torch
from example_settings import EXAMPLES, settings

import denet
from denet.dsl import canonical


def test_all_examples_are_there():
    names = {os.path.basename(p)[:-5] for p in EXAMPLES}
    assert {
        "cifar-readme",
        "simple-cifar10",
        "resnet34-imagenet",
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: os.path.basename(p))
def test_canonical_round_trip_of_every_example(path):
    desc = open(path).read()
    shape, classes, border = settings(path)  # as its comments say
    with torch.device("meta"):
        a = denet.compile(desc, shape, classes, border_mode=border)
        b = denet.compile(canonical(desc), shape, classes, border_mode=border)
    assert a.graph.signature() == b.graph.signature()
    assert {k: v.shape for k, v in a.state_dict().items()} == {
        k: v.shape for k, v in b.state_dict().items()
    }
    assert canonical(canonical(desc)) == canonical(desc)
    assert a.desc == canonical(desc)  # Model.desc is the canonical string


@pytest.mark.parametrize(
    "desc, expected",
    [
        ("C[128,3,1]   BN[0.9,1e-5]  A", "C[128,3] BN A"),
        ("R.TB P.BA[3,3,0]", "R.BT P.AB[3,3]"),
        ("C[filters=8,size=3,dilation=1,groups=2]", "C[8,3,groups=2]"),
        ("C[8,stride=2]", "C[8,stride=2]"),
        ("BN[0.99] D[0.50]", "BN[0.99] D"),
        ("SUM( C[4,3,dilation=2]|C[4,3] | ) @a $a", "SUM(C[4,3,dilation=2] | C[4,3] | ) @a $a"),
        (
            "# comment\nSKIPSRC.X[0]\nSKIP[0] C[8,init=0.01,lr=1.0,frozen=0]",
            "SKIPSRC.X SKIP C[8,init=0.01]",
        ),
        ("REP[2](C[8,3] BN)", "REP[2](C[8,3] BN)"),
        ("DNC[96,100]", "DNC[96,100]"),  # unknown types are kept as written
    ],
)
def test_canonical_forms(desc, expected):
    assert canonical(desc) == expected


def test_canonical_of_a_bad_string_raises():
    with pytest.raises(denet.DescError):
        canonical("C[8,3")
