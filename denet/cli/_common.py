"""What every command-line tool shares: user errors become one line on stderr and exit status 2."""

import argparse
import functools
import os
import sys

from ..errors import DenetError


def tool_main(fn):
    """Wrap ``main(argv=None, **hooks) -> int``: a ``DenetError`` prints ``<tool>: error:
    <message>`` and returns 2 instead of showing a traceback. Argparse already exits 2 on bad
    options. Keyword arguments (hooks such as model-train's ``on_step``) pass through."""

    @functools.wraps(fn)
    def wrapper(argv=None, **kwargs):
        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else fn.__module__
        try:
            return fn(argv, **kwargs) or 0
        except DenetError as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            return err.exit_status
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130

    return wrapper


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``prog: error: message (see prog --help)``, and exit
    status 2, instead of the whole usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def bounded_int(lo: int, hi: int):
    """An argparse ``type``: an integer in [lo, hi], else a one-line argparse error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside [{lo}, {hi}]")
        return value

    parse.__name__ = "integer"
    return parse
