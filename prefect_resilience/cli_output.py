"""How every `prefect-resilience` command speaks: one console, one error style.

Errors are one line (or a short list) on stderr and exit 1, never a traceback:
a configuration problem names its field, file and line; an API that cannot be
reached names its URL and what to start. Text that comes from elsewhere (an
exception, a file name) is escaped, so Rich never reads `[plots]` as markup.
Unknown numbers print as words (`n/a`), never as `nan`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from prefect_resilience.errors import ResilienceConfigError

console = Console()
errors = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")

NOT_AVAILABLE = "n/a"


def fail(message: str, label: str = "error") -> typer.Exit:
    """Print `label: message` (the message escaped) on stderr; the Exit to raise."""
    errors.print(f"[red]{label}:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def config_failure(exc: ResilienceConfigError, label: str = "error") -> typer.Exit:
    return fail(str(exc), label)


def api_url() -> str:
    """The API the commands talk to, as the user configured it."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or "(Prefect's embedded server, no PREFECT_API_URL set)"


def api_failure(exc: Exception, doing: str = "reach the Prefect API") -> typer.Exit:
    """The one message for an API that cannot be reached or answers with an error."""
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        what = f"the Prefect API at {api_url()} answered {status}"
        hint = (
            "is PREFECT_API_URL the API's address (it ends in /api)?"
            if status == 404
            else "see the server's log"
        )
    else:
        what = f"cannot {doing} at {api_url()} ({type(exc).__name__}: {exc})"
        hint = "start one with `prefect server start`, or set PREFECT_API_URL to yours"
    return fail(f"{what}; {hint}")


def talks_to_api(command: Callable[P, R]) -> Callable[P, R]:
    """A command whose API failures end in `api_failure`'s one line, not a traceback.

    Prefect's client raises httpx's errors (a refused connection, a status it
    does not retry) and OSError from the network below; everything else
    passes through unchanged.
    """

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (httpx.HTTPError, OSError) as exc:
            raise api_failure(exc) from None

    return run


def number(value: Any, spec: str = ".3g") -> str:
    """A number as text; NaN, None and infinities as `n/a`."""
    if value is None:
        return NOT_AVAILABLE
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        return str(value)
    return NOT_AVAILABLE if not math.isfinite(as_float) else format(as_float, spec)
