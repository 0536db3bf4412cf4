"""Hostile description strings (issue 13): every one is refused quickly with one DescError that
names the token, never another exception, a hang or an allocation of terabytes.

Each case below hung, raised a RuntimeError / TypeError / VisitError / RecursionError, or
compiled to an unusable model before the compiler had limits (docs/language.md, Limits).
The timeouts only turn a regression into a failure instead of a hang; nothing here is timed.
"""

import math
import os
import sys

import pytest
import torch
from example_settings import EXAMPLES, settings

import denet
from denet import DenetError, DescError
from denet.dsl import CompileOptions, Limits, canonical, limit, parse, resolve
from denet.dsl.limits import ENV_VARS, current
from denet.layers import REGISTRY, Arg, parse_weight_init

pytestmark = pytest.mark.timeout(60)


def refused(desc, shape=(3, 32, 32), classes=10, **options) -> DescError:
    """The DescError of compiling ``desc``; its caret line points at its column."""
    with pytest.raises(DescError) as e:
        denet.compile(desc, shape, classes, **options)
    err = e.value
    assert "Traceback" not in str(err)
    if err.column is not None:
        first, shown, caret = str(err).split("\n")
        assert first.endswith(f"(column {err.column})")
        assert caret.startswith("  ") and caret.endswith("^")
    return err


def token_at(err: DescError) -> str:
    """The source text from the caret on (the offending token first)."""
    assert err.desc is not None and err.column is not None
    line = err.desc.split("\n")[(err.line or 1) - 1]
    return line[err.column - 1 :]


# -- 1. counts ---------------------------------------------------------------------------------


def test_a_huge_repeat_count_is_refused_before_any_copy_is_made():
    err = refused("C[8,3] REP[1000000000000](I) R")
    assert token_at(err).startswith("REP[1000000000000](I)")
    assert "1,000,000,000,000 copies" in err.message and "DENET_MAX_NODES" in err.message


def test_an_empty_repeated_body_does_not_loop():
    g = resolve(parse("C[8,3] REP[1000000000000]() R"), (3, 32, 32), 10)
    assert [n.type for n in g.nodes] == ["C", "R"]


def test_a_huge_residual_stage_is_refused_by_its_block_count():
    err = refused("nRSN[100000,8,3]")
    assert token_at(err).startswith("nRSN[100000,8,3]")
    assert "100,000 blocks" in err.message and "DENET_MAX_NODES" in err.message


def test_nested_repeats_are_refused_at_the_repeat_that_passes_the_node_limit():
    desc = "REP[2](" * 30 + "C[1,1]" + ")" * 30
    err = refused(desc)
    assert token_at(err).startswith("REP[2](")
    assert "DENET_MAX_NODES" in err.message


def test_twenty_thousand_branches_are_refused_at_their_group_before_parsing():
    err = refused("SUM(" + " | ".join(["I"] * 20000) + ")")
    assert err.column == 1 and "items and branches" in err.message
    assert "DENET_MAX_NODES" in err.message


def test_many_empty_branches_count_too():
    err = refused("C[8,3] SUM(" + "|" * 20000 + ")")
    assert err.column == 8 and "DENET_MAX_NODES" in err.message
    ast = parse("C[8,3] SUM(" + "|" * 20000 + ")", Limits(nodes=30000))
    with pytest.raises(DescError) as e:  # and the resolver counts them too
        resolve(ast, (3, 32, 32), limits=Limits(nodes=20000))
    assert e.value.column == 8 and "its 20,001 branches" in e.value.message


def test_more_items_than_the_node_limit_are_refused_before_parsing():
    err = refused("C[8,3] " + "I " * 10000)
    assert err.column == 1 + 7 + 2 * 9999 and "items and branches" in err.message


def test_a_wide_group_below_the_node_limit_compiles():
    g = resolve(parse("SUM(" + " | ".join(["I"] * 4000) + ")"), (3, 8, 8))
    assert len(g.nodes) == 4001 and g.output_shape.channels == 3


# -- 2. sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "desc, token",
    [
        ("C[1000000000000,3]", "C[1000000000000,3]"),
        ("B[1000000000000] R", "B[1000000000000]"),
        ("PI[100000] R", "PI[100000]"),
        ("C[8,3] PI[40000] C[4,1]", "PI[40000]"),
        ("C[9223372036854775807,3]", "C[9223372036854775807,3]"),
    ],
)
def test_a_huge_output_is_refused_by_the_map_limit_before_any_allocation(desc, token):
    err = refused(desc)
    assert token_at(err).startswith(token)
    assert "bytes per image" in err.message and "DENET_MAX_MAP_BYTES" in err.message


