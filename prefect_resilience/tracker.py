"""One resilient flow run as it goes: its step outcomes, live health, verdict and loops.

A `RunTracker` observes every resilient step of its run (the scope's
`StepObserver`), keeps the health score, stops the run when a termination rule
fires (`WorkflowTerminated`), pauses it for a decision when its health dips
below `pause_below`, and at the end builds, publishes and announces the
report. `current_health()` reads it from inside the run.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.input import RunInput

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
from prefect_resilience.local_store import StepJournal
from prefect_resilience.logs import flow_run_log
from prefect_resilience.pending import publish_or_keep
from prefect_resilience.policy import FailureAction, FailurePolicy, WorkflowPolicy
from prefect_resilience.report import (
    LoopReport,
    PartialSuccessResult,
    PolicyUsed,
    RunStatus,
    build_report,
    run_status,
)
from prefect_resilience.scope import StepObserver, current_observer
from prefect_resilience.task import ResilientTask


class WorkflowTerminated(Exception):
    """A termination rule stopped the run; the message names the rule and the steps."""

    def __init__(self, rule: TerminationRule, reason: str) -> None:
        self.rule = rule
        self.reason = reason
        super().__init__(f"terminated by rule {rule.value}: {reason}")


class LowHealthDecision(RunInput):
    """What to do with a run paused because its health fell below `pause_below`."""

    action: Literal["continue", "abort"] = "continue"


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
    tracker = current_tracker()
    if tracker is None:
        raise RuntimeError("current_health() is only available inside a @resilient_flow run")
    return tracker.health()


def current_tracker() -> RunTracker | None:
    """The tracker of the resilient flow run this code is part of, or None outside one."""
    observer = current_observer()
    while observer is not None and not isinstance(observer, RunTracker):
        observer = getattr(observer, "parent", None)
    return observer
