"""Circuit breakers across runs and workers, kept in Prefect Variables.

A breaker's state (`circuit_state.CircuitState`) lives in the Variable
`prefect_resilience_circuit_<name>`, so every flow run in every process on the
server sees it, it survives restarts, and it shows (and can be edited) on the
UI's Variables page. It changes only under a lock: the Variable
`prefect_resilience_lock_circuit_<name>`, which the API creates for one caller
at a time (a second create of a name is refused) and which expires if its
holder died. Opening and closing emit `prefect-resilience.circuit.opened` /
`.closed` events, for Automations.

A step with a breaker runs its function through a `CircuitGuard`: before each
attempt it asks the breaker, and an open one makes the attempt fail with
`CircuitOpen` without calling the function. A `CircuitHook` on the task run's
end reports a failure for good (or a trial's success) to the breaker. When
the API cannot be reached, the guard lets the call through: a breaker that
cannot be read must not stop the work it protects.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect import Task
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.context import TaskRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.states import State

from prefect_resilience._prefect import attach, attached, hide_hook_logs
from prefect_resilience.circuit_state import Admission, Circuit, CircuitState
from prefect_resilience.errors import CircuitOpen
from prefect_resilience.events import emit
from prefect_resilience.logs import run_logger
from prefect_resilience.policy import CircuitBreaker
from prefect_resilience.settle import error_of

STATE_PREFIX = "prefect_resilience_circuit_"
LOCK_PREFIX = "prefect_resilience_lock_circuit_"
LOCK_TTL = 15.0
"""Seconds after which a lock whose holder never released it is taken over."""
LOCK_WAIT = 30.0
_TRIAL = "circuit_trial"
HOOK_NAME = "prefect_resilience.circuit"


def state_variable(name: str) -> str:
    return STATE_PREFIX + name


def read_state(name: str) -> CircuitState:
    """The breaker's state now (closed when it has none yet)."""
    with get_client(sync_client=True) as client:
        variable = client.read_variable_by_name(state_variable(name))
    return CircuitState.from_value(variable.value if variable is not None else None)


def reset(name: str) -> None:
    """Forget a breaker's state (it reads as closed, with no failures), as deleting its
    Variable in the UI does."""
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):
        client.delete_variable_by_name(state_variable(name))


def change(
    breaker: CircuitBreaker, step: Callable[[CircuitState], tuple[CircuitState, Circuit | None]]
) -> tuple[CircuitState, Circuit | None]:
    """Apply `step` to the breaker's state under its lock; write and announce what changed."""
    with get_client(sync_client=True) as client, _locked(client, breaker.name):
        variable = client.read_variable_by_name(state_variable(breaker.name))
        before = CircuitState.from_value(variable.value if variable is not None else None)
        after, transition = step(before)
        if after != before or variable is None:
            value = after.to_value(breaker)
            if variable is None:
                client.create_variable(
                    VariableCreate(
                        name=state_variable(breaker.name), value=value, tags=["prefect-resilience"]
                    )
                )
            else:
                client.update_variable(
                    VariableUpdate(name=state_variable(breaker.name), value=value)
                )
    if transition is not None:
        _announce(breaker, after, transition)
    return after, transition


@contextmanager
def _locked(client: SyncPrefectClient, name: str) -> Iterator[None]:
    """Hold the breaker's lock: a Variable only one caller can create at a time."""
    lock = LOCK_PREFIX + name
    deadline = time.monotonic() + LOCK_WAIT
    holder = {"holder": f"{socket.gethostname()}:{os.getpid()}", "expires": 0.0}
    while True:
        holder["expires"] = time.time() + LOCK_TTL
        try:
            held = client.create_variable(VariableCreate(name=lock, value=holder))
            break
        except ObjectAlreadyExists:
            other = client.read_variable_by_name(lock)
            expires = other.value.get("expires") if other and isinstance(other.value, dict) else 0
            if other is not None and isinstance(expires, int | float) and expires < time.time():
                _delete(client, other.id)  # its holder died; by id, so a newer lock survives
            elif time.monotonic() > deadline:
                raise TimeoutError(
                    f"circuit {name!r}: its lock was held for {LOCK_WAIT:g}s"
                ) from None
            else:
                time.sleep(random.uniform(0.01, 0.05))
    try:
        yield
    finally:
        _delete(client, held.id)


def _delete(client: SyncPrefectClient, variable_id: Any) -> None:
    with contextlib.suppress(Exception):  # gone: another caller took over an expired lock
        client.request("DELETE", "/variables/{id}", path_params={"id": variable_id})


