"""`@resilient`: a Prefect task with a failure policy.

A `ResilientTask` is a Prefect `Task` whose retries are Prefect's own
(`retries`, `retry_delay_seconds`, `retry_jitter_factor`, `retry_condition_fn`)
and whose final failure is then judged by its `StepPolicy`. The primary task
run stays Failed in Prefect; a tolerated step yields its default, a degraded
one the result of a fallback that ran as its own task run. Direct calls,
`.submit()` and `.map()` behave alike: the futures they return resolve to the
value the policy chose, also when passed into another task.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from prefect import Task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId
from prefect.futures import PrefectFuture, PrefectFutureList, PrefectTaskRunFuture
from prefect.logging import get_logger
from prefect.results import ResultRecord, get_result_store
from prefect.states import Completed, Crashed, State
from prefect.utilities.callables import expand_mapping_parameters, get_call_parameters
from prefect.utilities.engine import resolve_inputs_sync
from pydantic import ValidationError

from prefect_resilience.decision import decide, retry_refusal
from prefect_resilience.errors import ResilienceConfigError
from prefect_resilience.health import StepOutcome, StepStatus
from prefect_resilience.policy import (
    FailureAction,
    FailurePolicy,
    StepPolicy,
    WorkflowPolicy,
    config_error,
)

logger = get_logger("prefect_resilience")


class StepObserver:
    """Sees what the resilient steps of one scope do: a flow run, or `collect_outcomes`.

    The scope's observer is a context variable, so a future settled later, in
    any thread, still reports to the scope it was submitted in.
    """

    policy: WorkflowPolicy | None = None

    def before_step(self, task: ResilientTask) -> None:
        """Called before a step starts; may refuse it by raising."""

    def track(self, future: ResilientFuture) -> None:
        """A future the scope should settle before it ends."""

    def record(self, outcome: StepOutcome) -> None:
        """A step has settled."""


_observer: contextvars.ContextVar[StepObserver | None] = contextvars.ContextVar(
    "prefect_resilience_observer", default=None
)


def current_observer() -> StepObserver | None:
    return _observer.get()


@contextmanager
def observing(observer: StepObserver) -> Iterator[StepObserver]:
    token = _observer.set(observer)
    try:
        yield observer
    finally:
        _observer.reset(token)


class _Collector(StepObserver):
    """Keeps outcomes in a list and passes everything on to the enclosing scope."""

    def __init__(self, parent: StepObserver | None) -> None:
        self.parent = parent
        self.policy = parent.policy if parent else None
        self.outcomes: list[StepOutcome] = []

    def before_step(self, task: ResilientTask) -> None:
        if self.parent:
            self.parent.before_step(task)

    def track(self, future: ResilientFuture) -> None:
        if self.parent:
            self.parent.track(future)

    def record(self, outcome: StepOutcome) -> None:
        self.outcomes.append(outcome)
        if self.parent:
            self.parent.record(outcome)


@contextmanager
def collect_outcomes() -> Iterator[list[StepOutcome]]:
    """Gather the `StepOutcome` of every resilient step settled inside the block.

    Futures settled later still report here: they remember the context they
    were submitted in. Outcomes still reach the enclosing resilient flow run.
    """
    collector = _Collector(_observer.get())
    with observing(collector):
        yield collector.outcomes


class RetryCondition:
    """Prefect's `retry_condition_fn` for a step: retry_on / give_up_on, then the user's.

    A class, not a closure, so it pickles to Dask workers.
    """

    def __init__(self, step: StepPolicy, user_condition: Callable[..., Any] | None = None):
        self.step = step
        self.user_condition = user_condition

    def __call__(self, task: Task[..., Any], task_run: Any, state: State[Any]) -> bool:
        decision = decide(self.step, _error_of(state), attempt=task_run.run_count)
        if decision.action is not FailureAction.RETRY:
            # Prefect logs the retries it makes; a refused one needs its reason said
            logger.info("%s: no retry: %s", task_run.name, decision.reason)
            return False
        logger.debug("%s: %s", task_run.name, decision.reason)
        if self.user_condition is not None:
            return bool(self.user_condition(task, task_run, state))
        return True

    def __repr__(self) -> str:
        return f"RetryCondition(retry_on={self.step.retry_on}, give_up_on={self.step.give_up_on})"


def resilience_tags(step: StepPolicy) -> set[str]:
    """Tags that let history be filtered by policy, criticality and impact (`tag_runs`)."""
    tags = {f"resilience:{step.policy.value}", f"resilience:impact:{step.impact.value}"}
    if step.critical:
        tags.add("resilience:critical")
    return tags


def _error_of(state: State[Any]) -> BaseException | None:
    data = state.data
    if isinstance(data, BaseException):
        return data
    try:
        result = state.result(raise_on_failure=False, _sync=True)  # type: ignore[call-overload]
    except Exception as exc:  # a result that cannot be read is still the failure's evidence
        return exc
    return result if isinstance(result, BaseException) else None


def _as_task(fallback: Any) -> Task[..., Any]:
    if isinstance(fallback, Task):
        return fallback
    if not callable(fallback):
        raise ResilienceConfigError(
            f"a fallback must be a task or a callable, got {fallback!r}", field="fallbacks"
        )
    try:
        return Task(fallback, name=getattr(fallback, "__name__", None))
    except (AttributeError, TypeError, ValueError) as exc:
        raise ResilienceConfigError(
            f"cannot make a task of fallback {fallback!r}: {exc}", field="fallbacks"
        ) from None


def _import_fallback(name: str) -> Task[..., Any]:
    """A fallback named 'package.module:function' in a policy document."""
    module_name, _, attr = name.partition(":")
    try:
        return _as_task(getattr(importlib.import_module(module_name), attr))
    except (ImportError, AttributeError) as exc:
        raise ResilienceConfigError(
            f"cannot import fallback {name!r}: {exc}", field="fallbacks"
        ) from None


class ResilientTask(Task):  # type: ignore[type-arg]
    """A Prefect `Task` with a `StepPolicy`. Create it with `@resilient`."""

    def __init__(
        self,
        base: Task[..., Any],
        step: StepPolicy,
        fallbacks: Sequence[Any] = (),
        tag_runs: bool = False,
    ) -> None:
        if not isinstance(fallbacks, list | tuple):
            raise ResilienceConfigError(
                f"must be a list of tasks, callables or names, got {fallbacks!r}",
                field="fallbacks",
            )
        if step.retries == "auto":
            raise ResilienceConfigError(
                f"step {base.name!r}: retries='auto' belongs in a workflow policy's step policy,"
                " next to the learned values it uses; the decorator declares the retries used"
                " until enough history has been learned from",
                field="retries",
            )
        if fallbacks and step.policy is not FailurePolicy.GRACEFUL_DEGRADATION:
            raise ResilienceConfigError(
                f"fallbacks are never run under policy {step.policy.value!r};"
                " use 'graceful_degradation' or drop them",
                field="fallbacks",
            )
        fallback_tasks = tuple(_as_task(f) for f in fallbacks)
        if fallback_tasks and not step.fallbacks:
            step = step.merged({"fallbacks": [t.name for t in fallback_tasks]})
        if len(fallback_tasks) != len(step.fallbacks):
            raise ResilienceConfigError(
                f"step {base.name!r} names fallbacks {list(step.fallbacks)}"
                f" but {len(fallback_tasks)} were given",
                field="fallbacks",
            )
        delays = step.retry_delays()
        configured = base.with_options(
            retries=step.retries,
            # zero delays as 0, not [0, ...]: Prefect then retries at once instead of
            # scheduling an AwaitingRetry state that is due immediately
            retry_delay_seconds=delays if any(delays) else 0,
            retry_jitter_factor=step.jitter if step.backoff else base.retry_jitter_factor,
            retry_condition_fn=RetryCondition(step, base.retry_condition_fn),
            timeout_seconds=step.timeout,
            tags={*base.tags, *resilience_tags(step)} if tag_runs else set(base.tags),
        )
        self.__dict__.update(configured.__dict__)
        self.base_task = base
        self.step = step
        self.tag_runs = tag_runs
        self.fallback_tasks = fallback_tasks
        self._fallback_by_name = dict(zip(step.fallbacks, fallback_tasks, strict=True))
        self._variants: dict[str, ResilientTask] = {}
        _check_fallback_signatures(self)

    # --- policy in force for this run ---------------------------------------

    def _for_run(self) -> ResilientTask:
        """This task as the current workflow policy configures it (DESIGN's precedence)."""
        observer = _observer.get()
        workflow = observer.policy if observer else None
        if workflow is None:
            return self
        effective = workflow.policy_for(self.base_task.name, self.base_task.tags, self.step)
        if effective == self.step:
            return self
        key = effective.model_dump_json()
        variant = self._variants.get(key)
        if variant is None:
            fallbacks = self._fallbacks_for(effective)
            variant = ResilientTask(self.base_task, effective, fallbacks, self.tag_runs)
            self._variants[key] = variant
        return variant

    def _starting(self) -> ResilientTask:
        """Let the scope refuse a new step (a terminated run), then configure it."""
        observer = _observer.get()
        if observer is not None:
            observer.before_step(self)
        return self._for_run()

    def _fallbacks_for(self, step: StepPolicy) -> list[Task[..., Any]]:
        known = {t.name: t for t in self.fallback_tasks}
        known.update({getattr(t.fn, "__name__", t.name): t for t in self.fallback_tasks})
        chosen = []
        for name in step.fallbacks:
            if name in known:
                chosen.append(known[name])
            elif ":" in name:
                chosen.append(_import_fallback(name))
            else:
                raise ResilienceConfigError(
                    f"fallback {name!r} of step {self.name!r} is neither one of its fallbacks"
                    f" {sorted(known)} nor an importable 'module:function'",
                    field="fallbacks",
                )
        return chosen

    def fallback_named(self, name: str) -> Task[..., Any]:
        return self._fallback_by_name[name]

    # --- running ------------------------------------------------------------

    def __call__(  # type: ignore[override]
        self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any
    ) -> Any:
        task = self._starting()
        call = StepCall(task, lambda: get_call_parameters(self.fn, args, kwargs))
        if task.isasync:
            return _settle_async(call, task, args, kwargs, wait_for, return_state)
        primary = Task.__call__(task, *args, return_state=True, wait_for=wait_for, **kwargs)
        state, _ = call.settle(primary)
        return state if return_state else _value_of(state)

    def submit(  # type: ignore[override]
        self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any
    ) -> Any:
        task = self._starting()
        primary = Task.submit(task, *args, wait_for=wait_for, **kwargs)
        call = StepCall(task, lambda: get_call_parameters(self.fn, args, kwargs))
        future = ResilientFuture(primary, call)
        if return_state:
            future.wait()
            return future.state
        return future

    def map(  # type: ignore[override]
        self,
        *args: Any,
        return_state: bool = False,
        wait_for: Any = None,
        deferred: bool = False,
        **kwargs: Any,
    ) -> Any:
        task = self._starting()
        primaries = Task.map(task, *args, wait_for=wait_for, deferred=deferred, **kwargs)
        per_run = _MappedParameters(self.fn, get_call_parameters(self.fn, args, kwargs, False))
        futures = PrefectFutureList(
            ResilientFuture(p, StepCall(task, per_run.getter(i))) for i, p in enumerate(primaries)
        )
        if return_state:
            futures.wait()
            return [f.state for f in futures]
        return futures

    def with_options(self, **options: Any) -> ResilientTask:  # type: ignore[override]
        """Change Prefect options, resilience settings (`policy`, `backoff`, ...) or both."""
        for prefect_name, name in (
            ("retry_delay_seconds", "retry_delay"),
            ("timeout_seconds", "timeout"),
        ):
            if prefect_name in options:
                options[name] = options.pop(prefect_name)
        resilience = {k: options.pop(k) for k in list(options) if k in StepPolicy.model_fields}
        fallbacks = resilience.pop("fallbacks", None)
        if fallbacks is not None:
            fallbacks = [_as_task(f) for f in fallbacks]
            resilience["fallbacks"] = [f.name for f in fallbacks]
        step = _validated(lambda: self.step.merged(resilience))
        if fallbacks is None:
            fallbacks = [self._fallback_by_name[n] for n in step.fallbacks]
        tag_runs = options.pop("tag_runs", self.tag_runs)
        base = self.base_task.with_options(**options) if options else self.base_task
        return ResilientTask(base, step, fallbacks, tag_runs)


def _validated(build: Callable[[], StepPolicy]) -> StepPolicy:
    try:
        return build()
    except ValidationError as exc:
        raise config_error(exc) from None


def _check_fallback_signatures(task: ResilientTask) -> None:
    """A fallback receives the step's parameters by name; it may take fewer."""
    offered = set(inspect.signature(task.fn).parameters)
    for fallback in task.fallback_tasks:
        for name, param in inspect.signature(fallback.fn).parameters.items():
            required = param.default is inspect.Parameter.empty and param.kind not in (
                inspect.Parameter.VAR_POSITIONAL,
                inspect.Parameter.VAR_KEYWORD,
            )
            if required and name not in offered:
                raise ResilienceConfigError(
                    f"fallback {fallback.name!r} requires parameter {name!r},"
                    f" which step {task.name!r} does not have",
                    field="fallbacks",
                )


class _MappedParameters:
    """The parameters of each mapped run, expanded only if a fallback needs them."""

    def __init__(self, fn: Callable[..., Any], parameters: dict[str, Any]):
        self._fn = fn
        self._parameters = parameters
        self._expanded: list[dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def getter(self, index: int) -> Callable[[], dict[str, Any]]:
        return lambda: self._all()[index]

    def _all(self) -> list[dict[str, Any]]:
        with self._lock:
            if self._expanded is None:
                resolved = resolve_inputs_sync(self._parameters, max_depth=0)
                self._expanded = expand_mapping_parameters(self._fn, resolved)
            return self._expanded


class StepCall:
    """One call of a resilient step: enough to apply its policy once it has failed.

    It keeps the context it was made in, so fallbacks run as task runs of the
    same flow run, whichever thread settles the step.
    """

    def __init__(self, task: ResilientTask, parameters: Callable[[], dict[str, Any]]):
        self.task = task
        self.parameters = parameters
        self.context = contextvars.copy_context()

    def settle(self, primary: State[Any]) -> tuple[State[Any], StepOutcome]:
        """The state the policy gives this call, and its outcome (reported once)."""
        state, outcome = self.context.copy().run(self._settle, primary)
        observer = self.context.get(_observer)
        if observer is not None:
            observer.record(outcome)
        return state, outcome

    def _settle(self, primary: State[Any]) -> tuple[State[Any], StepOutcome]:
        step = self.task.step
        record = _OutcomeRecord(self.task, primary)
        if primary.is_completed():
            return primary, record.outcome(StepStatus.SUCCEEDED)
        error = _error_of(primary)
        if primary.is_cancelled():
            return primary, record.outcome(StepStatus.FAILED, reason="cancelled", error=error)
        # a refused retry is decided as at attempt 1; otherwise the retries ran out
        attempt = 1 if retry_refusal(step, error) else step.retries + 1
        decision = decide(step, error, attempt=attempt)
        reasons = [decision.reason]
        tried = 0
        while decision.action is FailureAction.FALLBACK and decision.fallback:
            fallback = self.task.fallback_named(decision.fallback)
            fallback_state = self._run_fallback(fallback)
            if fallback_state.is_completed():
                return fallback_state, record.outcome(
                    StepStatus.DEGRADED,
                    action=FailureAction.FALLBACK,
                    reason="; ".join(reasons) + f"; {fallback.name} succeeded",
                    error=error,
                    fallback=fallback.name,
                    fallback_task_run_id=fallback_state.state_details.task_run_id,
                )
            tried += 1
            decision = decide(step, error, attempt=attempt, fallbacks_tried=tried)
            reasons.append(f"{fallback.name} failed with {_describe(_error_of(fallback_state))}")
            reasons.append(decision.consequence)
        reason = "; ".join(reasons)
        if decision.action is FailureAction.TERMINATE:
            return primary, record.outcome(
                StepStatus.FAILED, action=decision.action, reason=reason, error=error
            )
        # a result record, as Prefect's engine makes: a bare None would read as a missing result
        record_of_default = get_result_store().create_result_record(step.default)
        tolerated = Completed(data=record_of_default, name="Tolerated", message=decision.reason)
        tolerated.state_details.task_run_id = primary.state_details.task_run_id
        return tolerated, record.outcome(
            StepStatus.TOLERATED, action=decision.action, reason=reason, error=error
        )

    def _run_fallback(self, fallback: Task[..., Any]) -> State[Any]:
        parameters = _accepted(fallback, self.parameters())
        try:
            state = fallback(**parameters, return_state=True)
            if inspect.isawaitable(state):
                from prefect.utilities.asyncutils import run_coro_as_sync

                state = run_coro_as_sync(state)
        except Exception as exc:  # a fallback that cannot even start has failed
            from prefect.states import Failed

            return Failed(data=exc, message=f"fallback {fallback.name} could not run: {exc!r}")
        return state


def _value_of(state: State[Any]) -> Any:
    """A final state's value; an in-memory task result is read as Prefect's engine does."""
    if state.is_completed() and isinstance(state.data, ResultRecord):
        return state.data.result
    return state.result(_sync=True)  # type: ignore[call-overload]


def _describe(error: BaseException | None) -> str:
    return f"{type(error).__name__}: {error}" if error is not None else "a Failed state"


def _accepted(fallback: Task[..., Any], parameters: Mapping[str, Any]) -> dict[str, Any]:
    signature = inspect.signature(fallback.fn)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return dict(parameters)
    return {k: v for k, v in parameters.items() if k in signature.parameters}


class _OutcomeRecord:
    def __init__(self, task: ResilientTask, primary: State[Any]):
        self.task = task
        self.primary = primary

    def outcome(
        self,
        status: StepStatus,
        *,
        action: FailureAction | None = None,
        reason: str = "",
        error: BaseException | None = None,
        fallback: str | None = None,
        fallback_task_run_id: Any = None,
    ) -> StepOutcome:
        step = self.task.step
        return StepOutcome(
            name=self.task.name,
            task_run_id=self.primary.state_details.task_run_id,
            status=status,
            policy=step.policy,
            critical=step.critical,
            impact=step.impact,
            action=action,
            reason=reason,
            exception_type=type(error).__name__ if error is not None else None,
            exception_message=str(error)[:500] if error is not None else None,
            fallback_used=fallback,
            fallback_task_run_id=fallback_task_run_id,
            finished=datetime.now(UTC),
        )


async def _settle_async(
    call: StepCall,
    task: ResilientTask,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    wait_for: Any,
    return_state: bool,
) -> Any:
    primary = await Task.__call__(task, *args, return_state=True, wait_for=wait_for, **kwargs)
    state, _ = await asyncio.to_thread(call.settle, primary)
    return state if return_state else await state.aresult()


class ResilientFuture(PrefectTaskRunFuture[Any]):
    """A future of a resilient step: it resolves to the value its policy chose.

    Wraps the primary task run's future; `task_run_id` is the primary's, so
    Prefect links downstream task runs to the step that ran.
    """

    def __init__(self, primary: PrefectFuture[Any], call: StepCall):
        super().__init__(primary.task_run_id)
        self._primary = primary
        self._call = call
        self._lock = threading.Lock()
        self._outcome: StepOutcome | None = None
        observer = call.context.get(_observer)
        if observer is not None:
            observer.track(self)

    @property
    def primary(self) -> PrefectFuture[Any]:
        """The future of the step's own task run (Failed when the step failed)."""
        return self._primary

    @property
    def state(self) -> State[Any]:
        if self._final_state is not None:
            return self._final_state
        return self._primary.state

    def wait(self, timeout: float | None = None) -> None:
        self._primary.wait(timeout)
        # Prefect's own wait() and as_completed() read `_final_state` the same way
        done = getattr(self._primary, "_final_state", None) is not None
        if done or _runner_error(self._primary) is not None:
            self._settle()

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        self.wait(timeout)
        if self._final_state is None:
            raise TimeoutError(f"Task run {self.task_run_id} did not finish within {timeout}s")
        return self._final_state.result(raise_on_failure=raise_on_failure, _sync=True)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled, a step is its settled state, as a parameter of a task on another process.

        A task runner that ships parameters to other processes (Dask) pickles
        them; a future with a lock cannot travel, but its final state can.
        Prefect resolves a state parameter to its value (the default or the
        fallback's value here) and still links the downstream task run to it.
        """
        self.wait()
        return (_same, (self.state,))

    def add_done_callback(self, fn: Callable[[PrefectFuture[Any]], None]) -> None:
        def settled(_: Any) -> None:
            self._settle()
            fn(self)

        self._primary.add_done_callback(settled)

    def outcome(self, timeout: float | None = None) -> StepOutcome:
        """The step's outcome, with attempts and duration read from Prefect."""
        self.wait(timeout)
        if self._outcome is None:
            raise TimeoutError(f"Task run {self.task_run_id} did not finish within {timeout}s")
        return with_run_details([self._outcome])[0]

    def _settle(self) -> None:
        with self._lock:
            if self._final_state is not None:
                return
            self._primary.wait()
            error = _runner_error(self._primary)
            primary = self._primary.state if error is None else _lost(self._primary, error)
            state, self._outcome = self._call.settle(primary)
            self._final_state = state


def _same(value: Any) -> Any:
    return value


def _runner_error(primary: PrefectFuture[Any]) -> BaseException | None:
    """The error the task runner's own future ended with, instead of a final state.

    A Dask worker that dies mid-step (killed, out of memory) ends the step's
    Dask future with `KilledWorker` once Dask gives up rescheduling it;
    Prefect's Dask future then has no final state to offer.
    """
    if getattr(primary, "_final_state", None) is not None:
        return None
    wrapped = getattr(primary, "wrapped_future", None)
    done, exception = getattr(wrapped, "done", None), getattr(wrapped, "exception", None)
    if not callable(done) or not callable(exception) or not done():
        return None  # running, or a runner whose futures cannot say (Ray's object refs)
    try:
        return exception()
    except BaseException as exc:  # a cancelled future raises instead of returning it
        return exc


def _lost(primary: PrefectFuture[Any], error: BaseException) -> State[Any]:
    """A Crashed state for a step its task runner lost, recorded in Prefect too.

    Nothing ran the task engine's ending, so Prefect would show the task run
    Running for ever; the step's policy then judges it like any failure.
    """
    crashed = Crashed(
        message=f"the task runner lost this task run: {type(error).__name__}: {error}",
        data=error,
    )
    crashed.state_details.task_run_id = primary.task_run_id
    try:
        with get_client(sync_client=True) as client:
            client.set_task_run_state(primary.task_run_id, crashed, force=True)
    except Exception as exc:  # the run goes on; Prefect keeps its stale state
        logger.warning("could not mark task run %s Crashed: %s", primary.task_run_id, exc)
    return crashed


def with_run_details(outcomes: Sequence[StepOutcome], timeout: float = 10.0) -> list[StepOutcome]:
    """Fill attempts (`run_count`) and duration from Prefect's record of each task run.

    Prefect records task runs from events, a moment after they finish; this
    waits (up to `timeout` seconds) until every run's final state is recorded.
    A succeeded step that needed more than one attempt becomes `recovered`.
    Runs still unrecorded after the timeout keep `attempts=None`: unknown.
    """
    wanted = [o.task_run_id for o in outcomes if o.task_run_id and o.attempts is None]
    if not wanted:
        return list(outcomes)
    by_id = _read_recorded_runs(wanted, timeout)
    detailed = []
    for outcome in outcomes:
        run = by_id.get(outcome.task_run_id) if outcome.task_run_id else None
        if run is None or outcome.attempts is not None:
            detailed.append(outcome)
            continue
        update: dict[str, Any] = {
            "attempts": run.run_count,
            "duration": run.total_run_time.total_seconds() if run.total_run_time else None,
        }
        if outcome.status is StepStatus.SUCCEEDED and run.run_count > 1:
            update["status"] = StepStatus.RECOVERED
            update["reason"] = f"succeeded on attempt {run.run_count} (Prefect retries)"
        detailed.append(outcome.model_copy(update=update))
    return detailed


def _read_recorded_runs(ids: list[Any], timeout: float, page: int = 200) -> dict[Any, Any]:
    """Task runs by id once Prefect has recorded their final state (paged: the API caps pages)."""
    deadline = time.monotonic() + timeout
    pause = 0.02
    recorded: dict[Any, Any] = {}
    missing = list(dict.fromkeys(ids))
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
            time.sleep(pause)
            pause = min(pause * 2, 0.5)


_UNSET: Any = object()


def resilient(
    __fn: Any = None,
    *,
    policy: FailurePolicy | str = _UNSET,
    retries: int = _UNSET,
    backoff: Any = _UNSET,
    retry_delay: Any = _UNSET,
    retry_on: Any = _UNSET,
    give_up_on: Any = _UNSET,
    critical: bool = _UNSET,
    impact: Any = _UNSET,
    fallbacks: Sequence[Any] = (),
    default: Any = _UNSET,
    timeout: float = _UNSET,
    tag_runs: bool = False,
    **task_options: Any,
) -> Any:
    """Make a task resilient: a failure policy, capped retries, fallbacks, a default.

    Stack it over `@task` or use it alone (it then makes the task, passing
    `task_options` such as `name` or `tags` to Prefect). Every argument is a
    default that a workflow policy may override per step.

    `retry_on` / `give_up_on` take exception classes or names (globs allowed);
    `fallbacks` take tasks or plain callables, called with the step's
    parameters (those they accept), each as its own task run.

    `tag_runs=True` also tags each task run with its policy, impact and
    criticality. Off by default: Prefect makes a tag-concurrency API call for
    every tagged task run, which the benchmarks show costing 20-30% per task
    run and far more under concurrent load; the run's report already records
    each step's policy for history analysis.
    """
    settings = {
        k: v
        for k, v in {
            "policy": policy,
            "retries": retries,
            "backoff": backoff,
            "retry_delay": retry_delay,
            "retry_on": _exception_names(retry_on),
            "give_up_on": _exception_names(give_up_on),
            "critical": critical,
            "impact": impact,
            "default": default,
            "timeout": timeout,
        }.items()
        if v is not _UNSET
    }

    if fallbacks and "policy" not in settings:
        settings["policy"] = FailurePolicy.GRACEFUL_DEGRADATION

    def decorate(fn: Any) -> ResilientTask:
        if isinstance(fn, ResilientTask):
            raise ResilienceConfigError(f"{fn.name!r} is already resilient")
        if isinstance(fn, Task):
            base = fn.with_options(**task_options) if task_options else fn
        elif callable(fn):
            base = Task(fn, **task_options)
        else:
            raise ResilienceConfigError(f"@resilient decorates a function or task, got {fn!r}")
        step = _validated(lambda: StepPolicy.model_validate(_inherit_retries(base, settings)))
        return ResilientTask(base, step, fallbacks, tag_runs)

    return decorate(__fn) if __fn is not None else decorate


def _inherit_retries(base: Task[..., Any], settings: dict[str, Any]) -> dict[str, Any]:
    """A stacked `@task(retries=..., retry_delay_seconds=...)` keeps its retries."""
    if "retries" in settings or not base.retries:
        return settings
    inherited = {**settings, "retries": base.retries}
    if "backoff" not in settings and "retry_delay" not in settings and base.retry_delay_seconds:
        delay = base.retry_delay_seconds
        inherited["retry_delay"] = list(delay) if isinstance(delay, Sequence) else delay
    return inherited


def _exception_names(value: Any) -> Any:
    if value is _UNSET:
        return value
    items = value if isinstance(value, list | tuple | set | frozenset) else [value]
    names = []
    for item in items:
        if isinstance(item, type) and issubclass(item, BaseException):
            names.append(f"{item.__module__}.{item.__qualname__}")
        else:
            names.append(item)
    return names
