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
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, ParamSpec, Protocol, TypeVar, overload
from uuid import UUID

import httpx
from prefect import Flow
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.input import RunInput
from prefect.logging import get_logger
from prefect.states import Completed

from prefect_resilience import fallbacks
from prefect_resilience.blocks import load_block_policy
from prefect_resilience.errors import ResilienceConfigError
from prefect_resilience.events import emit
from prefect_resilience.future import ResilientFuture
from prefect_resilience.health import (
    HealthLedger,
    StepOutcome,
    StepStatus,
    SuccessRatio,
    TerminationRule,
    WorkflowHealth,
)
from prefect_resilience.logs import flow_run_log
from prefect_resilience.pending import journal_report, publish_or_keep
from prefect_resilience.policy import (
    FailureAction,
    FailurePolicy,
    WorkflowPolicy,
)
from prefect_resilience.policy_documents import load_policy, policy_from_mapping
from prefect_resilience.report import (
    LoopReport,
    PartialSuccessResult,
    PolicyUsed,
    RunStatus,
    StepJournal,
    build_report,
    journal_path,
    read_journal,
    run_status,
)
from prefect_resilience.scope import StepObserver, current_observer, observing
from prefect_resilience.task import ResilientTask, resilient

logger = get_logger("prefect_resilience")

PARTIAL_SUCCESS = "PartialSuccess"

PolicySource = WorkflowPolicy | str | os.PathLike[str] | None


class WorkflowTerminated(Exception):
    """A termination rule stopped the run; the message names the rule and the steps."""

    def __init__(self, rule: TerminationRule, reason: str) -> None:
        self.rule = rule
        self.reason = reason
        super().__init__(f"terminated by rule {rule.value}: {reason}")


class LowHealthDecision(RunInput):
    """What to do with a run paused because its health fell below `pause_below`."""

    action: Literal["continue", "abort"] = "continue"


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


