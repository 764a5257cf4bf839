"""What Prefect's task engine knew about a task run: its attempts and its run time.

The engine keeps `run_count` and `total_run_time` on its own `TaskRun` in the
process that ran the task, and hands that object to state hooks. The hook
here copies them onto the final state, which every task runner returns to
the flow (Dask and Ray by pickling it), so a report knows them without
asking the API, whose records are filled from events and lag under load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from prefect_resilience._prefect import attach, attached, hide_hook_logs


@dataclass(frozen=True)
class EngineFacts:
    """A task run as its engine ended it: attempts made and seconds spent running.

    `no_retry` is why the step's retry condition refused a retry that Prefect
    had left (None when it refused none).
    """

    attempts: int
    seconds: float
    no_retry: str | None = None


class RecordAttempts:
    """A state hook (`on_completion` / `on_failure`) that puts `EngineFacts` on the final state.

    A class, not a closure, so a task carrying it pickles to other processes.
    """

    __name__ = "prefect_resilience.record_attempts"

    def __call__(self, task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> None:
        facts = EngineFacts(
            task_run.run_count,
            task_run.total_run_time.total_seconds(),
            attached(task_run, _NO_RETRY),
        )
        attach(state, "facts", facts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecordAttempts)

    def __hash__(self) -> int:
        return hash(RecordAttempts)


RECORD_ATTEMPTS = RecordAttempts()
_NO_RETRY = "no_retry"


def note_no_retry(task_run: TaskRun, reason: str) -> None:
    """Keep why the retry condition refused a retry, for `EngineFacts.no_retry`."""
    attach(task_run, _NO_RETRY, reason)


hide_hook_logs(RECORD_ATTEMPTS.__name__)  # also where a worker unpickles the hook


def facts_of(state: State[Any]) -> EngineFacts | None:
    """The engine's facts about the run that ended in `state`; None when no hook ran

    (a crash, or a run that never started because an upstream failed)."""
    facts = attached(state, "facts")
    return facts if isinstance(facts, EngineFacts) else None
