"""One call of a resilient step, and its settlement once its task run is final.

Settling applies the step's policy to the primary task run's final state:
a success stands; a failure for good is tolerated (the default), degraded (a
fallback, run as its own task run) or left to fail. The outcome reports the
attempts and run time the task engine recorded on the state.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any, cast

from prefect import Task
from prefect.results import ResultRecord, get_result_store
from prefect.states import Completed, Failed, State

from prefect_resilience._prefect import state_value
from prefect_resilience.attempts import EngineFacts, facts_of
from prefect_resilience.decision import FailureDecision, decide, retry_refusal
from prefect_resilience.health import StepOutcome, StepStatus, SuccessRatio
from prefect_resilience.logs import run_logger
from prefect_resilience.policy import FailureAction, StepPolicy
from prefect_resilience.scope import StepObserver, _observer

TOLERATED = "Tolerated"


def error_of(state: State[Any]) -> BaseException | None:
    """The exception a final state holds (None for a Failed state without one)."""
    if isinstance(state.data, BaseException):
        return state.data
    try:
        result = state_value(state, raise_on_failure=False)
    except Exception as exc:  # a result that cannot be read is still the failure's evidence
        return exc
    return result if isinstance(result, BaseException) else None


def value_of(state: State[Any]) -> Any:
    """A final state's value; an in-memory result is read as Prefect's engine does."""
    if state.is_completed() and isinstance(state.data, ResultRecord):
        return state.data.result
    return state_value(state)


def describe(error: BaseException | None) -> str:
    return f"{type(error).__name__}: {error}" if error is not None else "a Failed state"


class StepCall:
    """One call of a resilient step: enough to apply its policy once it has failed.

    `fallbacks` maps the step's fallback names to tasks; `parameters` gives the
    call's parameters by name, computed only if a fallback needs them. The
    call keeps the context it was made in, so fallbacks run as task runs of
    the same flow run and the outcome reaches the same scope, whichever
    thread settles it.
    """

    def __init__(
        self,
        name: str,
        step: StepPolicy,
        fallbacks: Mapping[str, Task[..., Any]],
        parameters: Callable[[], dict[str, Any]],
    ) -> None:
        self.name = name
        self.step = step
        self.fallbacks = fallbacks
        self.parameters = parameters
        self.context: contextvars.Context | None = contextvars.copy_context()
        self.batch: SuccessRatio | None = None
        self._recorded = threading.Lock()

    @property
    def observer(self) -> StepObserver | None:
        """The scope this call was made in (None where it travelled to: a Dask worker)."""
        return self.context.get(_observer) if self.context is not None else None

    def settle(self, primary: State[Any]) -> tuple[State[Any], StepOutcome]:
        """The state the policy gives this call, and its outcome (reported to the scope)."""
        if self.context is None:
            state, outcome = self._settle(primary)
        else:
            state, outcome = self.context.copy().run(self._settle, primary)
        self.record(outcome)
        return state, outcome

    def for_item(
        self, parameters: Callable[[], dict[str, Any]], batch: SuccessRatio | None = None
    ) -> StepCall:
        """The same call for one item of a mapped step, with that item's parameters.

        `batch` counts the task runs of the `.map()` against its `min_success_ratio`.
        """
        item = StepCall.__new__(StepCall)
        item.__dict__.update(
            self.__dict__, parameters=parameters, batch=batch, _recorded=threading.Lock()
        )
        return item

    def record(self, outcome: StepOutcome) -> None:
        """Tell the scope about the outcome, once, wherever the call was settled."""
        observer = self.observer
        if observer is not None and self._recorded.acquire(blocking=False):
            observer.record(outcome)
            if self.batch is not None:
                observer.record_mapped(self.batch, outcome)

    def __getstate__(self) -> dict[str, Any]:
        """Travels without its context and its map's count: the worker has neither scope."""
        return {**self.__dict__, "context": None, "batch": None, "_recorded": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _recorded=threading.Lock())

    def _settle(self, primary: State[Any]) -> tuple[State[Any], StepOutcome]:
        facts = facts_of(primary)
        if primary.is_completed():
            return primary, self._outcome(primary, facts, StepStatus.SUCCEEDED)
        error = error_of(primary)
        if primary.is_cancelled():
            return primary, self._outcome(
                primary, facts, StepStatus.FAILED, reason="cancelled", error=error
            )
        decision = self._decide(error, facts)
        reasons = [decision.reason]
        tried = 0
        while decision.action is FailureAction.FALLBACK and decision.fallback:
            fallback = self.fallbacks[decision.fallback]
            fallback_state = self._run_fallback(fallback)
            if fallback_state.is_completed():
                reason = "; ".join(reasons) + f"; {fallback.name} succeeded"
                run_logger().warning("%s: %s", self.name, reason)
                return fallback_state, self._outcome(
                    primary,
                    facts,
                    StepStatus.DEGRADED,
                    action=FailureAction.FALLBACK,
                    reason=reason,
                    error=error,
                    fallback=fallback.name,
                    fallback_task_run_id=fallback_state.state_details.task_run_id,
                )
            tried += 1
            decision = self._decide(error, facts, fallbacks_tried=tried)
            reasons.append(f"{fallback.name} failed with {describe(error_of(fallback_state))}")
            reasons.append(decision.consequence)
        reason = "; ".join(reasons)
        run_logger().warning("%s: %s", self.name, reason)
        if decision.action is FailureAction.TERMINATE:
            return primary, self._outcome(
                primary,
                facts,
                StepStatus.FAILED,
                action=decision.action,
                reason=reason,
                error=error,
            )
        # a result record, as Prefect's engine makes: a bare None would read as a missing result
        record = get_result_store().create_result_record(self.step.default)
        tolerated: State[Any] = Completed(data=record, name=TOLERATED, message=decision.reason)
        tolerated.state_details.task_run_id = primary.state_details.task_run_id
        tolerated.state_details.flow_run_id = primary.state_details.flow_run_id
        return tolerated, self._outcome(
            primary, facts, StepStatus.TOLERATED, action=decision.action, reason=reason, error=error
        )

    def _decide(
        self, error: BaseException | None, facts: EngineFacts | None, fallbacks_tried: int = 0
    ) -> FailureDecision:
        """The policy's decision once Prefect has stopped retrying."""
        step = self.step
        if facts is not None and facts.no_retry is not None:  # the retry condition said why
            return decide(
                step,
                error,
                attempt=facts.attempts,
                fallbacks_tried=fallbacks_tried,
                retries_over=facts.no_retry,
            )
        refused = retry_refusal(step, error)
        if refused or facts is None or facts.attempts > step.retry_count:
            attempt = 1 if refused else step.retry_count + 1
            return decide(step, error, attempt=attempt, fallbacks_tried=fallbacks_tried)
        # retries were left and the policy allowed them: the task's own condition declined
        return decide(
            step,
            error,
            attempt=facts.attempts,
            fallbacks_tried=fallbacks_tried,
            retries_over="the task's retry_condition_fn declined a retry",
        )

    def _run_fallback(self, fallback: Task[..., Any]) -> State[Any]:
        parameters = _accepted(fallback, self.parameters())
        try:
            state = fallback(**parameters, return_state=True)
            if inspect.isawaitable(state):
                from prefect.utilities.asyncutils import run_coro_as_sync

                state = run_coro_as_sync(cast(Coroutine[Any, Any, State[Any]], state))
        except Exception as exc:  # a fallback that cannot even start has failed
            return Failed(data=exc, message=f"fallback {fallback.name} could not run: {exc!r}")
        return state

    def _outcome(
        self,
        primary: State[Any],
        facts: EngineFacts | None,
        status: StepStatus,
        *,
        action: FailureAction | None = None,
        reason: str = "",
        error: BaseException | None = None,
        fallback: str | None = None,
        fallback_task_run_id: Any = None,
    ) -> StepOutcome:
        step = self.step
        attempts = facts.attempts if facts is not None else None
        if status is StepStatus.SUCCEEDED and attempts is not None and attempts > 1:
            status = StepStatus.RECOVERED
            reason = f"succeeded on attempt {attempts} (Prefect retries)"
        return StepOutcome(
            name=self.name,
            task_run_id=primary.state_details.task_run_id,
            status=status,
            policy=step.policy,
            critical=step.critical,
            impact=step.impact,
            attempts=attempts,
            duration=facts.seconds if facts is not None else None,
            action=action,
            reason=reason,
            exception_type=type(error).__name__ if error is not None else None,
            exception_message=str(error)[:500] if error is not None else None,
            fallback_used=fallback,
            fallback_task_run_id=fallback_task_run_id,
            finished=datetime.now(UTC),
        )


def _accepted(fallback: Task[..., Any], parameters: Mapping[str, Any]) -> dict[str, Any]:
    signature = inspect.signature(fallback.fn)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return dict(parameters)
    return {k: v for k, v in parameters.items() if k in signature.parameters}