class RunTracker(StepObserver):
    """One resilient flow run: its outcomes, live health, verdict and loops."""

    def __init__(
        self,
        policy: WorkflowPolicy,
        *,
        flow_name: str,
        flow_run_id: UUID | None,
        pause_below: float | None = None,
        pause_timeout: int = 3600,
        parent: StepObserver | None = None,
        policy_used: PolicyUsed | None = None,
        journal: StepJournal | None = None,
    ) -> None:
        self.policy = policy
        self.policy_used = policy_used
        self.journal = journal
        self.flow_name = flow_name
        self.flow_run_id = flow_run_id
        self.pause_below = pause_below
        self.pause_timeout = pause_timeout
        self.parent = parent
        self.ledger = HealthLedger(policy)
        self.log = flow_run_log()
        self.outcomes: list[StepOutcome] = []
        self.futures: list[ResilientFuture] = []
        self.loops: list[LoopReport] = []
        self.reported = False
        self._lock = threading.RLock()
        self._below_alert = False
        self._pause_due = False
        self._paused_for_dip = False

    # --- StepObserver ---------------------------------------------------------------

    def before_step(self, task: ResilientTask) -> None:
        self.raise_if_stopped()
        if self._pause_due and _in_flow_thread():
            self._pause()
            self.raise_if_stopped()

    def track(self, future: ResilientFuture) -> None:
        with self._lock:
            self.futures.append(future)

    def record(self, outcome: StepOutcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)
            if self.journal is not None:
                self.journal.step(outcome)
            fired = self.ledger.add(outcome)
            score = self.ledger.score
            crossed = self._note_health(score)
        if self.flow_run_id is not None and outcome.status in (
            StepStatus.DEGRADED,
            StepStatus.TOLERATED,
        ):
            self._emit_step(outcome, score)
        if crossed:
            self._emit_run("health.below-threshold", score, {"threshold": crossed})
        if fired is not None:
            self.log.error("%s: %s", self.flow_name, self.ledger.stop_reason)

    def record_mapped(self, batch: SuccessRatio, outcome: StepOutcome) -> None:
        with self._lock:
            reason = batch.add(outcome.status)
            if reason is None or self.ledger.stopped_by is not None:
                return
            self.ledger.stop(TerminationRule.MIN_SUCCESS_RATIO, reason)
        self.log.error("%s: %s", self.flow_name, reason)

    def add_loop(self, loop: LoopReport) -> None:
        with self._lock:
            self.loops.append(loop)
            if self.journal is not None:
                self.journal.loop(loop)

    # --- health ------------------------------------------------------------------------

    def health(self) -> WorkflowHealth:
        with self._lock:
            return self.ledger.health()

    def raise_if_stopped(self) -> None:
        if self.ledger.stopped_by is not None:
            raise WorkflowTerminated(self.ledger.stopped_by, self.ledger.stop_reason or "")

    def _note_health(self, score: float) -> float | None:
        """Track threshold crossings; return the alert threshold if just crossed below it."""
        if self.pause_below is not None:
            if score < self.pause_below and not self._paused_for_dip:
                self._pause_due = True
            elif score >= self.pause_below:
                self._paused_for_dip = False
        threshold = self.policy.health_alert_below if self.policy is not None else 0.0
        if score < threshold and not self._below_alert:
            self._below_alert = True
            return threshold
        if score >= threshold:
            self._below_alert = False
        return None

    def _pause(self) -> None:
        from prefect.flow_runs import apause_flow_run
        from prefect.utilities.asyncutils import run_coro_as_sync

        self._pause_due = False
        self._paused_for_dip = True
        score = self.ledger.score
        self.log.warning(
            "%s: health %.2f fell below pause_below %.2f; pausing for a decision",
            self.flow_name,
            score,
            self.pause_below,
        )
        try:
            # Prefect's own sync bridge: in an async flow this runs on the flow's event
            # loop, where the dispatching pause_flow_run would hand back a coroutine
            decision: LowHealthDecision = run_coro_as_sync(
                apause_flow_run(wait_for_input=LowHealthDecision, timeout=self.pause_timeout)
            )
        except FlowPauseTimeout:
            self.ledger.stop(
                TerminationRule.LOW_HEALTH_PAUSE_TIMEOUT,
                f"paused at health {score:.2f} (below {self.pause_below}); not resumed within"
                f" {self.pause_timeout}s",
            )
            return
        if decision.action == "abort":
            self.ledger.stop(
                TerminationRule.LOW_HEALTH_ABORTED,
                f"paused at health {score:.2f} (below {self.pause_below}); aborted on resume",
            )

    # --- ending ------------------------------------------------------------------------

    def settle_all(self, block: bool = True) -> None:
        """Settle every future of the run (only finished ones unless `block`)."""
        with self._lock:
            futures = list(self.futures)
        for future in futures:
            future.wait(None if block else 0)

    def finish(self, status: RunStatus | None, message: str = "") -> PartialSuccessResult:
        """Build and publish the run's report (once), and tell the parent run."""
        with self._lock:
            outcomes = list(self.outcomes)
            health = self.ledger.health()
            loops = list(self.loops)
        status = status or run_status(outcomes, health)
        report = build_report(
            flow_run_id=self.flow_run_id,
            flow_name=self.flow_name,
            outcomes=outcomes,
            health=health,
            status=status,
            message=message,
            loops=loops,
            finished=datetime.now(UTC),
            policy=self.policy_used,
        )
        if not self.reported:
            self.reported = True
            safe = publish_or_keep(report)
            if self.journal is not None:
                self.journal.close()
                if safe:
                    self.journal.path.unlink(missing_ok=True)
            if status is RunStatus.PARTIAL_SUCCESS:
                self._emit_run("run.partial-success", health.health_score, {})
            elif status is RunStatus.TERMINATED:
                self._emit_run(
                    "run.terminated",
                    health.health_score,
                    {"rule": health.stopped_by.value if health.stopped_by else None},
                )
            self._tell_parent(status, message)
        return report

    def _tell_parent(self, status: RunStatus, message: str) -> None:
        """A child run is one step of a resilient parent: partial counts as degraded."""
        if not isinstance(self.parent, StepObserver) or self.parent.policy is None:
            return
        rule = self.parent.policy.policy_for(self.flow_name)
        delivered = {
            RunStatus.COMPLETED: StepStatus.SUCCEEDED,
            RunStatus.PARTIAL_SUCCESS: StepStatus.DEGRADED,
        }
        status_as_step = delivered.get(status)
        action = None
        if status is RunStatus.PARTIAL_SUCCESS:
            action = FailureAction.DEGRADE
        elif status_as_step is None:
            fails = rule.policy is FailurePolicy.FAIL_FAST
            status_as_step = StepStatus.FAILED if fails else StepStatus.TOLERATED
            action = FailureAction.TERMINATE if fails else FailureAction.CONTINUE
        self.parent.record(
            StepOutcome(
                name=self.flow_name,
                status=status_as_step,
                policy=rule.policy,
                critical=rule.critical,
                impact=rule.impact,
                attempts=1,
                action=action,
                reason=f"subflow ended {status.value}" + (f": {message}" if message else ""),
                finished=datetime.now(UTC),
            )
        )

    # --- events ------------------------------------------------------------------------

    def _related(self) -> list[dict[str, str]]:
        if self.flow_run_id is None:
            return []
        return [
            {
                "prefect.resource.id": f"prefect.flow-run.{self.flow_run_id}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": self.flow_name,
            }
        ]

    def _emit_step(self, outcome: StepOutcome, score: float) -> None:
        resource_id = (
            f"prefect.task-run.{outcome.task_run_id}"
            if outcome.task_run_id
            else f"prefect.flow-run.{self.flow_run_id}"
        )
        emit(
            f"step.{outcome.status.value}",
            {"prefect.resource.id": resource_id, "prefect.resource.name": outcome.name},
            self._related(),
            {
                "step": outcome.name,
                "policy": outcome.policy.value,
                "action": outcome.action.value if outcome.action else None,
                "fallback": outcome.fallback_used,
                "reason": outcome.reason,
                "health_score": score,
            },
        )

    def _emit_run(self, name: str, score: float, extra: dict[str, Any]) -> None:
        if self.flow_run_id is None:
            return
        emit(
            name,
            {
                "prefect.resource.id": f"prefect.flow-run.{self.flow_run_id}",
                "prefect.resource.name": self.flow_name,
            },
            [],
            {"flow": self.flow_name, "health_score": score, **extra},
        )


def _in_flow_thread() -> bool:
    return FlowRunContext.get() is not None and TaskRunContext.get() is None


def current_health() -> WorkflowHealth:
    """The health of the resilient flow run this code is part of, right now."""
    tracker = _current_tracker()
    if tracker is None:
        raise RuntimeError("current_health() is only available inside a @resilient_flow run")
    return tracker.health()


def _current_tracker() -> RunTracker | None:
    observer = current_observer()
    while observer is not None and not isinstance(observer, RunTracker):
        observer = getattr(observer, "parent", None)
    return observer


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
    tracker = _current_tracker()
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
