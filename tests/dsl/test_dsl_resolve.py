"""Resolver: argument binding, graph wiring, shape inference and the semantic error messages."""

import pytest
from denet_strings import DENET_STRINGS

import denet
from denet import DescError
from denet.dsl import CompileOptions, parse, resolve
from denet.layers import Arg, LayerDef, conv, make_registry


def graph(desc, shape=(3, 32, 32), classes=10, **options):
    return resolve(parse(desc), shape, classes, CompileOptions.make(**options))


def error(desc, shape=(3, 32, 32), classes=10, **options):
    with pytest.raises(DescError) as e:
        graph(desc, shape, classes, **options)
    text = str(e.value)
    assert "Traceback" not in text
    lines = text.split("\n")
    assert len(lines) == 3 and lines[1] == "  " + desc.split("\n")[(e.value.line or 1) - 1]
    return e.value


def caret_column(err):
    return err.column


def test_cifar_readme_shapes():
    g = graph("C[128,3] BN A P[2] C[256,3] BN A P[2] C[512,3] BN A P.A R", border_mode="half")
    shapes = [str(n.shape) for n in g.nodes]
    assert shapes == ["128x32x32"] * 3 + ["128x16x16"] + ["256x16x16"] * 3 + ["256x8x8"] + [
        "512x8x8"
    ] * 3 + ["512x1x1", "10"]
    assert g.nodes[7].shape.stride == 4


def test_simple_cifar10_shapes_with_border_same():
    desc = open("examples/simple-cifar10.desc").read()
    g = graph(desc, border_mode="same")
    by_token = [(n.token, str(n.shape)) for n in g.nodes]
    assert by_token[0] == ("B[3]", "3x38x38")
    assert by_token[4] == ("C[96,2]", "96x38x38")  # even kernel keeps the size
    assert ("P.A[2]", "64x19x19") in by_token
    assert by_token[-1] == ("R.C[6]", "10")


def test_unknown_type_did_you_mean():
    err = error("C[8,3] BM A")
    assert str(err).startswith("unknown layer type 'BM'; did you mean")
    assert "'BN'" in str(err).split("\n")[0]
    assert err.column == 8


@pytest.mark.parametrize("desc", [d for d in DENET_STRINGS if "DNC" in d])
def test_denet_detector_strings_compile_with_the_papers_head_shapes(desc):
    # the skip sources these strings expect (model-modify inserted them into the backbone)
    base = "C[64,3] " + "".join(f"SKIPSRC[{i}] P[2] " for i in range(desc.count("SKIP[")))
    m = denet.compile(base + desc, (3, 64, 64), 80, border_mode="half")
    dns = next(n for n in m.graph.nodes if n.type == "DNS")
    dnc = next(n for n in m.graph.nodes if n.type == "DNC")
    g, sn, f = dns.args["grid_size"], dns.args["sample_num"], dnc.args["sample_feat"]
    # reference section 2.4: 576 RoIs x 4706 features (DeNet-34 std/skip), 2304 x 4802 (wide),
    # 6274 features for DeNet-101
    want = {(7, 24, 96): 4706, (10, 48, 48): 4802, (7, 24, 128): 6274, (7, 48, 128): 6274}
    assert (dns.shape.channels, dns.shape.height, dns.shape.width) == (want[g, sn, f], sn, sn)
    assert m.task == "detection" and m.loss_names == ("loss_corner", "loss_cls", "loss_box")


@pytest.mark.parametrize(
    "desc, start, column",
    [
        (
            "C[8,3,1,2]",
            "C[8,3,1,2]: C takes at most 3 positional arguments (C[filters, size=…, "
            "stride=…]), got 4",
            9,
        ),
        ("C.X[8,3]", "C.X[8,3]: C needs kw", 1),
        ("C[8,3.5]", "C[8,3.5]: size must be an integer, not 3.5", 5),
        ("C[8,abc]", "C[8,abc]: size must be an integer, not 'abc'", 5),
        ("C[0,3]", "C[0,3]: filters must be >= 1, not 0", 3),
        ("D[1.5]", "D[1.5]: rate must be <= 1, not 1.5", 3),
        (
            "C[8,3,dilaton=2]",
            "C[8,3,dilaton=2]: C has no argument 'dilaton'; did you mean 'dilation'?",
            7,
        ),
        ("C[8,3,size=3]", "C[8,3,size=3]: argument 'size' given twice", 7),
        ("C.Q[8]", "C.Q[8]: C has no tag 'Q' (its tags: B, X)", 1),
        ("BN[0.9,1e-5,2]", "BN[0.9,1e-5,2]: batch renormalisation is not supported", 13),
        ("A[sigmod]", "A[sigmod]: kind must be one of none, sigmoid", 3),
        ("C[8,3,init=he-sideways]", "C[8,3,init=he-sideways]: unknown weight init", 7),
        ("SPLIT[1]", "SPLIT[1]: SPLIT takes no positional arguments", 7),
    ],
)
def test_argument_errors(desc, start, column):
    err = error(desc)
    assert str(err).startswith(start), str(err)
    assert err.column == column


