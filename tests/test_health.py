"""Health score and termination rules: pure, no server."""

from __future__ import annotations

import pytest

from prefect_resilience import (
    FailureAction,
    StepOutcome,
    TerminationRule,
    WorkflowPolicy,
)
from prefect_resilience.health import HealthLedger, StepStatus, SuccessRatio
from prefect_resilience.report import RunStatus, build_report, run_status, to_markdown


def outcome(
    status: str,
    name: str = "step",
    impact: str = "major",
    critical: bool = False,
    action: FailureAction | None = None,
    policy: str = "continue",
) -> StepOutcome:
    if action is None and status == "tolerated":
        action = FailureAction.CONTINUE
    if action is None and status == "failed":
        action = FailureAction.TERMINATE
        policy = "fail_fast"
    return StepOutcome(
        name=name, status=status, impact=impact, critical=critical, action=action, policy=policy
    )


def test_score_is_the_impact_weighted_mean_of_credits() -> None:
    policy = WorkflowPolicy(
        impact_weights={"critical": 4, "major": 2, "minor": 1, "negligible": 0},
        degraded_credit=0.5,
    )
    ledger = HealthLedger(policy)
    ledger.add(outcome("succeeded", impact="critical"))  # 4 * 1
    ledger.add(outcome("degraded", impact="major"))  # 2 * 0.5
    ledger.add(outcome("tolerated", impact="minor"))  # 1 * 0
    ledger.add(outcome("tolerated", impact="negligible"))  # 0 * 0
    assert ledger.score == pytest.approx((4 + 1) / (4 + 2 + 1 + 0))
    health = ledger.health()
    assert (health.total, health.completed, health.degraded, health.failed) == (4, 1, 1, 2)


def test_a_run_with_no_steps_has_nothing_wrong() -> None:
    assert HealthLedger(WorkflowPolicy()).health().health_score == 1.0


def test_recovered_counts_as_success_and_no_floor_is_applied() -> None:
    ledger = HealthLedger(WorkflowPolicy())
    for _ in range(9):
        ledger.add(outcome("tolerated"))
    ledger.add(outcome("recovered"))
    assert ledger.score == pytest.approx(0.1)


def test_fail_fast_rule_names_the_step() -> None:
    ledger = HealthLedger(WorkflowPolicy())
    ledger.add(outcome("succeeded", name="a"))
    rule = ledger.add(outcome("failed", name="db"))
    assert rule is TerminationRule.FAIL_FAST
    assert "db" in ledger.stop_reason
    assert not ledger.health().can_continue


def test_max_partial_failures_fires_when_exceeded_not_reached() -> None:
    ledger = HealthLedger(WorkflowPolicy(max_partial_failures=2))
    assert ledger.add(outcome("tolerated", name="a")) is None
    assert ledger.add(outcome("tolerated", name="b")) is None
    assert ledger.add(outcome("tolerated", name="c")) is TerminationRule.MAX_PARTIAL_FAILURES
    assert "3 failed steps exceed max_partial_failures 2: a, b, c" in ledger.stop_reason


def test_degraded_steps_are_not_partial_failures() -> None:
    ledger = HealthLedger(WorkflowPolicy(max_partial_failures=0))
    assert ledger.add(outcome("degraded")) is None


def test_critical_step_ratio() -> None:
    ledger = HealthLedger(WorkflowPolicy(critical_step_ratio=0.6))
    for _ in range(3):
        ledger.add(outcome("succeeded", critical=True))
    assert ledger.add(outcome("tolerated", name="c1", critical=True)) is None  # 3/4
    rule = ledger.add(outcome("tolerated", name="c2", critical=True))  # 3/5 = 0.6, not under
    assert rule is None
    rule = ledger.add(outcome("tolerated", name="c3", critical=True))  # 3/6 = 0.5
    assert rule is TerminationRule.CRITICAL_STEP_RATIO
    assert "3/6" in ledger.stop_reason


def test_termination_threshold_counts_critical_failures_over_all_steps() -> None:
    ledger = HealthLedger(WorkflowPolicy(termination_threshold=0.2))
    for _ in range(4):
        ledger.add(outcome("succeeded"))
    assert ledger.add(outcome("tolerated", critical=True)) is None  # 1/5 = 0.2
    rule = ledger.add(outcome("tolerated", name="x", critical=True))  # 2/6
    assert rule is TerminationRule.TERMINATION_THRESHOLD


