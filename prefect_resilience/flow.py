"""`@resilient_flow`: a Prefect flow that judges its steps and ends honestly.

The run loads its workflow policy when it starts, collects every resilient
step's outcome (from states and futures in the flow process), keeps a live
health score, stops when a termination rule fires, and ends `Completed`,
`Completed` named `PartialSuccess`, or `Failed`, with a report written as
Prefect artifacts in every ending, a crash included.

When the API does not take the report, it is kept locally, and each settled
step is appended to a local step journal (`pending`), so a flow process killed
outright leaves what it had finished.
"""

from __future__ import annotations

import functools
import inspect
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar, overload
from uuid import UUID

import httpx
from prefect import Flow
from prefect.context import FlowRunContext
from prefect.logging import get_logger
from prefect.states import Completed

from prefect_resilience import fallbacks
from prefect_resilience.blocks import load_block_policy
from prefect_resilience.errors import ResilienceConfigError
from prefect_resilience.local_store import StepJournal, journal_path, read_journal
from prefect_resilience.pending import journal_report, publish_or_keep
from prefect_resilience.policy import (
    WorkflowPolicy,
)
from prefect_resilience.policy_documents import load_policy, policy_from_mapping
from prefect_resilience.report import LoopReport, PolicyUsed, RunStatus
from prefect_resilience.scope import current_observer, observing
from prefect_resilience.task import ResilientTask, resilient
from prefect_resilience.tracker import RunTracker, WorkflowTerminated, current_tracker

logger = get_logger("prefect_resilience")

PARTIAL_SUCCESS = "PartialSuccess"

PolicySource = WorkflowPolicy | str | os.PathLike[str] | None


def _is_file(source: str | os.PathLike[str]) -> bool:
    text = os.fspath(source)
    return (
        isinstance(source, os.PathLike) or text.endswith((".yaml", ".yml")) or Path(text).exists()
    )


def load_workflow_policy(source: PolicySource) -> WorkflowPolicy:
    """The policy for a run: an object, a YAML file, a ResiliencePolicy block name, or defaults.

    A policy naming a fallback the flow's code did not make available is refused
    here, before any step runs (`UnknownFallbackError`).
    """
    if source is None:
        return WorkflowPolicy()
    text = None
    if isinstance(source, WorkflowPolicy):
        policy = source
    elif _is_file(source):
        path = Path(os.fspath(source))
        policy = load_policy(path)
        text = path.read_text(encoding="utf-8") if any(fallbacks.named_in(policy)) else None
    else:
        policy = load_block_policy(os.fspath(source))
    fallbacks.check_policy(policy, source=describe_source(source), text=text)
    return policy


def describe_source(source: PolicySource) -> str:
    """A policy source as a report names it: 'block NAME', 'file PATH', 'object', 'defaults'."""
    if source is None:
        return "defaults"
    if isinstance(source, WorkflowPolicy):
        return f"object {source.name}" if source.name else "object"
    return f"{'file' if _is_file(source) else 'block'} {os.fspath(source)}"


def _source(source: PolicySource | Mapping[str, Any], name: str) -> PolicySource:
    """A policy source as given to `resilient_flow`; a mapping is read as a WorkflowPolicy."""
    if isinstance(source, Mapping):
        return policy_from_mapping(source)
    if source is not None and not isinstance(source, WorkflowPolicy | str | os.PathLike):
        raise ResilienceConfigError(
            "expected a WorkflowPolicy, a mapping of its settings, a YAML path or a block"
            f" name, got {source!r}",
            field=name,
        )
    return source


