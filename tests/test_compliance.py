"""The design's targets from run history: synthetic frames with known answers, then real runs.

Each synthetic history is built so the expected value of every target can be
counted by hand; the real-run tests make flows whose outcomes are fixed, read
their history through Prefect's API, and check the command, its JSON and the
artifacts it publishes inside a flow run.
"""

from __future__ import annotations

import ast
import json
import math
import sys
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prefect import flow
from typer.testing import CliRunner

from prefect_resilience import resilient, resilient_flow, resilient_loop
from prefect_resilience.cli import app
from prefect_resilience.compliance import Status, evaluate
from prefect_resilience.history import (
    FLOW_RUN_COLUMNS,
    REPORT_COLUMNS,
    TASK_RUN_COLUMNS,
    load_history,
)
from tests.conftest import ROOT

COMPLIANCE = ROOT / "prefect_resilience" / "compliance.py"
T0 = pd.Timestamp("2024-03-04", tz="UTC")
runner = CliRunner(env={"COLUMNS": "250"})


# --- synthetic history --------------------------------------------------------------------


def flow_run(i: int, state: str, name: str | None = None, flow: str = "etl") -> dict[str, Any]:
    start = T0 + pd.Timedelta(hours=i)
    finished = state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
    return {
        "flow_run_id": f"r{i}",
        "flow_name": flow,
        "deployment_id": None,
        "state_type": state,
        "state_name": name or state.title(),
        "start_time": start,
        "end_time": start + pd.Timedelta(minutes=5) if finished else pd.NaT,
        "duration_s": 300.0 if finished else None,
        "tags": [],
    }


def task_run(i: int, j: int, state: str) -> dict[str, Any]:
    return {
        **{c: None for c in TASK_RUN_COLUMNS},
        "task_run_id": f"t{i}-{j}",
        "flow_run_id": f"r{i}",
        "flow_name": "etl",
        "task_name": f"step{j}",
        "state_type": state,
        "state_name": state.title(),
        "run_count": 1,
        "start_time": T0 + pd.Timedelta(hours=i),
        "end_time": T0 + pd.Timedelta(hours=i, minutes=1),
        "duration_s": 60.0,
        "critical": False,
    }


def report(i: int, status: str, health: float, loops: list | None = None) -> dict[str, Any]:
    row = {c: [] for c in REPORT_COLUMNS}
    row.update(flow_run_id=f"r{i}", overall_status=status, health_score=health, stopped_by=None)
    if loops is not None:
        row["loops"] = loops
    return row


def frames(
    flows: list[dict], tasks: list[dict] = (), reports: list[dict] = ()
) -> tuple[pd.DataFrame, ...]:
    reports = list(reports)
    columns = REPORT_COLUMNS  # it carries each report's loop records
    return (
        pd.DataFrame(flows, columns=FLOW_RUN_COLUMNS),
        pd.DataFrame(list(tasks), columns=TASK_RUN_COLUMNS),
        pd.DataFrame(reports, columns=columns),
    )


def by_claim(result: Any) -> dict[str, Any]:
    return {r.claim: r for r in result.results}


