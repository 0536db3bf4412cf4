"""tool_main, the wrapper behind every tool's main: a DenetError is one line and status 2, an
interrupt is status 130, anything else is a real bug and propagates."""

import sys

import pytest

from denet.cli._common import tool_main
from denet.errors import DataError


def test_user_error_is_one_line_with_the_tool_name(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["/somewhere/bin/model-train"])

    @tool_main
    def main(argv=None):
        raise DataError("/data/x.png: cannot read image")

    assert main([]) == 2
    assert capsys.readouterr().err == "model-train: error: /data/x.png: cannot read image\n"


def test_return_values_interrupts_and_bugs(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dataset-show"])
    assert tool_main(lambda argv: None)([]) == 0
    assert tool_main(lambda argv: 3)([]) == 3

    def interrupted(argv):
        raise KeyboardInterrupt

    assert tool_main(interrupted)([]) == 130
    assert capsys.readouterr().err == "dataset-show: interrupted\n"

    def bug(argv):
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        tool_main(bug)([])
