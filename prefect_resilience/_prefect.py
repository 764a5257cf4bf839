"""The one place that touches Prefect beyond its public API.

Each function here leans on a detail of Prefect (or of pydantic under it)
that its public API does not promise. `tests/test_prefect_internals.py`
checks every one of them against the installed Prefect, so an upgrade that
changes one fails there, by name, instead of somewhere deep in a run.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from copy import copy
from typing import Any, TypeVar

from prefect import Task
from prefect.futures import PrefectFuture
from prefect.states import State
from pydantic import BaseModel

T = TypeVar("T")

_ATTACHED = "_prefect_resilience_"


def attach(model: BaseModel, key: str, value: Any) -> None:
    """Carry `value` under `key` on a Prefect object (a state, a task run), unseen by Prefect.

    States and task runs are pydantic models: a key in their `__dict__` that is
    no field is kept by pickling (Dask and Ray ship the final state back that
    way) and by `model_copy`, and left out of every dump, so it never reaches
    the API.
    """
    model.__dict__[_ATTACHED + key] = value


def attached(model: BaseModel, key: str) -> Any:
    """What `attach` put under `key` on this object (or the one it was copied from), or None."""
    return model.__dict__.get(_ATTACHED + key)


def retyped(obj: Any, cls: type[T]) -> T:
    """A shallow copy of `obj` as an instance of `cls`, a subclass of its class.

    Prefect copies a task the same way to bind it to an instance (`Task.__get__`);
    a copy keeps every attribute Prefect set, including the ones its
    constructor and `with_options` do not take back (`_isclassmethod`).
    """
    if not issubclass(cls, type(obj)):
        raise TypeError(f"{cls.__name__} does not extend {type(obj).__name__}")
    clone = copy(obj)
    clone.__class__ = cls
    return clone


def plain_task(task: Task[..., Any]) -> Task[..., Any]:
    """A shallow copy of a task (of a `Task` subclass) as a plain `Task`, to run once.

    The copy is what Prefect's engine runs and a task runner ships to its
    workers; its options may be changed for that run without touching the task.
    """
    clone = copy(task)
    clone.__class__ = Task
    return clone


def method_kind(task: Task[..., Any]) -> dict[str, bool]:
    """The flags by which Prefect binds a task on a class (`with_options` drops them)."""
    return {
        name: True for name in ("_isclassmethod", "_isstaticmethod") if getattr(task, name, False)
    }


def final_state(future: PrefectFuture[Any]) -> State[Any] | None:
    """The final state a Prefect future has already seen, without waiting or asking the API.

    Prefect's own `wait()` and `as_completed()` read `_final_state` the same way.
    """
    return getattr(future, "_final_state", None)


def state_value(state: State[Any], raise_on_failure: bool = True) -> Any:
    """A state's value, read synchronously also where an event loop runs.

    `State.result` dispatches on the caller's context and returns a coroutine
    inside one; Prefect's own futures force the synchronous path with `_sync`.
    """
    return state.result(raise_on_failure=raise_on_failure, _sync=True)  # type: ignore[call-overload]


def mapped_parameters(fn: Any, parameters: dict[str, Any]) -> list[dict[str, Any]]:
    """The parameters of each task run of `task.map(**parameters)`, as Prefect expands them.

    Futures among them are resolved to values first (they are final by the
    time a mapped step needs its fallbacks).
    """
    from prefect.utilities.callables import expand_mapping_parameters
    from prefect.utilities.engine import resolve_inputs_sync

    return expand_mapping_parameters(fn, resolve_inputs_sync(parameters, max_depth=0))


class _HideHook(logging.Filter):
    def __init__(self, hook_name: str) -> None:
        super().__init__()
        self.quoted = repr(hook_name)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or self.quoted not in str(record.msg)


def hide_hook_logs(hook_name: str) -> None:
    """Keep the INFO lines Prefect's task engine logs around each state hook out of the logs.

    The engine says "Running hook 'name' ..." and "Hook 'name' finished ..."
    for every hook; for a hook the user did not add, those lines would be the
    one visible difference from a plain task. Errors of the hook still show.
    """
    task_runs = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, _HideHook) and f.quoted == repr(hook_name) for f in task_runs.filters):
        task_runs.addFilter(_HideHook(hook_name))


# --- a retry's wait, chosen by the retry condition --------------------------------------

_NEXT_WAIT: ContextVar[tuple[Any, float] | None] = ContextVar(
    "prefect_resilience_next_wait", default=None
)


def wait_next(task: Task[..., Any], task_run: Any, seconds: float | None) -> None:
    """Make Prefect wait `seconds` (unjittered) before the retry it is about to schedule.

    Prefect's task engine asks `retry_condition_fn(task, task_run, state)` and,
    right after, in the same thread and context, reads `task.retry_delay_seconds`
    and `task.retry_jitter_factor` to schedule the retry (`handle_retry`). Called
    from the condition, this puts views in front of those two attributes that
    answer `seconds` for this task run only (the task copy may be shared by the
    task runs of one `.map()`); `None` leaves Prefect's own delay in force. The
    retry stays Prefect's: `AwaitingRetry` until its scheduled time.
    """
    if seconds is not None:
        if not isinstance(task.retry_delay_seconds, _Delays):
            task.retry_delay_seconds = _Delays(task.retry_delay_seconds)
        if task.retry_jitter_factor and not isinstance(task.retry_jitter_factor, _Jitter):
            task.retry_jitter_factor = _Jitter(task.retry_jitter_factor)
    _NEXT_WAIT.set((task_run.id, seconds) if seconds is not None else None)


def _next_wait() -> float | None:
    """The wait `wait_next` chose for the task run running in this context, if any."""
    from prefect.context import TaskRunContext

    chosen = _NEXT_WAIT.get()
    context = TaskRunContext.get()
    if chosen is None or context is None or context.task_run.id != chosen[0]:
        return None
    return chosen[1]


class _Delays(list[float]):
    """A task's retry delays, answering the chosen wait to the task run it was chosen for.

    A list, as Prefect and its API take delays; its items are the delays given
    (a number as one item), and it is as true or false as they were.
    """

    def __init__(self, given: Any) -> None:
        super().__init__(given if isinstance(given, list) else [given or 0])
        self.given = given

    def __bool__(self) -> bool:
        return _next_wait() is not None or bool(self.given)

    def __getitem__(self, index: Any) -> Any:
        chosen = _next_wait()
        return chosen if chosen is not None else super().__getitem__(index)


class _Jitter(float):
    """A task's jitter factor, off for the task run whose wait was chosen (not to shorten it)."""

    def __bool__(self) -> bool:
        return _next_wait() is None and float(self) != 0
