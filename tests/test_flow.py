"""`@resilient_flow` on a real Prefect server: final states, rules, reports, events."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task
from prefect.context import FlowRunContext
from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter

from prefect_resilience import (
    ResilienceConfigError,
    RunStatus,
    StepStatus,
    TerminationRule,
    WorkflowPolicy,
    WorkflowTerminated,
    current_health,
    get_report,
    resilient,
    resilient_flow,
    resilient_loop,
)
from prefect_resilience.report import artifact_key
from tests.scenarios import (
    Boom,
    analytics_setup,
    database_setup,
    fetch,
    report_section,
    scenario_threads,
)

pytestmark = pytest.mark.usefixtures("prefect_server")

started: Counter[str] = Counter()


@resilient(policy="continue", default=0)
def counted(name: str, fail: bool = False) -> int:
    started[name] += 1
    if fail:
        raise Boom(name)
    return 1


def run_of(state: Any) -> Any:
    return state.state_details.flow_run_id


def test_completed_when_nothing_failed_and_continue_failures_do_not_count() -> None:
    @resilient_flow
    def fine() -> str:
        database_setup()
        analytics_setup(fail=True)  # continue: tolerated, run stays Completed
        return "done"

    state = fine(return_state=True)
    assert state.is_completed() and state.name == "Completed"
    assert state.result() == "done"
    report = get_report(run_of(state))
    assert report.overall_status is RunStatus.COMPLETED
    assert report.business_impact.tolerated_functions == ["analytics_setup"]
    assert report.health.health_score < 1.0  # a tolerated failure still costs health


def test_partial_success_is_a_completed_state_keeping_the_return_value() -> None:
    @resilient_flow
    def partial() -> dict:
        return {
            "fetch": fetch("k", fail=True),
            "section": report_section("s", fail=True),
        }

    state = partial(return_state=True)
    assert state.is_completed() and state.name == "PartialSuccess"
    assert state.result() == {"fetch": "cached k", "section": None}
    assert "degraded: fetch; unavailable: report_section" in state.message
    report = get_report(run_of(state))
    assert report.overall_status is RunStatus.PARTIAL_SUCCESS
    assert report.continuity_status == "degraded"
    assert [s.name for s in report.degraded_steps] == ["fetch"]
    assert report.degraded_steps[0].fallback_used == "from_cache"
    assert [s.name for s in report.failed_steps] == ["report_section"]
    assert report.business_impact.unavailable_functions == ["report_section"]
    # health: fetch degraded (0.6 * 0.5) + section failed (0.6 * 0) over 1.2
    assert report.health.health_score == pytest.approx(0.25)
    # attempts are Prefect's run_count
    assert {s.name: s.attempts for s in report.steps} == {"fetch": 1, "report_section": 1}


def test_the_resilient_flow_is_still_a_prefect_flow_called_like_one() -> None:
    @resilient_flow(name="called-directly")
    @flow(log_prints=True)
    def plain(x: int) -> int:
        return x + 1

    assert plain.name == "called-directly"
    assert plain(1) == 2
    assert plain.log_prints is True


RULES = {
    TerminationRule.FAIL_FAST: WorkflowPolicy(),
    TerminationRule.MAX_PARTIAL_FAILURES: WorkflowPolicy(max_partial_failures=1),
    TerminationRule.CRITICAL_STEP_RATIO: WorkflowPolicy(
        critical_step_ratio=0.75, step_policies={"counted": {"critical": True}}
    ),
    TerminationRule.TERMINATION_THRESHOLD: WorkflowPolicy(
        termination_threshold=0.25, step_policies={"counted": {"critical": True}}
    ),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_each_termination_rule_fires_names_itself_and_stops_new_steps(
    rule: TerminationRule,
) -> None:
    tag = f"rule-{rule.value}"

    @resilient_flow(policy=RULES[rule], name=tag)
    def doomed() -> None:
        for i in range(3):
            counted(f"{tag}-ok-{i}")
        if rule is TerminationRule.FAIL_FAST:
            database_setup(fail=True)
        else:
            counted(f"{tag}-bad-1", fail=True)
            counted(f"{tag}-bad-2", fail=True)
        counted(f"{tag}-after")

    state = doomed(return_state=True)
    assert state.is_failed()
    assert f"terminated by rule {rule.value}" in state.message
    assert started[f"{tag}-after"] == 0  # no new step started after the verdict
    report = get_report(run_of(state))
    assert report.overall_status is RunStatus.TERMINATED
    assert report.continuity_status == "interrupted"
    assert report.health.stopped_by is rule
    assert rule.value in report.message or report.health.stop_reason in report.message
    with pytest.raises(WorkflowTerminated) as raised:
        state.result()
    assert raised.value.rule is rule


def test_fail_fast_names_the_step_and_keeps_the_original_error_as_cause() -> None:
    @resilient_flow
    def doomed() -> None:
        database_setup(fail=True)

    with pytest.raises(WorkflowTerminated, match="step database_setup failed") as raised:
        doomed()
    assert isinstance(raised.value.__cause__, Boom)


def test_an_unexpected_exception_still_writes_the_report() -> None:
    @resilient_flow
    def broken() -> None:
        fetch("k", fail=True)
        raise KeyError("bug in the flow body")

    state = broken(return_state=True)
    assert state.is_failed()
    report = get_report(run_of(state))
    assert report.overall_status is RunStatus.FAILED
    assert "KeyError" in report.message
    assert [s.name for s in report.degraded_steps] == ["fetch"]


class Abort(BaseException):
    """Stands in for a signal or interpreter shutdown: Prefect calls that a crash."""


def test_a_crash_still_writes_the_report() -> None:
    @resilient_flow
    def crashing() -> None:
        fetch("k")
        raise Abort()

    with pytest.raises(Abort):
        crashing()
    # the crashed run is the latest of this flow; read its report back
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["crashing"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
    assert runs[0].state.is_crashed()
    report = get_report(runs[0].id)
    assert report.overall_status is RunStatus.CRASHED
    assert report.successful_steps == ["fetch"]


def test_report_artifacts_are_the_runs_own_and_unkeyed(client: Any) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    @resilient_flow(name="Nightly ETL (EU)")
    def nightly() -> None:
        fetch("k", fail=True)

    state = nightly(return_state=True)
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_of(state)]))
    )
    # no key: concurrent runs of one flow would queue on its row in the artifact collection
    assert [a.key for a in artifacts] == [None, None, None]
    assert sorted(a.type for a in artifacts) == ["markdown", "resilience-report", "table"]
    assert artifact_key("proposal", "Nightly ETL (EU)") == "resilience-proposal-nightly-etl-eu"
    markdown = next(a for a in artifacts if a.type == "markdown").data
    assert "# Nightly ETL (EU): partial_success" in markdown


def test_current_health_is_live_inside_the_run() -> None:
    @resilient_flow
    def watching() -> list[float]:
        seen = [current_health().health_score]
        counted("h1")
        seen.append(current_health().health_score)
        counted("h2", fail=True)
        seen.append(current_health().health_score)
        if current_health().failed:
            seen.append(-1.0)  # user code can branch on it
        return seen

    assert watching() == [1.0, 1.0, 0.5, -1.0]
    with pytest.raises(RuntimeError, match="inside a @resilient_flow"):
        current_health()


def test_futures_nobody_resolved_are_settled_and_reported() -> None:
    @resilient_flow
    def forgetful() -> None:
        fetch.submit("k", fail=True)  # never waited on by the flow body

    report = get_report(run_of(forgetful(return_state=True)))
    assert report.overall_status is RunStatus.PARTIAL_SUCCESS
    assert [s.name for s in report.degraded_steps] == ["fetch"]


def test_workflow_policy_overrides_the_decorator_per_step() -> None:
    policy = WorkflowPolicy(
        step_policies={"database_setup": {"policy": "continue", "default": "x"}}
    )

    @resilient_flow(policy=policy)
    def relaxed() -> str:
        return database_setup(fail=True)

    assert relaxed() == "x"


def test_a_plain_mapping_is_a_policy_as_a_workflow_policy_is() -> None:
    rules = {"database_setup": {"policy": "continue", "default": "x"}}

    @resilient_flow(policy={"step_policies": rules})
    def relaxed() -> str:
        return database_setup(fail=True)

    assert relaxed() == "x"
    with pytest.raises(ResilienceConfigError, match="max_partial_failures"):
        resilient_flow(policy={"max_partial_failures": -1})(relaxed.fn)


def test_a_policy_file_is_read_when_each_run_starts(tmp_path: Path) -> None:
    file = tmp_path / "policy.yaml"
    file.write_text("stepPolicies:\n  database_setup:\n    failurePolicy: continue\n")

    @resilient_flow(policy=file)
    def configured() -> Any:
        return database_setup(fail=True)

    assert configured() is None
    file.write_text("stepPolicies:\n  database_setup:\n    failurePolicy: fail_fast\n")
    with pytest.raises(WorkflowTerminated):
        configured()


def test_an_invalid_policy_stops_the_run_before_any_step(tmp_path: Path) -> None:
    file = tmp_path / "policy.yaml"
    file.write_text("stepPolicies:\n  counted:\n    maxRetries: -1\n")

    @resilient_flow(policy=str(file))
    def never() -> None:
        counted("never-started")

    with pytest.raises(ResilienceConfigError, match="line 3: stepPolicies.counted.maxRetries"):
        never()
    assert started["never-started"] == 0


def test_events_for_degraded_steps_partial_success_and_health(client: Any) -> None:
    @resilient_flow(name="eventful")
    def eventful() -> None:
        fetch("k", fail=True)

    flow_run_id = run_of(eventful(return_state=True))
    wanted = {
        "prefect-resilience.step.degraded",
        "prefect-resilience.health.below-threshold",
        "prefect-resilience.run.partial-success",
    }
    events: dict[str, Any] = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not wanted <= set(events):
        page = client.read_events(
            filter=EventFilter(
                event=EventNameFilter(prefix=["prefect-resilience."]),
                any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
            ),
            limit=50,
        )
        events.update({event.event: event for event in page.events})
        time.sleep(0.3)
    assert wanted <= set(events)
    degraded = events["prefect-resilience.step.degraded"]
    assert degraded.payload["fallback"] == "from_cache"
    assert degraded.payload["health_score"] == pytest.approx(0.5)
    assert events["prefect-resilience.health.below-threshold"].payload["threshold"] == 0.85


def resume_when_paused(run_ids: list[Any], action: str) -> threading.Thread:
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    def resume() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if run_ids:
                with get_client(sync_client=True) as c:
                    if c.read_flow_run(run_ids[0]).state.is_paused():
                        resume_flow_run(run_ids[0], run_input={"action": action})
                        return
            time.sleep(0.2)

    thread = threading.Thread(target=resume, daemon=True)
    thread.start()
    return thread


def pausing_flow(run_ids: list[Any], timeout: int = 60) -> Any:
    @resilient_flow(pause_below=0.6, pause_timeout=timeout, name="pausing")
    def pausing() -> list[str]:
        run_ids.append(FlowRunContext.get().flow_run.id)
        counted("p-ok")
        counted("p-bad", fail=True)  # health 0.5, below 0.6: the next step pauses first
        counted("p-next")
        return ["finished"]

    return pausing


def test_pause_on_low_health_then_continue() -> None:
    run_ids: list[Any] = []
    thread = resume_when_paused(run_ids, "continue")
    assert pausing_flow(run_ids)() == ["finished"]
    thread.join(timeout=5)


def test_pause_on_low_health_then_abort() -> None:
    run_ids: list[Any] = []
    resume_when_paused(run_ids, "abort")
    state = pausing_flow(run_ids)(return_state=True)
    assert state.is_failed()
    assert "low_health_aborted" in state.message


def test_an_async_flow_pauses_on_low_health_as_a_sync_one_does() -> None:
    # the pause is asked from the flow's event loop: Prefect's dispatch would hand back
    # a coroutine there, so the run must ask for the call that waits
    run_ids: list[Any] = []
    thread = resume_when_paused(run_ids, "abort")

    @resilient_flow(pause_below=0.6, pause_timeout=60, name="pausing-async")
    async def pausing() -> list[str]:
        run_ids.append(FlowRunContext.get().flow_run.id)
        counted("pa-ok")
        counted("pa-bad", fail=True)
        counted("pa-next")
        return ["finished"]

    state = asyncio.run(pausing(return_state=True))
    thread.join(timeout=5)
    assert state.is_failed()
    assert "low_health_aborted" in state.message
    assert started["pa-next"] == 0


def test_pause_on_low_health_times_out_as_abort() -> None:
    run_ids: list[Any] = []
    state = pausing_flow(run_ids, timeout=2)(return_state=True)
    assert state.is_failed()
    report = get_report(run_ids[0])
    assert report.health.stopped_by is TerminationRule.LOW_HEALTH_PAUSE_TIMEOUT


def test_a_150_iteration_loop_is_reported_with_its_timings() -> None:
    @task
    def poll(state: dict) -> int:
        state["n"] += 1
        return state["n"]

    @resilient_flow
    def looping() -> tuple[int, int, bool]:
        result = resilient_loop(poll, {"n": 0}, until=lambda n: n >= 150, max_iterations=200)
        return result.value, result.iterations, result.condition_met

    state = looping(return_state=True)
    assert state.result() == (150, 150, True)
    report = get_report(run_of(state))
    (loop,) = report.loops
    assert (loop.name, loop.iterations, loop.condition_met) == ("poll", 150, True)
    assert 0 <= loop.condition_ms_p50 <= loop.condition_ms_max
    assert len(report.steps) == 150


def test_loop_arguments_are_checked() -> None:
    with pytest.raises(ResilienceConfigError, match="until"):
        resilient_loop(counted, "x", until="n > 3")
    with pytest.raises(ResilienceConfigError, match="max_iterations"):
        resilient_loop(counted, "x", until=bool, max_iterations=0)


def test_a_partial_subflow_is_a_degraded_step_of_its_parent() -> None:
    @resilient_flow(name="child")
    def child() -> str:
        fetch("c", fail=True)
        return "child done"

    @resilient_flow(name="parent")
    def parent() -> str:
        counted("parent-step")
        return child()

    state = parent(return_state=True)
    assert state.name == "PartialSuccess"
    assert state.result() == "child done"
    report = get_report(run_of(state))
    (degraded,) = report.degraded_steps
    assert degraded.name == "child" and "subflow ended partial_success" in degraded.reason


def test_threads_scenario_report() -> None:
    state = scenario_threads(return_state=True)
    assert state.name == "PartialSuccess"
    assert state.result()["fetched"] == ["cached a", "live b"]
    report = get_report(run_of(state))
    statuses = sorted((s.name, s.status.value) for s in report.steps)
    assert statuses == EXPECTED_SCENARIO


EXPECTED_SCENARIO = sorted(
    [
        ("database_setup", StepStatus.SUCCEEDED.value),
        ("analytics_setup", StepStatus.TOLERATED.value),
        ("fetch", StepStatus.DEGRADED.value),
        ("fetch", StepStatus.SUCCEEDED.value),
        ("report_section", StepStatus.SUCCEEDED.value),
        ("report_section", StepStatus.TOLERATED.value),
        ("report_section", StepStatus.SUCCEEDED.value),
    ]
)


def test_dask_scenario_gives_the_same_report() -> None:
    pytest.importorskip("prefect_dask")
    from tests.scenarios import dask_scenario_flow

    threads = get_report(run_of(scenario_threads(return_state=True)))
    state = dask_scenario_flow()(return_state=True)
    assert state.name == "PartialSuccess"
    # futures of a tolerated and a degraded step, passed to a task on a Dask worker process
    assert state.result()["joined"] == "off/cached a"
    dask = get_report(run_of(state))
    assert sorted((s.name, s.status.value) for s in dask.steps) == EXPECTED_SCENARIO
    assert dask.overall_status == threads.overall_status
    assert dask.business_impact.model_dump(exclude={"overall_health_score"}) == (
        threads.business_impact.model_dump(exclude={"overall_health_score"})
    )
    assert dask.health.health_score == pytest.approx(threads.health.health_score)


@pytest.mark.timeout(300)
def test_ray_scenario_gives_the_same_report() -> None:
    pytest.importorskip("prefect_ray")
    from tests.scenarios import ray_scenario_flow

    threads = get_report(run_of(scenario_threads(return_state=True)))
    state = ray_scenario_flow()(return_state=True)
    assert state.name == "PartialSuccess"
    # futures of a tolerated and a degraded step, passed to a task in a Ray worker process
    assert state.result()["joined"] == "off/cached a"
    ray = get_report(run_of(state))
    assert sorted((s.name, s.status.value) for s in ray.steps) == EXPECTED_SCENARIO
    assert ray.overall_status == threads.overall_status
    assert ray.business_impact.model_dump(exclude={"overall_health_score"}) == (
        threads.business_impact.model_dump(exclude={"overall_health_score"})
    )
    assert ray.health.health_score == pytest.approx(threads.health.health_score)


def test_reports_know_attempts_without_waiting_and_report_wait_is_deprecated() -> None:
    @resilient_flow
    def hurried() -> str:
        return fetch("k")

    state = hurried(return_state=True)
    (step,) = get_report(run_of(state)).steps
    # the task engine that ran the step counted its attempts: nothing is read back
    assert step.attempts == 1
    assert step.duration is not None and step.duration >= 0
    with pytest.warns(DeprecationWarning, match="report_wait"):
        resilient_flow(report_wait=5)(lambda: None)


def test_a_renamed_flow_reports_under_its_new_name() -> None:
    @resilient_flow(name="named-once")
    def named_once() -> str:
        return fetch("k")

    renamed = named_once.with_options(name="named-twice")
    report = get_report(run_of(renamed(return_state=True)))
    assert report.flow_name == "named-twice"
