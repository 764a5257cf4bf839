"""Resilience analytics on synthetic history frames: no server, no Prefect run.

The frames are built here to the history module's column contract. Each test
states the number it expects and why; the edge cases the analytics must not
be fooled by (runs in progress, clock skew, gaps, empty input) have their own.
"""

from __future__ import annotations

import ast
import math
import sys
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from prefect_resilience.analytics import (
    FINISHED_STATES,
    co_failures,
    continuity_metrics,
    detect_degradation,
    failure_patterns,
    failure_trend,
    function_uptime,
    message_template,
    retry_recovery,
    step_statistics,
    time_concentration,
    wilson_interval,
)
from tests.standalone import ANALYTICS, run_standalone

T0 = pd.Timestamp("2024-03-04 00:00", tz="UTC")  # a Monday
IN_PROGRESS = ["RUNNING", "PENDING", "SCHEDULED", "PAUSED"]
STATES = ["COMPLETED", "FAILED", "CRASHED", "CANCELLED", *IN_PROGRESS]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TASK_COLUMNS = [
    "task_run_id",
    "flow_run_id",
    "flow_name",
    "task_name",
    "state_type",
    "state_name",
    "run_count",
    "start_time",
    "end_time",
    "duration_s",
    "tags",
    "policy",
    "critical",
    "impact",
    "error_type",
    "error_message",
    "upstream",
]
FLOW_COLUMNS = [
    "flow_run_id",
    "flow_name",
    "deployment_id",
    "state_type",
    "state_name",
    "start_time",
    "end_time",
    "duration_s",
    "tags",
]
REPORT_COLUMNS = [
    "flow_run_id",
    "overall_status",
    "health_score",
    "stopped_by",
    "working",
    "degraded",
    "unavailable",
    "tolerated",
]


# --- building frames to the contract ------------------------------------------------------


