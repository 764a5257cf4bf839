"""The one exception type users see for bad resilience configuration."""

from __future__ import annotations


class ResilienceConfigError(ValueError):
    """A policy, decorator argument or document is invalid.

    It is a `ValueError` so code that already guards configuration with
    `except ValueError` keeps working. `field` names the offending setting
    (dotted, as written by the user); `path` and `line` say where it is when
    it came from a file.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        path: str | None = None,
        line: int | None = None,
    ) -> None:
        self.message = message
        self.field = field
        self.path = path
        self.line = line
        where = ""
        if path:
            where = f"{path}, line {line}: " if line else f"{path}: "
        elif line:
            where = f"line {line}: "
        super().__init__(f"{where}{field + ': ' if field else ''}{message}")