def _policy_for_run(
    source: PolicySource, fallback: PolicySource, flow_name: str
) -> tuple[WorkflowPolicy, PolicyUsed]:
    """The run's policy; the declared fallback, with a warning, when it cannot be loaded.

    "Cannot be loaded" is a missing or invalid block or file, or an API error
    while reading the block. Without a fallback the error stops the run before
    any step, naming the source.
    """
    declared = describe_source(source)
    try:
        policy = load_workflow_policy(source)
    except (ResilienceConfigError, httpx.HTTPError) as exc:
        if isinstance(exc, httpx.HTTPError):
            exc.add_note(f"while loading the workflow policy ({declared})")
        if fallback is None:
            raise
        reason = f"{declared} could not be loaded: {exc}"
        try:
            policy = load_workflow_policy(fallback)
        except (ResilienceConfigError, httpx.HTTPError) as fallback_exc:
            raise ResilienceConfigError(
                f"{reason}; the fallback policy ({describe_source(fallback)}) could not be"
                f" loaded either: {fallback_exc}",
                field="fallback_policy",
            ) from exc
        used = PolicyUsed(
            source=describe_source(fallback), name=policy.name, fallback_reason=reason
        )
        logger.warning(
            "%s: %s; running with the fallback policy (%s)", flow_name, reason, used.source
        )
        return policy, used
    return policy, PolicyUsed(source=declared, name=policy.name)


# --- the flow decorator ------------------------------------------------------------------


@dataclass(frozen=True)
class _RunSettings:
    policy: PolicySource
    pause_below: float | None
    pause_timeout: int
    fallback_policy: PolicySource = None


_trackers: dict[UUID, RunTracker] = {}


def _start(settings: _RunSettings, flow_name: str) -> RunTracker:
    context = FlowRunContext.get()
    flow_run_id = context.flow_run.id if context and context.flow_run else None
    try:
        policy, used = _policy_for_run(settings.policy, settings.fallback_policy, flow_name)
    except Exception as exc:
        # no step runs; the run's report still says why it failed
        RunTracker(
            WorkflowPolicy(),
            flow_name=flow_name,
            flow_run_id=flow_run_id,
            parent=current_observer(),
            policy_used=PolicyUsed(source=describe_source(settings.policy)),
        ).finish(RunStatus.FAILED, f"the workflow policy could not be loaded: {exc}")
        raise
    tracker = RunTracker(
        policy,
        flow_name=flow_name,
        flow_run_id=flow_run_id,
        pause_below=settings.pause_below,
        pause_timeout=settings.pause_timeout,
        parent=current_observer(),
        policy_used=used,
    )
    if flow_run_id is not None:
        _trackers[flow_run_id] = tracker
        try:
            tracker.journal = StepJournal.open(flow_run_id, flow_name, policy, used)
        except OSError as exc:
            logger.warning(
                "%s: no step journal (%s): if this process is killed, its report is lost",
                flow_name,
                exc,
            )
    return tracker


def _end(tracker: RunTracker, value: Any) -> Any:
    tracker.settle_all()
    health = tracker.health()
    if health.stopped_by is not None:
        tracker.finish(RunStatus.TERMINATED, health.stop_reason or "")
        raise WorkflowTerminated(health.stopped_by, health.stop_reason or "")
    report = tracker.finish(None)
    if report.overall_status is RunStatus.PARTIAL_SUCCESS:
        return Completed(name=PARTIAL_SUCCESS, message=report.message, data=value)
    return value


def _end_with(tracker: RunTracker, error: BaseException) -> BaseException:
    """Report a run that raised; return the exception the run should end with."""
    tracker.settle_all(block=False)
    health = tracker.health()
    if health.stopped_by is not None:
        reason = health.stop_reason or ""
        tracker.finish(RunStatus.TERMINATED, reason)
        if isinstance(error, WorkflowTerminated):
            return error
        terminated = WorkflowTerminated(health.stopped_by, reason)
        terminated.__cause__ = error
        return terminated
    crashed = not isinstance(error, Exception)
    status = RunStatus.CRASHED if crashed else RunStatus.FAILED
    tracker.finish(status, f"{type(error).__name__}: {error}")
    return error