def at(hours: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(hours=hours)


def task_run(
    task: str = "extract",
    state: str = "COMPLETED",
    *,
    flow_run: str = "f1",
    run_count: int | None = None,
    start: pd.Timestamp | None = None,
    duration: float | None = 10.0,
    end: pd.Timestamp | None = None,
    error_type: str | None = None,
    message: str | None = None,
    upstream: Iterable[str] = (),
    task_run_id: str | None = None,
) -> dict[str, Any]:
    """One task run; a run in progress has no end, a finished one ends `duration` after start."""
    start = T0 if start is None else start
    finished = state in FINISHED_STATES
    if end is None and finished and duration is not None:
        end = start + pd.Timedelta(seconds=duration)
    if run_count is None:
        run_count = 1 if state != "PENDING" else 0
    return {
        "task_run_id": task_run_id,
        "flow_run_id": flow_run,
        "flow_name": "etl",
        "task_name": task,
        "state_type": state,
        "state_name": state.title(),
        "run_count": run_count,
        "start_time": start,
        "end_time": end if finished else None,
        "duration_s": duration if finished else None,
        "tags": [],
        "policy": None,
        "critical": False,
        "impact": None,
        "error_type": error_type,
        "error_message": message,
        "upstream": list(upstream),
    }


def frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """A frame with the contract's columns and dtypes, also when `rows` is empty."""
    data = pd.DataFrame(rows, columns=columns)
    for column in ("start_time", "end_time"):
        if column in data:
            data[column] = pd.to_datetime(data[column], utc=True)
    if "duration_s" in data:
        data["duration_s"] = data["duration_s"].astype(float)
    for i, row in enumerate(rows):  # keep list cells as lists, not what pandas made of them
        for column in ("tags", "upstream", "working", "degraded", "unavailable", "tolerated"):
            if column in data and column in row:
                data.at[i, column] = row[column]
    return data


def task_runs(*rows: dict[str, Any]) -> pd.DataFrame:
    for i, row in enumerate(rows):
        if row["task_run_id"] is None:
            row["task_run_id"] = f"t{i}"
    return frame(list(rows), TASK_COLUMNS)


def flow_run(
    run_id: str,
    state: str = "COMPLETED",
    *,
    flow: str = "etl",
    start: pd.Timestamp | None = None,
    minutes: float | None = 5.0,
    end: pd.Timestamp | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    start = T0 if start is None else start
    finished = state in FINISHED_STATES
    if end is None and finished and minutes is not None:
        end = start + pd.Timedelta(minutes=minutes)
    return {
        "flow_run_id": run_id,
        "flow_name": flow,
        "deployment_id": None,
        "state_type": state,
        "state_name": name or state.title(),
        "start_time": start,
        "end_time": end if finished else None,
        "duration_s": (end - start).total_seconds() if finished and end is not None else None,
        "tags": [],
    }


def flow_runs(*rows: dict[str, Any]) -> pd.DataFrame:
    return frame(list(rows), FLOW_COLUMNS)


def report(
    run_id: str,
    status: str = "completed",
    *,
    stopped_by: str | None = None,
    working: list[str] | None = None,
    degraded: list[str] | None = None,
    unavailable: list[str] | None = None,
    tolerated: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "flow_run_id": run_id,
        "overall_status": status,
        "health_score": 1.0,
        "stopped_by": stopped_by,
        "working": working or [],
        "degraded": degraded or [],
        "unavailable": unavailable or [],
        "tolerated": tolerated or [],
    }


def reports(*rows: dict[str, Any]) -> pd.DataFrame:
    return frame(list(rows), REPORT_COLUMNS)


def repeat(count: int, **kwargs: Any) -> list[dict[str, Any]]:
    return [task_run(**kwargs) for _ in range(count)]


# hypothesis: a random history of three steps over two weeks, every state and oddity included
run_rows = st.lists(
    st.fixed_dictionaries(
        {
            "task": st.sampled_from(["a", "b", "c"]),
            "state": st.sampled_from(STATES),
            "flow_run": st.sampled_from([f"f{i}" for i in range(6)]),
            "run_count": st.integers(0, 5),
            "hours": st.integers(0, 24 * 14),
            "duration": st.one_of(st.none(), st.floats(0, 1e4)),
            "skewed": st.booleans(),
        }
    ),
    max_size=40,
)


def random_runs(rows: list[dict[str, Any]]) -> pd.DataFrame:
    built = []
    for row in rows:
        start = at(row["hours"])
        end = start - pd.Timedelta(minutes=1) if row["skewed"] else None
        built.append(
            task_run(
                row["task"],
                row["state"],
                flow_run=row["flow_run"],
                run_count=row["run_count"],
                start=start,
                end=end,
                duration=row["duration"],
                error_type="E" if row["state"] == "FAILED" else None,
                message=f"boom {row['run_count']}" if row["state"] == "FAILED" else None,
            )
        )
    return task_runs(*built)


def in_progress_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        task_run(
            row["task"],
            state,
            flow_run=row["flow_run"],
            run_count=row["run_count"],
            start=at(row["hours"]),
        )
        for row, state in zip(rows, IN_PROGRESS * len(rows), strict=False)
    ]


# --- purity and the column contract -------------------------------------------------------


def test_the_analytics_modules_import_nothing_but_pandas_numpy_scipy() -> None:
    # the standard library, the numeric stack, and matplotlib for the optional HTML plots;
    # of the package only its pure modules (the workflow model judges runs with the
    # policy and health rules themselves); never Prefect, never the package's Prefect glue
    allowed = set(sys.stdlib_module_names) | {"numpy", "pandas", "scipy", "matplotlib"}
    pure = {"prefect_resilience.policy", "prefect_resilience.health", "prefect_resilience.errors"}
    for path in ANALYTICS.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                modules = set() if node.level else {str(node.module)}
            else:
                continue
            outside = {m for m in modules - pure if m.split(".")[0] not in allowed}
            assert not outside, f"{path.name} imports {outside}"


def test_the_analytics_package_runs_where_prefect_cannot_be_imported() -> None:
    """Loaded on its own with `prefect` blocked, it still computes."""
    printed = run_standalone(
        """
        import pandas as pd
        runs = pd.DataFrame({
            "task_name": ["a", "a"], "state_type": ["FAILED", "COMPLETED"], "run_count": [1, 2],
            "start_time": pd.to_datetime(["2024-01-01", "2024-01-02"], utc=True),
            "end_time": pd.to_datetime(["2024-01-01", "2024-01-02"], utc=True),
            "duration_s": [1.0, 2.0],
        })
        print(int(analytics.step_statistics(runs).loc["a", "runs"]))
        """
    )
    assert printed == "2"


def _without(data: pd.DataFrame, column: str) -> pd.DataFrame:
    return data.drop(columns=[column])


TASK_FUNCTIONS: list[tuple[Any, str]] = [
    (step_statistics, "duration_s"),
    (step_statistics, "run_count"),
    (retry_recovery, "run_count"),
    (failure_trend, "end_time"),
    (detect_degradation, "state_type"),
    (failure_patterns, "error_message"),
    (co_failures, "flow_run_id"),
    (time_concentration, "start_time"),
]


@pytest.mark.parametrize(("function", "column"), TASK_FUNCTIONS)
def test_a_missing_column_is_a_value_error_that_names_it(function: Any, column: str) -> None:
    data = task_runs(task_run())
    with pytest.raises(ValueError, match=f"missing the required column '{column}'"):
        function(_without(data, column))


def test_missing_columns_of_flow_runs_and_reports_are_named() -> None:
    runs = flow_runs(flow_run("r1"))
    with pytest.raises(ValueError, match="flow_runs is missing .*'state_name'"):
        continuity_metrics(_without(runs, "state_name"))
    with pytest.raises(ValueError, match="reports is missing .*'stopped_by'"):
        continuity_metrics(runs, _without(reports(report("r1")), "stopped_by"))
    with pytest.raises(ValueError, match="reports is missing .*'degraded'"):
        function_uptime(_without(reports(report("r1")), "degraded"))
    with pytest.raises(ValueError, match="'deployment_id'"):
        continuity_metrics(_without(runs, "deployment_id"), by="deployment_id")
    with pytest.raises(ValueError, match="'state_type', 'start_time'"):
        failure_trend(runs.drop(columns=["state_type", "start_time"]))


def test_empty_inputs_give_empty_results_or_nan_with_n_zero() -> None:
    none = task_runs()
    assert step_statistics(none).empty
    assert list(step_statistics(none).columns)[:3] == ["runs", "failures", "cancelled"]
    assert retry_recovery(none).empty
    assert failure_patterns(none).empty
    assert co_failures(none).empty
    trend = failure_trend(none)
    assert trend.periods.empty and trend.n_runs == 0 and math.isnan(trend.slope)
    verdict = detect_degradation(none).loc["all"]
    assert verdict["recent_runs"] == 0 and math.isnan(verdict["p_value"])
    assert not verdict["degraded"]
    assert detect_degradation(none, by="task_name").empty
    clock = time_concentration(none)
    assert clock.hour.runs == 0 and math.isnan(clock.hour.p_value)
    assert len(clock.hour.table) == 24 and clock.hour.table["failure_rate"].isna().all()
    everything = continuity_metrics(flow_runs(), reports(), by=None).loc["all"]
    assert everything["n_finished"] == 0 and math.isnan(everything["completion_rate"])
    assert everything["n_recoveries"] == 0 and math.isnan(everything["mttr_s"])
    assert continuity_metrics(flow_runs()).empty
    assert function_uptime(reports()).empty


def test_only_runs_in_progress_count_as_empty() -> None:
    waiting = task_runs(*[task_run("a", state) for state in IN_PROGRESS])
    assert step_statistics(waiting).empty
    assert retry_recovery(waiting).empty
    assert failure_trend(waiting).n_runs == 0
    assert detect_degradation(waiting).loc["all", "recent_runs"] == 0


# --- Wilson intervals ---------------------------------------------------------------------


def test_wilson_interval_matches_published_values() -> None:
    low, high = wilson_interval(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
    low, high = wilson_interval(0, 0)
    assert math.isnan(low) and math.isnan(high)


@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_interval_brackets_the_rate_and_agrees_with_scipy(kn: tuple[int, int]) -> None:
    k, n = kn
    low, high = wilson_interval(k, n)
    assert 0 <= low <= k / n <= high <= 1
    reference = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert low == pytest.approx(reference.low, abs=1e-9)
    assert high == pytest.approx(reference.high, abs=1e-9)


def test_wilson_interval_is_vectorised_and_rejects_a_bad_confidence() -> None:
    low, high = wilson_interval(np.array([0, 5]), np.array([0, 10]))
    assert np.isnan(low[0]) and round(float(high[1]), 4) == 0.7634
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, confidence=1.5)


# --- step statistics ----------------------------------------------------------------------


def test_step_statistics_counts_rates_durations_and_retry_waste() -> None:
    data = task_runs(
        task_run("load", "COMPLETED", run_count=1, duration=10.0),
        task_run("load", "COMPLETED", run_count=3, duration=30.0),  # 2 of 3 attempts failed
        task_run("load", "FAILED", run_count=2, duration=40.0),  # all of it wasted
        task_run("load", "CRASHED", run_count=1, duration=20.0),
        task_run("load", "CANCELLED", run_count=2, duration=8.0),  # 1 failed attempt of 2
        task_run("load", "RUNNING", run_count=4),  # in progress: ignored
        task_run("send", "COMPLETED", run_count=1, duration=1.0),
    )
    result = step_statistics(data)
    assert list(result.index) == ["load", "send"]
    load = result.loc["load"]
    assert (load["runs"], load["failures"], load["cancelled"]) == (5, 2, 1)
    assert load["failure_rate"] == pytest.approx(2 / 5)
    low, high = wilson_interval(2, 5)
    assert (load["failure_rate_low"], load["failure_rate_high"]) == pytest.approx((low, high))
    assert load["attempts_mean"] == pytest.approx((1 + 3 + 2 + 1 + 2) / 5)
    durations = [10.0, 30.0, 40.0, 20.0, 8.0]
    assert load["duration_n"] == 5
    assert load["p50_s"] == pytest.approx(np.median(durations))
    assert load["p95_s"] == pytest.approx(np.quantile(durations, 0.95))
    assert load["wasted_retry_s"] == pytest.approx(30.0 * 2 / 3 + 40.0 + 20.0 + 8.0 / 2)
    assert (load["retried_runs"], load["recovered_by_retry"]) == (3, 1)
    send = result.loc["send"]
    assert (send["runs"], send["failures"], send["wasted_retry_s"]) == (1, 0, 0.0)
    assert send["failure_rate_low"] == 0.0


def test_clock_skew_makes_a_duration_unknown_not_negative_or_huge() -> None:
    data = task_runs(
        task_run("load", "COMPLETED", duration=10.0),
        task_run("load", "COMPLETED", duration=12.0),
        # end before start: the 9999 s it claims is not trusted
        task_run("load", "FAILED", start=at(5), end=at(4), duration=9999.0),
        task_run("load", "COMPLETED", duration=-3.0),  # negative: unknown too
    )
    load = step_statistics(data).loc["load"]
    assert load["runs"] == 4 and load["failures"] == 1  # the run still happened and failed
    assert load["duration_n"] == 2
    assert load["p95_s"] <= 12.0
    assert load["wasted_retry_s"] == 0.0


def test_a_step_with_only_unknown_durations_has_nan_quantiles() -> None:
    result = step_statistics(task_runs(task_run("x", "FAILED", duration=None)))
    assert result.loc["x", "duration_n"] == 0
    assert math.isnan(result.loc["x", "p50_s"]) and math.isnan(result.loc["x", "p95_s"])


def test_state_types_are_read_case_insensitively_and_enum_values_are_read() -> None:
    class Kind:
        value = "FAILED"

    data = task_runs(task_run("a", "COMPLETED"), task_run("a", "COMPLETED"))
    data["state_type"] = ["completed", Kind()]
    result = step_statistics(data).loc["a"]
    assert (result["runs"], result["failures"]) == (2, 1)


@FAST
@given(run_rows)
def test_runs_in_progress_never_change_step_statistics(rows: list[dict[str, Any]]) -> None:
    finished = [row for row in rows if row["state"] in FINISHED_STATES]
    base = random_runs(finished)
    noisy = pd.concat([base, task_runs(*in_progress_rows(rows))], ignore_index=True)
    pd.testing.assert_frame_equal(step_statistics(noisy), step_statistics(base))
    pd.testing.assert_frame_equal(retry_recovery(noisy), retry_recovery(base))


@FAST
@given(run_rows)
def test_step_statistics_invariants(rows: list[dict[str, Any]]) -> None:
    data = random_runs(rows)
    result = step_statistics(data)
    finished = sum(row["state"] in FINISHED_STATES for row in rows)
    assert result["runs"].sum() == finished
    assert (result["failures"] + result["cancelled"] <= result["runs"]).all()
    assert (result["recovered_by_retry"] <= result["retried_runs"]).all()
    assert (result["failure_rate_low"] <= result["failure_rate"]).all()
    assert (result["failure_rate"] <= result["failure_rate_high"]).all()
    assert (result["wasted_retry_s"] >= 0).all()
    known = result[result["duration_n"] > 0]
    assert (known["p50_s"] <= known["p95_s"] + 1e-9).all()
    assert (known["p50_s"] >= 0).all()


# --- retry recovery -----------------------------------------------------------------------


def test_retry_recovery_by_attempt() -> None:
    data = task_runs(
        *repeat(2, task="api", state="COMPLETED", run_count=1),
        task_run("api", "COMPLETED", run_count=2),  # failed 1, succeeded at 2
        task_run("api", "FAILED", run_count=3),  # failed 1, 2, 3
        task_run("api", "CANCELLED", run_count=2),  # failed 1; attempt 2 has no outcome
        task_run("api", "RUNNING", run_count=3),  # in progress: ignored
        task_run("api", "PENDING", run_count=0),
    )
    result = retry_recovery(data).loc["api"]
    assert list(result.index) == [1, 2, 3]
    assert list(result["reached"]) == [5, 2, 1]
    assert list(result["succeeded"]) == [2, 1, 0]
    assert list(result["success_rate"]) == pytest.approx([2 / 5, 1 / 2, 0.0])
    low, high = wilson_interval(1, 2)
    assert (result.loc[2, "success_rate_low"], result.loc[2, "success_rate_high"]) == (
        pytest.approx(low),
        pytest.approx(high),
    )


def test_retry_recovery_keeps_an_attempt_nobody_finished_as_nan() -> None:
    data = task_runs(task_run("x", "CANCELLED", run_count=2))
    result = retry_recovery(data).loc["x"]
    assert list(result["reached"]) == [1, 0]
    assert math.isnan(result.loc[2, "success_rate"])


def _recovery_by_brute_force(data: pd.DataFrame) -> dict[tuple[str, int], tuple[int, int]]:
    """Each attempt of each run, one by one."""
    counts: dict[tuple[str, int], list[int]] = {}
    for row in data.itertuples():
        if row.state_type not in FINISHED_STATES or row.run_count < 1:
            continue
        for k in range(1, row.run_count + 1):
            cell = counts.setdefault((row.task_name, k), [0, 0])
            if k < row.run_count or row.state_type in ("FAILED", "CRASHED"):
                cell[0] += 1
            elif row.state_type == "COMPLETED":
                cell[0] += 1
                cell[1] += 1
    return {key: (reached, won) for key, (reached, won) in counts.items()}


@FAST
@given(run_rows)
def test_retry_recovery_agrees_with_counting_each_attempt(rows: list[dict[str, Any]]) -> None:
    data = random_runs(rows)
    result = retry_recovery(data)
    expected = _recovery_by_brute_force(data)
    got = {
        key: (int(row.reached), int(row.succeeded))
        for key, row in zip(result.index, result.itertuples(), strict=True)
        if row.reached or row.succeeded
    }
    assert got == {key: value for key, value in expected.items() if value != (0, 0)}
    for _, attempts in result.groupby(level="task_name"):
        assert attempts["reached"].is_monotonic_decreasing


# --- trends -------------------------------------------------------------------------------


def _day(day: int, runs: int, failures: int, task: str = "load") -> list[dict[str, Any]]:
    """`runs` runs on day `day` (at noon), the first `failures` of them failed."""
    return [
        task_run(task, "FAILED" if i < failures else "COMPLETED", start=at(24 * day + 12))
        for i in range(runs)
    ]


def test_failure_trend_rates_per_period_with_gaps_as_gaps() -> None:
    data = task_runs(*_day(0, 4, 2), *_day(2, 2, 1), task_run("load", "RUNNING", start=at(30)))
    trend = failure_trend(data, freq="1D", window=2)
    periods = trend.periods
    assert len(periods) == 3 and str(periods.index.tz) == "UTC"
    assert list(periods["runs"]) == [4, 0, 2]
    assert list(periods["failures"]) == [2, 0, 1]
    assert periods["failure_rate"].iloc[0] == 0.5
    assert math.isnan(periods["failure_rate"].iloc[1])  # a gap, not 0 % failures
    assert math.isnan(periods["failure_rate_low"].iloc[1])
    # pooled rolling rate: the gap adds no runs instead of a zero rate
    assert list(periods["rolling_runs"]) == [4, 4, 2]
    assert list(periods["rolling_failure_rate"]) == [0.5, 0.5, 0.5]
    assert trend.n_periods == 2 and trend.n_runs == 6
    assert trend.slope == pytest.approx(0.0)
    assert math.isnan(trend.slope_low)  # two points: a slope, no interval


def test_a_gap_keeps_its_place_in_time_for_the_slope() -> None:
    data = task_runs(*_day(0, 10, 1), *_day(2, 10, 3))
    trend = failure_trend(data)
    assert trend.slope == pytest.approx(0.1)  # +0.2 over two days, the empty one included


def test_unweighted_trend_is_ordinary_least_squares() -> None:
    counts = [(10, 1), (20, 3), (5, 2), (0, 0), (8, 4), (10, 6)]
    data = task_runs(*[row for day, (n, k) in enumerate(counts) for row in _day(day, n, k)])
    trend = failure_trend(data, weighted=False)
    x = np.array([0, 1, 2, 4, 5], dtype=float)
    y = np.array([0.1, 0.15, 0.4, 0.5, 0.6])
    fit = stats.linregress(x, y)
    assert trend.slope == pytest.approx(fit.slope)
    assert trend.slope_p_value == pytest.approx(fit.pvalue)
    t = stats.t.ppf(0.975, len(x) - 2)
    assert trend.slope_low == pytest.approx(fit.slope - t * fit.stderr)
    assert trend.slope_high == pytest.approx(fit.slope + t * fit.stderr)
    assert trend.n_periods == 5 and not trend.weighted


def test_weighted_trend_is_weighted_least_squares() -> None:
    counts = [(10, 1), (40, 6), (5, 2), (0, 0), (8, 4), (30, 18)]
    data = task_runs(*[row for day, (n, k) in enumerate(counts) for row in _day(day, n, k)])
    trend = failure_trend(data, weighted=True)
    x = np.array([0, 1, 2, 4, 5], dtype=float)
    w = np.array([10, 40, 5, 8, 30], dtype=float)
    y = np.array([1, 6, 2, 4, 18]) / w
    design = np.column_stack([np.ones_like(x), x])
    xtwx = design.T @ (w[:, None] * design)
    beta = np.linalg.solve(xtwx, design.T @ (w * y))
    residuals = y - design @ beta
    sigma2 = np.sum(w * residuals**2) / (len(x) - 2)
    se = math.sqrt(sigma2 * np.linalg.inv(xtwx)[1, 1])
    assert trend.slope == pytest.approx(beta[1])
    t = stats.t.ppf(0.975, len(x) - 2)
    assert trend.slope_high - trend.slope == pytest.approx(t * se)
    assert trend.slope_p_value == pytest.approx(2 * stats.t.sf(abs(beta[1] / se), len(x) - 2))


def test_a_rising_failure_rate_has_a_positive_interval_and_a_flat_one_none() -> None:
    rising = task_runs(*[row for day in range(10) for row in _day(day, 20, 2 * day)])
    trend = failure_trend(rising)
    assert trend.slope == pytest.approx(0.1) and trend.slope_low > 0
    flat = task_runs(*[row for day in range(10) for row in _day(day, 20, 4)])
    trend = failure_trend(flat)
    assert trend.slope == pytest.approx(0.0)
    assert math.isnan(trend.slope_p_value)  # every period the same: nothing to test


def test_failure_trend_rejects_an_empty_window() -> None:
    with pytest.raises(ValueError, match="window"):
        failure_trend(task_runs(task_run()), window=0)


def test_failure_trend_works_on_flow_runs() -> None:
    data = flow_runs(
        flow_run("r1", "COMPLETED", start=at(1)),
        flow_run("r2", "FAILED", start=at(2)),
        flow_run("r3", "COMPLETED", start=at(26), name="PartialSuccess"),
        flow_run("r4", "RUNNING", start=at(27)),
    )
    periods = failure_trend(data).periods
    assert list(periods["runs"]) == [2, 1] and list(periods["failures"]) == [1, 0]


# --- degradation --------------------------------------------------------------------------


def _window(hours: Iterable[float], failed_every: int, task: str = "load") -> list[dict]:
    """One run per hour given; every `failed_every`-th one failed (0: none)."""
    return [
        task_run(
            task,
            "FAILED" if failed_every and i % failed_every == 0 else "COMPLETED",
            start=at(h),
        )
        for i, h in enumerate(hours)
    ]


def test_a_rise_in_failures_is_detected_as_degradation() -> None:
    baseline = _window(np.arange(0, 200), 50)  # 4 of 200 = 2 %
    recent = _window(200 + np.arange(0, 100) * 0.5, 5)  # 20 of 100 = 20 %
    result = detect_degradation(task_runs(*baseline, *recent), recent="50h", baseline="200h")
    row = result.loc["all"]
    assert (row["recent_runs"], row["recent_failures"]) == (100, 20)
    assert (row["baseline_runs"], row["baseline_failures"]) == (200, 4)
    assert (row["recent_rate"], row["baseline_rate"]) == (0.2, 0.02)
    assert row["degraded"] and row["p_value"] < 1e-5
    expected = stats.fisher_exact([[20, 80], [4, 196]], alternative="greater").pvalue
    assert row["p_value"] == pytest.approx(expected)


def test_a_high_but_steady_failure_rate_is_not_degradation() -> None:
    baseline = _window(np.arange(0, 200), 2)  # half of them fail, as always
    recent = _window(200 + np.arange(0, 100) * 0.5, 2)
    row = detect_degradation(task_runs(*baseline, *recent), recent="50h", baseline="200h")
    assert row.loc["all", "recent_rate"] == 0.5 and row.loc["all", "baseline_rate"] == 0.5
    assert not row.loc["all", "degraded"] and row.loc["all", "p_value"] > 0.3


def test_an_improvement_is_not_degradation_and_the_z_test_agrees() -> None:
    baseline = _window(np.arange(0, 100), 4)
    recent = _window(100 + np.arange(0, 50), 0)
    data = task_runs(*baseline, *recent)
    for test in ("fisher", "z"):
        row = detect_degradation(data, recent="50h", baseline="100h", test=test).loc["all"]
        assert not row["degraded"] and row["p_value"] > 0.5


def test_the_z_test_is_the_pooled_two_proportion_test() -> None:
    baseline = _window(np.arange(0, 100), 10)  # 10 of 100
    recent = _window(100 + np.arange(0, 50), 5)  # 10 of 50
    row = detect_degradation(
        task_runs(*baseline, *recent), recent="50h", baseline="100h", test="z"
    ).loc["all"]
    pooled = 20 / 150
    z = (10 / 50 - 10 / 100) / math.sqrt(pooled * (1 - pooled) * (1 / 50 + 1 / 100))
    assert row["p_value"] == pytest.approx(stats.norm.sf(z))
    assert row["degraded"] == (stats.norm.sf(z) < 0.05)


def test_degradation_windows_are_half_open_and_now_can_be_given() -> None:
    data = task_runs(
        task_run("a", "FAILED", start=at(10)),  # exactly at recent start: baseline
        task_run("a", "COMPLETED", start=at(5)),
        task_run("a", "FAILED", start=at(12)),
        task_run("a", "COMPLETED", start=at(100)),  # after `now`: in neither window
        task_run("a", "RUNNING", start=at(11)),  # in progress: in neither
    )
    row = detect_degradation(data, recent="2h", baseline="8h", now=at(12)).loc["all"]
    assert (row["recent_runs"], row["recent_failures"]) == (1, 1)
    assert (row["baseline_runs"], row["baseline_failures"]) == (2, 1)
    assert row["recent_start"] == at(10) and row["baseline_start"] == at(2)
    assert row["end"] == at(12)
    naive = detect_degradation(data, recent="2h", baseline="8h", now="2024-03-04 12:00")
    pd.testing.assert_frame_equal(naive, detect_degradation(data, "2h", "8h", now=at(12)))


def test_an_empty_window_gives_no_verdict() -> None:
    data = task_runs(*_window(np.arange(0, 10), 2))
    row = detect_degradation(data, recent="1h", baseline="1h", now=at(500)).loc["all"]
    assert row["recent_runs"] == 0 and math.isnan(row["recent_rate"])
    assert math.isnan(row["p_value"]) and not row["degraded"]


def test_degradation_by_step_flags_only_the_step_that_got_worse() -> None:
    data = task_runs(
        *_window(np.arange(0, 200), 50, task="api"),
        *_window(200 + np.arange(0, 100) * 0.5, 4, task="api"),
        *_window(np.arange(0, 200), 10, task="db"),
        *_window(200 + np.arange(0, 100) * 0.5, 10, task="db"),
    )
    result = detect_degradation(data, recent="50h", baseline="200h", by="task_name")
    assert result.index.name == "task_name"
    assert result["degraded"].to_dict() == {"api": True, "db": False}


def test_degradation_rejects_bad_parameters() -> None:
    data = task_runs(task_run())
    with pytest.raises(ValueError, match="positive"):
        detect_degradation(data, recent="0h")
    with pytest.raises(ValueError, match="alpha"):
        detect_degradation(data, alpha=0)
    with pytest.raises(ValueError, match="test"):
        detect_degradation(data, test="t")  # type: ignore[arg-type]


# --- failure patterns ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "template"),
    [
        ("Timeout after 30s", "Timeout after <num>s"),
        ("retry 3 of 5 failed: 12.5% lost", "retry <num> of <num> failed: <num>% lost"),
        (
            "run 3fa85f64-5717-4562-b3fc-2c963f66afa6 not found",
            "run <uuid> not found",
        ),
        ("GET https://api.example.com/v1/items?id=7 -> 503", "GET <url> -> <num>"),
        ("cannot open /var/data/2024/input.csv", "cannot open <path>"),
        ("cannot open C:\\data\\in.csv", "cannot open <path>"),
        ("KeyError: 'customer_42'", "KeyError: <str>"),
        ('column "amount" missing', "column <str> missing"),
        ("can't connect: I/O error", "can't connect: I/O error"),
        ("object at 0x7f3a2b10 freed", "object at <hex> freed"),
        ("commit 9f86d081884c7d65 rejected", "commit <hex> rejected"),
        ("s3 bucket down, ipv4 only", "s3 bucket down, ipv4 only"),
        ("at 2024-03-04T02:00:13.5Z   lost\n  connection", "at <time> lost connection"),
        ("connect to 10.0.0.12:5432 refused", "connect to <num> refused"),
        (None, ""),
    ],
)
def test_message_template_replaces_what_varies(message: str | None, template: str) -> None:
    assert message_template(message) == template