def test_plain_history_with_failures_is_shown_as_missing_its_targets() -> None:
    # 20 finished: 14 completed in full, 2 PartialSuccess, 3 FAILED, 1 CRASHED; 3 still running
    states = ["COMPLETED"] * 14 + ["FAILED"] * 3 + ["CRASHED"]
    flows = [flow_run(i, s) for i, s in enumerate(states)]
    flows += [flow_run(i, "COMPLETED", "PartialSuccess") for i in (18, 19)]
    flows += [flow_run(i, "RUNNING") for i in (20, 21, 22)]
    tasks = [task_run(i, j, "COMPLETED") for i in range(20) for j in range(3)]
    tasks += [task_run(i, 3, "FAILED") for i in range(6)]  # 6 of 66 task runs failed
    tasks += [task_run(20, 0, "FAILED")]  # of a run in progress: left out
    result = evaluate(*frames(flows, tasks))
    got = by_claim(result)
    assert (result.finished_flow_runs, result.in_progress) == (20, 3)

    termination = got["workflow termination rate"]
    assert termination.id == "BR-WF-541" and termination.target == "< 10.0%"
    # no reports: a FAILED run is a terminated one (CRASHED is not)
    assert termination.measured == pytest.approx(3 / 20) and termination.sample_size == 20
    assert termination.status is Status.MISS
    assert termination.low < 0.15 < termination.high
    assert "6/66 finished task runs" in termination.note

    completion = got["workflow completion rate"]
    assert completion.measured == pytest.approx(16 / 20) and completion.status is Status.MISS

    success = got["flow-run success rate"]
    assert success.id == "BR-ORCH-011" and success.target == "≥ 90.0%"
    assert success.measured == pytest.approx(14 / 20) and success.status is Status.MISS

    steps = got["step success rate"]
    assert (steps.measured, steps.sample_size) == (pytest.approx(60 / 66), 66)
    assert steps.status is Status.PASS

    health = got["workflow health"]
    assert health.sample_size == 0 and math.isnan(health.measured)
    assert health.status is Status.NOT_ENOUGH_DATA
    assert [r.id for r in result.missed] == ["BR-WF-541", "BR-WF-541", "BR-ORCH-011"]


def test_a_healthy_history_passes() -> None:
    flows = [flow_run(i, "COMPLETED") for i in range(48)] + [flow_run(48, "FAILED")]
    flows += [flow_run(49, "CANCELLED")]
    reports = [report(i, "completed", 0.95) for i in range(48)]
    reports += [report(48, "terminated", 0.4), report(49, "completed", 0.9)]
    result = evaluate(*frames(flows, reports=reports))
    got = by_claim(result)
    assert got["workflow termination rate"].measured == pytest.approx(1 / 50)
    assert got["workflow completion rate"].measured == pytest.approx(48 / 50)
    assert got["flow-run success rate"].measured == pytest.approx(48 / 50)
    health = got["workflow health"]
    assert health.measured == pytest.approx((48 * 0.95 + 0.4 + 0.9) / 50)
    assert health.sample_size == 50 and health.low < health.measured < health.high
    for claim in ("workflow termination rate", "workflow completion rate", "flow-run success rate"):
        assert got[claim].status is Status.PASS, claim
    assert got["workflow health"].status is Status.PASS
    assert not result.missed
    assert got["step success rate"].status is Status.NOT_ENOUGH_DATA  # no task runs at all


def test_targets_on_their_boundary_follow_the_designs_comparison() -> None:
    # exactly 10% terminated, 90% completed, 90% succeeded
    flows = [flow_run(i, "COMPLETED") for i in range(18)] + [
        flow_run(i, "FAILED") for i in (18, 19)
    ]
    reports = [report(i, "completed", 0.85) for i in range(18)]
    reports += [report(18, "terminated", 0.85), report(19, "terminated", 0.85)]
    got = by_claim(evaluate(*frames(flows, reports=reports)))
    assert got["workflow termination rate"].measured == pytest.approx(0.10)
    assert got["workflow termination rate"].status is Status.MISS  # < 10% is asked for
    assert got["workflow completion rate"].status is Status.MISS  # > 90% is asked for
    assert got["flow-run success rate"].status is Status.PASS  # >= 90% is asked for
    assert got["workflow health"].measured == pytest.approx(0.85)
    assert got["workflow health"].status is Status.PASS  # >= 85%


def test_reports_decide_what_was_terminated() -> None:
    # a run that failed without a termination rule firing is not terminated
    flows = [flow_run(i, "COMPLETED") for i in range(10)] + [
        flow_run(i, "FAILED") for i in (10, 11)
    ]
    reports = [report(10, "failed", 0.5), report(11, "terminated", 0.2)]
    got = by_claim(evaluate(*frames(flows, reports=reports)))
    termination = got["workflow termination rate"]
    assert termination.measured == pytest.approx(1 / 12)
    assert "(2 of 12)" in termination.method


