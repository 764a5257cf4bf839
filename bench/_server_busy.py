"""Count the test server's 503 answers (SQLite busy), which Prefect's client retries.

Prefect's client retries a 503 after an exponential back-off (2, 4, 8... s), so a
few of them explain a slow batch. Importing this module wraps `httpx.Client.send`
and `httpx.AsyncClient.send` with a counter; requests and responses pass through
unchanged.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import httpx

busy: Counter[str] = Counter()
_sync_send = httpx.Client.send
_async_send = httpx.AsyncClient.send
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}")


def _note(request: httpx.Request, response: httpx.Response) -> None:
    if response.status_code == 503:
        busy[f"{request.method} {_ID.sub('{id}', request.url.path)}"] += 1


def _counting_send(self: httpx.Client, request: httpx.Request, *args: Any, **kwargs: Any) -> Any:
    response = _sync_send(self, request, *args, **kwargs)
    _note(request, response)
    return response


async def _counting_async_send(
    self: httpx.AsyncClient, request: httpx.Request, *args: Any, **kwargs: Any
) -> Any:
    response = await _async_send(self, request, *args, **kwargs)
    _note(request, response)
    return response


httpx.Client.send = _counting_send  # type: ignore[method-assign]
httpx.AsyncClient.send = _counting_async_send  # type: ignore[method-assign]


def total() -> int:
    return sum(busy.values())


def snapshot() -> Counter[str]:
    return Counter(busy)


def describe(since: Counter[str] | None = None) -> str:
    """The 503s by request, all or those since `snapshot()` returned `since`."""
    counts = busy - since if since is not None else busy
    return ", ".join(f"{k} {v}" for k, v in counts.most_common()) or "none"