@given(st.text(max_size=80))
def test_a_template_is_its_own_template(message: str) -> None:
    template = message_template(message)
    assert message_template(template) == template


@given(st.integers(0, 10**12), st.integers(0, 10**12), st.uuids(), st.uuids())
def test_messages_that_differ_in_numbers_and_ids_share_a_template(
    first: int, second: int, one: Any, other: Any
) -> None:
    assert message_template(f"job {one} failed after {first} rows") == message_template(
        f"job {other} failed after {second} rows"
    )


def test_failure_patterns_group_repeats_of_one_error() -> None:
    data = task_runs(
        task_run(
            "fetch",
            "FAILED",
            flow_run="f1",
            start=at(1),
            error_type="TimeoutError",
            message="timed out after 30s to 10.0.0.1",
        ),
        task_run(
            "fetch",
            "FAILED",
            flow_run="f2",
            start=at(5),
            error_type="TimeoutError",
            message="timed out after 45s to 10.0.0.2",
        ),
        task_run(
            "fetch",
            "CRASHED",
            flow_run="f2",
            start=at(3),
            error_type="TimeoutError",
            message="timed out after 31s to 10.0.0.9",
        ),
        task_run("fetch", "FAILED", start=at(2), error_type="HTTPError", message="HTTP 503"),
        task_run("fetch", "COMPLETED", start=at(9), message="timed out after 1s to 10.0.0.1"),
        task_run("fetch", "CANCELLED", start=at(9), error_type="CancelledError", message="x"),
        task_run("store", "FAILED", start=at(4), error_type=None, message=None),
    )
    result = failure_patterns(data)
    top = result.iloc[0]
    assert (top["task_name"], top["error_type"]) == ("fetch", "TimeoutError")
    assert top["template"] == "timed out after <num>s to <num>"
    assert (top["failures"], top["task_failures"], top["flow_runs"]) == (3, 4, 2)
    assert top["share"] == pytest.approx(3 / 4)
    assert (top["first_seen"], top["last_seen"]) == (at(1), at(5))
    assert top["example"] == "timed out after 45s to 10.0.0.2"  # the latest
    assert len(result) == 3
    unknown = result[result["task_name"] == "store"].iloc[0]
    assert pd.isna(unknown["error_type"]) and unknown["template"] == ""
    assert unknown["failures"] == 1 and unknown["share"] == 1.0