def test_too_few_runs_is_not_enough_data_with_the_value_still_shown() -> None:
    flows = [flow_run(i, "FAILED") for i in range(4)]
    result = evaluate(*frames(flows), min_sample=5)
    termination = by_claim(result)["workflow termination rate"]
    assert termination.measured == 1.0 and termination.measured_text == "100.0%"
    assert termination.status is Status.NOT_ENOUGH_DATA
    assert not result.missed
    assert by_claim(evaluate(*frames(flows), min_sample=4))["workflow termination rate"].status is (
        Status.MISS
    )
    with pytest.raises(ValueError, match="min_sample"):
        evaluate(*frames(flows), min_sample=0)


def test_reports_of_runs_outside_the_selection_or_in_progress_are_left_out() -> None:
    flows = [flow_run(i, "COMPLETED") for i in range(10)] + [flow_run(10, "RUNNING")]
    reports = [report(i, "completed", 1.0) for i in range(10)]
    reports += [report(10, "completed", 0.0), report(99, "completed", 0.0)]
    reports += [report(3, "completed", 0.5)]  # a run reported twice: its last report counts
    health = by_claim(evaluate(*frames(flows, reports=reports)))["workflow health"]
    assert health.sample_size == 10
    assert health.measured == pytest.approx(9.5 / 10)


def test_loop_targets_from_loop_records_where_history_carries_them() -> None:
    flows = [flow_run(i, "COMPLETED") for i in range(3)]
    loops = [
        report(0, "completed", 1.0, [{"iterations": 150, "condition_ms_max": 0.4}]),
        report(1, "completed", 1.0, [{"iterations": 12, "condition_ms_max": 140.0}]),
        report(2, "completed", 1.0, []),
    ]
    got = by_claim(evaluate(*frames(flows, reports=loops)))
    condition = got["loop condition evaluation time"]
    assert condition.id == "BR-WF-556" and condition.target == "< 100 ms"
    assert (condition.measured, condition.sample_size) == (140.0, 2)
    assert condition.status is Status.MISS
    iterations = got["loop iterations supported"]
    assert (iterations.measured, iterations.status) == (150, Status.PASS)

    short = [report(0, "completed", 1.0, [{"iterations": 12, "condition_ms_max": 0.4}])]
    got = by_claim(evaluate(*frames(flows, reports=short)))
    assert got["loop condition evaluation time"].status is Status.PASS
    assert got["loop iterations supported"].status is Status.NOT_ENOUGH_DATA

    got = by_claim(evaluate(*frames(flows, reports=[report(0, "completed", 1.0)])))
    assert got["loop condition evaluation time"].status is Status.NOT_ENOUGH_DATA
    assert "carry no loop records" in got["loop condition evaluation time"].note


def test_the_markdown_and_json_say_plainly_what_was_missed() -> None:
    flows = [flow_run(i, "FAILED") for i in range(10)]
    result = evaluate(*frames(flows))
    text = result.to_markdown("Compliance: etl")
    assert text.startswith("# Compliance: etl\n")
    assert "**3 targets missed:** BR-WF-541 (workflow termination rate)" in text
    assert "| BR-WF-541 | workflow termination rate | < 10.0% | 100.0% |" in text
    assert text.count("**MISSED**") == 3
    assert "BR-ORCH-005" in text.split("## Not answerable from run history")[1]
    data = json.loads(json.dumps(result.to_json()))  # plain JSON, no NaN
    assert data["missed"] == 3
    (termination,) = [t for t in data["targets"] if t["claim"] == "workflow termination rate"]
    assert (termination["status"], termination["measured"], termination["sample_size"]) == (
        "miss",
        1.0,
        10,
    )
    health = next(t for t in data["targets"] if t["claim"] == "workflow health")
    assert health["measured"] is None and health["status"] == "not enough data"
    rows = {row["claim"]: row for row in result.rows()}
    assert rows["workflow termination rate"] == {
        "id": "BR-WF-541",
        "claim": "workflow termination rate",
        "target": "< 10.0%",
        "measured": "100.0%",
        "95% interval": rows["workflow termination rate"]["95% interval"],
        "n": 10,
        "of": "finished flow runs",
        "status": "miss",
    }


