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


class RetryAfter(Exception):
    """Raised by a step to ask for its next attempt no sooner than `seconds` from now.

    The wait before the retry is the larger of the step's own backoff delay and
    `seconds`, without jitter shortening it, and still within the step's
    `retry_budget`. The retry is Prefect's own (the task run waits in
    `AwaitingRetry`); with no retries left the step fails for good as usual.
    Raise it `from` the error that caused it, so the cause stays in the logs.
    """

    def __init__(self, seconds: float, message: str = "") -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ResilienceConfigError(
                f"must be a number of seconds, got {seconds!r}", field="seconds"
            )
        if not 0 <= seconds < float("inf"):
            raise ResilienceConfigError(
                f"must be >= 0 and finite, got {seconds!r}", field="seconds"
            )
        self.seconds = float(seconds)
        self.message = message
        super().__init__(seconds, message)

    def __str__(self) -> str:
        asked = f"retry after {self.seconds:g}s"
        return f"{self.message} ({asked})" if self.message else asked


class CircuitOpen(Exception):
    """The failure of a step whose circuit breaker is open: its function was not called.

    The step's policy settles it like any failure (fallbacks and defaults
    apply), without retries. `circuit` names the breaker.
    """

    def __init__(self, circuit: str, message: str = "") -> None:
        self.circuit = circuit
        self.message = message or f"circuit {circuit!r} is open"
        super().__init__(circuit, message)

    def __str__(self) -> str:
        return self.message