# --- co-failures --------------------------------------------------------------------------


def _flow(run: str, failing: Iterable[str], steps: Iterable[str] = ("a", "b", "c")) -> list:
    failing = set(failing)
    return [
        task_run(step, "FAILED" if step in failing else "COMPLETED", flow_run=run) for step in steps
    ]


def test_steps_that_fail_together_are_found_with_lift_and_exact_p_value() -> None:
    rows = []
    for i in range(4):  # a and b fail together, never alone
        rows += _flow(f"ab{i}", {"a", "b"})
    for i in range(2):
        rows += _flow(f"c{i}", {"c"})
    for i in range(4):
        rows += _flow(f"ok{i}", set())
    result = co_failures(task_runs(*rows))
    assert list(zip(result["step_a"], result["step_b"], strict=True)) == [("a", "b")]
    pair = result.iloc[0]
    assert (pair["flow_runs"], pair["together"], pair["a_only"], pair["b_only"]) == (10, 4, 0, 0)
    assert pair["neither"] == 6
    assert pair["lift"] == pytest.approx(4 * 10 / (4 * 4))
    expected = stats.fisher_exact([[4, 0], [0, 6]], alternative="greater").pvalue
    assert pair["p_value"] == pytest.approx(expected)
    assert pd.isna(pair["direct_dependency"]) is False and not pair["direct_dependency"]