@pytest.mark.parametrize(
    "desc, token",
    [
        # the output is 8x32x32 under border half, whatever the kernel: the weights are not
        ("C[8,100001,border=half]", "C[8,100001,border=half]"),
        ("C[8,3,border=half] RSN[8,99999]", "RSN[8,99999]"),
        ("C[4,3] DC[8,100001,border=half]", "DC[8,100001,border=half]"),
        ("nRSN[9000,512,3]", "nRSN[9000,512,3]"),
        ("C[64,1] C.X[64,50000,50001,border=half]", "C.X[64,50000,50001,border=half]"),
    ],
)
def test_too_many_parameters_are_refused_at_the_layer_that_adds_them(desc, token):
    err = refused(desc, border_mode="half")
    assert token_at(err).startswith(token)
    assert "parameters" in err.message and "DENET_MAX_PARAMS" in err.message


def test_a_kernel_too_large_for_64_bit_sizes_is_refused_not_overflowed():
    # weight numel 3 * 8 * (3e9)^2 does not fit in 64 bits: counted in Python integers
    err = refused("C[8,3000000001,border=half]")
    assert "parameters" in err.message


def test_too_many_activations_are_refused():
    with limit(activation_bytes=4 * 8 * 32 * 32 * 3 - 1):
        err = refused("C[8,3,border=half] C[8,3,border=half] C[8,3,border=half] R")
    assert token_at(err).startswith("C[8,3,border=half] R")
    assert "DENET_MAX_ACTIVATION_BYTES" in err.message


def test_roi_features_count_once_per_roi():
    # 16 boxes per image of 8x64x64 features: 16 times what one map of that shape takes
    desc = "C[8,3] P[7] @f BOXES[12] @r $f RA[64,rois=r]"
    with limit(map_bytes=10 * 4 * 8 * 64 * 64):
        err = refused(desc)
    assert token_at(err).startswith("RA[64,rois=r]")
    resolve(parse(desc), (3, 32, 32), limits=current().replace(map_bytes=16 * 4 * 8 * 64 * 64))


@pytest.mark.parametrize(
    "number, message",
    [
        ("9223372036854775808", "the integer '9223372036854775808' is too large"),
        ("-9223372036854775809", "the integer '-9223372036854775809' is too large"),
        ("9" * 4301, "the integer '999999999999…999999' is too large"),
        ("1e400", "the number '1e400' is too large"),
        ("-" + "9" * 400 + ".0", "the number '-99999999999…9999.0' is too large"),
    ],
)
def test_numbers_beyond_64_bits_are_refused_by_the_parser(number, message):
    desc = f"C[{number},3]"
    err = refused(desc)
    assert err.message.startswith(message) and err.column == 3
    with pytest.raises(DescError):
        canonical(desc)


def test_the_largest_64_bit_integers_still_parse():
    (c,) = parse("C[9223372036854775807,-9223372036854775808]").items
    assert [a.value for a in c.args] == [2**63 - 1, -(2**63)]


def test_an_error_in_a_very_long_line_shows_the_part_around_the_caret():
    desc = "I " * 2000 + "XX" + " I" * 2000
    err = refused(desc)
    _, shown, caret = str(err).split("\n")
    assert len(shown) < 300 and shown[len(caret) - 1 : len(caret) + 1] == "XX"
    assert err.column == 4001 and "unknown layer type 'XX'" in err.message


# -- 3. depth ----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [170, 250, 5000])
def test_deep_nesting_is_refused_before_anything_recurses(depth):
    desc = "SUM(I | " * depth + "I" + ")" * depth
    for run in (lambda: denet.compile(desc, (3, 8, 8)), lambda: canonical(desc)):
        with pytest.raises(DescError) as e:
            run()
        assert "groups nested 33 deep" in e.value.message and "DENET_MAX_DEPTH" in e.value.message
        assert e.value.column == 1 + 8 * 32  # the 33rd group's head


def test_the_deepest_nesting_allowed_compiles_and_prints_with_little_stack_left():
    depth = Limits().depth
    desc = "SUM(I | " * depth + "C[2,1]" + ")" * depth
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(len(_stack()) + 400)  # much less than Python's default room
    try:
        g = resolve(parse(desc), (2, 4, 4))
        text = canonical(desc)
    finally:
        sys.setrecursionlimit(old)
    assert text == desc.replace("C[2,1]", "C[2]") and g.output_shape.channels == 2


def _stack():
    import inspect

    return inspect.stack(0)