def test_skip_without_skipsrc():
    err = error("C[8,3] SKIPSRC[0] C[8,3] SKIP[1]")
    assert str(err).startswith("SKIP[1]: SKIP[1] has no SKIPSRC[1] before it")
    assert err.column == 26


def test_skipsrc_after_skip_is_too_late():
    err = error("C[8,3] SKIP C[8,3] SKIPSRC")
    assert "SKIP[0] has no SKIPSRC[0] before it" in str(err) and err.column == 8


def test_channel_mismatch_at_a_merge():
    err = error("C[8,3] SUM(C[16,3] | C[8,3])")
    assert str(err).startswith(
        "SUM(…): channel mismatch at SUM: branch 1 gives 16x28x28, branch 2 gives 8x28x28"
    )
    assert err.column == 8
    err = error("C[8,3] MAX(C[8,3] | C[8,1])")
    assert "shape mismatch at MAX" in str(err)


def test_skip_spatial_mismatch_and_projection():
    err = error("C[8,3] SKIPSRC P[2] SKIP")
    assert "spatial size mismatch at SKIP" in str(err)
    g = graph("C[8,3] SKIPSRC C[16,1] SKIP")
    assert g.nodes[-1].inputs == ("l2_C", "l1_SKIPSRC") and g.nodes[-1].shape.channels == 16


def test_taps_and_references():
    g = graph("C[8,3] @a P[2] C[8,3] @b CAT($a P[2] C[8,3] | $b |) ", border_mode="half")
    cat = g.nodes[-1]
    assert cat.type == "CAT" and cat.shape.channels == 24
    assert g.node(cat.inputs[2]).name == "l4_tap"
    err = error("C[8,3] $nope")
    assert str(err).startswith("$nope refers to no earlier @nope") and err.column == 8
    err = error("C[8,3] @a C[8,3] @a")
    assert "@a is defined twice" in str(err) and err.column == 18


def test_dead_end_is_reported():
    err = error("C[8,3] @a C[4,3] $a C[2,3]")
    assert "never used" in str(err) and err.column == 11


def test_split_inside_a_branch_is_refused():
    err = error("C[8,3] SUM(SPLIT C[8,3] | )", border_mode="half")
    assert "must be at the top level" in str(err)


def test_rep_repeats_with_own_names():
    g = graph("REP[3](C[8,3] BN)", border_mode="half")
    assert [n.name for n in g.nodes] == [
        "l1_C_0",
        "l2_BN_0",
        "l1_C_1",
        "l2_BN_1",
        "l1_C_2",
        "l2_BN_2",
    ]


def test_aspp_in_one_string():
    desc = (
        "C[64,3] SUM(C.B[21,3,dilation=6] | C.B[21,3,dilation=12] | C.B[21,3,dilation=18] "
        "| C.B[21,3,dilation=24])"
    )
    g = graph(desc, shape=(3, 65, 65), border_mode="half")
    assert str(g.output_shape) == "21x65x65"
    assert [n.args["dilation"] for n in g.nodes if n.type == "C"][1:] == [6, 12, 18, 24]


def test_output_size_problems():
    err = error("C[8,7] C[8,7] C[8,7] C[8,7] C[8,7]", shape=(3, 20, 20))
    assert "output would be empty" in str(err)
    assert "needs the number of classes" in str(error("R", classes=None))
    assert "stride 1" in str(error("C[8,3,2]", border_mode="same"))
    assert "only border mode half" in str(error("DC[8,3,2]"))


def test_bad_options_and_input_shapes():
    with pytest.raises(denet.DenetError, match="unknown border mode 'middle'"):
        denet.compile("C[8,3]", (3, 8, 8), border_mode="middle")
    with pytest.raises(denet.DenetError, match="unknown activation"):
        denet.compile("C[8,3]", (3, 8, 8), activation="swish")
    with pytest.raises(denet.DenetError, match="unknown weight init"):
        denet.compile("C[8,3]", (3, 8, 8), weight_init="glorot")
    with pytest.raises(DescError, match="input shape must be positive"):
        denet.compile("C[8,3]", (3, 0, 8))


def test_isolated_registry():
    registry = make_registry([conv])
    assert registry.names() == ["C", "DC"]

    @registry.register
    class Twice(LayerDef):
        type = "TW"
        args = (Arg("n", "int", 2, min=1),)

        def shape(self, call):
            return call.input.with_(channels=call.input.channels * call.args["n"])

    g = resolve(parse("C[4,3] TW[3]"), (1, 8, 8), None, CompileOptions(), registry)
    assert g.output_shape.channels == 12
    with pytest.raises(DescError, match="unknown layer type 'BN'"):
        resolve(parse("BN"), (1, 8, 8), None, CompileOptions(), registry)
    assert "BN" in make_registry()
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(Twice)
