"""`min_success_ratio` for the task runs of one `.map()`, on both sides of the threshold."""

from __future__ import annotations

from typing import Any

import pytest
from prefect import flow

from prefect_resilience import (
    RunStatus,
    TerminationRule,
    WorkflowTerminated,
    get_report,
    resilient,
    resilient_flow,
)

pytestmark = pytest.mark.usefixtures("prefect_server")


@resilient(policy="partial_success", default=None, min_success_ratio=0.7)
def read_partition(part: int, broken: list[int]) -> int:
    if part in broken:
        raise OSError(f"partition {part} unreadable")
    return part


@resilient(policy="continue")
def combine(parts: list[Any]) -> int:
    return sum(p for p in parts if p is not None)


@resilient_flow
def partitions(broken: list[int]) -> int:
    return combine([f.result() for f in read_partition.map(range(10), broken=[broken] * 10)])


def test_a_ratio_met_with_failures_ends_partial_success() -> None:
    state = partitions([3, 7, 9], return_state=True)  # 7 of 10 delivered: exactly the ratio
    assert state.is_completed() and state.name == "PartialSuccess"
    assert state.result() == sum(range(10)) - 3 - 7 - 9
    report = get_report(state.state_details.flow_run_id)
    assert report is not None and report.overall_status is RunStatus.PARTIAL_SUCCESS


def test_a_ratio_that_can_no_longer_be_met_terminates_the_run() -> None:
    state = partitions([0, 1, 2, 3], return_state=True)  # at most 6 of 10
    assert state.is_failed()
    with pytest.raises(WorkflowTerminated) as stopped:
        state.result()
    assert stopped.value.rule is TerminationRule.MIN_SUCCESS_RATIO
    message = str(stopped.value)
    assert "min_success_ratio 0.7 needs 7 of 10, at most 6 can" in message
    assert "step read_partition: 4 of 10 mapped task runs did not deliver" in message
    report = get_report(state.state_details.flow_run_id)
    assert report is not None and report.overall_status is RunStatus.TERMINATED
    assert report.health.stopped_by is TerminationRule.MIN_SUCCESS_RATIO
    assert "combine" not in report.successful_steps  # nothing new started after it fired


def test_the_workflow_policy_sets_the_ratio_and_direct_calls_ignore_it() -> None:
    @resilient(policy="continue", default=0)
    def score(x: int) -> int:
        if x % 2:
            raise ValueError("odd")
        return x

    @resilient_flow(policy={"step_policies": [{"match": "score", "minSuccessRatio": 0.9}]})
    def scoring() -> list[int]:
        direct = score(1)  # not a .map(): no ratio to keep
        return [direct, *(f.result() for f in score.map([0, 2, 4, 5]))]

    state = scoring(return_state=True)
    with pytest.raises(WorkflowTerminated, match="min_success_ratio 0.9 needs 4 of 4"):
        state.result()


def test_each_map_call_is_counted_on_its_own() -> None:
    @resilient(policy="continue", default=0, min_success_ratio=0.5)
    def half(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x

    @flow
    def twice() -> list[int]:
        first = [f.result() for f in half.map([-1, 1])]  # 1 of 2
        second = [f.result() for f in half.map([-1, 2])]  # 1 of 2
        return first + second

    assert resilient_flow(twice)() == [0, 1, 0, 2]
