"""User-facing errors. Every tool prints ``str(err)`` and exits with ``err.exit_status`` (2)."""


class DenetError(Exception):
    """Base of every error caused by what the user gave us (a string, a file, an option)."""

    exit_status = 2


class DescError(DenetError, ValueError):
    """A description string that cannot be parsed or resolved.

    ``str(err)`` is one line naming the problem, the token and the column, followed by the string
    and a caret under the offending token.
    """

    def __init__(
        self,
        message: str,
        desc: str | None = None,
        column: int | None = None,
        line: int | None = None,
    ):
        self.message = message
        self.desc = desc
        self.column = column  # 1-based, as Lark reports it
        self.line = line
        super().__init__(self._render())

    def _render(self) -> str:
        if self.desc is None or self.column is None:
            return self.message
        text = self.desc
        col = self.column
        if "\n" in text:  # show only the offending line of a multi-line string
            lines = text.split("\n")
            text = lines[(self.line or 1) - 1]
        offset = col - 1
        if len(text) > _SHOWN:  # a very long line: the part around the caret
            start = max(0, min(offset - _SHOWN // 2, len(text) - _SHOWN))
            end = start + _SHOWN
            head = "…" if start > 0 else ""
            text = head + text[start:end] + ("…" if end < len(text) else "")
            offset = offset - start + len(head)
        return f"{self.message} (column {col})\n  {text}\n  {' ' * offset}^"


_SHOWN = 200  # characters of a line an error message shows at most (around the caret)


class DataError(DenetError):
    """A dataset, image or annotation file that cannot be read; the message names the file."""


class ModelFileError(DenetError):
    """A model or checkpoint file that is missing, corrupt, of an unknown version, or unsafe."""
