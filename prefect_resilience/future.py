"""The future of a resilient step: of the task runner's own kind, resolving to the policy's value.

A step is settled (its policy applied to its final state) where it ran,
right after it ran: in the worker thread of the thread pool, or as a job
that depends on it on Dask. The future handed back wraps the settled state
as the runner's own future wraps a task run's state, so Prefect waits on
it, passes it to downstream tasks and links their runs to the step exactly
as it does for a plain task, and never has to pickle it or block to.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from prefect.client.orchestration import get_client
from prefect.futures import PrefectConcurrentFuture, PrefectFuture, PrefectWrappedFuture
from prefect.states import Crashed, State

from prefect_resilience._prefect import attach, attached, final_state
from prefect_resilience.health import StepOutcome
from prefect_resilience.logs import run_logger
from prefect_resilience.settle import StepCall

R = TypeVar("R")

_OUTCOME = "outcome"


class ResilientFuture(PrefectWrappedFuture[R, Any]):
    """Put in front of the task runner's own future class: one subclass per kind (`kind_of`).

    Its wrapped future resolves to the settled state; `primary` is the future
    of the step's own task run, `outcome()` the step's report entry.
    """

    _primary: PrefectFuture[Any]
    _call: StepCall
    _settled: State[Any] | None

    def _bind(self, primary: PrefectFuture[Any], call: StepCall) -> None:
        self._primary = primary
        self._call = call
        self._settled = None
        self._settling = threading.Lock()
        observer = call.observer
        if observer is not None:
            observer.track(self)

    def __reduce__(self) -> tuple[Any, ...]:
        """Travel (to a Dask worker, in a downstream step's parameters) as the runner's own
        future of the settled state: nothing to wait for, no lock or call to carry."""
        plain = next(c for c in type(self).__mro__ if not issubclass(c, ResilientFuture))
        return (plain, (self.task_run_id, self._wrapped_future))

    @property
    def primary(self) -> PrefectFuture[Any]:
        """The future of the step's own task run (Failed when the step failed)."""
        return self._primary

    def wait(self, timeout: float | None = None) -> None:
        if self._settled is None:
            super().wait(timeout)
            self._settle()

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        self.wait(timeout)
        if final_state(self) is None:
            raise TimeoutError(f"Task run {self.task_run_id} did not finish within {timeout}s")
        return super().result(timeout, raise_on_failure)

    def outcome(self, timeout: float | None = None) -> StepOutcome:
        """The step's outcome, with the attempts and run time its task engine recorded."""
        self.wait(timeout)
        state = final_state(self)
        if state is None:
            raise TimeoutError(f"Task run {self.task_run_id} did not finish within {timeout}s")
        return outcome_of(state)

    def _settle(self) -> None:
        """Record a step settled where it ran; settle here one the runner only ran, or lost."""
        with self._settling:
            state = final_state(self)
            if self._settled is not None:
                return
            if state is not None and isinstance(attached(state, _OUTCOME), StepOutcome):
                self._call.record(outcome_of(state))
            else:
                error = None if state is not None else _runner_error(self._wrapped_future)
                if state is None and error is None:
                    return  # still running
                primary = state if state is not None else _lost(self.task_run_id, error)
                state = settled_state(self._call, primary)
            # a runner that reads its result again (Dask) gets a new copy: keep this one
            self._settled = self._final_state = state


def outcome_of(state: State[Any]) -> StepOutcome:
    """The outcome a settled state carries."""
    outcome = attached(state, _OUTCOME)
    if not isinstance(outcome, StepOutcome):
        raise ValueError("this state is not the settled state of a resilient step")
    return outcome


def settled_state(call: StepCall, primary: State[Any]) -> State[Any]:
    """Settle `call` on its primary state; the outcome travels on the returned state."""
    state, outcome = call.settle(primary)
    attach(state, _OUTCOME, outcome)
    return state


_KINDS: dict[type[Any], type[ResilientFuture[Any]]] = {}


def kind_of(future: PrefectFuture[Any]) -> type[ResilientFuture[Any]]:
    """`ResilientFuture` in front of this future's class; named in this module, so it pickles."""
    cls = type(future)
    kind = _KINDS.get(cls)
    if kind is None:
        name = f"Resilient{cls.__name__}"
        kind = type(name, (ResilientFuture, cls), {"__module__": __name__, "__qualname__": name})
        globals()[name] = _KINDS[cls] = kind
    return kind


def settle_later(primary: PrefectFuture[Any], call: StepCall) -> PrefectFuture[Any]:
    """A future of the runner's kind that resolves to the settled state of `primary`'s step."""
    if isinstance(primary, PrefectConcurrentFuture):
        return _settled_in_worker_thread(primary, call)
    if isinstance(primary, PrefectWrappedFuture) and _is_dask(primary):
        from prefect_resilience.dask import settled_on_dask

        return settled_on_dask(primary, call)
    if isinstance(primary, PrefectWrappedFuture) and _is_ray(primary):
        from prefect_resilience.ray import settled_on_ray

        return settled_on_ray(primary, call)
    if isinstance(primary, PrefectWrappedFuture):
        future = kind_of(primary)(primary.task_run_id, primary.wrapped_future)
        future._bind(primary, call)
        return future
    raise TypeError(f"prefect-resilience cannot settle futures of {type(primary).__name__}")


def _settled_in_worker_thread(
    primary: PrefectConcurrentFuture[Any], call: StepCall
) -> PrefectFuture[Any]:
    settled: concurrent.futures.Future[State[Any]] = concurrent.futures.Future()
    settled.set_running_or_notify_cancel()

    def settle(done: concurrent.futures.Future[Any]) -> None:
        try:
            error = done.exception()
            state = done.result() if error is None else _lost(primary.task_run_id, error)
            settled.set_result(settled_state(call, state))
        except BaseException as exc:  # the future must end, whatever settling did
            settled.set_exception(exc)

    primary.wrapped_future.add_done_callback(settle)
    future = kind_of(primary)(primary.task_run_id, settled)
    future._bind(primary, call)
    return future


def _is_dask(future: PrefectWrappedFuture[Any, Any]) -> bool:
    return type(future).__module__.startswith("prefect_dask")


def _is_ray(future: PrefectWrappedFuture[Any, Any]) -> bool:
    return type(future).__module__.startswith("prefect_ray")


def _runner_error(wrapped: Any) -> BaseException | None:
    """The error the task runner's own future ended with, instead of a final state.

    A Dask worker that dies mid-step (killed, out of memory) ends the step's
    Dask future with `KilledWorker` once Dask gives up rescheduling it;
    Prefect's Dask future then has no final state to offer.
    """
    done: Callable[[], bool] | None = getattr(wrapped, "done", None)
    exception = getattr(wrapped, "exception", None)
    if not callable(done) or not callable(exception) or not done():
        return None  # running, or a runner whose futures cannot say (Ray's object refs)
    try:
        error = exception()
    except BaseException as exc:  # a cancelled future raises instead of returning it
        return exc
    return error if isinstance(error, BaseException) else None


def _lost(task_run_id: Any, error: BaseException | None) -> State[Any]:
    """A Crashed state for a step its task runner lost, recorded in Prefect too.

    Nothing ran the task engine's ending, so Prefect would show the task run
    Running for ever; the step's policy then judges it like any failure.
    """
    crashed: State[Any] = Crashed(
        message=f"the task runner lost this task run: {type(error).__name__}: {error}",
        data=error,
    )
    crashed.state_details.task_run_id = task_run_id
    try:
        with get_client(sync_client=True) as client:
            client.set_task_run_state(task_run_id, crashed, force=True)
    except Exception as exc:  # the run goes on; Prefect keeps its stale state
        run_logger().warning("could not mark task run %s Crashed: %s", task_run_id, exc)
    return crashed
