"""`@resilient`: a Prefect task with a failure policy.

A `ResilientTask` is the Prefect `Task` the user wrote, with the attributes
Prefect gives it, and a `StepPolicy`. Retries are Prefect's own; once a run
has failed for good, the policy judges it: a tolerated step yields its
default, a degraded one the result of a fallback that ran as its own task
run. Each call runs a copy of the task configured for that run (the workflow
policy in force, the retry filters, the hook that records attempts), so the
task itself stays as Prefect made it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, overload

from prefect import Task
from prefect.futures import PrefectFutureList
from prefect.states import State
from prefect.utilities.callables import get_call_parameters
from pydantic import ValidationError

from prefect_resilience import circuit, fallbacks
from prefect_resilience._prefect import (
    mapped_parameters,
    method_kind,
    plain_task,
    retyped,
    wait_next,
)
from prefect_resilience.attempts import RECORD_ATTEMPTS, note_no_retry
from prefect_resilience.decision import FailureDecision, describe, next_retry, requested_wait
from prefect_resilience.errors import ResilienceConfigError
from prefect_resilience.fallbacks import offer
from prefect_resilience.future import settle_later
from prefect_resilience.health import SuccessRatio
from prefect_resilience.logs import run_logger
from prefect_resilience.policy import FailurePolicy, StepPolicy
from prefect_resilience.policy_documents import config_error
from prefect_resilience.scope import _observer, collect_outcomes
from prefect_resilience.settle import StepCall, error_of, value_of

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["ResilientTask", "RetryCondition", "collect_outcomes", "resilient", "resilience_tags"]


class RetryCondition:
    """Prefect's `retry_condition_fn` of a resilient step: the step policy's `next_retry` first.

    It refuses what the policy refuses (retry_on, give_up_on, an open
    circuit, a retry past the `retry_budget`), noting why on the task run for
    the settlement, and makes Prefect wait what a `RetryAfter` or HTTP
    `Retry-After` asked for. The task's own condition decides next; its answer
    goes back to Prefect as it is, so an async one is awaited by Prefect's
    engine. A class, not a closure, so it pickles to Dask and Ray workers.
    """

    def __init__(self, step: StepPolicy, user_condition: Callable[..., Any] | None = None):
        self.step = step
        self.user_condition = user_condition

    def __call__(self, task: Task[..., Any], task_run: Any, state: State[Any]) -> Any:
        error = error_of(state)
        started = task_run.start_time
        retry = next_retry(
            self.step,
            error,
            task_run.run_count,
            elapsed=(datetime.now(UTC) - started).total_seconds() if started else None,
            requested=requested_wait(error),
        )
        if not isinstance(retry, FailureDecision):
            note_no_retry(task_run, retry)
            # Prefect logs the retries it makes; a refused one needs its reason said
            run_logger().info("no retry: %s; %s", describe(error), retry)
            return False
        wait_next(task, task_run, retry.delay if retry.requested else None)
        if self.user_condition is not None:
            return self.user_condition(task, task_run, state)
        return True

    def __repr__(self) -> str:
        return f"RetryCondition(retry_on={self.step.retry_on}, give_up_on={self.step.give_up_on})"


def resilience_tags(step: StepPolicy) -> set[str]:
    """Tags that let history be filtered by policy, criticality and impact (`tag_runs`)."""
    tags = {f"resilience:{step.policy.value}", f"resilience:impact:{step.impact.value}"}
    if step.critical:
        tags.add("resilience:critical")
    return tags


def tagged(tags: set[str], step: StepPolicy) -> set[str]:
    """`tags` with the resilience tags of `step` in place of any earlier ones."""
    return {t for t in tags if not t.startswith("resilience:")} | resilience_tags(step)


def prefect_retry_options(step: StepPolicy) -> dict[str, Any]:
    """The Prefect task options for what `step` sets of retries, delays and timeout.

    Equal delays become one number, as a user would write them for Prefect.
    """
    given = step.explicit()
    options: dict[str, Any] = {}
    if "retries" in given:
        options["retries"] = step.retries
    if "backoff" in given or "retry_delay" in given:
        delays = step.retry_delays()
        options["retry_delay_seconds"] = delays[0] if len(set(delays)) == 1 else delays or 0
        if step.backoff is not None:
            options["retry_jitter_factor"] = step.jitter or None
    if "timeout" in given:
        options["timeout_seconds"] = step.timeout
    return options


def _as_task(fallback: Any, name: str | None = None) -> Task[..., Any]:
    """A fallback as a task: a task as it is, a callable as a task named `name` or its own."""
    if isinstance(fallback, Task):
        return fallback
    if not callable(fallback):
        raise ResilienceConfigError(
            f"a fallback must be a task or a callable, got {fallback!r}", field="fallbacks"
        )
    try:
        return Task(fallback, name=name or getattr(fallback, "__name__", None))
    except (AttributeError, TypeError, ValueError) as exc:
        raise ResilienceConfigError(
            f"cannot make a task of fallback {fallback!r}: {exc}", field="fallbacks"
        ) from None


@functools.lru_cache(maxsize=1024)
def _registered_task(name: str, fallback: Callable[..., Any]) -> Task[..., Any]:
    """A registered fallback as a task, made once: a callable is named as documents name it."""
    return _as_task(fallback, name=name)


def _fallback_names(fallback: Task[..., Any]) -> set[str]:
    """The names a fallback task answers to: its task name and its function's name."""
    return {fallback.name, getattr(fallback.fn, "__name__", fallback.name)}