def test_co_failures_judge_a_pair_only_where_both_ran_and_count_mapped_runs_once() -> None:
    rows = []
    for i in range(3):
        rows += _flow(f"x{i}", {"a", "b"}, steps=("a", "b"))
        rows.append(task_run("a", "FAILED", flow_run=f"x{i}"))  # a mapped: twice in a run
    rows += _flow("y0", set(), steps=("a", "b"))
    rows += _flow("z0", {"a"}, steps=("a",))  # b did not run there: not in the pair's n
    rows += [task_run("b", "RUNNING", flow_run="z0")]
    pair = co_failures(task_runs(*rows)).iloc[0]
    assert (pair["flow_runs"], pair["together"], pair["a_only"], pair["neither"]) == (4, 3, 0, 1)


def test_independent_failures_are_not_reported_as_co_failures() -> None:
    rows = []
    for i, failing in enumerate([{"a"}, {"b"}, {"a", "b"}, set()]):  # lift exactly 1
        rows += _flow(f"r{i}", failing, steps=("a", "b"))
    assert co_failures(task_runs(*rows)).empty


def test_co_failures_mark_a_direct_dependency_from_upstream() -> None:
    rows = []
    for i in range(3):
        rows.append(task_run("a", "FAILED", flow_run=f"r{i}", task_run_id=f"a{i}"))
        rows.append(task_run("b", "FAILED", flow_run=f"r{i}", upstream=[f"a{i}"]))
        rows.append(task_run("c", "FAILED", flow_run=f"r{i}"))
    rows += _flow("ok", set())
    result = co_failures(task_runs(*rows)).set_index(["step_a", "step_b"])
    assert bool(result.loc[("a", "b"), "direct_dependency"])
    assert not result.loc[("a", "c"), "direct_dependency"]
    without = co_failures(task_runs(*rows).drop(columns=["upstream"]))
    assert without["direct_dependency"].isna().all()