def _announce(breaker: CircuitBreaker, state: CircuitState, transition: Circuit) -> None:
    """Log and emit a transition, related to the task and flow run that caused it."""
    run_logger().warning("circuit %r %s: %s", breaker.name, transition.value, state.reason)
    related = []
    context = TaskRunContext.get()
    if context is not None:
        run = context.task_run
        related = [
            {
                "prefect.resource.id": f"prefect.task-run.{run.id}",
                "prefect.resource.role": "task-run",
            },
            {
                "prefect.resource.id": f"prefect.flow-run.{run.flow_run_id}",
                "prefect.resource.role": "flow-run",
            },
        ]
    emit(
        f"circuit.{'opened' if transition is Circuit.OPEN else 'closed'}",
        {
            "prefect.resource.id": f"prefect-resilience.circuit.{breaker.name}",
            "prefect.resource.name": breaker.name,
        },
        related,
        {"circuit": breaker.name, **state.to_value(breaker)},
    )


# --- in the task run ---------------------------------------------------------------------


def admit(breaker: CircuitBreaker) -> None:
    """Let this attempt call the step's function, or raise `CircuitOpen`.

    The trial of a half-open breaker is claimed under the lock, so one call
    at a time is let through; its later attempts (Prefect retries) are part of
    the same trial.
    """
    context = TaskRunContext.get()
    run = context.task_run if context is not None else None
    if run is not None and attached(run, _TRIAL):
        return
    try:
        state = read_state(breaker.name)
        if state.admit(breaker, time.time()) is Admission.CALL or not _claim_trial(breaker):
            return
    except CircuitOpen:
        raise
    except Exception as exc:
        run_logger().warning("circuit %r could not be read (%s); calling anyway", breaker.name, exc)
        return
    if run is not None:
        attach(run, _TRIAL, True)
    run_logger().warning("circuit %r is half-open: this call is its trial", breaker.name)


def _claim_trial(breaker: CircuitBreaker) -> bool:
    """Make this call the trial (True), find the breaker closed meanwhile (False), or raise
    `CircuitOpen` when it refuses the call."""
    admitted = Admission.REFUSE

    def claim(state: CircuitState) -> tuple[CircuitState, Circuit | None]:
        nonlocal admitted
        now = time.time()
        admitted = state.admit(breaker, now)
        return (state.with_trial(now) if admitted is Admission.TRIAL else state), None

    state, _ = change(breaker, claim)
    if admitted is Admission.REFUSE:
        raise CircuitOpen(breaker.name, _refusal(breaker, state))
    return admitted is Admission.TRIAL


def _refusal(breaker: CircuitBreaker, state: CircuitState) -> str:
    since = state.trial_at if state.state is Circuit.HALF_OPEN else state.opened_at
    wait = max(0.0, (since or 0.0) + breaker.reset_after - time.time())
    doing = "a trial call is out" if state.state is Circuit.HALF_OPEN else state.reason
    return f"circuit {breaker.name!r} is {state.state.value} ({doing}); next trial in {wait:.0f}s"


class CircuitGuard:
    """The step's function behind its breaker: same signature, called only when admitted.

    A class, so the task copy carrying it pickles to Dask and Ray workers.
    """

    def __init__(self, fn: Callable[..., Any], breaker: CircuitBreaker) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.breaker = breaker
        self.is_async = inspect.iscoroutinefunction(fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.is_async:
            return self._call_async(*args, **kwargs)
        admit(self.breaker)
        return self.fn(*args, **kwargs)

    async def _call_async(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.to_thread(admit, self.breaker)
        return await self.fn(*args, **kwargs)


class CircuitHook:
    """A state hook reporting how the task run ended to its breaker (`on_completion` /
    `on_failure`): a failure for good counts; a trial's outcome closes or reopens it."""

    __name__ = HOOK_NAME

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker

    def __call__(self, task: Task[..., Any], task_run: Any, state: State[Any]) -> None:
        trial = bool(attached(task_run, _TRIAL))
        if state.is_completed():
            if trial:
                self._change(lambda s: s.with_success(trial=True))
            return
        error = error_of(state)
        if isinstance(error, CircuitOpen):
            return  # not a call: the dependency was not asked
        what = f"{type(error).__name__}: {error}"[:200] if error is not None else "a Failed state"
        now = time.time()
        self._change(lambda s: s.with_failure(self.breaker, now, trial=trial, what=what))

    def _change(self, step: Callable[[CircuitState], tuple[CircuitState, Circuit | None]]) -> None:
        try:
            change(self.breaker, step)
        except Exception as exc:
            run_logger().warning(
                "circuit %r could not record this run's end (%s)", self.breaker.name, exc
            )


def guard(engine: Task[..., Any], breaker: CircuitBreaker) -> None:
    """Put the step's run copy behind `breaker`: its function guarded, its end reported."""
    engine.fn = CircuitGuard(engine.fn, breaker)
    hook = CircuitHook(breaker)
    engine.on_completion_hooks = [*engine.on_completion_hooks, hook]
    engine.on_failure_hooks = [*engine.on_failure_hooks, hook]


hide_hook_logs(HOOK_NAME)  # also where a worker unpickles the hook