states = st.sampled_from(["COMPLETED", "FAILED", "CRASHED", "CANCELLED"])
unfinished = st.sampled_from(["RUNNING", "PENDING", "SCHEDULED", "PAUSED", None])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(states, min_size=0, max_size=40), st.lists(unfinished, max_size=10))
def test_runs_in_progress_never_change_a_target(done: list[str], running: list) -> None:
    flows = [flow_run(i, s) for i, s in enumerate(done)]
    tasks = [task_run(i, 0, s) for i, s in enumerate(done)]
    reports = [report(i, "completed", 0.5 + (i % 5) / 10) for i in range(len(done))]
    base = evaluate(*frames(flows, tasks, reports))
    extra = [flow_run(100 + k, s or "RUNNING") for k, s in enumerate(running)]
    for k, row in enumerate(extra):
        row["state_type"] = running[k]
        row["end_time"] = row["start_time"] - pd.Timedelta(hours=1)  # and a skewed clock
    extra_tasks = [task_run(100 + k, 0, "FAILED") for k in range(len(running))]
    extra_reports = [report(100 + k, "terminated", 0.0) for k in range(len(running))]
    more = evaluate(*frames(flows + extra, tasks + extra_tasks, reports + extra_reports))
    assert more.in_progress == base.in_progress + len(running)
    assert summary(more) == summary(base)


def summary(result: Any) -> list[tuple]:
    """Each target's claim, value (None for NaN), n and status: what a reader is told."""
    return [
        (r.claim, None if math.isnan(r.measured) else r.measured, r.sample_size, r.status)
        for r in result.results
    ]


def test_the_module_imports_no_prefect() -> None:
    allowed = set(sys.stdlib_module_names) | {"numpy", "pandas", "scipy"}
    for node in ast.walk(ast.parse(COMPLIANCE.read_text())):
        if isinstance(node, ast.Import):
            roots = {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots = {str(node.module)}
        else:
            continue
        for root in roots:
            assert root.split(".")[0] in allowed or root.startswith(
                "prefect_resilience.analytics"
            ), root


# --- real runs ----------------------------------------------------------------------------

FLOW = "compliance-fixed-outcomes"


@resilient(policy="fail_fast", critical=True, impact="critical")
def setup(fail: bool) -> str:
    if fail:
        raise ConnectionError("setup failed on purpose")
    return "ready"


@resilient(policy="partial_success", impact="minor", default=None)
def extra(fail: bool) -> str | None:
    if fail:
        raise ValueError("extra failed on purpose")
    return "extra"


@resilient_flow(name=FLOW)
def fixed_outcomes(outcome: str) -> str:
    """outcome: 'ok' (completed), 'partial' (PartialSuccess) or 'terminated' (fail_fast)."""
    setup(outcome == "terminated")
    extra(outcome == "partial")
    return outcome


OUTCOMES = ["ok"] * 7 + ["partial"] * 2 + ["terminated"] * 3


@pytest.fixture(scope="module")
def fixed_history(prefect_server: None) -> list[Any]:
    return [fixed_outcomes(o, return_state=True) for o in OUTCOMES]


def test_real_history_gives_the_counted_values_and_the_misses(fixed_history: list[Any]) -> None:
    from prefect_resilience import get_report

    result = runner.invoke(app, ["compliance", "--flow", FLOW, "--since", "1d", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    got = {t["claim"]: t for t in data["targets"]}
    assert data["finished_flow_runs"] == 12 and data["published"] is False
    assert got["workflow termination rate"]["measured"] == pytest.approx(3 / 12)
    assert got["workflow termination rate"]["status"] == "miss"
    assert got["workflow completion rate"]["measured"] == pytest.approx(9 / 12)
    assert got["flow-run success rate"]["measured"] == pytest.approx(7 / 12)
    assert got["flow-run success rate"]["status"] == "miss"
    # task runs: 12 setup runs (3 failed) and 9 extra runs (2 failed); terminated runs
    # never started `extra`
    assert got["step success rate"]["sample_size"] == 21
    assert got["step success rate"]["measured"] == pytest.approx(16 / 21)
    # health: the mean of what each run's own report says, read back one by one
    scores = [get_report(s.state_details.flow_run_id).health.health_score for s in fixed_history]
    assert got["workflow health"]["sample_size"] == 12
    assert got["workflow health"]["measured"] == pytest.approx(sum(scores) / 12)


def test_the_table_shows_missed_targets_as_missed(fixed_history: list[Any]) -> None:
    result = runner.invoke(app, ["compliance", "--flow", FLOW, "--since", "1d"])
    assert result.exit_code == 0, result.output
    assert "12 finished flow runs" in result.output
    assert result.output.count("MISSED") == 5  # every target this history answers
    assert "5 targets missed: BR-WF-541 workflow termination rate (25.0%, target < 10.0%)" in (
        " ".join(result.output.split())
    )


def test_run_inside_a_flow_the_report_is_published_as_artifacts(
    fixed_history: list[Any], client: Any
) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    @flow(name="compliance-publisher")
    def publisher() -> Any:
        from prefect.runtime import flow_run

        outcome = runner.invoke(app, ["compliance", "--flow", FLOW, "--since", "1d", "--json"])
        return outcome.exit_code, json.loads(outcome.output), flow_run.id

    code, data, run_id = publisher()
    assert code == 0 and data["published"] is True
    for key, kind in (
        (f"resilience-compliance-{FLOW}", "markdown"),
        (f"resilience-compliance-table-{FLOW}", "table"),
    ):
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=1
        )
        assert (artifact.type, str(artifact.flow_run_id)) == (kind, run_id)
    markdown = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[f"resilience-compliance-{FLOW}"])
        )
    )[0].data
    assert "**MISSED**" in markdown and "BR-ORCH-011" in markdown


