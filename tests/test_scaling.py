"""Predictive scaling on hand-built run history: no server, no Prefect run.

Series and runs are built so that the expected counts, forecasts, peaks and
limits can be worked out by hand (each test says how).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from prefect_resilience.analytics.scaling import (
    backtest_forecast,
    demand_series,
    forecast_series,
    in_flight,
    peak_limit,
    recommend_scaling,
    season_lengths,
    task_runner_width,
)
from tests.standalone import run_standalone

T0 = pd.Timestamp("2024-03-04 00:00", tz="UTC")  # a Monday
DAY = np.array([2, 1, 1, 0, 1, 2, 4, 8, 12, 15, 16, 15, 14, 15, 16, 15, 12, 9, 7, 5, 4, 3, 3, 2],
               dtype=float)  # fmt: skip


def at(minutes: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(minutes=minutes)


def hourly(values: np.ndarray, name: str = "flow_runs") -> pd.Series:
    index = pd.date_range(T0, periods=len(values), freq="1h", name="period")
    return pd.Series(np.asarray(values, dtype=float), index=index, name=name)


def flows(spans: list[tuple[float, float | None]], state: str = "COMPLETED") -> pd.DataFrame:
    """Flow runs from (start minute, end minute or None while in progress)."""
    starts = [at(s) for s, _ in spans]
    ends = [at(e) if e is not None else pd.NaT for _, e in spans]
    return pd.DataFrame(
        {
            "flow_run_id": [f"f{i}" for i in range(len(spans))],
            "flow_name": "etl",
            "state_type": [state if e is not None else "RUNNING" for _, e in spans],
            "start_time": pd.to_datetime(starts, utc=True),
            "end_time": pd.to_datetime(ends, utc=True),
            "duration_s": [(e - s) * 60 if e is not None else np.nan for s, e in spans],
        }
    )


def tasks(rows: list[tuple[str, str, float, float | None]]) -> pd.DataFrame:
    """Task runs from (flow name, flow run id, start minute, end minute or None)."""
    return pd.DataFrame(
        {
            "flow_name": [r[0] for r in rows],
            "flow_run_id": [r[1] for r in rows],
            "start_time": pd.to_datetime([at(r[2]) for r in rows], utc=True),
            "end_time": pd.to_datetime(
                [at(r[3]) if r[3] is not None else pd.NaT for r in rows], utc=True
            ),
            "duration_s": [(r[3] - r[2]) * 60 if r[3] is not None else np.nan for r in rows],
        }
    )


# --- series ---------------------------------------------------------------------------------


def test_demand_series_counts_starts_and_task_seconds_per_hour() -> None:
    """Flow runs start at 00:10, 00:50, 02:05 and 03:30 (the latest: its hour is incomplete
    and left out). Hour 01 has none: 0, not missing. Task seconds by start hour: 00: 600 +
    300; 02: 120; the running task and the clock-skewed one add nothing."""
    flow_runs = flows([(10, 20), (50, 70), (125, 130), (210, None)])
    task_runs = tasks(
        [("etl", "f0", 10, 20), ("etl", "f1", 50, 55), ("etl", "f2", 125, 127),
         ("etl", "f3", 210, None), ("etl", "f2", 126, 125)]
    )  # fmt: skip
    series = demand_series(flow_runs, task_runs)
    assert series.index.tolist() == [at(0), at(60), at(120)]
    assert series["flow_runs"].tolist() == [2, 0, 1]
    assert series["task_seconds"].tolist() == [900.0, 0.0, 120.0]
    # given the fetch time, the hour of the latest start is complete and kept
    kept = demand_series(flow_runs, task_runs, end=at(240))
    assert kept["flow_runs"].tolist() == [2, 0, 1, 1]


def test_demand_series_of_nothing_is_empty() -> None:
    assert demand_series(flows([]), tasks([])).empty
    assert demand_series(flows([(10, 20)]), tasks([])).empty  # one run: its hour is incomplete


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="period"):
        demand_series(flows([]), tasks([]), period="often")
    with pytest.raises(ValueError, match="duration_s"):
        demand_series(flows([]), tasks([]).drop(columns=["duration_s"]))
    with pytest.raises(ValueError, match="missing values"):
        forecast_series(hourly(np.r_[DAY, np.nan, DAY[1:]]))
    gappy = hourly(np.r_[DAY, DAY]).drop(index=[at(60)])
    with pytest.raises(ValueError, match="evenly spaced"):
        forecast_series(gappy)


def test_season_lengths_follow_the_period() -> None:
    assert season_lengths("1h") == [24, 168]
    assert season_lengths("15min") == [96, 672]
    assert season_lengths("1D") == [7]
    assert season_lengths("7h") == [24]  # a week is 24 periods of 7 h; a day is no whole number
    assert season_lengths("5h") == []


# --- forecasts --------------------------------------------------------------------------------


def test_a_perfectly_periodic_series_is_forecast_as_its_period() -> None:
    forecast = forecast_series(hourly(np.tile(DAY, 4)), horizon=30)
    assert forecast.ok and forecast.season == 24
    assert forecast.values["forecast"].to_numpy() == pytest.approx(np.r_[DAY, DAY[:6]], abs=1e-9)
    assert forecast.values.index[0] == at(4 * 24 * 60)
    assert (forecast.values["high"] - forecast.values["low"]).max() == pytest.approx(0, abs=1e-9)


def test_a_periodic_series_with_a_linear_trend_is_forecast_exactly() -> None:
    t = np.arange(24 * 6)
    series = hourly(np.tile(DAY, 6) + 0.25 * t)
    forecast = forecast_series(series, horizon=24)
    assert forecast.model == "profile + trend (daily)"
    expected = DAY + 0.25 * np.arange(24 * 6, 24 * 7)
    assert forecast.values["forecast"].to_numpy() == pytest.approx(expected, abs=1e-9)


def test_a_weekly_pattern_is_found_when_the_history_covers_two_weeks() -> None:
    """Weekdays follow DAY, weekends are quiet: a daily model cannot know Monday follows
    Sunday; the weekly one can, exactly."""
    week = np.r_[np.tile(DAY, 5), np.tile(DAY / 4, 2)]
    forecast = forecast_series(hourly(np.tile(week, 3)), horizon=24)
    assert forecast.season == 168
    assert forecast.values["forecast"].to_numpy() == pytest.approx(DAY, abs=1e-9)


def test_less_than_two_days_gives_no_forecast() -> None:
    for values in (np.tile(DAY, 2)[:47], np.array([3.0])):
        forecast = forecast_series(hourly(values))
        assert not forecast.ok and forecast.values.empty
        assert "not enough history" in forecast.reason
    assert forecast_series(hourly(np.tile(DAY, 2))).ok  # exactly two days: the naive model


def test_backtest_reports_accuracy_on_held_out_periods() -> None:
    exact = backtest_forecast(hourly(np.tile(DAY, 5)), holdout=48, horizon=24)
    assert exact.accuracy == pytest.approx(1.0) and exact.n == 46  # DAY has one 0 a day
    assert exact.interval_coverage == 1.0
    rng = np.random.default_rng(0)
    noisy = hourly(rng.poisson(np.tile(DAY, 10) * 5).astype(float))
    result = backtest_forecast(noisy, holdout=72, horizon=24)
    actual, predicted = result.predictions["actual"], result.predictions["forecast"]
    positive = actual > 0
    mape = float(np.mean(np.abs(actual - predicted)[positive] / actual[positive]))
    assert result.accuracy == pytest.approx(1 - mape)
    assert 0 < result.accuracy < 1 and len(result.predictions) == 72


# --- concurrency ------------------------------------------------------------------------------


def test_in_flight_counts_overlaps_per_hour() -> None:
    """00:00-00:30, 00:15-01:10, 00:40-00:50, 00:30-00:35 (starts as the first ends: no
    overlap with it), and one running since 01:20. Hour 00: 2 at once (00:15-00:30 and
    00:40-00:50). Hour 01: 1 carried in, the 01:20 start after the 01:10 end: 1. Hour 02: 1."""
    runs = flows([(0, 30), (15, 70), (40, 50), (30, 35), (80, None)])
    peaks = in_flight(runs, "1h", end=at(150))
    assert peaks.index.tolist() == [at(0), at(60), at(120)]
    assert peaks.tolist() == [2, 1, 1]


def test_task_runner_width_is_the_peak_of_task_runs_inside_a_flow_run() -> None:
    """etl r1: 0-10, 5-15, 6-7 -> 3 at once; etl r2: 0-1, 1-2 (touching) -> 1; the running
    task of r3 is left out; ml r4: a zero-length task still ran -> 1."""
    task_runs = tasks(
        [("etl", "r1", 0, 10), ("etl", "r1", 5, 15), ("etl", "r1", 6, 7), ("etl", "r2", 0, 1),
         ("etl", "r2", 1, 2), ("etl", "r3", 0, None), ("ml", "r4", 3, 3)]
    )  # fmt: skip
    widths = task_runner_width(task_runs, quantile=0.95)
    assert widths.loc["etl", ["flow_runs", "peak_max", "recommended_width"]].tolist() == [2, 3, 3]
    assert widths.loc["etl", "peak_p50"] == 2.0
    assert widths.loc["etl", "at_max_share"] == 0.5
    assert widths.loc["ml", ["flow_runs", "peak_max", "recommended_width"]].tolist() == [1, 1, 1]
    assert task_runner_width(tasks([])).empty


def test_peak_limit_by_hand() -> None:
    """One period with 2 runs in flight on average, looked at once (W = the period):
    Poisson(2)'s 90% quantile is 4. Two such periods: P(<= c)^2 >= 0.9 needs
    P(<= c) >= 0.9487; P(<= 4) = 0.947, P(<= 5) = 0.983 -> 5."""
    assert stats.poisson.cdf(4, 2) < 0.9**0.5 < stats.poisson.cdf(5, 2)
    assert peak_limit(np.array([2 / 3600]), 3600.0, 3600.0, 0.9) == 4
    assert peak_limit(np.array([2 / 3600, 2 / 3600]), 3600.0, 3600.0, 0.9) == 5
    assert peak_limit(np.array([0.0]), 60.0, 3600.0, 0.9) == 1  # no runs expected: at least 1


def periodic_runs(days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """DAY[h] flow runs in hour h, evenly spread, each 60 s long with one 60 s task."""
    starts = []
    for hour in range(days * 24):
        count = int(DAY[hour % 24])
        starts += [hour * 60 + (i + 0.5) * 60 / count for i in range(count)]
    flow_runs = flows([(s, s + 1) for s in starts])
    task_runs = tasks([("etl", f"f{i}", s, s + 1) for i, s in enumerate(starts)])
    return flow_runs, task_runs


def test_recommend_scaling_sizes_the_pool_from_the_forecast() -> None:
    """Exact periodic arrivals: the forecast is DAY again with a zero-width interval; W = 60 s,
    so the limit is the smallest c with prod_h P(Poisson(DAY[h] / 60) <= c) ** 60 >= 0.9."""
    flow_runs, task_runs = periodic_runs(4)
    advice = recommend_scaling(flow_runs, task_runs, end=at(4 * 24 * 60))
    assert advice.ok, advice.reason
    assert advice.runs_forecast.values["high"].to_numpy() == pytest.approx(DAY, abs=1e-9)
    assert advice.mean_wall_s == pytest.approx(60.0)
    expected = next(
        c for c in range(1, 20)
        if np.prod(stats.poisson.cdf(c, DAY / 60) ** 60) >= 0.9
    )  # fmt: skip
    assert advice.concurrency_limit == expected
    assert advice.observed_peak == 1  # evenly spread one-minute runs never overlap
    assert advice.widths.loc["etl", "recommended_width"] == 1
    assert "concurrency limit" in advice.reasoning[0]


def test_not_enough_history_gives_no_limit_but_says_so() -> None:
    flow_runs, task_runs = periodic_runs(1)
    advice = recommend_scaling(flow_runs, task_runs, end=at(24 * 60))
    assert advice.concurrency_limit is None and not advice.ok
    assert "not enough history" in advice.reason
    assert advice.runs_forecast.values.empty
    assert advice.widths.loc["etl", "recommended_width"] == 1  # from the history alone
    nothing = recommend_scaling(flows([]), tasks([]))
    assert nothing.concurrency_limit is None and "not enough history" in nothing.reason


def test_all_in_progress_gives_no_limit() -> None:
    flow_runs, task_runs = periodic_runs(3)
    flow_runs["end_time"], flow_runs["state_type"] = pd.NaT, "RUNNING"
    advice = recommend_scaling(flow_runs, task_runs, end=at(3 * 24 * 60))
    assert advice.concurrency_limit is None
    assert "no finished flow run" in advice.reason


# --- purity ------------------------------------------------------------------------------------


def test_the_module_runs_where_prefect_cannot_be_imported() -> None:
    printed = run_standalone(
        """
        module = importlib.import_module("standalone_analytics.scaling")
        import numpy as np, pandas as pd
        index = pd.date_range("2024-01-01", periods=72, freq="1h", tz="UTC")
        series = pd.Series(np.tile(np.arange(24.0), 3), index=index)
        print(module.forecast_series(series, 3).values["forecast"].round(6).tolist())
        """
    )
    assert printed == "[0.0, 1.0, 2.0]"


def test_intervals_cover_what_they_say_on_a_growing_poisson_series() -> None:
    # Poisson counts on the daily profile, the level growing by half over 28 days and
    # doubling over 21: counts' noise grows with their level, so intervals sized on earlier
    # errors must grow with it (sized on the raw errors, these covered 77%)
    covered, held_out = [], 0
    for days, growth in ((28, 1.5), (21, 2.0)):
        level = np.tile(DAY, days) * 3 * np.repeat(np.linspace(1.0, growth, days), 24)
        for seed in range(6):
            series = hourly(np.random.default_rng(seed).poisson(level).astype(float))
            result = backtest_forecast(series, holdout=7 * 24, horizon=24, coverage=0.8)
            covered.append(result.interval_coverage)
            held_out += len(result.predictions)
    coverage = float(np.mean(covered))
    # 2,016 held-out hours: one standard error of an 80% coverage is 0.9 points
    assert held_out == 12 * 7 * 24
    assert 0.78 <= coverage <= 0.86, covered