def _forget(tracker: RunTracker) -> None:
    # a module-level function: the wrapper closures must not capture `_trackers`,
    # or pickling the flow (Dask ships the run context) would try to pickle live runs
    if tracker.flow_run_id is not None:
        _trackers.pop(tracker.flow_run_id, None)


def _report_crash(flow: Any, flow_run: Any, state: Any) -> None:
    """`on_crashed` hook: the report of a run that crashed outside its own body.

    In the flow process the run's tracker writes it. A Prefect runner or
    process worker also calls this hook, in its own process, when the flow
    process died (a SIGKILL, the OOM killer): the report is then rebuilt from
    the run's step journal.
    """
    tracker = _trackers.pop(flow_run.id, None)
    if tracker is not None:
        if not tracker.reported:
            tracker.settle_all(block=False)
            tracker.finish(RunStatus.CRASHED, state.message or "crashed")
        return
    path = journal_path(flow_run.id)
    if not path.exists():
        return
    try:
        record = read_journal(path)
    except (OSError, ValueError) as exc:
        logger.error("could not rebuild the report of crashed flow run %s: %s", flow_run.id, exc)
        return
    if publish_or_keep(journal_report(record, RunStatus.CRASHED, state.message or "crashed")):
        path.unlink(missing_ok=True)


@contextmanager
def _judged(settings: _RunSettings, flow_name: str) -> Iterator[RunTracker]:
    """The scope of one run's body: its tracker observes, and a raise ends the run honestly.

    The run is reported under the name of the flow that runs, which differs from
    the decorated one after `.with_options(name=...)`.
    """
    context = FlowRunContext.get()
    running = context.flow.name if context is not None and context.flow is not None else None
    tracker = _start(settings, running or flow_name)
    try:
        with observing(tracker):
            try:
                yield tracker
            except BaseException as error:
                ending = _end_with(tracker, error)
                if ending is error:
                    raise
                raise ending from error
    finally:
        _forget(tracker)


def _wrap(fn: Callable[..., Any], settings: _RunSettings, flow_name: str) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            with _judged(settings, flow_name) as tracker:
                value = await fn(*args, **kwargs)
            return _end(tracker, value)

        return run_async

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with _judged(settings, flow_name) as tracker:
            value = fn(*args, **kwargs)
        return _end(tracker, value)

    return run


P = ParamSpec("P")
R = TypeVar("R")