def test_the_monitor_flow_publishes_the_compliance_report(
    fixed_history: list[Any], client: Any
) -> None:
    sys.path.insert(0, str(ROOT / "flows"))
    try:
        from resilience_monitor import resilience_monitor
    finally:
        sys.path.remove(str(ROOT / "flows"))
    state = resilience_monitor(FLOW, "1d", compliance_since="1d", return_state=True)
    summary = state.result()
    assert summary["compliance"]["missed"] == 5
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[f"resilience-compliance-table-{FLOW}"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
        )
    )
    (table,) = artifacts
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {r["claim"]: r["status"] for r in rows}["workflow termination rate"] == "miss"


def test_compliance_usage_errors_and_empty_history(prefect_server: None) -> None:
    for args in (["--since", "0d"], ["--since", "2999-01-01"], ["--min-sample", "0"]):
        outcome = runner.invoke(app, ["compliance", "--flow", FLOW, *args])
        assert outcome.exit_code == 2, (args, outcome.output)
    empty = runner.invoke(app, ["compliance", "--flow", "never-ran", "--since", "1d"])
    assert empty.exit_code == 1 and "no runs match" in empty.output


def test_load_history_feeds_evaluate_directly(fixed_history: list[Any]) -> None:
    history = load_history(FLOW)
    result = evaluate(history.flow_runs, history.task_runs, history.reports)
    assert result.finished_flow_runs == 12 and len(result.missed) == 5


def test_docs_describe_every_target_evaluated() -> None:
    text = (ROOT / "docs" / "compliance.md").read_text()
    flows = [flow_run(i, "COMPLETED") for i in range(3)]
    for r in evaluate(*frames(flows)).results:
        assert r.claim in text, r.claim
    assert "prefect-resilience compliance" in text


@resilient(policy="continue")
def poll(i: int) -> int:
    return i


@resilient_flow(name="compliance-loops")
def looping() -> int:
    return resilient_loop(poll, 1, until=lambda result: result == 1, max_iterations=3).iterations


def test_loop_targets_are_measured_from_real_history(prefect_server: None) -> None:
    assert looping() == 1
    history = load_history("compliance-loops", refresh=True)
    got = by_claim(evaluate(history.flow_runs, history.task_runs, history.reports, min_sample=1))
    condition = got["loop condition evaluation time"]
    assert condition.sample_size == 1 and condition.status is Status.PASS
    assert 0 <= condition.measured < 100
    assert got["loop iterations supported"].measured == 1
