"""Limits on what a description string may ask for, so that a hostile or mistyped string is
refused quickly with a :class:`~denet.errors.DescError` instead of hanging the compiler or
allocating terabytes (docs/language.md, "Limits").

Each limit has a documented default, an environment variable that replaces it, and a Python
override for one block of code::

    with denet.dsl.limit(params=2_000_000_000):
        model = denet.compile(desc, (3, 512, 512), 80)

Precedence: the ``limits=`` argument of :func:`denet.dsl.resolve`, then :func:`limit` blocks,
then the environment, then the defaults.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import DenetError


@dataclass(frozen=True)
class Limits:
    """What one description string may ask for (every value a positive integer)."""

    chars: int = 100_000  # length of the string (comments included)
    depth: int = 32  # nesting of groups: SUM(... SUM(... )) counts 2
    nodes: int = 10_000  # graph nodes after expansion (see docs/language.md, Limits)
    params: int = 500_000_000  # parameters of the whole model (2 GB in float32)
    map_bytes: int = 2**30  # bytes of one value (one layer's output) per image, float32
    activation_bytes: int = 2**35  # bytes of every layer's output together, per image

    @classmethod
    def from_env(cls, environ=None) -> Limits:
        """The defaults, with every ``DENET_MAX_*`` variable set in ``environ`` applied."""
        environ = os.environ if environ is None else environ
        changes = {}
        for f in dataclasses.fields(cls):
            var = ENV_VARS[f.name]
            text = environ.get(var)
            if text is not None and text.strip():
                changes[f.name] = _positive(text, var)
        return cls(**changes)

    def replace(self, **changes) -> Limits:
        """A copy with some limits changed (``None`` keeps a limit as it is)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown limit {unknown[0]!r}; the limits are {', '.join(known)}")
        return dataclasses.replace(
            self,
            **{k: _positive(v, ENV_VARS[k]) for k, v in changes.items() if v is not None},
        )


# The environment variable of each limit.
ENV_VARS = {
    "chars": "DENET_MAX_CHARS",
    "depth": "DENET_MAX_DEPTH",
    "nodes": "DENET_MAX_NODES",
    "params": "DENET_MAX_PARAMS",
    "map_bytes": "DENET_MAX_MAP_BYTES",
    "activation_bytes": "DENET_MAX_ACTIVATION_BYTES",
}

_OVERRIDE: contextvars.ContextVar[Limits | None] = contextvars.ContextVar(
    "denet_limits", default=None
)


def _positive(value, what: str) -> int:
    """A positive integer from an int, an integral float (``2e9``) or such a string."""
    number = value
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = None
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise DenetError(f"{what} must be a positive integer, not {value!r}")
    return number


def current() -> Limits:
    """The limits in force here: a :func:`limit` block's, else the environment's."""
    override = _OVERRIDE.get()
    return override if override is not None else Limits.from_env()


@contextlib.contextmanager
def limit(**changes) -> Iterator[Limits]:
    """Change some limits for the ``with`` block (``chars``, ``depth``, ``nodes``, ``params``,
    ``map_bytes``, ``activation_bytes``); the others stay as they are."""
    new = current().replace(**changes)
    token = _OVERRIDE.set(new)
    try:
        yield new
    finally:
        _OVERRIDE.reset(token)


def describe(name: str, value: int) -> str:
    """``the limit of 10,000 nodes (DENET_MAX_NODES)``-style wording for messages."""
    return f"the limit of {value:,} ({ENV_VARS[name]})"
