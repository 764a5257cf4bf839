"""Predictive scaling: forecast flow runs and task-seconds per period, size the pool from them.

From the history's flow runs and task runs this module builds, per period
(an hour by default), the flow runs that started and the task-seconds that
started in it; forecasts the next periods with a daily or weekly profile and
a linear trend (numpy and pandas only); and turns the forecast into a
work-pool concurrency limit (flow runs in flight) and, per flow, a task-runner
width (task runs in flight inside one flow run).

Forecasting. Candidate models per season length s (a day, and a week when
the history covers two): seasonal naive (the last season again), the
seasonal mean of the last 4 seasons, an additive profile plus a linear trend
(least squares over the last 8 seasons) and a multiplicative one (a linear
trend through the season means times the mean profile); and, for series
without a pattern, the last season's mean (flat) and a straight line through
the last 4 seasons. The model is picked
on the training series itself: each candidate forecasts the last one to three
chunks of max(horizon, one day) periods (as many as leave two days before
them) from earlier origins, `horizon` at a time, and the lowest mean absolute
error wins. Intervals come from the winner's errors there (`_interval`). Forecasts
are never negative. A history shorter than two days (two of the shortest
seasons) gives no forecast, only the reason.

Accuracy is reported as 1 - MAPE over periods whose actual value is above
zero (MAPE is undefined at zero), next to 1 - WAPE (total absolute error over
the total), which zero periods do not upset.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from ._common import FINISHED_STATES, durations, require_columns, state_types, utc

MEAN_SEASONS = 4
"""Seasons averaged by the seasonal-mean model."""

TREND_SEASONS = 8
"""Seasons the trend models are fitted over: recent enough to follow a change of level."""

VALIDATION_CHUNKS = 3
"""The model is chosen on up to this many chunks of max(horizon, one day) at the history's end."""

FORECAST_COLUMNS: dict[str, str] = {"forecast": "float64", "low": "float64", "high": "float64"}


# --- series --------------------------------------------------------------------------------


def _step(period: str | pd.Timedelta) -> pd.Timedelta:
    try:
        step = pd.Timedelta(period)
    except (ValueError, TypeError):
        raise ValueError(f"period {period!r} is not a duration such as '1h' or '15min'") from None
    if step <= pd.Timedelta(0):
        raise ValueError(f"period must be positive, got {period!r}")
    return step


def demand_series(
    flow_runs: pd.DataFrame,
    task_runs: pd.DataFrame,
    period: str | pd.Timedelta = "1h",
    end: pd.Timestamp | str | None = None,
) -> pd.DataFrame:
    """Per period: `flow_runs` that started in it and `task_seconds` of the task runs started in it.

    Columns read: flow_runs `start_time`; task_runs `start_time`, `end_time`,
    `duration_s` (a duration is unknown when NaN, negative or the clock
    skewed; such runs, and runs still in progress, add no seconds). A run
    that never started is not counted. Periods are aligned to the epoch (hours
    on the hour); every period from the first start's up to `end` is
    present, periods without runs as 0. `end` (exclusive) defaults to the
    latest flow-run start, whose own period is left out as incomplete; pass
    the time the history was fetched to keep every complete period.
    """
    require_columns(flow_runs, ("start_time",), "flow_runs")
    require_columns(task_runs, ("start_time", "end_time", "duration_s"), "task_runs")
    step = _step(period)
    flow_starts = utc(flow_runs["start_time"]).dropna()
    task_starts = utc(task_runs["start_time"])
    seconds = durations(task_runs)
    known = task_starts.notna() & seconds.notna()
    task_starts, seconds = task_starts[known], seconds[known]
    everything = pd.concat([flow_starts, task_starts])
    empty = pd.DataFrame(
        {"flow_runs": pd.Series(dtype="int64"), "task_seconds": pd.Series(dtype="float64")},
        index=pd.DatetimeIndex([], tz="UTC", name="period"),
    )
    if everything.empty:
        return empty
    last = utc(pd.Series([end])).iloc[0] if end is not None else flow_starts.max()
    if pd.isna(last):
        last = everything.max()
    first = everything.min().floor(step)
    stop = last.floor(step)
    if stop <= first:
        return empty
    index = pd.date_range(first, stop, freq=step, inclusive="left", name="period")
    runs = np.bincount(_positions(flow_starts, first, step, len(index)), minlength=len(index) + 1)
    busy = np.bincount(
        _positions(task_starts, first, step, len(index)),
        weights=seconds.to_numpy(dtype=float),
        minlength=len(index) + 1,
    )
    # the last bin collects runs outside [first, stop): dropped
    return pd.DataFrame(
        {"flow_runs": runs[:-1].astype("int64"), "task_seconds": busy[:-1].astype(float)},
        index=index,
    )


