"""What happened to each step, and how healthy a run is because of it.

Pure data and logic: a `StepOutcome` is produced by the Prefect glue for every
finished resilient step; the run's health is computed from outcomes alone.
"""

from __future__ import annotations

import heapq
import itertools
import math
from datetime import datetime
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from prefect_resilience.policy import FailureAction, FailureImpact, FailurePolicy, WorkflowPolicy


class StepStatus(StrEnum):
    """How a step ended, from the run's point of view.

    `succeeded`: first attempt; `recovered`: after retries; `degraded`: a
    fallback supplied the result; `tolerated`: failed, its default was used;
    `failed`: failed and not tolerated.
    """

    SUCCEEDED = "succeeded"
    RECOVERED = "recovered"
    DEGRADED = "degraded"
    TOLERATED = "tolerated"
    FAILED = "failed"

    @property
    def delivered(self) -> bool:
        """Whether the step's own work, or a fallback's, produced its result."""
        return self in (StepStatus.SUCCEEDED, StepStatus.RECOVERED, StepStatus.DEGRADED)


class StepOutcome(BaseModel):
    """The record of one finished resilient step.

    `attempts` and `duration` are Prefect's (`run_count`, `total_run_time`), taken
    from the task engine that ran the step when it finished; None only where no
    engine reported them (a step that never started).
    """

    model_config = ConfigDict(frozen=True)

    name: str
    task_run_id: UUID | None = None
    status: StepStatus
    policy: FailurePolicy
    critical: bool = False
    impact: FailureImpact = FailureImpact.MAJOR
    attempts: int | None = None
    action: FailureAction | None = None
    reason: str = ""
    exception_type: str | None = None
    exception_message: str | None = None
    fallback_used: str | None = None
    fallback_task_run_id: UUID | None = None
    duration: float | None = None
    finished: datetime | None = None


class TerminationRule(StrEnum):
    """The rule that stopped a run; a terminated run's message names it."""

    FAIL_FAST = "fail_fast"
    MAX_PARTIAL_FAILURES = "max_partial_failures"
    CRITICAL_STEP_RATIO = "critical_step_ratio"
    TERMINATION_THRESHOLD = "termination_threshold"
    LOW_HEALTH_ABORTED = "low_health_aborted"
    LOW_HEALTH_PAUSE_TIMEOUT = "low_health_pause_timeout"
    MIN_SUCCESS_RATIO = "min_success_ratio"


class WorkflowHealth(BaseModel):
    """A run's health at one moment.

    `health_score` is the impact-weighted mean of step credits:
    sum(weight[impact] * credit) / sum(weight[impact]), where credit is 1 for
    a step that succeeded (first attempt or after retries), `degraded_credit`
    for one a fallback carried, and 0 for one that failed (tolerated or not).
    A run with no finished step has nothing wrong yet: score 1.
    """

    model_config = ConfigDict(frozen=True)

    total: int = 0
    completed: int = 0
    degraded: int = 0
    failed: int = 0
    critical_total: int = 0
    critical_failures: int = 0
    health_score: float = 1.0
    can_continue: bool = True
    stopped_by: TerminationRule | None = None
    stop_reason: str | None = None
    recommendations: list[str] = []