class ResilientTask(Task[P, R], Generic[P, R]):
    """A Prefect `Task` with a `StepPolicy`. Create it with `@resilient`."""

    step: StepPolicy
    fallback_tasks: tuple[Task[..., Any], ...]
    tag_runs: bool

    @classmethod
    def of(
        cls,
        task: Task[P, R],
        step: StepPolicy,
        fallbacks: Sequence[Any] = (),
        tag_runs: bool = False,
    ) -> ResilientTask[P, R]:
        """`task` with `step`'s retries, delays and timeout set as Prefect options."""
        if not isinstance(fallbacks, list | tuple):
            raise ResilienceConfigError(
                f"must be a list of tasks, callables or names, got {fallbacks!r}",
                field="fallbacks",
            )
        if step.retries == "auto":
            raise ResilienceConfigError(
                f"step {task.name!r}: retries='auto' belongs in a workflow policy's step policy,"
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
        offer(fallback_tasks, _fallback_names)
        if fallback_tasks and not step.fallbacks:
            step = step.merged({"fallbacks": [t.name for t in fallback_tasks]})
        if len(fallback_tasks) != len(step.fallbacks):
            raise ResilienceConfigError(
                f"step {task.name!r} names fallbacks {list(step.fallbacks)}"
                f" but {len(fallback_tasks)} were given",
                field="fallbacks",
            )
        options = prefect_retry_options(step)
        if tag_runs:
            options["tags"] = tagged(task.tags, step)
        configured = task.with_options(**options) if options else task
        made: ResilientTask[P, R] = retyped(configured, cls)
        made.__dict__.update(method_kind(task))
        made.step = step
        made.fallback_tasks = fallback_tasks
        made.tag_runs = tag_runs
        _check_fallback_signatures(made)
        return made

    # --- the run's copy ---------------------------------------------------------------

    def _start(self, parameters: Callable[[], dict[str, Any]]) -> tuple[Task[..., Any], StepCall]:
        """Let the scope refuse a new step, then the task copy and the call for this run."""
        observer = _observer.get()
        if observer is not None:
            observer.before_step(self)
        workflow = observer.policy if observer is not None else None
        step = self.step
        engine = plain_task(self)
        if workflow is not None:
            step = workflow.policy_for(self.name, self.tags, self.step)
            if step != self.step:
                for name, value in prefect_retry_options(step).items():
                    setattr(engine, name, value)
        if step.retry_count:
            engine.retry_condition_fn = RetryCondition(step, engine.retry_condition_fn)
        if step.circuit_breaker is not None and not self._streams():
            circuit.guard(engine, step.circuit_breaker)
        engine.on_completion_hooks = [*engine.on_completion_hooks, RECORD_ATTEMPTS]
        engine.on_failure_hooks = [*engine.on_failure_hooks, RECORD_ATTEMPTS]
        if self.tag_runs:
            engine.tags = tagged(engine.tags, step)
        return engine, StepCall(self.name, step, self._fallbacks_for(step), parameters)

    def _fallbacks_for(self, step: StepPolicy) -> dict[str, Task[..., Any]]:
        """The step's fallbacks by name: its own first, then those the code registered."""
        own = {name: t for t in self.fallback_tasks for name in _fallback_names(t)}
        chosen: dict[str, Task[..., Any]] = {}
        for name in step.fallbacks:
            if name in own:
                chosen[name] = own[name]
                continue
            found = fallbacks.resolve(name)
            if found is None:
                raise fallbacks.unknown_fallback_error(
                    [fallbacks.NamedFallback(name, "fallbacks")], source=f"step {self.name!r}"
                )
            chosen[name] = _registered_task(name, found)
        return chosen

    def _streams(self) -> bool:
        return self.isgenerator or inspect.isasyncgenfunction(self.fn)

    # --- running ----------------------------------------------------------------------

    # Hidden from type checkers: Prefect's typed overloads of these are what a
    # caller sees, so a ResilientTask types exactly as the Task it wraps.
    if not TYPE_CHECKING:

        def __call__(
            self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any
        ) -> Any:
            engine, call = self._start(lambda: get_call_parameters(self.fn, args, kwargs))
            if self._streams():  # a stream cannot be judged mid-way: Prefect's as it is
                return Task.__call__(
                    engine, *args, return_state=return_state, wait_for=wait_for, **kwargs
                )
            primary = Task.__call__(engine, *args, return_state=True, wait_for=wait_for, **kwargs)
            if inspect.isawaitable(primary):
                return _settled_async(call, primary, return_state)
            state, _ = call.settle(primary)
            return state if return_state else value_of(state)

        def submit(
            self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any
        ) -> Any:
            engine, call = self._start(lambda: get_call_parameters(self.fn, args, kwargs))
            primary = Task.submit(engine, *args, wait_for=wait_for, **kwargs)
            future = primary if self._streams() else settle_later(primary, call)
            if return_state:
                future.wait()
                return future.state
            return future

        def map(
            self,
            *args: Any,
            return_state: bool = False,
            wait_for: Any = None,
            deferred: bool = False,
            **kwargs: Any,
        ) -> Any:
            given = get_call_parameters(self.fn, args, kwargs, apply_defaults=False)
            engine, call = self._start(lambda: given)
            primaries = Task.map(
                engine, *args, return_state=False, wait_for=wait_for, deferred=deferred, **kwargs
            )
            if deferred or self._streams():  # Prefect's distributed futures, as they are
                futures = primaries
            else:
                ratio = call.step.min_success_ratio
                batch = None if ratio is None else SuccessRatio(self.name, ratio, len(primaries))
                futures = PrefectFutureList(
                    settle_later(
                        primary, call.for_item(_MappedParameters(self.fn, given, i), batch)
                    )
                    for i, primary in enumerate(primaries)
                )
            if return_state:
                states = []
                for future in futures:
                    future.wait()
                    states.append(future.state)
                return states
            return futures

    def with_options(self, **options: Any) -> ResilientTask[P, R]:
        """Change Prefect options (validated by Prefect), resilience settings, or both.

        Prefect's retry options win over the step's own: `retries` also sets
        the step's, a `retry_delay_seconds` or `timeout_seconds` replaces its
        delays or timeout.
        """
        resilience = {
            k: options.pop(k)
            for k in list(options)
            if k in StepPolicy.model_fields and k != "retries"  # retries are Prefect's too
        }
        tag_runs = options.pop("tag_runs", self.tag_runs)
        fallbacks = resilience.pop("fallbacks", None)
        if fallbacks is not None:
            fallbacks = [_as_task(f) for f in fallbacks]
            resilience["fallbacks"] = [f.name for f in fallbacks]
        settings = self.step.explicit()
        if "retries" in options:
            resilience.setdefault("retries", options["retries"])
        if "retry_delay_seconds" in options:
            settings = {k: v for k, v in settings.items() if k not in ("backoff", "retry_delay")}
        if "timeout_seconds" in options:
            settings.pop("timeout", None)
        task = Task.with_options(self, **options)
        step = _validated(lambda: StepPolicy.model_validate(settings).merged(resilience))
        if fallbacks is None:
            by_name = {t.name: t for t in self.fallback_tasks}
            fallbacks = [by_name[n] for n in step.fallbacks if n in by_name]
        task.__dict__.update(method_kind(self))
        return ResilientTask.of(task, step, fallbacks, tag_runs)


async def _settled_async(
    call: StepCall, primary: Coroutine[Any, Any, State[Any]], return_state: bool
) -> Any:
    state, _ = await asyncio.to_thread(call.settle, await primary)
    return state if return_state else await state.aresult()


class _MappedParameters:
    """The parameters of one mapped run, expanded only if a fallback needs them."""

    def __init__(self, fn: Callable[..., Any], parameters: dict[str, Any], index: int):
        self.fn = fn
        self.parameters = parameters
        self.index = index

    def __call__(self) -> dict[str, Any]:
        return mapped_parameters(self.fn, self.parameters)[self.index]


def _validated(build: Callable[[], StepPolicy]) -> StepPolicy:
    try:
        return build()
    except ValidationError as exc:
        raise config_error(exc) from None


def _check_fallback_signatures(task: ResilientTask[..., Any]) -> None:
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


class _Decorator(Protocol):
    """What `resilient(...)` with settings returns: it keeps the task's signature."""

    @overload
    def __call__(self, fn: Task[P, R], /) -> ResilientTask[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> ResilientTask[P, R]: ...


_UNSET: Any = object()


@overload
def resilient(fn: Task[P, R], /) -> ResilientTask[P, R]: ...
@overload
def resilient(fn: Callable[P, R], /) -> ResilientTask[P, R]: ...
@overload
def resilient(
    fn: None = None,
    /,
    *,
    policy: FailurePolicy | str = ...,
    retries: int = ...,
    backoff: Any = ...,
    retry_delay: Any = ...,
    retry_on: Any = ...,
    give_up_on: Any = ...,
    critical: bool = ...,
    impact: Any = ...,
    fallbacks: Sequence[Any] = (),
    default: Any = ...,
    timeout: float = ...,
    retry_budget: float | str = ...,
    min_success_ratio: float = ...,
    circuit_breaker: Any = ...,
    tag_runs: bool = False,
    **task_options: Any,
) -> _Decorator: ...


def resilient(
    fn: Any = None,
    /,
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
    retry_budget: float | str = _UNSET,
    min_success_ratio: float = _UNSET,
    circuit_breaker: Any = _UNSET,
    tag_runs: bool = False,
    **task_options: Any,
) -> Any:
    """Make a task resilient: a failure policy, capped retries, fallbacks, a default.

    Stack it over `@task` or use it alone (it then makes the task, passing
    `task_options` such as `name` or `tags` to Prefect). Every argument is a
    default that a workflow policy may override per step. The task keeps the
    attributes Prefect gives it; `retries`, `backoff`, `retry_delay` and
    `timeout` become its Prefect retry options.

    `retry_on` / `give_up_on` take exception classes or names (globs allowed);
    `fallbacks` take tasks or plain callables, called with the step's
    parameters (those they accept), each as its own task run.

    `retry_budget` bounds the retries by time: none starts whose wait would
    end later than that many seconds after the first attempt's start. A step
    may `raise RetryAfter(seconds)` to wait longer before its next attempt.
    `min_success_ratio` applies to `.map()`: the share of its task runs that
    must deliver, or the run is terminated. `circuit_breaker` (name,
    failure_threshold, reset_after, window) stops calling a failing dependency
    across runs and workers.

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
            "retry_budget": retry_budget,
            "min_success_ratio": min_success_ratio,
            "circuit_breaker": circuit_breaker,
        }.items()
        if v is not _UNSET
    }

    if fallbacks and "policy" not in settings:
        settings["policy"] = FailurePolicy.GRACEFUL_DEGRADATION

    def decorate(fn: Any) -> ResilientTask[Any, Any]:
        if isinstance(fn, ResilientTask):
            raise ResilienceConfigError(f"{fn.name!r} is already resilient")
        if isinstance(fn, Task):
            base = fn.with_options(**task_options) if task_options else fn
            base.__dict__.update(method_kind(fn))
        elif callable(fn):
            base = Task(fn, **task_options)
        else:
            raise ResilienceConfigError(f"@resilient decorates a function or task, got {fn!r}")
        if "retries" not in settings and base.retries:
            settings["retries"] = base.retries  # a stacked @task(retries=...) keeps them
        step = _validated(lambda: StepPolicy.model_validate(settings))
        return ResilientTask.of(base, step, fallbacks, tag_runs)

    return decorate(fn) if fn is not None else decorate


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
