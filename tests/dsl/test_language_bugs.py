"""Strings a user tried that used to misbehave; each test failed before its fix."""

import subprocess
import sys

import pytest

import denet
from denet import DescError


def compile_error(desc, shape=(1, 8, 8), classes=3, **kw):
    with pytest.raises(DescError) as err:
        denet.compile(desc, shape, classes, **kw)
    return str(err.value)


def test_a_tap_never_read_does_not_hide_a_dead_layer():
    msg = compile_error("C[8,3] @a C[4,1] @b $a C[2,1]", (1, 16, 16))
    assert msg.startswith("C[4,1]: its output is never used")
    assert msg.endswith("\n  C[8,3] @a C[4,1] @b $a C[2,1]\n            ^")
    # a tap that is never read is fine when the chain goes on through it
    denet.compile("C[8,3] @a C[4,1]", (1, 16, 16))


@pytest.mark.parametrize(
    "desc, token",
    [
        ("C[4,3] R B[1]", "B[1]"),
        ("C[4,3] P[2] R B", "B"),
        ("C[4,3] R DC[3,3]", "DC[3,3]"),
        ("C[4,3] R C[3,1]", "C[3,1]"),
        ("C[4,3] R BN", "BN"),
        ("C[4,3] R P[2]", "P[2]"),
        ("C[4,3] R SUM( | )", "SUM(…)"),
    ],
)
def test_layers_after_a_vector_give_a_desc_error(desc, token):
    msg = compile_error(desc, border_mode="half")
    assert msg.startswith(f"{token}: "), msg
    assert "a feature map" in msg and "a vector" in msg


def test_layers_that_take_vectors_still_work():
    m = denet.compile("C[4,3] R A D I", (1, 8, 8), 3, border_mode="half")
    assert m.graph.output_shape.kind == "vector"


def test_deconvolution_to_an_empty_map_fails_at_compile_time():
    msg = compile_error("DC[3,2,border=half]", (1, 1, 1))
    assert msg.startswith("DC[3,2,border=half]: output would be empty (0x0)")


def test_dsl_is_reachable_from_a_plain_import_denet():
    code = "import denet; print(denet.dsl.canonical('C[64,3,1] BN'))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "C[64,3] BN"


@pytest.mark.parametrize(
    "desc, quoted",
    [
        ("C[128, 3, 1] C[8,3,dilaton=2]", "C[8,3,dilaton=2]: "),
        ("BN[0.9,1e-5,2]", "BN[0.9,1e-5,2]: "),
        ("C.BX[4,3,3,1,1,groups=3]", "C.BX[4,3,3,1,1,groups=3]: "),
    ],
)
def test_errors_quote_the_token_as_typed(desc, quoted):
    assert compile_error(desc, (4, 8, 8)).startswith(quoted)