class HealthLedger:
    """Running totals of a run's outcomes: O(1) per outcome; a health reading is O(k)
    in the k distinct failing step names (it picks the most frequent for its advice).

    It applies the workflow policy's termination rules after each outcome;
    the first rule that fires stops the run for good.
    """

    def __init__(self, policy: WorkflowPolicy) -> None:
        self.policy = policy
        self.total = self.completed = self.degraded = self.failed = 0
        self.critical_total = self.critical_delivered = self.critical_failures = 0
        self._weight_sum = 0.0
        self._credit_sum = 0.0
        self._failures_by_step: dict[str, int] = {}
        self._failure_kinds: dict[str, str] = {}
        self._degraded_by_step: dict[str, str] = {}
        self.stopped_by: TerminationRule | None = None
        self.stop_reason: str | None = None

    def add(self, outcome: StepOutcome) -> TerminationRule | None:
        """Count one outcome; return the rule it made fire, if any."""
        weight = self.policy.impact_weights[outcome.impact]
        self.total += 1
        self._weight_sum += weight
        status = outcome.status
        if status in (StepStatus.SUCCEEDED, StepStatus.RECOVERED):
            self.completed += 1
            self._credit_sum += weight
        elif status is StepStatus.DEGRADED:
            self.degraded += 1
            self._credit_sum += weight * self.policy.degraded_credit
            self._degraded_by_step[outcome.name] = outcome.fallback_used or "a fallback"
        else:
            self.failed += 1
            self._failures_by_step[outcome.name] = self._failures_by_step.get(outcome.name, 0) + 1
            self._failure_kinds[outcome.name] = outcome.exception_type or "a failure"
        if outcome.critical:
            self.critical_total += 1
            if status.delivered:
                self.critical_delivered += 1
            else:
                self.critical_failures += 1
        if self.stopped_by is None:
            self._apply_rules(outcome)
            return self.stopped_by
        return None

    def stop(self, rule: TerminationRule, reason: str) -> None:
        """Stop the run for a reason outside the outcomes (a pause that was aborted)."""
        if self.stopped_by is None:
            self.stopped_by, self.stop_reason = rule, reason

    @property
    def score(self) -> float:
        return self._credit_sum / self._weight_sum if self._weight_sum else 1.0

    def health(self) -> WorkflowHealth:
        return WorkflowHealth(
            total=self.total,
            completed=self.completed,
            degraded=self.degraded,
            failed=self.failed,
            critical_total=self.critical_total,
            critical_failures=self.critical_failures,
            health_score=self.score,
            can_continue=self.stopped_by is None,
            stopped_by=self.stopped_by,
            stop_reason=self.stop_reason,
            recommendations=self.recommendations(),
        )

    def recommendations(self, limit: int = 5) -> list[str]:
        """Advice from what failed in this run, most frequent failures first."""
        advice = []
        worst = heapq.nlargest(limit, self._failures_by_step.items(), key=lambda kv: kv[1])
        for name, count in worst:
            kind = self._failure_kinds[name]
            runs = "run" if count == 1 else "runs"
            advice.append(
                f"{name}: {count} {runs} failed ({kind}); check whether retries or a"
                " fallback would save it"
            )
        for name, fallback in itertools.islice(self._degraded_by_step.items(), limit):
            advice.append(f"{name}: relied on {fallback}; its primary needs attention")
        threshold = self.policy.health_alert_below
        if self.total and self.score < threshold:
            advice.append(f"health {self.score:.2f} is below the alert threshold {threshold:.2f}")
        return advice

    def _apply_rules(self, outcome: StepOutcome) -> None:
        policy = self.policy
        if outcome.status is StepStatus.FAILED and outcome.action is FailureAction.TERMINATE:
            self.stop(
                TerminationRule.FAIL_FAST,
                f"step {outcome.name} failed under fail_fast: {outcome.reason}",
            )
        elif policy.max_partial_failures is not None and self.failed > policy.max_partial_failures:
            self.stop(
                TerminationRule.MAX_PARTIAL_FAILURES,
                f"{self.failed} failed steps exceed max_partial_failures"
                f" {policy.max_partial_failures}: {self._failing()}",
            )
        elif (
            policy.critical_step_ratio is not None
            and self.critical_total
            and self.critical_delivered / self.critical_total < policy.critical_step_ratio
        ):
            self.stop(
                TerminationRule.CRITICAL_STEP_RATIO,
                f"critical steps succeeded {self.critical_delivered}/{self.critical_total},"
                f" under critical_step_ratio {policy.critical_step_ratio}: {self._failing()}",
            )
        elif (
            policy.termination_threshold is not None
            and self.critical_failures / self.total > policy.termination_threshold
        ):
            self.stop(
                TerminationRule.TERMINATION_THRESHOLD,
                f"{self.critical_failures} critical failures in {self.total} steps exceed"
                f" termination_threshold {policy.termination_threshold}: {self._failing()}",
            )

    def _failing(self, limit: int = 10) -> str:
        """The failed steps' names, for a termination message (built only when one fires)."""
        names = sorted(self._failures_by_step)
        shown = ", ".join(names[:limit])
        return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class SuccessRatio:
    """The task runs of one `.map()` of a step with a `min_success_ratio`, as they settle.

    A task run that succeeded, recovered or degraded delivered; one that was
    tolerated or failed did not. `add` answers the termination reason once so
    many have not delivered that the ratio can no longer be reached, and only
    then.
    """

    def __init__(self, step: str, ratio: float, size: int) -> None:
        self.step = step
        self.ratio = ratio
        self.size = size
        self.needed = math.ceil(ratio * size - 1e-9)
        self.delivered = self.missed = 0
        self.fired = False

    def add(self, status: StepStatus) -> str | None:
        if status.delivered:
            self.delivered += 1
        else:
            self.missed += 1
        if self.fired or self.size - self.missed >= self.needed:
            return None
        self.fired = True
        return (
            f"step {self.step}: {self.missed} of {self.size} mapped task runs did not deliver"
            f" ({self.delivered} did so far); min_success_ratio {self.ratio:g} needs"
            f" {self.needed} of {self.size}, at most {self.size - self.missed} can"
        )
