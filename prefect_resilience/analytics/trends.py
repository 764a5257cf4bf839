"""Whether failures are getting more frequent: a per-period trend and a recent-vs-baseline test.

Both work on task runs or flow runs alike (they read `state_type`,
`start_time` and `end_time`). A run is placed in time by its `start_time`, or
its `end_time` when the start is unknown; a run with neither is left out. Only
finished runs count, a failure is a FAILED or CRASHED run, and a period
without runs is a gap (its rate is unknown), never a period of zero failures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats

from ._common import (
    ALL,
    FAILED_STATES,
    FINISHED_STATES,
    event_times,
    rate,
    require_columns,
    state_types,
    two_proportion_z,
    wilson_interval,
    z_value,
)

_COLUMNS = ("state_type", "start_time", "end_time")

PERIOD_COLUMNS: dict[str, str] = {
    "runs": "int64",
    "failures": "int64",
    "failure_rate": "float64",
    "failure_rate_low": "float64",
    "failure_rate_high": "float64",
    "rolling_runs": "int64",
    "rolling_failures": "int64",
    "rolling_failure_rate": "float64",
}


@dataclass(frozen=True, eq=False)
class FailureTrend:
    """The failure rate per period and the straight line fitted through it.

    `periods` is indexed by each period's start (UTC), every period from the
    first run's to the last run's, gaps included (runs 0, rate NaN). `slope` is
    the change in failure rate per period (+0.01: one percentage point more
    each period), with its confidence interval `slope_low`/`slope_high` and the
    p-value of "no trend"; all NaN when fewer than 3 periods have runs (2 give
    a slope without an interval). `n_periods` is the regression's n: periods
    with runs; `n_runs` the finished runs placed in time.
    """

    periods: pd.DataFrame
    slope: float
    slope_low: float
    slope_high: float
    slope_p_value: float
    n_periods: int
    n_runs: int
    freq: str
    weighted: bool


def _finished_in_time(frame: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """Finished runs placed in time: `time`, `failed` and, if asked, the grouping column."""
    state = state_types(frame)
    result = pd.DataFrame(
        {"time": event_times(frame), "failed": state.isin(FAILED_STATES).fillna(False)},
        index=frame.index,
    )
    if by is not None:
        result["group"] = frame[by]
    finished = state.isin(FINISHED_STATES).fillna(False).to_numpy(dtype=bool)
    result = result[finished & result["time"].notna().to_numpy(dtype=bool)]
    return result.astype({"failed": bool})


def failure_trend(
    frame: pd.DataFrame,
    freq: str = "1D",
    window: int = 7,
    weighted: bool = True,
    confidence: float = 0.95,
) -> FailureTrend:
    """The failure rate per `freq` period, its rolling rate, and its linear trend.

    Input: `task_runs` or `flow_runs`; the columns read are `state_type` (str),
    `start_time` and `end_time` (UTC datetimes, NaT when unknown). A missing
    column raises a ValueError naming it; `window` < 1 raises a ValueError.

    Per period: `runs` (n), `failures`, `failure_rate` with its Wilson interval
    at `confidence`, and over the last `window` periods (this one included)
    the pooled `rolling_failures` / `rolling_runs` = `rolling_failure_rate`.
    Pooling sums runs, so a gap adds nothing instead of pulling the rate to 0.

    The trend is a least-squares line of failure rate on period number (0 for
    the first period, so gaps keep their place in time), fitted only through
    periods with runs. `weighted=True` weights each period by its runs (a rate
    over many runs is more precise, its variance about p(1-p)/runs); False
    weights periods equally. The interval and p-value use Student's t with
    n_periods - 2 degrees of freedom. The p-value is NaN when every period
    has the same rate (the test has nothing to measure).
    """
    require_columns(frame, _COLUMNS, "frame")
    if window < 1:
        raise ValueError(f"window must be at least 1 period, got {window}")
    z_value(confidence)
    runs = _finished_in_time(frame)
    if runs.empty:
        periods = pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC", name="period"))
        periods = periods.reindex(columns=list(PERIOD_COLUMNS)).astype(PERIOD_COLUMNS)
        nan = float("nan")
        return FailureTrend(periods, nan, nan, nan, nan, 0, 0, freq, weighted)
    counted = runs.set_index("time")["failed"].resample(freq).agg(["size", "sum"])
    periods = pd.DataFrame(
        {"runs": counted["size"].astype("int64"), "failures": counted["sum"].astype("int64")}
    )
    periods.index.name = "period"
    periods["failure_rate"] = rate(periods["failures"], periods["runs"])
    low, high = wilson_interval(periods["failures"], periods["runs"], confidence)
    periods["failure_rate_low"], periods["failure_rate_high"] = low, high
    rolling = periods[["runs", "failures"]].rolling(window, min_periods=1).sum()
    periods["rolling_runs"] = rolling["runs"].astype("int64")
    periods["rolling_failures"] = rolling["failures"].astype("int64")
    periods["rolling_failure_rate"] = rate(periods["rolling_failures"], periods["rolling_runs"])
    periods = periods.astype(PERIOD_COLUMNS)

    observed = periods["runs"].to_numpy() > 0
    x = np.arange(len(periods), dtype=float)[observed]
    y = periods["failure_rate"].to_numpy()[observed]
    w = periods["runs"].to_numpy(dtype=float)[observed] if weighted else np.ones_like(x)
    slope, low, high, p_value = _weighted_slope(x, y, w, confidence)
    return FailureTrend(
        periods=periods,
        slope=slope,
        slope_low=low,
        slope_high=high,
        slope_p_value=p_value,
        n_periods=int(observed.sum()),
        n_runs=int(periods["runs"].sum()),
        freq=freq,
        weighted=weighted,
    )


def _weighted_slope(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, confidence: float
) -> tuple[float, float, float, float]:
    """Weighted least-squares slope of y on x: (slope, low, high, p-value of slope = 0)."""
    nan = float("nan")
    m = len(x)
    if m < 2:
        return nan, nan, nan, nan
    x_mean, y_mean = np.average(x, weights=w), np.average(y, weights=w)
    sxx = float(np.sum(w * (x - x_mean) ** 2))
    slope = float(np.sum(w * (x - x_mean) * (y - y_mean)) / sxx)
    if m < 3:
        return slope, nan, nan, nan
    residuals = y - (y_mean + slope * (x - x_mean))
    dof = m - 2
    # Var(residual_i) = sigma^2 / w_i; the slope's variance is sigma^2 / sxx (scale-free in w)
    sigma2 = float(np.sum(w * residuals**2) / dof)
    se = float(np.sqrt(sigma2 / sxx))
    t_crit = float(stats.t.ppf(0.5 + confidence / 2, dof))
    if se == 0:
        p_value = nan if slope == 0 else 0.0
    else:
        p_value = float(2 * stats.t.sf(abs(slope / se), dof))
    return slope, slope - t_crit * se, slope + t_crit * se, p_value


def detect_degradation(
    frame: pd.DataFrame,
    recent: str | pd.Timedelta = "7D",
    baseline: str | pd.Timedelta = "28D",
    alpha: float = 0.05,
    now: pd.Timestamp | str | None = None,
    by: str | None = None,
    test: Literal["fisher", "z"] = "fisher",
) -> pd.DataFrame:
    """Whether the recent failure rate is higher than the baseline's, by a one-sided test.

    Input: `task_runs` or `flow_runs`; the columns read are `state_type`,
    `start_time`, `end_time`, and `by` when given (e.g. "task_name" or
    "flow_name"). A missing column raises a ValueError naming it.

    The windows end at `now` (default: the latest run's time in `frame`, so
    old data is judged as of its own end, not today): recent is
    (now - recent, now], baseline the `baseline` span just before it. Only
    finished runs count; a failure is FAILED or CRASHED.

    The test asks whether recent runs fail more often than baseline runs
    (one-sided): Fisher's exact test on the 2x2 table (default; valid for any
    counts) or the pooled two-proportion z-test (`test="z"`). `degraded` is
    p_value < alpha. There is no threshold on the rate itself: a step that has
    always failed half its runs is not degraded, one that went from 1% to 5%
    over enough runs is. With `by`, each group is tested on its own at
    `alpha` (no correction for testing many groups); runs whose `by` value is
    missing are left out.

    Returns one row per group (indexed by the `by` values; a single row "all"
    when `by` is None) with `recent_runs`, `recent_failures`, `recent_rate`,
    `baseline_runs`, `baseline_failures`, `baseline_rate`, `p_value` (NaN when
    either window has no runs), `degraded`, and the windows' bounds
    `baseline_start`, `recent_start`, `end`.
    """
    require_columns(frame, (*_COLUMNS, *([by] if by else [])), "frame")
    recent_span, baseline_span = pd.Timedelta(recent), pd.Timedelta(baseline)
    if recent_span <= pd.Timedelta(0) or baseline_span <= pd.Timedelta(0):
        raise ValueError("recent and baseline must be positive spans of time")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    if test not in ("fisher", "z"):
        raise ValueError(f"test must be 'fisher' or 'z', got {test!r}")
    runs = _finished_in_time(frame, by)
    if now is not None:
        end = pd.Timestamp(now)
        end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
    else:
        end = runs["time"].max() if not runs.empty else pd.NaT
    recent_start = end - recent_span
    baseline_start = recent_start - baseline_span
    in_recent = (runs["time"] > recent_start) & (runs["time"] <= end)
    in_baseline = (runs["time"] > baseline_start) & (runs["time"] <= recent_start)
    runs = runs.assign(
        recent=in_recent,
        recent_failed=in_recent & runs["failed"],
        baseline=in_baseline,
        baseline_failed=in_baseline & runs["failed"],
    )
    counts = ["recent", "recent_failed", "baseline", "baseline_failed"]
    if by is None:
        table = runs[counts].sum().to_frame(ALL).T
    else:
        table = runs.groupby("group", sort=True)[counts].sum()
        table.index.name = by
    table = table.astype("int64").rename(
        columns={
            "recent": "recent_runs",
            "recent_failed": "recent_failures",
            "baseline": "baseline_runs",
            "baseline_failed": "baseline_failures",
        }
    )
    table["recent_rate"] = rate(table["recent_failures"], table["recent_runs"])
    table["baseline_rate"] = rate(table["baseline_failures"], table["baseline_runs"])
    table["p_value"] = _one_sided_p(
        table["recent_failures"].to_numpy(),
        table["recent_runs"].to_numpy(),
        table["baseline_failures"].to_numpy(),
        table["baseline_runs"].to_numpy(),
        test,
    )
    table["degraded"] = (table["p_value"] < alpha).fillna(False).astype(bool)
    table["baseline_start"], table["recent_start"], table["end"] = (
        baseline_start,
        recent_start,
        end,
    )
    order = [
        "recent_runs",
        "recent_failures",
        "recent_rate",
        "baseline_runs",
        "baseline_failures",
        "baseline_rate",
        "p_value",
        "degraded",
        "baseline_start",
        "recent_start",
        "end",
    ]
    return table[order]


def _one_sided_p(
    recent_failures: np.ndarray,
    recent_runs: np.ndarray,
    baseline_failures: np.ndarray,
    baseline_runs: np.ndarray,
    test: str,
) -> np.ndarray:
    """p-value of "recent fails no more often than baseline"; NaN where a window is empty."""
    empty = (recent_runs == 0) | (baseline_runs == 0)
    total = recent_runs + baseline_runs
    failures = recent_failures + baseline_failures
    if test == "fisher":
        # Fisher's exact test, one-sided: P(X >= recent failures) where X counts the
        # failures that land in the recent window when all failures are dealt at random
        p = stats.hypergeom.sf(recent_failures - 1, total, failures, recent_runs)
    else:
        z = two_proportion_z(baseline_failures, baseline_runs, recent_failures, recent_runs)
        # no failure at all, or nothing but failures: no difference to test
        p = np.where(np.isfinite(z), stats.norm.sf(z), 1.0)
    return np.where(empty, np.nan, np.asarray(p, dtype=float))