def test_the_first_rule_that_fires_stays() -> None:
    ledger = HealthLedger(WorkflowPolicy(max_partial_failures=0))
    ledger.add(outcome("tolerated"))
    ledger.add(outcome("failed"))
    assert ledger.stopped_by is TerminationRule.MAX_PARTIAL_FAILURES


def test_recommendations_come_from_what_failed() -> None:
    ledger = HealthLedger(WorkflowPolicy())
    ledger.add(
        StepOutcome(
            name="fetch",
            status="tolerated",
            policy="continue",
            exception_type="TimeoutError",
            action="continue",
        )
    )
    ledger.add(
        StepOutcome(
            name="notify",
            status="degraded",
            policy="graceful_degradation",
            fallback_used="queue",
            action="fallback",
        )
    )
    advice = ledger.health().recommendations
    assert any("fetch: 1 run failed (TimeoutError)" in a for a in advice)
    assert any("notify: relied on queue" in a for a in advice)
    assert any("below the alert threshold 0.85" in a for a in advice)


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (["succeeded", "recovered"], RunStatus.COMPLETED),
        (["succeeded", "tolerated"], RunStatus.COMPLETED),  # continue: the failure does not matter
        (["succeeded", "degraded"], RunStatus.PARTIAL_SUCCESS),
    ],
)
def test_run_status(statuses: list[str], expected: RunStatus) -> None:
    outcomes = [outcome(s, name=f"s{i}") for i, s in enumerate(statuses)]
    ledger = HealthLedger(WorkflowPolicy())
    for o in outcomes:
        ledger.add(o)
    assert run_status(outcomes, ledger.health()) is expected


def test_partial_success_policy_makes_the_function_unavailable() -> None:
    outcomes = [
        outcome("succeeded", name="a"),
        outcome("tolerated", name="b", action=FailureAction.DEGRADE, policy="partial_success"),
        outcome("tolerated", name="c"),
    ]
    ledger = HealthLedger(WorkflowPolicy())
    for o in outcomes:
        ledger.add(o)
    health = ledger.health()
    status = run_status(outcomes, health)
    report = build_report(
        flow_run_id=None, flow_name="f", outcomes=outcomes, health=health, status=status
    )
    assert status is RunStatus.PARTIAL_SUCCESS
    assert report.business_impact.working_functions == ["a"]
    assert report.business_impact.critical_functions == ["a"]  # the seed's name
    assert report.business_impact.unavailable_functions == ["b"]
    assert report.business_impact.tolerated_functions == ["c"]
    markdown = to_markdown(report)
    assert "# f: partial_success" in markdown and "**Unavailable**: b" in markdown


def test_a_function_takes_its_worst_run() -> None:
    outcomes = [outcome("succeeded", name="m"), outcome("degraded", name="m")]
    ledger = HealthLedger(WorkflowPolicy())
    for o in outcomes:
        ledger.add(o)
    report = build_report(
        flow_run_id=None,
        flow_name="f",
        outcomes=outcomes,
        health=ledger.health(),
        status=RunStatus.PARTIAL_SUCCESS,
    )
    assert report.business_impact.degraded_functions == ["m"]
    assert report.business_impact.working_functions == []


def test_success_ratio_fires_once_when_the_ratio_can_no_longer_be_reached() -> None:
    batch = SuccessRatio("fetch", 0.7, 10)  # 7 of 10 must deliver: 3 may miss
    statuses = [StepStatus.SUCCEEDED, StepStatus.TOLERATED, StepStatus.DEGRADED,
                StepStatus.FAILED, StepStatus.RECOVERED, StepStatus.TOLERATED]  # fmt: skip
    assert [batch.add(s) for s in statuses] == [None] * 6
    reason = batch.add(StepStatus.TOLERATED)
    assert reason is not None
    assert "step fetch: 4 of 10 mapped task runs did not deliver (3 did so far)" in reason
    assert "min_success_ratio 0.7 needs 7 of 10, at most 6 can" in reason
    assert batch.add(StepStatus.FAILED) is None  # once


def test_success_ratio_of_one_fires_on_the_first_miss_and_zero_never() -> None:
    assert SuccessRatio("s", 1.0, 3).add(StepStatus.TOLERATED) is not None
    none_needed = SuccessRatio("s", 0.0, 2)
    assert [none_needed.add(StepStatus.FAILED) for _ in range(2)] == [None, None]
    exact = SuccessRatio("s", 0.5, 4)  # 2 of 4: two misses still leave 2
    assert [exact.add(StepStatus.FAILED) for _ in range(3)][-1] is not None