def test_brackets_in_comments_do_not_count_as_nesting():
    assert parse("# " + "(" * 100 + "\nC[8,3]").items[0].type == "C"


# -- 4. non-finite numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "desc, token, message",
    [
        ("C[8,3,init=nan]", "init=nan", "a weight-init std must be a finite number"),
        ("C[8,3,init=inf]", "init=inf", "a weight-init std must be a finite number"),
        ("C[8,3,init=-inf]", "-inf", "unexpected character '-'"),
        ("C[8,3,init=1e400]", "1e400", "the number '1e400' is too large"),
        ("C[8,3,lr=1e400]", "1e400", "the number '1e400' is too large"),
        ("C[8,3,lr=inf]", "lr=inf", "lr must be a number"),
        ("BN[0.9,1e400]", "1e400", "the number '1e400' is too large"),
        ("BN[nan]", "nan", "momentum must be a number"),
    ],
)
def test_nan_and_infinity_are_refused_where_a_number_is_read(desc, token, message):
    err = refused("C[8,3] " + desc)
    assert message in err.message and token_at(err).startswith(token)


def test_argument_conversion_refuses_non_finite_values_from_any_source():
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="finite"):
            Arg("lr", "float", 1.0, min=0.0).convert(value)
        with pytest.raises(ValueError, match="finite"):
            parse_weight_init(value)
    with pytest.raises(ValueError):
        parse_weight_init("nan")
    with pytest.raises(DenetError):
        denet.compile("C[8,3]", (3, 8, 8), weight_init="inf")


def test_a_canonical_form_never_holds_an_unparseable_number():
    for desc in ("C[8,3,lr=1e308]", "BN[0.9,1e-320]", "C[8,3,init=1e-300]"):
        text = canonical(desc)
        assert "inf" not in text and "nan" not in text
        assert canonical(text) == text
        denet.compile(text, (3, 8, 8))


# -- 5. missing values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "desc, message, column",
    [
        ("C[8,3,]", "a value is missing after ','", 7),
        ("C[8,filters=]", "a value is missing after 'filters='", 13),
        ("C[8, filters = ] BN", "a value is missing after 'filters='", 16),
        ("C[,8]", "a value is missing before ','", 3),
        ("C[8,filters=,3]", "a value is missing after 'filters='", 13),
    ],
)
def test_a_missing_value_is_named_with_the_caret_where_it_belongs(desc, message, column):
    err = refused(desc)
    assert err.message.startswith(message) and "unbalanced" not in err.message
    assert err.column == column


# -- the limits themselves ---------------------------------------------------------------------


def test_a_string_longer_than_the_limit_is_refused_without_parsing():
    with pytest.raises(DescError, match="100,001 characters long.*DENET_MAX_CHARS"):
        parse("I" + " " * 100_000)
    parse("I" + " " * 99_999)


def test_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("DENET_MAX_NODES", "3")
    err = refused("C[8,3] BN A C[8,3]")
    assert token_at(err).startswith("C[8,3]") and err.column == 13
    assert "the limit of 3 (DENET_MAX_NODES)" in err.message
    monkeypatch.setenv("DENET_MAX_PARAMS", "2e6")
    assert current().params == 2_000_000
    monkeypatch.setenv("DENET_MAX_NODES", "many")
    with pytest.raises(DenetError, match="DENET_MAX_NODES must be a positive integer"):
        denet.compile("C[8,3]", (3, 8, 8))


def test_a_limit_block_overrides_the_environment_and_resolve_takes_limits(monkeypatch):
    monkeypatch.setenv("DENET_MAX_NODES", "3")
    with limit(nodes=4):
        denet.compile("C[8,3] BN A C[8,3]", (3, 32, 32))
        with limit(params=10):
            assert current().nodes == 4
            refused("C[8,3]")
    assert current().nodes == 3
    desc = "C[8,3] BN A C[8,3] BN"
    g = resolve(parse(desc, Limits(nodes=5)), (3, 32, 32), limits=Limits(nodes=5))
    assert len(g.nodes) == 5
    with pytest.raises(TypeError, match="unknown limit 'nodez'"):
        with limit(nodez=1):
            pass
    with pytest.raises(DenetError, match="DENET_MAX_PARAMS must be a positive integer"):
        with limit(params=0):
            pass