def _nanos(times: pd.Series | pd.Index) -> np.ndarray:
    """UTC timestamps (no NaT) as int64 nanoseconds since the epoch."""
    return np.asarray(times.to_numpy("datetime64[ns]")).astype(np.int64)


def _positions(times: pd.Series, first: pd.Timestamp, step: pd.Timedelta, count: int) -> np.ndarray:
    """The period number of each time counted from `first`; `count` for times outside."""
    position = (_nanos(times) - first.value) // step.value
    return np.where((position >= 0) & (position < count), position, count)


def season_lengths(period: str | pd.Timedelta) -> list[int]:
    """Season lengths in periods: a day and a week, where a whole number (at least 2) fits."""
    step = _step(period)
    lengths = []
    for span in (pd.Timedelta(days=1), pd.Timedelta(days=7)):
        count = span / step
        if count >= 2 and count == int(count):
            lengths.append(int(count))
    return lengths


# --- forecasting ---------------------------------------------------------------------------


Model = Callable[[np.ndarray, int, int], np.ndarray]


def _naive(y: np.ndarray, s: int, h: int) -> np.ndarray:
    """The last season again: the forecast at n + i is y[n - s + (i mod s)]."""
    n = len(y)
    return y[n - s + np.arange(h) % s]


def _season_block(y: np.ndarray, s: int, seasons: int) -> np.ndarray:
    """The last `seasons` whole seasons as rows; column c has the phase of index n + c."""
    k = min(seasons, len(y) // s)
    return y[len(y) - k * s :].reshape(k, s)


def _mean(y: np.ndarray, s: int, h: int) -> np.ndarray:
    profile = _season_block(y, s, MEAN_SEASONS).mean(axis=0)
    return profile[np.arange(h) % s]


def _additive(y: np.ndarray, s: int, h: int) -> np.ndarray:
    """Least squares y_t = b t + c_(t mod s) over the last TREND_SEASONS seasons.

    Closed form: b is the slope of y on t within phases (both centred on their
    phase's mean), c the phase's mean of y - b t.
    """
    block = _season_block(y, s, TREND_SEASONS)
    k = len(block)
    t = np.arange(k * s, dtype=float).reshape(k, s)
    t_centred, y_centred = t - t.mean(axis=0), block - block.mean(axis=0)
    slope = float((t_centred * y_centred).sum() / (t_centred**2).sum())
    level = (block - slope * t).mean(axis=0)
    ahead = np.arange(k * s, k * s + h)
    return slope * ahead + level[ahead % s]


def _multiplicative(y: np.ndarray, s: int, h: int) -> np.ndarray:
    """A line through the season means, times the mean ratio of each phase to its season's mean."""
    block = _season_block(y, s, TREND_SEASONS)
    k = len(block)
    means = block.mean(axis=1)
    centres = np.arange(k) * s + (s - 1) / 2
    slope, intercept = np.polyfit(centres, means, 1)
    positive = means > 0
    profile = (block[positive] / means[positive, None]).mean(axis=0) if positive.any() else 1.0
    ahead = np.arange(k * s, k * s + h)
    return (intercept + slope * ahead) * np.broadcast_to(profile, (s,))[ahead % s]


def _flat(y: np.ndarray, s: int, h: int) -> np.ndarray:
    """No profile: the mean of the last season, for series without a seasonal pattern."""
    return np.full(h, y[len(y) - s :].mean())


def _line(y: np.ndarray, s: int, h: int) -> np.ndarray:
    """No profile: a straight line through the last MEAN_SEASONS seasons."""
    recent = y[len(y) - min(len(y), MEAN_SEASONS * s) :]
    slope, intercept = np.polyfit(np.arange(len(recent)), recent, 1)
    return intercept + slope * np.arange(len(recent), len(recent) + h)


_MODELS: list[tuple[str, Model, int]] = [
    ("seasonal naive", _naive, 1),
    ("seasonal mean", _mean, 1),
    ("profile + trend", _additive, 2),
    ("profile x trend", _multiplicative, 2),
    ("flat", _flat, 1),
    ("line", _line, 2),
]
"""(name, model, whole seasons of history it needs)."""


@dataclass(frozen=True, eq=False)
class Forecast:
    """The next periods of one series, or the reason there is no forecast.

    `values`: indexed by period start, `forecast` with `low`/`high`, the
    quantiles of the chosen model's validation errors at `coverage`.
    `validation`: per candidate model, its mean absolute error (`mae`),
    `mape`, `wape` and `n` (periods) on the last part of the history.
    `reason` is empty when there is a forecast.
    """

    series: str
    values: pd.DataFrame
    model: str
    season: int
    coverage: float
    history_periods: int
    validation: pd.DataFrame
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason


def _errors(actual: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float, int]:
    """(MAE, MAPE over actual > 0, WAPE, n periods with actual > 0); NaN where undefined."""
    error = np.abs(actual - predicted)
    positive = actual > 0
    mape = float(np.mean(error[positive] / actual[positive])) if positive.any() else math.nan
    total = float(actual.sum())
    wape = float(error.sum() / total) if total > 0 else math.nan
    return float(error.mean()) if len(error) else math.nan, mape, wape, int(positive.sum())


def _regular(series: pd.Series) -> pd.Timedelta:
    if not isinstance(series.index, pd.DatetimeIndex) or len(series) < 2:
        raise ValueError("series needs a DatetimeIndex of at least two periods")
    steps = (series.index[1:] - series.index[:-1]).unique()
    if len(steps) != 1 or steps[0] <= pd.Timedelta(0):
        raise ValueError("series periods must be evenly spaced (fill gaps with 0 first)")
    if series.isna().any():
        raise ValueError("series has missing values; a period without runs is 0, not missing")
    return pd.Timedelta(steps[0])


def forecast_series(
    series: pd.Series, horizon: int = 1, coverage: float = 0.8, name: str | None = None
) -> Forecast:
    """Forecast the `horizon` periods after `series` (see the module docstring for the models).

    `series` is one column of `demand_series`: evenly spaced periods, no
    missing values. Fewer periods than two days (two seasons of the shortest
    season that fits the period), or too few to validate the candidates for
    this horizon, give a Forecast whose `reason` says so and no values.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1 period, got {horizon}")
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be between 0 and 1, got {coverage}")
    label = name or str(series.name or "series")
    n = len(series)
    empty_values = pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC", name="period"))
    empty_values = empty_values.reindex(columns=list(FORECAST_COLUMNS)).astype(FORECAST_COLUMNS)
    empty_validation = pd.DataFrame(columns=["season", "mae", "mape", "wape", "n"])

    def none(reason: str) -> Forecast:
        return Forecast(label, empty_values, "", 0, coverage, n, empty_validation, reason)

    if n < 2:
        return none(f"not enough history: {n} period(s) of {label}; need two days")
    step = _regular(series)
    seasons = season_lengths(step)
    if not seasons:
        return none(f"a period of {_label(step)} fits no daily or weekly season")
    shortest = min(seasons)
    if n < 2 * shortest:
        return none(
            f"not enough history: {n} periods of {_label(step)} cover less than two days"
            f" ({2 * shortest} periods); no forecast"
        )
    y = series.to_numpy(dtype=float)
    # validate on up to 3 chunks of max(horizon, a day), leaving two days before the first
    chunk = max(horizon, shortest)
    span = chunk * min(VALIDATION_CHUNKS, max(1, (n - 2 * shortest) // chunk))
    origins = list(range(n - span, n, horizon))
    rows, residuals = [], {}
    for s in seasons:
        for model_name, model, needs in _MODELS:
            if origins[0] < needs * s:
                continue
            predicted = np.concatenate(
                [np.maximum(model(y[:o], s, min(horizon, n - o)), 0.0) for o in origins]
            )
            actual = y[n - span :]
            mae, mape, wape, count = _errors(actual, predicted)
            key = f"{model_name} ({_span_name(s, step)})"
            rows.append({"model": key, "season": s, "mae": mae, "mape": mape, "wape": wape,
                         "n": count})  # fmt: skip
            residuals[key] = (model, s, actual, predicted)
    if not rows:
        return none(
            f"not enough history: {n} periods leave too few to check a {horizon}-period forecast"
            f" (need {span + shortest})"
        )
    validation = pd.DataFrame(rows).set_index("model")
    chosen = str(validation["mae"].idxmin())
    model, s, actual, predicted = residuals[chosen]
    point = np.maximum(model(y, s, horizon), 0.0)
    low, high = _interval(actual, predicted, point, coverage)
    index = pd.date_range(series.index[-1] + step, periods=horizon, freq=step, name="period")
    values = pd.DataFrame({"forecast": point, "low": low, "high": high}, index=index).astype(
        FORECAST_COLUMNS
    )
    return Forecast(label, values, chosen, s, coverage, n, validation)


def _interval(
    actual: np.ndarray, predicted: np.ndarray, point: np.ndarray, coverage: float
) -> tuple[np.ndarray, np.ndarray]:
    """The forecast's interval at `coverage`, from the chosen model's validation errors.

    Each error is divided by the square root of the level it was made at, and
    the interval is scaled back by the square root of the forecast's own level:
    counts (and task-seconds, sums over counts) vary about as their level's
    square root, so a history that grew gets wider intervals, and a quiet hour
    narrower ones than a busy one. The quantiles are taken at the
    finite-sample level of split conformal prediction, ceil((n + 1) q) / n,
    which keeps a short validation stretch from making them too narrow.
    """
    scale = np.sqrt(np.maximum(predicted, 1.0))
    errors = (actual - predicted) / scale
    n = len(errors)
    tail = (1 - coverage) / 2
    upper = min(math.ceil((n + 1) * (1 - tail)) / n, 1.0)
    lower = max(math.floor((n + 1) * tail) / n, 0.0)
    low_error = np.quantile(errors, lower, method="lower")
    high_error = np.quantile(errors, upper, method="higher")
    level = np.sqrt(np.maximum(point, 1.0))
    return np.maximum(point + low_error * level, 0.0), np.maximum(point + high_error * level, 0.0)


def _label(step: pd.Timedelta) -> str:
    """'1h', '15min', '1d', '90s': a period as a person would write it."""
    seconds = step.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _span_name(season: int, step: pd.Timedelta) -> str:
    return "weekly" if season * step == pd.Timedelta(days=7) else "daily"


@dataclass(frozen=True, eq=False)
class ForecastBacktest:
    """Rolling-origin forecasts over held-out periods, and how close they came.

    `predictions`: per held-out period `actual`, `forecast`, `low`, `high`
    and the `model` used. `accuracy` = 1 - `mape` (MAPE over the `n` periods
    with actual > 0); `wape_accuracy` = 1 - WAPE; `interval_coverage`: share
    of periods inside [low, high]. `reason` is set (and numbers NaN) when no
    forecast could be made.
    """

    predictions: pd.DataFrame
    mape: float
    accuracy: float
    wape: float
    wape_accuracy: float
    interval_coverage: float
    n: int
    reason: str = ""
    models: dict[str, int] = field(default_factory=dict)


def backtest_forecast(
    series: pd.Series, holdout: int, horizon: int = 24, coverage: float = 0.8
) -> ForecastBacktest:
    """Hold out the last `holdout` periods; forecast them `horizon` at a time from the past only.

    Each origin sees only the periods before it (the model is chosen and
    fitted again there), as a forecast made at that time would.
    """
    if not 0 < holdout < len(series):
        raise ValueError(f"holdout must be between 1 and {len(series) - 1}, got {holdout}")
    n = len(series)
    parts, reasons = [], []
    for origin in range(n - holdout, n, horizon):
        ahead = min(horizon, n - origin)
        forecast = forecast_series(series.iloc[:origin], ahead, coverage)
        if not forecast.ok:
            reasons.append(forecast.reason)
            continue
        part = forecast.values.copy()
        part["actual"] = series.iloc[origin : origin + ahead].to_numpy(dtype=float)
        part["model"] = forecast.model
        parts.append(part)
    nan = math.nan
    if not parts:
        empty = pd.DataFrame(columns=["actual", "forecast", "low", "high", "model"])
        return ForecastBacktest(
            empty, nan, nan, nan, nan, nan, 0, reasons[0] if reasons else "no data"
        )
    predictions = pd.concat(parts)[["actual", "forecast", "low", "high", "model"]]
    actual, predicted = predictions["actual"].to_numpy(), predictions["forecast"].to_numpy()
    _, mape, wape, count = _errors(actual, predicted)
    slack = 1e-9 * np.maximum(np.abs(actual), 1.0)  # an exact forecast is inside its interval
    low, high = predictions["low"].to_numpy(), predictions["high"].to_numpy()
    inside = (actual >= low - slack) & (actual <= high + slack)
    return ForecastBacktest(
        predictions=predictions,
        mape=mape,
        accuracy=1 - mape,
        wape=wape,
        wape_accuracy=1 - wape,
        interval_coverage=float(inside.mean()),
        n=count,
        reason="" if not reasons else f"{len(reasons)} origin(s) without a forecast: {reasons[0]}",
        models=predictions["model"].value_counts().to_dict(),
    )


# --- concurrency ---------------------------------------------------------------------------


def in_flight(
    runs: pd.DataFrame,
    period: str | pd.Timedelta = "1h",
    end: pd.Timestamp | str | None = None,
) -> pd.Series:
    """The most runs in flight at once in each period (flow runs or task runs).

    Columns read: `start_time`, `end_time`. A run is in flight from its start
    to its end; one still in progress (no end) until `end`, which defaults to
    the latest time in the frame. Runs that never started are left out, and
    so are runs whose end is before their start (clock skew). A run ending
    when another starts does not overlap it. Every period from the first start
    to `end` is present.
    """
    require_columns(runs, ("start_time", "end_time"), "runs")
    step = _step(period)
    start, stop = utc(runs["start_time"]), utc(runs["end_time"])
    as_of = utc(pd.Series([end])).iloc[0] if end is not None else pd.concat([start, stop]).max()
    keep = start.notna() & ~(stop < start).fillna(False)
    start, stop = start[keep], stop[keep].fillna(as_of)
    if start.empty or pd.isna(as_of):
        return pd.Series(dtype="int64", index=pd.DatetimeIndex([], tz="UTC", name="period"))
    times = np.concatenate([_nanos(start), _nanos(stop)])
    deltas = np.concatenate([np.ones(len(start)), -np.ones(len(stop))]).astype(np.int64)
    order = np.lexsort((deltas, times))  # at equal times ends (-1) come before starts
    times, level = times[order], np.cumsum(deltas[order])
    first = start.min().floor(step)
    index = pd.date_range(first, max(as_of, start.max()).floor(step), freq=step, name="period")
    position = (times - first.value) // step.value
    inside = position < len(index)
    peaks = np.zeros(len(index), dtype=np.int64)
    np.maximum.at(peaks, position[inside], level[inside])
    # the runs already in flight when a period begins count in it too
    before = np.searchsorted(times, _nanos(index), side="left") - 1
    carried = np.where(before >= 0, level[np.maximum(before, 0)], 0)
    return pd.Series(np.maximum(peaks, carried), index=index, dtype="int64")


WIDTH_COLUMNS: dict[str, str] = {
    "flow_runs": "int64",
    "peak_p50": "float64",
    "peak_quantile": "float64",
    "peak_max": "int64",
    "at_max_share": "float64",
    "recommended_width": "int64",
}


def task_runner_width(task_runs: pd.DataFrame, quantile: float = 0.95) -> pd.DataFrame:
    """Per flow: the most task runs in flight at once inside one flow run, over its flow runs.

    Columns read: `flow_run_id`, `flow_name`, `start_time`, `end_time`. Only
    task runs with a known start and end (end >= start) count. Per flow,
    `flow_runs` (n), the median, `quantile` and max of the per-run peaks,
    `at_max_share` (runs whose peak equals the max: near 1 with max > 1 hints
    that the current task runner's width is itself the limit, and the history
    cannot show demand above it), and `recommended_width`: the `quantile` of
    the peaks (an observed value, rounded up), the width at which that share
    of runs would have run every task as soon as it could.
    """
    require_columns(task_runs, ("flow_run_id", "flow_name", "start_time", "end_time"), "task_runs")
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    start, stop = utc(task_runs["start_time"]), utc(task_runs["end_time"])
    keep = start.notna() & stop.notna() & (stop >= start) & task_runs["flow_run_id"].notna()
    keep = keep.to_numpy(dtype=bool)
    frame = task_runs.loc[keep, ["flow_run_id", "flow_name"]]
    if frame.empty:
        empty = pd.DataFrame(index=pd.Index([], name="flow_name"))
        return empty.reindex(columns=list(WIDTH_COLUMNS)).astype(WIDTH_COLUMNS)
    codes, run_ids = pd.factorize(frame["flow_run_id"])
    times = np.concatenate([_nanos(start[keep]), _nanos(stop[keep])])
    deltas = np.concatenate([np.ones(len(codes)), -np.ones(len(codes))]).astype(np.int64)
    run = np.concatenate([codes, codes])
    order = np.lexsort((deltas, times, run))  # by run, then time; at equal times ends first
    # every run's starts and ends sum to 0, so one running sum restarts at 0 for each run
    level = np.cumsum(deltas[order])
    peaks = np.zeros(len(run_ids), dtype=np.int64)
    np.maximum.at(peaks, run[order], level)
    peaks = np.maximum(peaks, 1)  # a zero-length task run still ran
    flow_of = frame["flow_name"].to_numpy()[np.unique(codes, return_index=True)[1]]
    table = pd.DataFrame({"peak": peaks, "flow_name": flow_of})
    grouped = table.groupby("flow_name", sort=True)["peak"]
    result = pd.DataFrame(
        {
            "flow_runs": grouped.size(),
            "peak_p50": grouped.median(),
            "peak_quantile": grouped.quantile(quantile, interpolation="higher"),
            "peak_max": grouped.max(),
        }
    )
    at_max = table["peak"] == table["flow_name"].map(result["peak_max"])
    result["at_max_share"] = at_max.groupby(table["flow_name"]).mean()
    result["recommended_width"] = np.ceil(result["peak_quantile"]).astype("int64")
    return result.astype(WIDTH_COLUMNS)


@dataclass(frozen=True, eq=False)
class ScalingRecommendation:
    """A work-pool concurrency limit and task-runner widths, with the forecasts and reasoning.

    `concurrency_limit` is None (and `reason` says why) when there is no
    forecast: not enough history, or no finished flow run with a known
    duration. `widths` (see `task_runner_width`) come from the history alone.
    `mean_wall_s` is the mean start-to-end time of the `duration_n` finished
    flow runs; `observed_peak` the most flow runs in flight during the last
    day of history. `reasoning` is the argument in words, each number with its n.
    """

    concurrency_limit: int | None
    widths: pd.DataFrame
    runs_forecast: Forecast
    task_seconds_forecast: Forecast
    series: pd.DataFrame
    mean_wall_s: float
    duration_n: int
    observed_peak: int
    reasoning: list[str]
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason


def peak_limit(
    rates_per_s: np.ndarray, mean_wall_s: float, period_s: float, quantile: float
) -> int:
    """The smallest limit that flow runs in flight stay within over the whole horizon.

    Per period h, arrivals at `rates_per_s[h]` with a mean time in flight W
    give Poisson(rate * W) runs in flight at any moment (the M/G/inf queue;
    Little's law for its mean). Looks W apart are taken as independent, so a
    period holds max(1, period / W) of them, and the chance of staying within
    c over the horizon is prod_h P(Poisson(rate_h * W) <= c) ** looks. The
    limit is the smallest c >= 1 where that chance reaches `quantile`.
    """
    mean = np.asarray(rates_per_s, dtype=float) * mean_wall_s
    looks = max(1.0, period_s / mean_wall_s) if mean_wall_s > 0 else 1.0
    # a union bound gives a c that surely suffices: search up to it
    upper = int(stats.poisson.ppf(1 - (1 - quantile) / (looks * len(mean)), mean.max())) + 1
    limits = np.arange(1, max(upper, 1) + 1)
    log_within = looks * stats.poisson.logcdf(limits[:, None], mean[None, :]).sum(axis=1)
    return int(limits[np.argmax(log_within >= np.log(quantile))])


def recommend_scaling(
    flow_runs: pd.DataFrame,
    task_runs: pd.DataFrame,
    *,
    period: str | pd.Timedelta = "1h",
    horizon: int = 24,
    end: pd.Timestamp | str | None = None,
    coverage: float = 0.8,
    peak_quantile: float = 0.9,
    width_quantile: float = 0.95,
) -> ScalingRecommendation:
    """Forecast the next `horizon` periods and size the work pool and the task runners.

    Concurrency limit: each forecast period's arrival rate is taken at the
    forecast's upper bound (`high` at `coverage`) and W is the mean
    start-to-end time of the finished flow runs (a run holds its pool slot
    that long); `peak_limit` then gives the limit the runs in flight stay
    within over the whole horizon with chance `peak_quantile`, under Poisson
    arrivals. Runs scheduled in bursts (many at the same minute) can exceed
    it; the observed peak of the last day is given next to it. Flow-run
    columns read: `start_time`, `end_time`, `state_type`; task runs as in
    `demand_series` and `task_runner_width`.
    """
    require_columns(flow_runs, ("start_time", "end_time", "state_type"), "flow_runs")
    if not 0 < peak_quantile < 1:
        raise ValueError(f"peak_quantile must be in (0, 1), got {peak_quantile}")
    series = demand_series(flow_runs, task_runs, period, end)
    runs_forecast = forecast_series(series["flow_runs"], horizon, coverage, "flow runs")
    seconds_forecast = forecast_series(series["task_seconds"], horizon, coverage, "task-seconds")
    widths = task_runner_width(task_runs, width_quantile)
    finished = state_types(flow_runs).isin(FINISHED_STATES).fillna(False).to_numpy(dtype=bool)
    wall = (utc(flow_runs["end_time"]) - utc(flow_runs["start_time"])).dt.total_seconds()
    known = wall[finished & (wall >= 0).to_numpy(dtype=bool)].dropna()
    mean_wall = float(known.mean()) if len(known) else math.nan
    step = _step(period)
    flights = in_flight(flow_runs, step, end)
    last_day = flights[flights.index > flights.index.max() - pd.Timedelta(days=1)]
    observed = int(last_day.max()) if len(last_day) else 0
    reasoning = []
    for row in widths.itertuples():
        capped = row.at_max_share >= 0.5 and row.peak_max > 1
        reasoning.append(
            f"{row.Index}: task runs in flight per flow run: median {row.peak_p50:g}, "
            f"{width_quantile:.0%} {row.peak_quantile:g}, max {row.peak_max} over "
            f"{row.flow_runs} flow runs -> width {row.recommended_width}"
            + (
                f" ({row.at_max_share:.0%} of runs hit the max: the current width may be the"
                " limit, and demand above it cannot be seen)"
                if capped
                else ""
            )
        )

    def result(limit: int | None, reason: str = "") -> ScalingRecommendation:
        return ScalingRecommendation(
            concurrency_limit=limit,
            widths=widths,
            runs_forecast=runs_forecast,
            task_seconds_forecast=seconds_forecast,
            series=series,
            mean_wall_s=mean_wall,
            duration_n=len(known),
            observed_peak=observed,
            reasoning=reasoning,
            reason=reason,
        )

    if not runs_forecast.ok:
        return result(None, runs_forecast.reason)
    if not len(known):
        return result(None, "no finished flow run with a known start and end: W is unknown")
    values = runs_forecast.values
    period_s = step.total_seconds()
    limit = peak_limit(values["high"].to_numpy() / period_s, mean_wall, period_s, peak_quantile)
    busiest = values["high"].idxmax()
    in_flight_mean = float(values.loc[busiest, "high"]) / period_s * mean_wall
    reasoning.insert(
        0,
        f"busiest forecast period {busiest:%Y-%m-%d %H:%M} UTC: "
        f"{values.loc[busiest, 'forecast']:.1f} flow runs (upper {coverage:.0%} bound "
        f"{values.loc[busiest, 'high']:.1f}; model {runs_forecast.model}); mean time in flight"
        f" {mean_wall:.0f} s over {len(known)} finished runs -> {in_flight_mean:.2f} runs in"
        f" flight on average then (Little's law); with Poisson arrivals the runs in flight stay"
        f" within {limit} over the next {horizon} periods with chance {peak_quantile:.0%}"
        f" -> concurrency limit {limit} (observed peak over the last day: {observed})",
    )
    if seconds_forecast.ok:
        top = float(seconds_forecast.values["high"].max())
        reasoning.insert(
            1,
            f"task-seconds: up to {top:.0f} s per period (upper bound) ="
            f" {top / period_s:.1f} task runs busy on average in the busiest period",
        )
    return result(limit)