class _FlowDecorator(Protocol):
    """What `resilient_flow(...)` with settings returns: it keeps the flow's signature."""

    @overload
    def __call__(self, fn: Flow[P, R], /) -> Flow[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Flow[P, R]: ...


@overload
def resilient_flow(fn: Flow[P, R], /) -> Flow[P, R]: ...
@overload
def resilient_flow(fn: Callable[P, R], /) -> Flow[P, R]: ...
@overload
def resilient_flow(
    fn: None = None,
    /,
    *,
    policy: PolicySource | Mapping[str, Any] = None,
    pause_below: float | None = None,
    pause_timeout: int = 3600,
    report_wait: float | None = None,
    fallback_policy: PolicySource | Mapping[str, Any] = None,
    **flow_options: Any,
) -> _FlowDecorator: ...


def resilient_flow(
    fn: Any = None,
    /,
    *,
    policy: PolicySource | Mapping[str, Any] = None,
    pause_below: float | None = None,
    pause_timeout: int = 3600,
    report_wait: float | None = None,
    fallback_policy: PolicySource | Mapping[str, Any] = None,
    **flow_options: Any,
) -> Any:
    """Make a flow resilient: a workflow policy, live health, termination, a report.

    Stack it over `@flow` or use it alone (it then makes the flow, passing
    `flow_options` such as `name` or `task_runner` to Prefect). `policy` is a
    `WorkflowPolicy` (or a mapping of its settings), a YAML file, the name of a
    Resilience Policy block, or nothing (plain Prefect behaviour); it is read
    when each run starts, so an edited block or file applies to the next run.
    `pause_below` pauses the run for a `LowHealthDecision` when health falls
    below it; no answer within
    `pause_timeout` seconds aborts the run. `report_wait` is deprecated and
    does nothing: a report's attempts come from the task engine that ran each
    step, so the end of a run no longer waits for Prefect to record them.

    `fallback_policy` (a `WorkflowPolicy`, YAML file or block name) is used,
    with a warning and a note in the report, when `policy` cannot be loaded at
    run start (a deleted or invalid block or file, an API error reading the
    block); without one, that stops the run before any step.
    """
    if pause_below is not None and not 0 <= pause_below <= 1:
        raise ResilienceConfigError("must be between 0 and 1", field="pause_below")
    policy, fallback_policy = _source(policy, "policy"), _source(fallback_policy, "fallback_policy")
    if report_wait is not None:
        warnings.warn(
            "report_wait is deprecated and does nothing: reports no longer wait for"
            " Prefect to record task runs",
            DeprecationWarning,
            stacklevel=2,
        )
    settings = _RunSettings(policy, pause_below, pause_timeout, fallback_policy)

    def decorate(fn: Any) -> Flow[..., Any]:
        if isinstance(fn, Flow):
            base = fn.with_options(**flow_options) if flow_options else fn
        elif callable(fn):
            base = Flow(fn, **flow_options)
        else:
            raise ResilienceConfigError(f"@resilient_flow decorates a function or flow, got {fn!r}")
        # with_options keeps the entrypoint and version Prefect derived from the user's
        # function; only the function it calls is wrapped
        resilient = base.with_options(on_crashed=[*base.on_crashed_hooks, _report_crash])
        resilient.fn = _wrap(base.fn, settings, base.name)
        resilient.resilience_policy = policy  # type: ignore[attr-defined]
        return resilient

    return decorate(fn) if fn is not None else decorate


# --- loops -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoopResult:
    """The last value of a `resilient_loop`, with how it ended."""

    value: Any
    iterations: int
    condition_met: bool


def resilient_loop(
    step: Any,
    *args: Any,
    until: Callable[[Any], bool],
    max_iterations: int = 100,
    delay: float = 0.0,
    name: str | None = None,
    **kwargs: Any,
) -> LoopResult:
    """Run `step` until `until(result)` is true, each iteration a resilient task run.

    `until` is a Python callable on the last result (nothing is evaluated from
    text). Iterations and the time taken by `until` go into the run's report.
    """
    if not callable(until):
        raise ResilienceConfigError(f"until must be callable, got {until!r}", field="until")
    if not isinstance(max_iterations, int) or max_iterations < 1:
        raise ResilienceConfigError("must be a whole number >= 1", field="max_iterations")
    if delay < 0:
        raise ResilienceConfigError("must be >= 0", field="delay")
    task = step if isinstance(step, ResilientTask) else resilient(step)
    loop_name = name or task.name
    durations: list[float] = []
    conditions: list[float] = []
    started = time.perf_counter()
    value: Any = None
    met = False
    for iteration in range(1, max_iterations + 1):
        began = time.perf_counter()
        value = task(*args, **kwargs)
        checked = time.perf_counter()
        met = bool(until(value))
        conditions.append(time.perf_counter() - checked)
        durations.append(checked - began)
        if met:
            break
        if delay and iteration < max_iterations:
            time.sleep(delay)
    tracker = current_tracker()
    if tracker is not None:
        tracker.add_loop(
            LoopReport(
                name=loop_name,
                iterations=len(durations),
                condition_met=met,
                seconds=time.perf_counter() - started,
                iteration_seconds_p50=statistics.median(durations),
                iteration_seconds_max=max(durations),
                condition_ms_p50=statistics.median(conditions) * 1000,
                condition_ms_max=max(conditions) * 1000,
            )
        )
    return LoopResult(value=value, iterations=len(durations), condition_met=met)
