"""Reading back what Prefect's server recorded, to check it in tests.

Prefect records task runs from events, a moment after they finish: a test
that asserts on the record waits (a bounded time) until it is there.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId


def recorded_task_runs(ids: list[UUID], timeout: float = 10.0, page: int = 200) -> dict[UUID, Any]:
    """Task runs by id once the server has recorded their final state."""
    deadline = time.monotonic() + timeout
    recorded: dict[UUID, Any] = {}
    missing = [i for i in dict.fromkeys(ids) if i.int]
    with get_client(sync_client=True) as client:
        while True:
            for start in range(0, len(missing), page):
                chunk = missing[start : start + page]
                runs = client.read_task_runs(
                    task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=chunk)), limit=len(chunk)
                )
                recorded.update({r.id: r for r in runs if r.state and r.state.is_final()})
            missing = [i for i in missing if i not in recorded]
            if not missing or time.monotonic() >= deadline:
                return recorded
            time.sleep(0.05)
