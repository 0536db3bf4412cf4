"""Tools that take a layer type accept DeNet's JSON type names (denet-original.md 1.2) too."""

import pytest

from denet.layers import REGISTRY

DENET_TYPES = {
    "conv": "C",
    "deconv": "DC",
    "pool": "P",
    "pool-inv": "PI",
    "batchnorm": "BN",
    "batchnorm-relu": "BNA",
    "activation": "A",
    "dropout": "D",
    "border": "B",
    "crop-mirror": "CM",
    "regression": "R",
    "resnet": "RSN",
    "split": "SPLIT",
    "skip-src": "SKIPSRC",
    "skip": "SKIP",
    "denet-corner": "DNC",
    "denet-sparse": "DNS",
    "denet-detect": "DND",
}


@pytest.mark.parametrize("name, ours", sorted(DENET_TYPES.items()))
def test_denet_json_names_resolve(name, ours):
    assert REGISTRY.resolve(name).type == ours
    assert REGISTRY.resolve(ours).type == ours
    assert REGISTRY.get(name) is None  # the language itself keeps its own names


def test_unknown_names_resolve_to_none():
    assert REGISTRY.resolve("denet-nothing") is None
    names = [t.denet_name for t in REGISTRY if t.denet_name]
    assert len(names) == len(set(names)) == len(DENET_TYPES)
