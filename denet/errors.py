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
        return f"{self.message} (column {col})\n  {text}\n  {' ' * (col - 1)}^"


class DataError(DenetError):
    """A dataset, image or annotation file that cannot be read; the message names the file."""


class ModelFileError(DenetError):
    """A model or checkpoint file that is missing, corrupt, of an unknown version, or unsafe."""