# --- time concentration -------------------------------------------------------------------


def test_failures_at_two_in_the_morning_are_a_measured_concentration() -> None:
    rows = []
    for day in range(7):
        for hour in range(24):
            failed = hour == 2 and day < 5
            rows.append(
                task_run("nightly", "FAILED" if failed else "COMPLETED", start=at(24 * day + hour))
            )
    result = time_concentration(task_runs(*rows))
    hour = result.hour
    assert (hour.runs, hour.failures) == (168, 5)
    assert hour.p_value < 1e-10 and hour.dof == 23
    assert hour.table.loc[2, "failures"] == 5
    assert hour.table.loc[2, "ratio"] == pytest.approx(5 / (5 * 7 / 168))
    assert hour.min_expected < 5  # and says the p-value is only a rough guide
    weekday = result.weekday
    assert list(weekday.table.index) == [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ]
    assert list(weekday.table["failures"]) == [1, 1, 1, 1, 1, 0, 0]


def test_failures_that_follow_the_runs_are_not_a_concentration() -> None:
    rows = []
    for hour in range(24):
        runs = 100 if hour == 2 else 10  # most runs are at 02:00, so are most failures
        rows += [
            task_run("x", "FAILED" if i < runs // 10 else "COMPLETED", start=at(hour))
            for i in range(runs)
        ]
    hour = time_concentration(task_runs(*rows)).hour
    assert hour.table.loc[2, "failures"] == 10
    assert hour.chi2 == pytest.approx(0.0) and hour.p_value == pytest.approx(1.0)
    assert hour.table["ratio"].to_numpy() == pytest.approx(np.ones(24))


def test_time_concentration_reads_the_clock_of_the_given_zone() -> None:
    data = task_runs(task_run("x", "FAILED", start=at(1)), task_run("x", "COMPLETED", start=at(5)))
    paris = time_concentration(data, tz="Europe/Paris").hour.table  # UTC+1 in March
    assert paris.loc[2, "failures"] == 1 and paris.loc[6, "runs"] == 1


def test_no_failures_means_nothing_to_test_and_runs_in_progress_are_not_runs() -> None:
    data = task_runs(
        *[task_run("x", start=at(h)) for h in range(30)],
        *[task_run("x", "RUNNING", start=at(2)) for _ in range(50)],
    )
    hour = time_concentration(data).hour
    assert hour.failures == 0 and math.isnan(hour.p_value) and hour.runs == 30


# --- continuity ---------------------------------------------------------------------------


def test_continuity_rates_count_finished_runs_only() -> None:
    data = flow_runs(
        flow_run("r1", "COMPLETED", start=at(0)),
        flow_run("r2", "COMPLETED", start=at(1), name="PartialSuccess"),
        flow_run("r3", "FAILED", start=at(2)),
        flow_run("r4", "CRASHED", start=at(3)),
        flow_run("r5", "CANCELLED", start=at(4)),
        flow_run("r6", "RUNNING", start=at(5)),
        flow_run("r7", "SCHEDULED", start=None),
    )
    row = continuity_metrics(data).loc["etl"]
    assert row["n_finished"] == 5
    assert row["completion_rate"] == pytest.approx(2 / 5)  # PartialSuccess is completed
    assert row["partial_success_rate"] == pytest.approx(1 / 5)
    assert row["termination_rate"] == pytest.approx(1 / 5)  # no reports: FAILED runs
    assert row["n_reported"] == 0 and math.isnan(row["critical_failure_rate"])


def test_reports_decide_termination_and_critical_failures_where_they_exist() -> None:
    data = flow_runs(
        flow_run("r1", "FAILED", start=at(0)),
        flow_run("r2", "FAILED", start=at(1)),
        flow_run("r3", "FAILED", start=at(2)),
        flow_run("r4", "COMPLETED", start=at(3)),
        flow_run("r5", "FAILED", start=at(4)),  # no report: FAILED counts as terminated
    )
    given = reports(
        report("r1", "terminated", stopped_by="critical_step_ratio"),
        report("r2", "terminated", stopped_by="fail_fast"),  # not a critical rule
        report("r3", "failed"),  # the flow raised: failed, not terminated
        report("r4", "completed"),
        report("r9", "terminated", stopped_by="termination_threshold"),  # no such run
    )
    row = continuity_metrics(data, given).loc["etl"]
    assert row["n_finished"] == 5
    assert row["termination_rate"] == pytest.approx(3 / 5)  # r1, r2 (reports), r5 (state)
    assert row["n_reported"] == 4
    assert row["critical_failure_rate"] == pytest.approx(1 / 4)
    strict = continuity_metrics(data, given, critical_rules={"critical_step_ratio", "fail_fast"})
    assert strict.loc["etl", "critical_failure_rate"] == pytest.approx(2 / 4)


def test_an_empty_reports_frame_is_the_same_as_none_and_duplicates_count_once() -> None:
    data = flow_runs(flow_run("r1", "FAILED"), flow_run("r2", "COMPLETED", start=at(1)))
    pd.testing.assert_frame_equal(
        continuity_metrics(data, reports()), continuity_metrics(data, None)
    )
    twice = reports(report("r1", "failed"), report("r1", "terminated", stopped_by="fail_fast"))
    row = continuity_metrics(data, twice).loc["etl"]
    assert row["n_reported"] == 1 and row["termination_rate"] == 0.5


def test_reports_are_matched_to_runs_whatever_the_id_type() -> None:
    run_id = uuid.UUID("3fa85f64-5717-4562-b3fc-2c963f66afa6")
    data = flow_runs(flow_run(str(run_id), "FAILED"))
    given = reports(report("x", "terminated", stopped_by="termination_threshold"))
    given["flow_run_id"] = [run_id]
    row = continuity_metrics(data, given).loc["etl"]
    assert row["n_reported"] == 1 and row["critical_failure_rate"] == 1.0


def test_mean_time_to_recovery_runs_from_first_failure_to_next_completion() -> None:
    data = flow_runs(
        flow_run("a1", "COMPLETED", flow="A", start=at(0)),
        flow_run("a2", "FAILED", flow="A", start=at(1)),  # incident starts at its end, 1:05
        flow_run("a3", "RUNNING", flow="A", start=at(1.5)),  # in progress: ignored
        flow_run("a4", "CRASHED", flow="A", start=at(2)),  # same incident
        flow_run("b1", "COMPLETED", flow="B", start=at(2.5)),  # another flow: not A's recovery
        flow_run("a5", "COMPLETED", flow="A", start=at(3)),  # recovered at 3:05: 2 h
        flow_run("a6", "CANCELLED", flow="A", start=at(4)),  # a second incident, 4:05
        flow_run("a7", "COMPLETED", flow="A", start=at(4.5), name="PartialSuccess"),  # 4:35
        flow_run("a8", "FAILED", flow="A", start=at(6)),  # still open
        flow_run("b2", "FAILED", flow="B", start=at(7)),
        flow_run("b3", "COMPLETED", flow="B", start=at(7.25)),  # B recovered after 15 min
    )
    result = continuity_metrics(data)
    a, b = result.loc["A"], result.loc["B"]
    assert a["n_recoveries"] == 2
    assert a["mttr_s"] == pytest.approx((2 * 3600 + 30 * 60) / 2)
    assert a["open_incidents"] == 1
    assert (b["n_recoveries"], b["mttr_s"], b["open_incidents"]) == (1, 15 * 60, 0)
    overall = continuity_metrics(data, by=None).loc["all"]
    assert overall["n_recoveries"] == 3 and overall["open_incidents"] == 1
    assert overall["mttr_s"] == pytest.approx((7200 + 1800 + 900) / 3)
    assert overall["n_finished"] == 10


def test_no_recovery_observed_is_nan_not_zero() -> None:
    data = flow_runs(
        flow_run("r1", "COMPLETED", start=at(0)),
        flow_run("r2", "FAILED", start=at(1)),
        flow_run("r3", "FAILED", start=at(2)),
    )
    row = continuity_metrics(data).loc["etl"]
    assert row["n_recoveries"] == 0 and math.isnan(row["mttr_s"]) and row["open_incidents"] == 1


def test_a_recovery_with_a_skewed_clock_is_unknown_not_negative() -> None:
    data = flow_runs(
        flow_run("r1", "FAILED", start=at(1), end=at(5)),
        flow_run("r2", "COMPLETED", start=at(2), end=at(1.5)),  # its end is before r1's
        flow_run("r3", "FAILED", start=at(3), minutes=10),
        flow_run("r4", "COMPLETED", start=at(4), minutes=10),
    )
    row = continuity_metrics(data).loc["etl"]
    assert row["n_recoveries"] == 1 and row["mttr_s"] == pytest.approx(3600.0)


def test_continuity_by_another_column() -> None:
    data = flow_runs(flow_run("r1", "FAILED"), flow_run("r2", "COMPLETED", start=at(1)))
    data["deployment_id"] = ["d1", "d2"]
    result = continuity_metrics(data, by="deployment_id")
    assert result.index.name == "deployment_id"
    assert result["completion_rate"].to_dict() == {"d1": 0.0, "d2": 1.0}


@FAST
@given(
    st.lists(
        st.tuples(st.sampled_from(STATES), st.sampled_from(["A", "B"]), st.integers(0, 500)),
        max_size=30,
    )
)
def test_continuity_rates_are_proportions_of_their_n(rows: list[tuple[str, str, int]]) -> None:
    data = flow_runs(
        *[
            flow_run(f"r{i}", state, flow=flow, start=at(hour))
            for i, (state, flow, hour) in enumerate(rows)
        ]
    )
    result = continuity_metrics(data)
    for flow, row in result.iterrows():
        finished = [r for r in rows if r[1] == flow and r[0] in FINISHED_STATES]
        assert row["n_finished"] == len(finished)
        for column in ("completion_rate", "partial_success_rate", "termination_rate"):
            assert 0 <= row[column] <= 1
        assert row["partial_success_rate"] <= row["completion_rate"]
        assert row["open_incidents"] in (0, 1)
        if row["n_recoveries"]:
            assert row["mttr_s"] >= 0
        else:
            assert math.isnan(row["mttr_s"])


# --- function uptime ----------------------------------------------------------------------


def test_function_uptime_gives_strict_and_delivered_shares_with_their_n() -> None:
    given = reports(
        report("r1", working=["extract", "load"], degraded=["enrich"]),
        report("r2", working=["extract", "enrich"], unavailable=["load"]),
        report("r3", working=["extract"], tolerated=["notify"], degraded=["enrich"]),
        report("r4", "terminated", unavailable=["extract"]),  # the rest never ran
    )
    result = function_uptime(given)
    assert list(result.index) == ["enrich", "extract", "load", "notify"]
    enrich = result.loc["enrich"]
    assert (enrich["n_reports"], enrich["working"], enrich["degraded"]) == (3, 1, 2)
    assert enrich["working_share"] == pytest.approx(1 / 3)
    assert enrich["working_or_degraded_share"] == 1.0
    extract = result.loc["extract"]
    assert extract["n_reports"] == 4 and extract["working_share"] == 0.75
    notify = result.loc["notify"]
    assert (notify["tolerated"], notify["working_or_degraded_share"]) == (1, 0.0)


def test_function_uptime_takes_the_worst_state_and_reads_missing_lists_as_empty() -> None:
    given = reports(report("r1", working=["x"], unavailable=["x"]), report("r2", working=["x"]))
    given.at[1, "degraded"] = None
    given.at[1, "tolerated"] = float("nan")
    x = function_uptime(given).loc["x"]
    assert (x["n_reports"], x["working"], x["unavailable"]) == (2, 1, 1)
