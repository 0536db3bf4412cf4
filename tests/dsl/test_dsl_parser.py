"""Parser: every DeNet string parses unchanged; syntax errors are one DescError with a caret."""

import pytest
from denet_strings import DENET_STRINGS

from denet import DescError
from denet.dsl import Group, Layer, Ref, Tap, parse


@pytest.mark.parametrize("desc", DENET_STRINGS)
def test_every_denet_string_parses(desc):
    items = parse(desc).items
    assert len(items) == len(desc.split())
    assert all(isinstance(i, Layer) for i in items)


def test_tokens_args_tags_and_positions():
    d = parse("C.B[256,3,dilation=2] R.TB P.A DNS[7,24,0.01,0.1]")
    c, r, p, dns = d.items
    assert (c.type, c.tags, c.column) == ("C", "B", 1)
    assert [(a.name, a.value) for a in c.args] == [(None, 256), (None, 3), ("dilation", 2)]
    assert [a.column for a in c.args] == [5, 9, 11]
    assert (r.type, r.tags, r.column) == ("R", "TB", 23)
    assert (p.type, p.tags, p.args) == ("P", "A", ())
    assert [a.value for a in dns.args] == [7, 24, 0.01, 0.1]
    assert isinstance(dns.args[2].value, float) and isinstance(dns.args[0].value, int)


def test_numbers_names_comments_and_lines():
    d = parse("# header\nBN[0.9, 1e-5]  # trailing\n  C[8,3,init=he-forward-uniform,lr=-1]")
    bn, c = d.items
    assert bn.args[1].value == 1e-5 and bn.line == 2
    assert c.line == 3 and c.column == 3
    assert c.args[2].value == "he-forward-uniform" and c.args[3].value == -1


def test_groups_taps_and_refs():
    d = parse("C[8,3] @a SUM(C[4,3] | C[4,3,dilation=2] |) CAT($a | ) REP[2](C[8,3] BN)")
    c, tap, s, cat, rep = d.items
    assert isinstance(tap, Tap) and tap.name == "a"
    assert isinstance(s, Group) and len(s.branches) == 3 and s.branches[2] == ()
    assert isinstance(cat.branches[0][0], Ref)
    assert rep.args[0].value == 2 and len(rep.branches[0]) == 2


def test_empty_string_is_an_empty_network():
    assert parse("").items == ()
    assert parse("  # only a comment\n").items == ()


def _error(desc):
    with pytest.raises(DescError) as e:
        parse(desc)
    return e.value


@pytest.mark.parametrize(
    "desc, message, column",
    [
        ("C[128,3 BN", "unexpected 'BN'; expected ',' or ']'", 9),
        ("C[128,3", "unbalanced brackets: '[' is never closed", 8),
        ("C[128,3]] BN", "unbalanced brackets: ']' without its opening bracket", 9),
        ("SUM(C[1] | C[2]", "unbalanced brackets: '(' is never closed", 16),
        ("C[1] )", "unbalanced brackets: ')' without its opening bracket", 6),
        ("C[1,,2]", "a value is missing after ','", 5),
        ("C[1] ? BN", "unexpected character '?'", 6),
        ("C.[1]", "unexpected character '.'", 2),
    ],
)
def test_syntax_errors_name_the_token_with_a_caret(desc, message, column):
    err = _error(desc)
    first, shown, caret = str(err).split("\n")
    assert first.startswith(message) and first.endswith(f"(column {column})")
    assert shown == "  " + desc
    assert caret == "  " + " " * (column - 1) + "^"
    assert err.column == column and err.desc == desc


def test_error_on_a_later_line_shows_that_line():
    err = _error("C[8,3]\nBN[0.9\n")
    assert err.line == 2
    assert str(err).split("\n")[1] == "  BN[0.9"


def test_end_of_input_is_named_in_words():
    assert str(_error("C[8,")).startswith(
        "unexpected end of input; expected a name or a number (column 5)"
    )