def test_every_limit_has_its_variable_and_is_documented():
    doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "language.md")).read()
    section = doc.split("## Limits", 1)[1].split("\n## ", 1)[0]
    defaults = Limits()
    for name, var in ENV_VARS.items():
        assert var in section, var
        assert f"{getattr(defaults, name):,}" in section, name


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: os.path.basename(p))
def test_the_published_examples_are_well_inside_the_defaults(path):
    """At the sizes their comments name (COCO 3x512x512 for DeNet, Cityscapes 768x1024 crops
    for DeepLab, ImageNet 224 ...), with every limit a quarter (nodes: a twentieth) of its
    default."""
    shape, classes, border = settings(path)
    d = Limits()
    quarter = Limits(
        d.chars // 4,
        d.depth // 4,
        d.nodes // 20,
        d.params // 4,
        d.map_bytes // 4,
        d.activation_bytes // 4,
    )
    desc = open(path).read()
    resolve(parse(desc, quarter), shape, classes, CompileOptions.make(border), limits=quarter)


PARAM_STRINGS = [
    "C.B[8,3] C[16,3,groups=4] C.X[6,3,1,2,1] C.BX[4,1,3] DC[8,3,2,border=half] DC.B[4,2]",
    "C[8,3] BN BNA AC GN[4] FBN A C[8,1] R.B",
    "C[32,3] RSN[32,3] RSN.O[64,3,2] RSN[64,3,1,16] RSN.OV[128,3,2,32,groups=8] R",
    "C[32,3] nRSN[3,64,3,2,norm=frozen] nRSN.O[2,64,3,norm=affine] nRSN[2,64,3,norm=gn] "
    "nRSN.V[2,128,3,2,32,residual=0] P.A R.C",
    "C[8,3] SKIPSRC SKIP C[4,1] SKIP C[16,3] @f BOXES[6] @r $f RA[2,rois=r] C[8,2] DET[rois=r]",
    "C[16,3] BNA P[2] C[32,3] BNA DNC[16] DNS[3,8,0.01,0.1] C.B[64,1] BNA DND.JB[0.5,1,1]",
]


@pytest.mark.parametrize("desc", PARAM_STRINGS)
def test_parameter_estimates_equal_the_built_modules(desc):
    """The limit counts parameters before anything is built: per layer, the count equals the
    parameters of the module that is then built (an independent count, of real tensors)."""
    with torch.device("meta"):
        model = denet.compile(desc, (3, 32, 32), 5, border_mode="half")
    for node in model.graph.nodes:
        if node.call is None or node.shared is not None:
            continue
        module = model._modules.get(node.name)
        real = sum(p.numel() for p in module.parameters()) if module is not None else 0
        assert REGISTRY.get(node.type).params(node.call) == real, node.name


# -- found by the fuzzer (tests/dsl/test_dsl_fuzz.py): compiled, then failed in the forward ------


@pytest.mark.parametrize(
    "desc, token, message",
    [
        ("P[2,9223372036854775807]", "9223372036854775807", "stride must be <= 2147483647"),
        ("C[8,3,2147483648]", "2147483648", "stride must be <= 2147483647"),
        ("C.X[8,3,3,1,4294967296]", "4294967296", "sw must be <= 2147483647"),
        ("C[8,3,dilation=9223372036854775807]", "dilation=", "dilation must be <= 2147483647"),
        ("RSN[8,3,9223372036854775807]", "9223372036854775807", "stride must be <= 2147483647"),
        ("nRSN[2,8,3,first_dilation=2147483648]", "first_dilation=", "first_dilation must be"),
        ("C[8,3] @f BOXES[1e12] @r $f RA[2,rois=r]", "1e12", "larger than the 32-pixel image"),
        (
            "C[8,3] @f BOXES[12] @r $f RA[2,rois=r,sampling_ratio=1000000]",
            "sampling_ratio=",
            "more samples per bin than the 32x32 map",
        ),
        (
            "C[16,3] P[2] DNC[16] DNS[3,8,0.01,0.1,1000000] C.B[8,1] DND[0.5]",
            "1000000",
            "wider than the 16x16 corner map",
        ),
    ],
)
def test_geometry_that_torch_cannot_run_or_that_only_adds_work_is_refused(desc, token, message):
    err = refused(desc, border_mode="half")
    assert message in err.message and token_at(err).startswith(token)


def test_the_largest_stride_and_dilation_allowed_run():
    m = denet.compile(
        "P[2,2147483647] C[8,3,2147483647,border=half] C[4,3,dilation=2147483647,border=half] "
        "C.X[4,1,1,1,2147483647]",
        (3, 32, 32),
    ).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 4, 1, 1)


def test_a_ceil_mode_window_beyond_32_bits_is_refused():
    # P.B's partial windows let a window larger than the input through the shape rule
    err = refused("C[8,3] P.B[3000000001]")
    assert "size must be <= 2147483647" in err.message and token_at(err).startswith("3000000001")
